"""`rbox stats [--json] [--no-stream] [NAME...]`: what running sandboxes use, beside their limits.

Runs in: parent (the caller's rbox, on the host; it enters no sandbox).

Two sources, so that stats works on every host:
- a sandbox with limits has a cgroup (cgroups.py): its files say it all, block I/O too
  (cpu.stat usage_usec, memory.current, pids.current, io.stat);
- without one (hosts without cgroup v2 controllers delegated, like this project's CI),
  the figures are summed over the sandbox's processes, read from the host's /proc:
  CPU time (utime+stime, and cutime+cstime of what they reaped), resident memory (RSS:
  pages shared between processes count in each), tasks. A process belongs to the
  sandbox when its PID namespace is the sandbox's (/proc/PID/ns/pid; for one whose link
  rbox may not read, such as PID 1, which is not dumpable, or a process of another of
  your subordinate ids: when its parent belongs). No block I/O then: /proc/PID/io is
  readable only where ptrace is allowed.
Network bytes always come from the sandbox's own interfaces (all but `lo`), read in its
network namespace through stage-1's /proc/PID/net/dev (stage-1 is rbox's own process).
CPU is a rate: two samples, a second apart; 1.0 means one CPU busy.
"""

from __future__ import annotations

import os
import select
import time

from rootless import log
from rootless.errors import RboxError
from rootless.instance import registry

INTERVAL = 1.0
TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


class Sample:
    __slots__ = ("at", "cpu", "memory", "pids", "rx", "tx", "read", "write", "source")

    def __init__(self) -> None:
        self.at = time.monotonic()
        self.cpu = 0.0                 # CPU seconds so far
        self.memory = 0
        self.pids = 0
        self.rx: int | None = None
        self.tx: int | None = None
        self.read: int | None = None
        self.write: int | None = None
        self.source = "proc"


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _keyed(text: str) -> dict[str, int]:
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            out[parts[0]] = int(parts[1])
    return out


def from_cgroup(sample: Sample, path: str) -> None:
    sample.source = "cgroup"
    sample.cpu = _keyed(_read(f"{path}/cpu.stat")).get("usage_usec", 0) / 1e6
    for name, attr in (("memory.current", "memory"), ("pids.current", "pids")):
        try:
            setattr(sample, attr, int(_read(f"{path}/{name}")))
        except (OSError, ValueError):
            pass
    try:
        sample.read = sample.write = 0
        for line in _read(f"{path}/io.stat").splitlines():
            for field in line.split()[1:]:
                key, _, value = field.partition("=")
                if key == "rbytes":
                    sample.read += int(value)
                elif key == "wbytes":
                    sample.write += int(value)
    except (OSError, ValueError):
        sample.read = sample.write = None


def members(init: int, pidns: str) -> list[int]:
    """The host pids of the sandbox's processes (see the module docstring)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                parents[int(entry)] = int(_read(f"/proc/{entry}/stat").rpartition(")")[2].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    known: dict[int, bool] = {init: True}

    def belongs(pid: int, depth: int = 0) -> bool:
        if pid in known:
            return known[pid]
        try:
            found = os.readlink(f"/proc/{pid}/ns/pid") == pidns
        except OSError:
            parent = parents.get(pid, 0)
            found = parent > 1 and depth < 64 and belongs(parent, depth + 1)
        known[pid] = found
        return found

    return [pid for pid in parents if belongs(pid)]


def from_processes(sample: Sample, init: int, pidns: str) -> None:
    for pid in members(init, pidns):
        try:
            fields = _read(f"/proc/{pid}/stat").rpartition(")")[2].split()
            status = _read(f"/proc/{pid}/status")
        except OSError:
            continue                   # exited meanwhile
        # stat(5) fields 14-17 (utime stime cutime cstime), counted from field 3 here.
        sample.cpu += sum(int(v) for v in fields[11:15]) / TICKS
        values = _keyed(status.replace(":", " ").replace(" kB", ""))
        sample.memory += values.get("VmRSS", 0) * 1024
        sample.pids += values.get("Threads", 1)


def network(sample: Sample, stage1: int) -> None:
    """Bytes through the sandbox's interfaces, as its network namespace counts them."""
    try:
        lines = _read(f"/proc/{stage1}/net/dev").splitlines()[2:]
    except OSError:
        return
    sample.rx = sample.tx = 0
    for line in lines:
        name, _, data = line.partition(":")
        fields = data.split()
        if name.strip() != "lo" and len(fields) >= 9:
            sample.rx += int(fields[0])
            sample.tx += int(fields[8])


