#!/usr/bin/env python3
"""Network throughput and start-up cost of rbox's backends, side by side in one run.

Run as an ordinary user, from the project's venv (needs iperf3):
    .venv/bin/python bench/net.py [--seconds 3]

- throughput from inside to an iperf3 server on the host's 127.0.0.1 (reached at
  10.0.2.2 with --allow-host-loopback), for slirp4netns and pasta, next to the plain
  host loopback, in Gbit/s and as ratios;
- slirp4netns started by hand against a namespace of `unshare`, with the same options
  rbox passes: rbox's slirp4netns path should be within 10% of it;
- the start-up time each backend adds to `rbox run -- true` over --net=none.
All traffic stays on this machine. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from startup import precompile, rbox_command, time_once  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def gbits(iperf_json: str) -> float:
    return float(json.loads(iperf_json)["end"]["sum_received"]["bits_per_second"]) / 1e9


def client(seconds: int, host: str, port: int) -> list[str]:
    return ["iperf3", "-c", host, "-p", str(port), "-t", str(seconds), "-J"]


def by_hand(seconds: int, port: int) -> float:
    """slirp4netns started by hand with rbox's options, against `unshare -Urn`."""
    holder = subprocess.Popen(["unshare", "-Urn", "sleep", "120"])
    time.sleep(0.3)
    pid = holder.pid
    ready_r, ready_w = os.pipe()
    slirp = subprocess.Popen(["slirp4netns", "--configure", "--mtu=65520", "--enable-sandbox", "--enable-seccomp",
                              f"--ready-fd={ready_w}", str(pid), "tap0"], pass_fds=[ready_w],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(ready_w)
    os.read(ready_r, 1)
    os.close(ready_r)
    try:
        out = subprocess.run(["nsenter", "-t", str(pid), "-U", "-n", "--preserve-credentials",
                              *client(seconds, "10.0.2.2", port)], capture_output=True, text=True, check=True).stdout
        return gbits(out)
    finally:
        slirp.terminate()
        slirp.wait()
        holder.kill()
        holder.wait()


def in_rbox(rbox: list[str], net: str, seconds: int, port: int) -> float:
    out = subprocess.run([*rbox, "run", f"--net={net}", "--allow-host-loopback", "--",
                          *client(seconds, "10.0.2.2", port)], capture_output=True, text=True, check=True).stdout
    return gbits(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=3)
    parser.add_argument("-n", "--rounds", type=int, default=20, help="rounds for the start-up times")
    parser.add_argument("--tput-rounds", type=int, default=3, help="interleaved rounds of each throughput run")
    args = parser.parse_args()
    if not shutil.which("iperf3"):
        sys.exit("iperf3 is needed (Debian package iperf3)")
    precompile()
    rbox = rbox_command()
    port = free_port()
    server = subprocess.Popen(["iperf3", "-s", "-B", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    runs = {
        "host loopback (no sandbox)": lambda: gbits(subprocess.run(
            client(args.seconds, "127.0.0.1", port), capture_output=True, text=True, check=True).stdout),
        "rbox --net=slirp4netns": lambda: in_rbox(rbox, "slirp4netns", args.seconds, port),
        "rbox --net=pasta": lambda: in_rbox(rbox, "pasta", args.seconds, port),
        "slirp4netns by hand": lambda: by_hand(args.seconds, port),
    }
    samples: dict[str, list[float]] = {name: [] for name in runs}
    try:
        for _ in range(args.tput_rounds):          # interleaved: noise hits every backend alike
            for name, run in runs.items():
                samples[name].append(run())
    finally:
        server.kill()
        server.wait()
    rates = {name: statistics.median(values) for name, values in samples.items()}
    base = rates["host loopback (no sandbox)"]
    print(f"{'throughput to the host':<30} {'Gbit/s':>8} {'vs host':>8}   "
          f"(median of {args.tput_rounds} interleaved {args.seconds} s runs)")
    for name, rate in rates.items():
        print(f"{name:<30} {rate:8.2f} {rate / base:7.2f}x")
    print(f"rbox slirp4netns / by hand: {rates['rbox --net=slirp4netns'] / rates['slirp4netns by hand']:.2f}")

    nets = ("none", "slirp4netns", "pasta")
    samples: dict[str, list[float]] = {n: [] for n in nets}
    for _ in range(args.rounds):
        for n in nets:
            samples[n].append(time_once([*rbox, "run", f"--net={n}", "--", "true"]))
    none = statistics.median(samples["none"])
    print(f"\n{'start-up (rbox run -- true)':<30} {'median':>8} {'added':>8}   ({args.rounds} rounds, interleaved)")
    for n in nets:
        med = statistics.median(samples[n])
        print(f"--net={n:<24} {med * 1000:6.1f}ms {(med - none) * 1000:6.1f}ms")


if __name__ == "__main__":
    main()
