"""What rbox may leave behind, as a snapshot to compare before and after a test.

Runs in: the test runner. Everything of the user's counts: processes of the user's uid
and of its subordinate uids (a helper that joined a sandbox's user namespace as its
root runs as one of those), the user namespaces they hold (as their own or through a
descriptor), mounts in the runner's mount namespace, and entries in the runtime
directories. Zombies are left out: their process has exited; this host's PID 1 reaps
orphans only about once a second.
"""

from __future__ import annotations

import os
import time

from tests.integration.helpers import children, live_processes  # noqa: F401 - children: re-exported


def processes() -> dict[int, str]:
    """pid -> command line of every live (not zombie) process with a real, effective,
    saved or filesystem uid of the user's (helpers.live_processes says how)."""
    return {pid: cmd.strip() for pid, cmd in live_processes().items()}


def user_namespaces(pids: list[int]) -> set[str]:
    """The user namespaces these processes are in or hold a descriptor of."""
    found = set()
    for pid in pids:
        try:
            found.add(os.readlink(f"/proc/{pid}/ns/user"))
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("user:["):
                    found.add(target)
        except OSError:
            continue
    return found


def mounts() -> set[str]:
    with open("/proc/self/mountinfo") as f:
        return {" ".join(line.split()[3:5]) for line in f}


def runtime_entries(dirs: list[str]) -> set[str]:
    """Every path below the runtime directories, except an empty directory named `rbox`
    (a shared base that may stay), and an empty `rbox/named` (named sandboxes' base)."""
    found = set()
    for base in dirs:
        for root, subdirs, files in os.walk(base):
            found.update(os.path.join(root, name) for name in files + subdirs)
    return {p for p in found if not _empty_base(p)}


def _empty_base(path: str) -> bool:
    """An empty `rbox` (or `rbox/named`) directory, or one holding only an empty `named`."""
    if path.endswith("/rbox/named"):
        return os.path.isdir(path) and not os.listdir(path)
    return path.endswith("/rbox") and os.path.isdir(path) and \
        all(n == "named" and _empty_base(os.path.join(path, n)) for n in os.listdir(path))


class Snapshot:
    """The user's processes, user namespaces, mounts and runtime entries, now."""

    def __init__(self, runtime_dirs: list[str]):
        self.runtime_dirs = runtime_dirs
        self.processes = processes()
        self.namespaces = user_namespaces(list(self.processes))
        self.mounts = mounts()
        self.runtime = runtime_entries(runtime_dirs)

    def new_since(self, before: Snapshot, runtime: bool = True) -> dict[str, object]:
        """What exists now and did not before (empty when nothing was left)."""
        left: dict[str, object] = {}
        procs = {p: c for p, c in self.processes.items() if p not in before.processes}
        if procs:
            left["processes"] = procs
        if self.namespaces - before.namespaces:
            left["user namespaces"] = sorted(self.namespaces - before.namespaces)
        if self.mounts - before.mounts:
            left["mounts"] = sorted(self.mounts - before.mounts)
        if runtime and self.runtime - before.runtime:
            left["runtime entries"] = sorted(self.runtime - before.runtime)
        return left


def wait_clean(before: Snapshot, timeout: float = 10.0, runtime: bool = True) -> dict[str, object]:
    """Wait until nothing new is left (teardown is asynchronous); what is left then."""
    deadline = time.monotonic() + timeout
    while True:
        left = Snapshot(before.runtime_dirs).new_since(before, runtime)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)