def take(record: dict[str, object]) -> Sample:
    sample = Sample()
    init, stage1, cgroup = record.get("init"), record.get("stage1"), record.get("cgroup")
    if isinstance(cgroup, str) and os.path.isdir(cgroup):
        from_cgroup(sample, cgroup)
    elif isinstance(init, int) and isinstance(stage1, int):
        try:
            pidns = os.readlink(f"/proc/{stage1}/ns/pid_for_children")
        except OSError:
            pidns = ""
        from_processes(sample, init, pidns)
    if isinstance(stage1, int) and record.get("net") != "host":
        network(sample, stage1)
    return sample


def figures(name: str, record: dict[str, object], first: Sample, second: Sample) -> dict[str, object]:
    limits = record.get("limits") if isinstance(record.get("limits"), dict) else {}
    assert isinstance(limits, dict)
    elapsed = max(second.at - first.at, 1e-3)
    return {"name": name, "source": second.source, "cpus": round(max(0.0, second.cpu - first.cpu) / elapsed, 3),
            "cpus_limit": limits.get("cpus"), "memory": second.memory, "memory_limit": limits.get("memory"),
            "pids": second.pids, "pids_limit": limits.get("pids"), "net_rx": second.rx, "net_tx": second.tx,
            "block_read": second.read, "block_write": second.write}


def _size(n: object) -> str:
    if not isinstance(n, int):
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    return str(n)


def table(rows: list[dict[str, object]]) -> str:
    lines = [("NAME", "CPU", "MEM / LIMIT", "PIDS / LIMIT", "NET RX / TX", "BLOCK R / W", "FROM")]
    for r in rows:
        cpu = f"{float(r['cpus']) * 100:.1f}%" + (f" / {r['cpus_limit']}" if r["cpus_limit"] else "")  # type: ignore[arg-type]
        lines.append((str(r["name"]), cpu, f"{_size(r['memory'])} / {_size(r['memory_limit'])}",
                      f"{r['pids']} / {r['pids_limit'] or '-'}", f"{_size(r['net_rx'])} / {_size(r['net_tx'])}",
                      f"{_size(r['block_read'])} / {_size(r['block_write'])}", str(r["source"])))
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    return "".join("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() + "\n" for line in lines)


def run(names: list[str], as_json: bool, no_stream: bool, environ: dict[str, str]) -> int:
    targets = _targets(names, environ)
    previous = {name: take(record) for name, record in targets}
    while True:
        select.poll().poll(INTERVAL * 1000)
        rows = []
        for name, record in targets:
            now = take(record)
            rows.append(figures(name, record, previous[name], now))
            previous[name] = now
        if as_json:
            import json

            log.out(json.dumps(rows) + "\n")
        else:
            clear = "\x1b[H\x1b[2J" if not no_stream and os.isatty(1) else ""
            log.out(clear + table(rows))
        if no_stream:
            return 0


def _targets(names: list[str], environ: dict[str, str]) -> list[tuple[str, dict[str, object]]]:
    found = []
    if names:
        for name in names:
            entry = registry.find(name, environ)
            status = entry.status() if entry is not None else "stale"
            record = entry.record() if entry is not None else {}
            if entry is not None:
                entry.close()
            if status not in ("running", "stopping"):
                raise registry.not_found(name) if status == "stale" else RboxError(
                    f"the sandbox `{name}` is {status if status != 'exited' else 'not running (it has ended)'}",
                    hint="`rbox ps` lists the running ones")
            found.append((name, record))
        return found
    for entry in registry.entries(environ):
        try:
            if entry.status() in ("running", "stopping"):
                found.append((entry.name, entry.record()))
        finally:
            entry.close()
    return found
