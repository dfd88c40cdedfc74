#!/usr/bin/env python3
"""Joining against creating: `rbox exec NAME -- true` against `rbox run -- true`, and
`rbox ps` with 20 named sandboxes running (issue #15: exec at most 1.0x run, ps at most
50 ms).

Run as an ordinary user, from the project's venv:  .venv/bin/python bench/exec.py [-n 50]

Every sandbox here has its own runtime directory (a temporary XDG_RUNTIME_DIR), uses
--net=none for `run` and the joined sandbox alike (the helper's start is not what exec
saves), and is stopped at the end. The commands run interleaved, round by round, so that
machine noise hits them alike. It also prints the detached supervisor's resident memory
(issue #15: at most 12 MiB). A benchmark, not a test: nothing here passes or fails.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from startup import precompile, rbox_command  # noqa: E402 - beside this file


def run(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    r = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    elapsed = time.perf_counter() - start
    if r.returncode != 0:
        sys.exit(f"{' '.join(argv)} failed ({r.returncode}): {r.stderr.decode(errors='replace').strip()}")
    return elapsed


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return int(next(line for line in f if line.startswith("VmRSS:")).split()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--rounds", type=int, default=50)
    parser.add_argument("--sandboxes", type=int, default=20)
    args = parser.parse_args()
    if os.geteuid() == 0:
        sys.exit("run the benchmark as an ordinary user")
    precompile()
    rbox = rbox_command()
    runtime = tempfile.mkdtemp(prefix="rbox-bench-")
    env = dict(os.environ, XDG_RUNTIME_DIR=runtime)
    try:
        for i in range(args.sandboxes):
            subprocess.run([*rbox, "run", "-d", "--name", f"bench{i}", "--net=none", "--", "sleep", "100000"],
                           check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, env=env)
        cmds = {"rbox run -- true": [*rbox, "run", "--net=none", "--", "true"],
                "rbox exec NAME -- true": [*rbox, "exec", "bench0", "--", "true"],
                f"rbox ps ({args.sandboxes} running)": [*rbox, "ps"],
                "python -I -c pass": [sys.executable, "-I", "-c", "pass"]}
        for argv in cmds.values():
            run(argv, env)                       # warm caches, and fail early
        samples: dict[str, list[float]] = {name: [] for name in cmds}
        for _ in range(args.rounds):
            for name, argv in cmds.items():
                samples[name].append(run(argv, env))
        base = statistics.median(samples["rbox run -- true"])
        print(f"{'command':<26} {'median':>9} {'p90':>9} {'vs run':>8}   ({args.rounds} rounds, interleaved)")
        for name, values in samples.items():
            med = statistics.median(values)
            print(f"{name:<26} {med * 1000:7.1f}ms {statistics.quantiles(values, n=10)[-1] * 1000:7.1f}ms "
                  f"{med / base:7.2f}x")
        rows = json.loads(subprocess.run([*rbox, "ps", "--json"], capture_output=True, text=True, env=env).stdout)
        sizes = [rss_kib(int(row["supervisor"])) for row in rows]
        print(f"\ndetached supervisor, resident: median {statistics.median(sizes) / 1024:.1f} MiB, "
              f"largest {max(sizes) / 1024:.1f} MiB ({len(sizes)} supervisors, --net=none)")
    finally:
        subprocess.run([*rbox, "stop", "--all", "-t", "0"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       env=env)
        shutil.rmtree(runtime, ignore_errors=True)


if __name__ == "__main__":
    main()
