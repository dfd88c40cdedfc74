#!/usr/bin/env python3
"""Start-up time of `rbox run --image NAME -- true` against `rbox run -- true` (#14: at
most 1.3x), with the default writable image (an overlay, its upper layer on a tmpfs),
and the other ways to show an image: --read-only, fuse-overlayfs (RBOX_OVERLAY=fuse), a
SquashFS file.

Run as an ordinary user, from the project's venv:  .venv/bin/python bench/image.py [-n 50]

The image is a busybox-static tree (Debian's busybox-static), imported into a store of
the benchmark's own under a temporary directory, removed at the end. All commands run
in one process, interleaved round by round, --net=none (the network helper's start
would only add the same time to every line). A benchmark, not a test: nothing here
passes or fails; the ratio to `rbox run -- true` is printed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

from startup import precompile, rbox_command, time_once


def make_image(top: str, env: dict[str, str]) -> str:
    """A busybox tree imported as image `bench`, and the tree as a SquashFS file (when
    mksquashfs is installed); the file's path ("" without it)."""
    tree = os.path.join(top, "rootfs")
    os.makedirs(os.path.join(tree, "bin"))
    os.makedirs(os.path.join(tree, "etc"))
    shutil.copy("/bin/busybox", os.path.join(tree, "bin", "busybox"))
    for applet in ("sh", "true"):
        os.symlink("busybox", os.path.join(tree, "bin", applet))
    with open(os.path.join(tree, "etc", "passwd"), "w") as f:
        f.write("root:x:0:0:root:/root:/bin/sh\n")
    r = subprocess.run([*rbox_command(), "image", "import", tree, "bench"], env=env, capture_output=True, text=True,
                       cwd=top)
    if r.returncode != 0:
        sys.exit(f"rbox image import failed: {r.stderr.strip()}")
    sqfs = os.path.join(top, "bench.sqfs")
    if not shutil.which("mksquashfs"):
        return ""
    subprocess.run(["mksquashfs", tree, sqfs, "-quiet", "-noappend", "-no-progress", "-all-root"], check=True,
                   capture_output=True)
    return sqfs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--rounds", type=int, default=50)
    args = parser.parse_args()
    if os.geteuid() == 0:
        sys.exit("run the benchmark as an ordinary user: rootless start-up is what it measures")
    if not os.path.exists("/bin/busybox"):
        sys.exit("the benchmark's image needs busybox-static (apt-get install busybox-static)")
    precompile()
    top = tempfile.mkdtemp(prefix="rbox-bench-image-")
    store = {"RBOX_STORAGE": os.path.join(top, "store")}
    env = dict(os.environ, **store)
    try:
        sqfs = make_image(top, env)
        run = [*rbox_command(), "run", "--net=none"]
        cmds = {
            "rbox run -- true": ([*run, "--", "true"], {}),
            "--image (overlay)": ([*run, "--image", "bench", "--", "true"], {}),
            "--image --read-only": ([*run, "--image", "bench", "--read-only", "--", "true"], {}),
            "--image, fuse-overlayfs": ([*run, "--image", "bench", "--", "true"], {"RBOX_OVERLAY": "fuse"}),
        }
        if sqfs:
            cmds["--image FILE.sqfs"] = ([*run, "--image", sqfs, "--", "true"], {})
        samples: dict[str, list[float]] = {name: [] for name in cmds}
        for argv, extra in cmds.values():
            time_once(argv, dict(env, **extra), cwd=top)          # warm caches, and fail early
        for _ in range(args.rounds):
            for name, (argv, extra) in cmds.items():
                samples[name].append(time_once(argv, dict(env, **extra), cwd=top))
        base = statistics.median(samples["rbox run -- true"])
        print(f"{'command':<26} {'median':>9} {'p90':>9} {'ratio':>7}   ({args.rounds} rounds, interleaved, "
              "--net=none)")
        for name, values in samples.items():
            med = statistics.median(values)
            p90 = statistics.quantiles(values, n=10)[-1]
            print(f"{name:<26} {med * 1000:7.1f}ms {p90 * 1000:7.1f}ms {med / base:6.2f}x")
    finally:
        subprocess.run([*rbox_command(), "image", "rm", "bench"], env=env, capture_output=True, cwd=top)
        subprocess.run([*rbox_command(), "unshare", "--", "rm", "-rf", top], capture_output=True)


if __name__ == "__main__":
    main()
