"""Running rbox as a black box, and watching the processes it leaves.

Runs in: the test runner. rbox runs as a child interpreter (`python -m rootless`, the
same code as the `rbox` script), never inside the runner's own process: the runner's
namespaces, signal mask and prctl state stay untouched.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import time
from pathlib import Path

PAYLOAD = str(Path(__file__).with_name("payload.py"))
RBOX = [sys.executable, "-m", "rootless"]
RBOX_SCRIPT = os.path.join(os.path.dirname(sys.executable), "rbox")
TIMEOUT = 60


def run_rbox(*args: str, cwd: str | os.PathLike[str] | None = None, env: dict[str, str] | None = None,
             input: str | None = None, timeout: float = TIMEOUT,
             wrapper: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    """rbox ARGS (under `wrapper`, e.g. setpriv), stdin from `input` or /dev/null."""
    return subprocess.run([*wrapper, *RBOX, *args], cwd=cwd, env=rbox_env(env), input=input, capture_output=True,
                          text=True, timeout=timeout, stdin=None if input is not None else subprocess.DEVNULL)


def start_rbox(*args: str, cwd: str | os.PathLike[str] | None = None,
               env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen([*RBOX, *args], cwd=cwd, env=rbox_env(env), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def rbox_env(extra: dict[str, str] | None) -> dict[str, str]:
    env = dict(os.environ)
    # The child interpreter must import this checkout's rootless, installed or not.
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra or {})
    return env


def py(*code: str) -> list[str]:
    """A payload command: the multi-tool in payload.py (see its docstring)."""
    return ["--", sys.executable, PAYLOAD, *code]


@functools.cache
def our_uids() -> frozenset[int]:
    """Our uid and our subordinate uids, read from /etc/subuid directly (not through
    rbox's parser, which is under test): a helper that joined a sandbox's user namespace
    as its root (slirp4netns), and every process of a --root sandbox, runs as one of the
    latter on the host."""
    import pwd

    uid = os.getuid()
    names = (pwd.getpwuid(uid).pw_name, str(uid))
    owned = {uid}
    try:
        with open("/etc/subuid") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        lines = []
    for line in lines:
        fields = line.strip().split(":")
        if len(fields) == 3 and fields[0] in names and fields[1].isdigit() and fields[2].isdigit():
            owned |= set(range(int(fields[1]), int(fields[1]) + int(fields[2])))
    return frozenset(owned)


def live_processes(owners: frozenset[int] | set[int] | None = None) -> dict[int, str]:
    """pid -> cmdline of every live process owned by one of `owners` (default: all of
    our uids, the subordinate ones included; see our_uids). Zombies are left out: a
    zombie has already exited; reaping it is its parent's job, here often the host's PID 1.

    The uids come from /proc/PID/status, not from the owner of /proc/PID: that is root
    for a process that is not dumpable, as a helper may be after changing its ids."""
    owners = owners or our_uids()
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as f:
                status = dict(line.split(":", 1) for line in f.read().splitlines() if ":" in line)
            if status["State"].split()[0] in ("Z", "X"):
                continue
            if not {int(u) for u in status["Uid"].split()} & owners:
                continue
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                found[int(entry)] = f.read().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError, KeyError, ValueError):
            continue
    return found


def children(pid: int) -> dict[int, str]:
    """pid -> cmdline of the live direct children of `pid`."""
    found = {}
    for child, cmd in live_processes().items():
        try:
            with open(f"/proc/{child}/stat") as f:
                if int(f.read().rpartition(")")[2].split()[1]) == pid:
                    found[child] = cmd
        except (OSError, ValueError, IndexError):
            continue
    return found


def descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rpartition(")")[2].split()[1])
                children.setdefault(ppid, []).append(int(entry))
            except (OSError, IndexError, ValueError):
                continue
    out, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.add(child)
            todo.append(child)
    return out


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def alive(pid: int) -> bool:
    return pid in live_processes()


def kill_all(pids: set[int]) -> None:
    """SIGKILL whichever of `pids` (captured by a test from its own rbox) still run: a
    failing leftover check must not leave the leftovers to the next test."""
    import signal

    for pid in pids:
        if alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def busybox_rootfs(root: Path, applets: tuple[str, ...]) -> Path:
    """A small userland at `root` for the image tests: Debian's busybox-static with
    `applets` linked in /bin, an os-release of its own, root's passwd and group entries,
    and empty /home and /work."""
    import shutil

    busybox = "/bin/busybox"
    assert os.path.exists(busybox), "the image tests need busybox-static (apt-get install busybox-static)"
    (root / "bin").mkdir(parents=True)
    shutil.copy(busybox, root / "bin/busybox")
    for applet in applets:
        os.symlink("busybox", root / "bin" / applet)
    (root / "etc").mkdir()
    (root / "etc/os-release").write_text("ID=rbox-busybox\n")
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (root / "etc/group").write_text("root:x:0:\n")
    for name in ("home", "work"):
        (root / name).mkdir()
    return root
