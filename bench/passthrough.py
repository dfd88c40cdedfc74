#!/usr/bin/env python3
"""Throughput without a pty: `producer | rbox run -T -- cat | consumer` against the same
pipeline with a plain `cat` in the middle.

Run as an ordinary user: .venv/bin/python bench/passthrough.py [--mb 512] [--rounds 5]

Without a pty rbox relays nothing: the command gets rbox's own stdin and stdout, so the
data goes from pipe to pipe through `cat` alone, as in the plain pipeline. The start-up
cost of each (`rbox run -T -- true`, a bare `true`) is measured in the same run and
subtracted; rounds are interleaved and medians reported. Target from issue 13: at least
0.95x a plain pipe. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from startup import precompile, rbox_command  # noqa: E402

PRODUCER = "import os,sys\nb=os.urandom(1<<20)\nfor _ in range({mb}): sys.stdout.buffer.write(b)\n"
CONSUMER = "import sys\nr=sys.stdin.buffer\nwhile r.read(1<<20): pass\n"


def pipeline(middle: list[str], mb: int) -> float:
    """Seconds for mb MiB through producer | middle | consumer."""
    start = time.perf_counter()
    producer = subprocess.Popen([sys.executable, "-c", PRODUCER.format(mb=mb)], stdout=subprocess.PIPE)
    mid = subprocess.Popen(middle, stdin=producer.stdout, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert producer.stdout is not None and mid.stdout is not None
    producer.stdout.close()
    consumer = subprocess.Popen([sys.executable, "-c", CONSUMER], stdin=mid.stdout)
    mid.stdout.close()
    for p in (producer, mid, consumer):
        p.wait()
    if mid.returncode != 0:
        sys.exit(f"{middle} failed: {mid.stderr.read().decode(errors='replace') if mid.stderr else ''}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    precompile()
    rbox = [*rbox_command(), "run", "-T", "--net=none", "--"]
    plain, boxed = [], []
    for _ in range(args.rounds):
        plain.append(pipeline(["cat"], args.mb) - pipeline(["true"], 0))
        boxed.append(pipeline([*rbox, "cat"], args.mb) - pipeline([*rbox, "true"], 0))
    p, b = args.mb / statistics.median(plain), args.mb / statistics.median(boxed)
    print(f"plain pipe (cat):        {p:8.0f} MiB/s")
    print(f"rbox run -T -- cat:      {b:8.0f} MiB/s   ({b / p:.2f}x the plain pipe; target >= 0.95x)")


if __name__ == "__main__":
    main()
