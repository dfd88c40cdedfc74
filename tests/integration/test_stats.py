"""`rbox stats` (issue #15) on a host without delegated cgroup v2 controllers: figures summed
over each sandbox's processes from /proc; network bytes from its own interfaces. (With
limits, the figures come from the cgroup: tests/vm.)"""

from __future__ import annotations

import json
import os
import sys
import time

import pytest

from tests.integration import named
from tests.integration.helpers import children, wait_until
from tests.integration.named import Box

pytestmark = pytest.mark.needs_userns
box = named.box      # the fixture

MiB = 1 << 20
SPIN = "while True: pass"
HOLD = ("import time\nx = bytearray(200 * 1024 * 1024)\nfor i in range(0, len(x), 4096): x[i] = 1\n"
        "open('/tmp/ready', 'w').close()\ntime.sleep(1000)")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stats(box: Box, *args: str) -> dict[str, dict[str, object]]:
    r = box.rbox("stats", "--no-stream", "--json", *args)
    assert r.returncode == 0, r.stderr
    return {str(row["name"]): row for row in json.loads(r.stdout)}


def test_a_cpu_burner_shows_one_cpu_and_an_allocation_shows_in_memory(box: Box) -> None:
    box.start("burn", sys.executable, "-c", SPIN)
    box.start("hold", sys.executable, "-c", HOLD)
    box.start("idle", "sleep", "1000")
    assert wait_until(lambda: box.rbox("exec", "hold", "--", "test", "-e", "/tmp/ready").returncode == 0, timeout=30)
    burner = next(p for p in children(int(box.row("burn")["pid"])))  # type: ignore[call-overload]
    began, used = time.monotonic(), cpu_seconds(burner)
    rows = stats(box)
    measured = (cpu_seconds(burner) - used) / (time.monotonic() - began)
    assert set(rows) == {"burn", "hold", "idle"}
    burn, hold, idle = rows["burn"], rows["hold"], rows["idle"]
    assert all(row["source"] == "proc" and row["block_read"] is None for row in rows.values())
    # What the burner really had over the same second, read independently: one CPU on
    # an idle host, less on a loaded one (other suites share this 2-core machine).
    assert measured > 0.25, measured
    assert abs(float(burn["cpus"]) - measured) < 0.2, (burn, measured)   # type: ignore[arg-type]
    assert float(idle["cpus"]) < 0.15, idle                    # type: ignore[arg-type]
    assert 200 * MiB <= int(hold["memory"]) < 400 * MiB, hold  # type: ignore[call-overload]
    assert int(idle["memory"]) < 60 * MiB, idle                # type: ignore[call-overload]
    assert idle["pids"] == 2 and idle["memory_limit"] is None  # PID 1 and sleep
    r = box.rbox("stats", "--no-stream", "idle")
    header, line = r.stdout.splitlines()
    assert header.split()[:3] == ["NAME", "CPU", "MEM"] and line.startswith("idle ")


@pytest.mark.needs_slirp4netns
def test_network_bytes_are_the_sandboxs_own(box: Box) -> None:
    # Datagrams to the gateway's discard port: slirp4netns drops them (the host's
    # loopback is off); they leave the sandbox's tap0 all the same, and nothing else does.
    send = ("import socket, time\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            "for _ in range(200):\n    s.sendto(b'x' * 1000, ('10.0.2.2', 9))\n    time.sleep(0.002)\n"
            "time.sleep(1000)")
    box.start("talker", sys.executable, "-c", send, opts=())
    box.start("quiet", "sleep", "1000", opts=())
    assert wait_until(lambda: int(stats(box, "talker")["talker"]["net_tx"]) >= 150 * 1000)  # type: ignore[call-overload]
    assert int(stats(box, "quiet")["quiet"]["net_tx"]) < 20 * 1000        # type: ignore[call-overload]


def test_stats_of_what_does_not_run_is_an_error(box: Box) -> None:
    r = box.rbox("stats", "--no-stream", "ghost")
    assert r.returncode == 125 and r.stderr.startswith("rbox: error: no sandbox named `ghost`")
    box.start("brief", "true")
    assert wait_until(lambda: box.row("brief")["state"] == "exited")
    r = box.rbox("stats", "--no-stream", "brief")
    assert r.returncode == 125 and "not running" in r.stderr
