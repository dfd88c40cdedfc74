#!/usr/bin/env python3
"""Start-up time of `rbox run --net=none -- true` against bubblewrap and unshare.

Run as an ordinary user, from the project's venv:  .venv/bin/python bench/startup.py [-n 50]

All commands run in one process, interleaved round by round (so that machine noise
hits all of them alike), and the script prints each one's median and its ratio to
bwrap. The interpreter's own start (`python3 -I -c pass`) is shown as the floor under
any pure-Python tool. A benchmark, not a test: nothing here passes or fails.
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


def time_once(argv: list[str]) -> float:
    start = time.perf_counter()
    r = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    elapsed = time.perf_counter() - start
    if r.returncode != 0:
        sys.exit(f"{argv[0]} failed ({r.returncode}): {r.stderr.decode(errors='replace').strip()}")
    return elapsed


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
    print("\ncommands:")
    for name, argv in cmds.items():
        print(f"  {name}: {' '.join(argv)}")


if __name__ == "__main__":
    main()
