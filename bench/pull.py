#!/usr/bin/env python3
"""`rbox image pull` of a multi-layer image from a loopback registry, against
`skopeo copy docker://... dir:...` of the same image, measured in the same run.

Run as an ordinary user, from the project's root: .venv/bin/python bench/pull.py [-n 5] [--mb 20]

A docker-registry of the bench's own on 127.0.0.1 (tests/integration/registry.py starts
it, storage in a temporary directory) serves an image of three gzip layers of MB
megabytes each (half random bytes, half text: something between incompressible and
compressible). Each round pulls it into an empty store and copies it with skopeo into
an empty directory, interleaved. skopeo only stores the compressed blobs; rbox also
verifies them into its cache and unpacks them (in its sandbox): so the unpacking alone
is measured too, as a second pull of the same image under another name (blobs cached,
nothing fetched). Target from issue 14: the pull at most 1.2x skopeo's copy. A
benchmark, not a test: nothing here passes or fails.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from startup import precompile, rbox_command  # noqa: E402

from tests.integration.registry import Layout, Registry, push, tar_layer  # noqa: E402


def layer(number: int, mb: int) -> bytes:
    half = mb << 19
    text = b"".join(b"line %d of layer %d: some text that compresses\n" % (i, number) for i in range(half // 48))
    return tar_layer({f"data{number}/random": os.urandom(half), f"data{number}/text": text[:half]}, gz=True)


def timed(argv: list[str], env: dict[str, str] | None = None) -> float:
    start = time.perf_counter()
    r = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                       env=env)
    elapsed = time.perf_counter() - start
    if r.returncode != 0:
        sys.exit(f"{argv[0]} failed ({r.returncode}): {r.stderr.decode(errors='replace').strip()[-500:]}")
    return elapsed


def remove(path: Path) -> None:
    """A store's files may belong to subordinate ids: removed as `rbox unshare` does."""
    subprocess.run([*rbox_command(), "unshare", "--", "rm", "-rf", str(path)], check=True, stdin=subprocess.DEVNULL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--rounds", type=int, default=5)
    parser.add_argument("--mb", type=int, default=20, help="megabytes of data per layer (before gzip)")
    args = parser.parse_args()
    if os.geteuid() == 0:
        sys.exit("run the benchmark as an ordinary user")
    for tool in ("docker-registry", "skopeo"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is not installed (Debian package {tool})")
    precompile()
    top = Path(tempfile.mkdtemp(prefix="rbox-bench-pull-", dir=os.environ.get("TMPDIR", "/var/tmp")))
    registry = None
    try:
        layout = Layout(top / "layout")
        layers = [layer(n, args.mb) for n in (1, 2, 3)]
        layout.tag("v1", layout.manifest(layers, {"Cmd": ["sh"]}))
        registry = Registry(top / "registry", top / "storage")
        push(layout.top, "v1", registry, "bench/big:v1")
        ref = f"{registry.host}/bench/big:v1"
        rbox = rbox_command()
        samples: dict[str, list[float]] = {"rbox image pull": [], "skopeo copy (dir:)": [], "rbox unpack only": []}
        for _ in range(args.rounds + 1):                  # the first round warms caches, not counted
            store, copy = top / "store", top / "copy"
            env = {**os.environ, "RBOX_STORAGE": str(store)}
            took = {"rbox image pull": timed([*rbox, "image", "pull", "--quiet", ref, "a"], env),
                    "rbox unpack only": timed([*rbox, "image", "pull", "--quiet", ref, "b"], env),
                    "skopeo copy (dir:)": timed(["skopeo", "copy", "--insecure-policy", "--src-tls-verify=false",
                                                 f"docker://{ref}", f"dir:{copy}"])}
            remove(store)
            shutil.rmtree(copy)
            if _:
                for name, value in took.items():
                    samples[name].append(value)
        size = sum(len(data) for data in layers)
        base = statistics.median(samples["skopeo copy (dir:)"])
        print(f"image: 3 gzip layers, {size / 2**20:.1f} MiB compressed, {3 * args.mb} MiB of files; "
              f"{args.rounds} rounds, interleaved")
        print(f"{'':<22}{'median':>9}{'min':>9}{'vs skopeo':>11}")
        for name, values in samples.items():
            med = statistics.median(values)
            print(f"{name:<22}{med:8.2f}s{min(values):8.2f}s{med / base:10.2f}x")
    finally:
        if registry is not None:
            registry.stop()
        if (top / "store").exists():
            remove(top / "store")
        shutil.rmtree(top, ignore_errors=True)


if __name__ == "__main__":
    main()
