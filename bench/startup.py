#!/usr/bin/env python3
"""Start-up time of `rbox run --net=none -- true` against bubblewrap and unshare.

Run as an ordinary user, from the project's venv:  .venv/bin/python bench/startup.py [-n 50]

All commands run in one process, interleaved round by round (so that machine noise
hits all of them alike), and the script prints each one's median and its ratio to
bwrap. The interpreter's own start (`python3 -I -c pass`) is shown as the floor under
any pure-Python tool. A benchmark, not a test: nothing here passes or fails.

It also states what the nested user namespace costs (issue #10: the command runs in a
user and mount namespace below the ones that built the sandbox), from rbox's own
--debug timestamps: init's steps from unsharing it to the new session keyring. On a
2-core Debian 12 VM (Linux 6.18) that is 0.3-0.5 ms (median 0.4 ms), most of it the pipe
round trip to stage-1 and its three /proc writes.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time


def rbox_command() -> list[str]:
    script = os.path.join(os.path.dirname(sys.executable), "rbox")
    return [script] if os.path.exists(script) else [sys.executable, "-m", "rootless"]


def candidates() -> dict[str, list[str]]:
    found = {
        "rbox": [*rbox_command(), "run", "--net=none", "--", "true"],
        "bwrap": ["bwrap", "--unshare-all", "--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev", "true"],
        "unshare": ["unshare", "-Urpfm", "--mount-proc", "true"],
        "python -I -c pass": [sys.executable, "-I", "-c", "pass"],
    }
    return {name: argv for name, argv in found.items() if shutil.which(argv[0]) or os.path.exists(argv[0])}


def precompile() -> None:
    """Write rbox's bytecode first: with PYTHONDONTWRITEBYTECODE set (or a read-only
    checkout) every run would otherwise compile the sources again, which an installed
    rbox (pip compiles at install time) never does."""
    import compileall
    import importlib.util

    spec = importlib.util.find_spec("rootless")
    if spec and spec.submodule_search_locations:
        for where in spec.submodule_search_locations:
            compileall.compile_dir(where, quiet=1)


def time_once(argv: list[str], env: dict[str, str] | None = None, cwd: str | None = None) -> float:
    start = time.perf_counter()
    r = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
                       cwd=cwd)
    elapsed = time.perf_counter() - start
    if r.returncode != 0:
        sys.exit(f"{argv[0]} failed ({r.returncode}): {r.stderr.decode(errors='replace').strip()}")
    return elapsed


def nested_userns_ms() -> float:
    """Milliseconds from init's `unshare user namespace (nested ...)` step to its `new
    session keyring` step, read from one `rbox --debug run` (0.1 ms resolution): the
    nested user namespace mapped by stage-1, no dumpable state, the mount namespace that
    locks every mount, the keyring."""
    r = subprocess.run([*rbox_command(), "--debug", "run", "--net=none", "--", "true"], stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    stamps = {}
    for line in r.stderr.splitlines():
        for key in ("unshare user namespace (nested", "new session keyring"):
            if f"] + {key}" in line:
                stamps[key] = float(line.split("]")[0].split()[-1].removesuffix("ms"))
    if r.returncode != 0 or len(stamps) != 2:
        sys.exit(f"rbox --debug failed ({r.returncode}): {r.stderr.strip()[-300:]}")
    return stamps["new session keyring"] - stamps["unshare user namespace (nested"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--rounds", type=int, default=50)
    args = parser.parse_args()
    if os.geteuid() == 0:
        sys.exit("run the benchmark as an ordinary user: rootless start-up is what it measures")
    precompile()
    cmds = candidates()
    for argv in cmds.values():
        time_once(argv)                     # warm caches, and fail early
    samples: dict[str, list[float]] = {name: [] for name in cmds}
    for _ in range(args.rounds):
        for name, argv in cmds.items():
            samples[name].append(time_once(argv))
    base = statistics.median(samples["bwrap"]) if "bwrap" in samples else None
    print(f"{'command':<20} {'median':>9} {'p90':>9} {'vs bwrap':>9}   ({args.rounds} rounds, interleaved)")
    for name, values in samples.items():
        med = statistics.median(values)
        p90 = statistics.quantiles(values, n=10)[-1]
        ratio = f"{med / base:8.2f}x" if base else "      -"
        print(f"{name:<20} {med * 1000:7.1f}ms {p90 * 1000:7.1f}ms {ratio}")
    nested = [nested_userns_ms() for _ in range(args.rounds)]
    print(f"\nnested user namespace (init, from --debug: unshare, mapped by stage-1, mount namespace, keyring): "
          f"median {statistics.median(nested):.1f}ms, p90 {statistics.quantiles(nested, n=10)[-1]:.1f}ms")
    print("\ncommands:")
    for name, argv in cmds.items():
        print(f"  {name}: {' '.join(argv)}")


if __name__ == "__main__":
    main()
