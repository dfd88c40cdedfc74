#!/usr/bin/env python3
"""Throughput of rbox's pty relay: `rbox run -t -- cat FILE`, output to /dev/null.

Run as an ordinary user: .venv/bin/python bench/tty_throughput.py [--mb 256]

The start-up cost (`rbox run -t -- true`) is measured in the same run and subtracted.
util-linux `script`, another pty relay, is timed the same way for reference, and so is
the kernel's own pty with nothing but a read loop on the master: no relay can beat
that line. Target from issue 6: at least 100 MB/s. A benchmark, not a test.
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

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from startup import precompile, rbox_command  # noqa: E402


def timed(argv: list[str]) -> float:
    start = time.perf_counter()
    with open(os.devnull, "wb") as sink:
        r = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.PIPE)
    if r.returncode != 0:
        sys.exit(f"{argv} failed: {r.stderr.decode(errors='replace')}")
    return time.perf_counter() - start


def kernel_pty_rate(mb: int) -> float:
    """MB/s through a bare pty: a child writes to the slave, we only read the master."""
    master, slave = os.openpty()
    pid = os.fork()
    if pid == 0:
        os.close(master)
        block, left = os.urandom(1 << 16), mb << 20
        while left > 0:
            left -= os.write(slave, block[:left])
        os._exit(0)
    os.close(slave)
    start = time.perf_counter()
    while True:
        try:
            if not os.read(master, 1 << 16):
                break
        except OSError:      # EIO: the writer is gone
            break
    os.waitpid(pid, 0)
    os.close(master)
    return mb / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=256)
    parser.add_argument("-n", "--rounds", type=int, default=3)
    args = parser.parse_args()
    precompile()
    with tempfile.TemporaryDirectory(dir=os.getcwd()) as tmp:
        data = os.path.join(tmp, "data")
        with open(data, "wb") as f:
            block = os.urandom(1 << 20)
            for _ in range(args.mb):
                f.write(block)
        rbox = rbox_command()
        runs = {
            "rbox run -t": ([*rbox, "run", "-t", "--", "cat", data], [*rbox, "run", "-t", "--", "true"]),
        }
        if shutil.which("script"):
            runs["script (util-linux)"] = (["script", "-qec", f"cat {data}", "/dev/null"],
                                           ["script", "-qec", "true", "/dev/null"])
        print(f"{'relay':<22} {'MB/s':>8}   ({args.mb} MB, median of {args.rounds}, start-up subtracted)")
        for name, (cat, empty) in runs.items():
            base = statistics.median(timed(empty) for _ in range(args.rounds))
            total = statistics.median(timed(cat) for _ in range(args.rounds))
            print(f"{name:<22} {args.mb / max(total - base, 1e-6):8.0f}")
        kernel = statistics.median(kernel_pty_rate(args.mb) for _ in range(args.rounds))
        print(f"{'kernel pty, no relay':<22} {kernel:8.0f}")


if __name__ == "__main__":
    main()
