#!/usr/bin/env python3
"""What a resource limit adds to `rbox run -- true`: the D-Bus scope (StartTransientUnit,
rbox's default) against the systemd-run re-exec, next to no limit at all.

Needs a systemd user manager with delegation: run it in the VM test bed,
    sudo tests/vm/run --bench "python3 bench/limits.py"
Interleaved rounds, medians. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from startup import precompile, rbox_command, time_once  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--rounds", type=int, default=15)
    args = parser.parse_args()
    precompile()
    rbox = rbox_command()
    runs = {
        "no limit": ({}, [*rbox, "run", "--net=none", "--", "true"]),
        "--pids-limit, D-Bus scope": ({"RBOX_SCOPE_MECHANISM": "dbus"},
                                      [*rbox, "run", "--net=none", "--pids-limit", "1000", "--", "true"]),
        "--pids-limit, systemd-run": ({"RBOX_SCOPE_MECHANISM": "systemd-run"},
                                      [*rbox, "run", "--net=none", "--pids-limit", "1000", "--", "true"]),
    }
    samples: dict[str, list[float]] = {name: [] for name in runs}
    saved = dict(os.environ)
    for _ in range(args.rounds):
        for name, (env, argv) in runs.items():
            os.environ.clear()
            os.environ.update(saved, **env)
            samples[name].append(time_once(argv))
    os.environ.clear()
    os.environ.update(saved)
    base = statistics.median(samples["no limit"])
    print(f"{'rbox run -- true':<30} {'median':>9} {'added':>9}   ({args.rounds} rounds, interleaved)")
    for name, values in samples.items():
        med = statistics.median(values)
        print(f"{name:<30} {med * 1000:7.1f}ms {(med - base) * 1000:7.1f}ms")


if __name__ == "__main__":
    main()
