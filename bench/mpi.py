#!/usr/bin/env python3
"""MPI in rbox: ping-pong latency (8 bytes, one way) and bandwidth (1 MiB) between 2 ranks
with no sandbox, with `rbox run --join` (one sandbox for both: Open MPI's shared memory),
and with one sandbox per rank (TCP over the host's loopback, OMPI_MCA_btl=self,tcp: shared
memory cannot work across two PID namespaces). Issue #16: --join within 10% of no sandbox
on small-message latency.

Run as an ordinary user, from the project's venv, on a node with Open MPI (mpicc,
mpirun):  .venv/bin/python bench/mpi.py [-n 5] [--launcher srun]

The program (bench/mpi_pingpong.c) is built into a temporary directory below the current
one (the sandbox shows the current directory; the host's /tmp it does not). The cases
run interleaved, round by round, so that machine noise hits them alike; each figure is
the median of the rounds. A benchmark, not a test: nothing here passes or fails.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from startup import rbox_command  # noqa: E402 - beside this file

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "mpi_pingpong.c")


def cases(rbox: list[str]) -> dict[str, tuple[str, dict[str, str]]]:
    """name: (what each rank runs, in sh -c, and extra environment)."""
    box = " ".join(rbox)
    sandbox = f'exec {box} run --net=host --bind "$PMIX_SERVER_TMPDIR"'
    return {
        "no sandbox": ("exec ./mpi_pingpong", {}),
        "rbox run --join": (f"{sandbox} --join -- ./mpi_pingpong", {}),
        "a sandbox per rank (TCP)": (f"{sandbox} -- ./mpi_pingpong", {"OMPI_MCA_btl": "self,tcp"}),
    }


def launch(launcher: str, command: str, extra: dict[str, str], cwd: str) -> tuple[float, float]:
    argv = ["srun", "-n2", "--mpi=pmix"] if launcher == "srun" else ["mpirun", "-n", "2"]
    r = subprocess.run([*argv, "sh", "-c", command], cwd=cwd, env=dict(os.environ, **extra), capture_output=True,
                       text=True, stdin=subprocess.DEVNULL, timeout=300)
    line = next((x for x in r.stdout.splitlines() if x.startswith("latency_us ")), None)
    if r.returncode != 0 or line is None or not line.endswith(" ok"):
        sys.exit(f"{command} failed ({r.returncode}): {r.stdout.strip()} {r.stderr.strip()[-500:]}")
    words = line.split()
    return float(words[1]), float(words[3])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--rounds", type=int, default=5)
    parser.add_argument("--launcher", choices=("mpirun", "srun"), default="mpirun")
    args = parser.parse_args()
    if os.geteuid() == 0:
        sys.exit("run the benchmark as an ordinary user")
    if shutil.which("mpicc") is None:
        sys.exit("mpicc not found (Debian: libopenmpi-dev, openmpi-bin)")
    work = tempfile.mkdtemp(prefix=".rbox-bench-mpi-", dir=os.getcwd())
    try:
        shutil.copy(SOURCE, work)
        subprocess.run(["mpicc", "-O2", "-o", "mpi_pingpong", "mpi_pingpong.c"], cwd=work, check=True)
        found: dict[str, list[tuple[float, float]]] = {}
        todo = cases(rbox_command())
        for _ in range(args.rounds):
            for name, (command, extra) in todo.items():
                found.setdefault(name, []).append(launch(args.launcher, command, extra, work))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    base = statistics.median(x[0] for x in found["no sandbox"])
    print(f"{args.launcher}, 2 ranks, median of {args.rounds} runs")
    print(f"{'':26} {'latency (us)':>12} {'vs none':>8} {'bandwidth (MB/s)':>17}")
    for name, results in found.items():
        latency = statistics.median(x[0] for x in results)
        bandwidth = statistics.median(x[1] for x in results)
        print(f"{name:26} {latency:12.2f} {latency / base:7.2f}x {bandwidth:17.0f}")


if __name__ == "__main__":
    main()
