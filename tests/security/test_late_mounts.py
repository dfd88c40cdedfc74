"""Class 8: mounts the host makes after the sandbox started are never writable inside,
unless they lie under a writable bind, and still become visible (read-only).

The "host" is a user and mount namespace of the test's own (`unshare -Urm`) with a
shared tmpfs on /mnt, as systemd makes `/` shared on a real host (this machine's `/` is
private, so nothing would propagate at all). rbox runs inside it, and so does a control
namespace that is a plain slave of it: the positive control, where the same mount
arrives by propagation and the same probe writes to it. Everything runs as the
unprivileged user. See tests/security/late_helper.py for the layout under /mnt.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration.helpers import descendants, live_processes, rbox_env, wait_until

pytestmark = pytest.mark.needs_userns

HELPER = str(Path(__file__).with_name("late_helper.py"))
ANSWER_TIMEOUT = 30.0


class LateHost:
    """The test's own host namespace, with rbox RBOX_ARGS running in it (cwd /mnt/work)."""

    def __init__(self, rbox_args: tuple[str, ...], env: dict[str, str] | None, log: Path):
        self.log = log
        # --net=none: slirp4netns would unmount the test host's mounts (its sandbox makes
        # only `/` private, and it runs as root of the test host's user namespace).
        with open(log, "w") as err:
            self.proc = subprocess.Popen(["unshare", "-Urm", sys.executable, HELPER, "host", "--net=none", *rbox_args],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
                                         env=rbox_env(env))
        self.buffer = b""
        assert self.line() == "ready", self.log.read_text()

    def line(self) -> str:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + ANSWER_TIMEOUT
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise AssertionError(f"no answer from the test host; its log:\n{self.log.read_text()}")
            chunk = os.read(fd, 4096)
            if not chunk:
                raise AssertionError(f"the test host exited; its log:\n{self.log.read_text()}")
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line.decode()

    def ask(self, where: str, cmd: str, path: str) -> str:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{where}\t{cmd}\t{path}\n".encode())
        self.proc.stdin.flush()
        return self.line()

    def host(self, cmd: str, path: str) -> str:
        return self.ask("host", cmd, path)

    def box(self, cmd: str, path: str) -> str:
        return self.ask("box", cmd, path)

    def ctl(self, cmd: str, path: str) -> str:
        return self.ask("ctl", cmd, path)

    def mount(self, path: str) -> None:
        assert self.host("mount", path) == "ok"

    def shown_in_box(self, path: str, host_path: str | None = None, timeout: float = 10.0) -> bool:
        """The host's late mount at `host_path` (default: `path`) became visible in the
        sandbox at `path`: its marker file reads back."""
        return wait_until(lambda: self.box("read", f"{path}/marker") == f"late {host_path or path}", timeout)

    def gone_from_box(self, path: str, timeout: float = 10.0) -> bool:
        return wait_until(lambda: self.box("read", f"{path}/marker") == "ENOENT", timeout)

    def close(self) -> None:
        """EOF: the host closes rbox's stdin, rbox exits, then the host; nothing stays."""
        tree = descendants(self.proc.pid)
        if self.proc.stdin:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()     # its children die with it (PR_SET_PDEATHSIG)
            self.proc.wait()
        # Zombies do not count: this host's PID 1 reaps orphans only once a second.
        assert wait_until(lambda: not tree & set(live_processes()), 10), "processes left behind"


@pytest.fixture
def late_host(tmp_path):
    started: list[LateHost] = []

    def start(*rbox_args: str, env: dict[str, str] | None = None) -> LateHost:
        started.append(LateHost(rbox_args, env, tmp_path / f"host-{len(started)}.log"))
        return started[-1]

    yield start
    for host in started:
        host.close()


@pytest.mark.needs_mount_api
def test_a_late_mount_under_the_read_only_root_is_shown_read_only(late_host) -> None:
    h = late_host()
    h.mount("/mnt/ro/late")
    # Not even for a moment: right after the host's mount, before the watcher can have
    # shown it, the place is still the read-only directory below.
    assert h.box("write", "/mnt/ro/late/early") == "EROFS"
    assert h.shown_in_box("/mnt/ro/late")
    assert h.box("write", "/mnt/ro/late/from-box") == "EROFS"
    # Positive control: a plain slave of the host gets the same mount by propagation,
    # writable, and the same probe writes through it.
    assert h.ctl("read", "/mnt/ro/late/marker") == "late /mnt/ro/late"
    assert h.ctl("write", "/mnt/ro/late/from-ctl") == "ok"
    assert h.host("read", "/mnt/ro/late/from-ctl") == "written from inside"
    assert h.host("read", "/mnt/ro/late/from-box") == "ENOENT"


@pytest.mark.needs_mount_api
def test_a_late_mount_under_a_writable_bind_is_writable(late_host) -> None:
    h = late_host("--bind", "/mnt/bind:/tmp/bind")
    h.mount("/mnt/work/late")           # under the working directory's bind
    h.mount("/mnt/bind/late")           # under --bind, shown at /tmp/bind and (read-only) /mnt/bind
    assert h.shown_in_box("/mnt/work/late")
    assert h.box("write", "/mnt/work/late/from-box") == "ok"
    assert h.host("read", "/mnt/work/late/from-box") == "written from inside"
    assert h.shown_in_box("/tmp/bind/late", "/mnt/bind/late")
    assert h.box("write", "/tmp/bind/late/from-box") == "ok"
    assert h.host("read", "/mnt/bind/late/from-box") == "written from inside"
    assert h.shown_in_box("/mnt/bind/late")
    assert h.box("write", "/mnt/bind/late/other") == "EROFS"


@pytest.mark.needs_mount_api
def test_a_late_mount_under_a_read_only_bind_is_read_only(late_host) -> None:
    h = late_host("--ro-bind", "/mnt/robind:/tmp/robind")
    h.mount("/mnt/robind/late")
    assert h.box("write", "/tmp/robind/late/early") == "EROFS"
    assert h.shown_in_box("/tmp/robind/late", "/mnt/robind/late")
    assert h.box("write", "/tmp/robind/late/from-box") == "EROFS"
    assert h.ctl("write", "/mnt/robind/late/from-ctl") == "ok"


@pytest.mark.needs_mount_api
def test_late_mounts_below_late_mounts(late_host) -> None:
    h = late_host()
    for top in ("/mnt/ro/late", "/mnt/work/late"):
        h.mount(top)
        assert h.shown_in_box(top)
        assert h.host("mkdir", f"{top}/sub") == "ok"
        h.mount(f"{top}/sub")
    # The clone of a late mount is private: the host's mount below it does not arrive
    # by propagation (writable) before the watcher shows it.
    assert h.box("write", "/mnt/ro/late/sub/early") == "EROFS"
    assert h.shown_in_box("/mnt/ro/late/sub")
    assert h.box("write", "/mnt/ro/late/sub/x") == "EROFS"
    assert h.shown_in_box("/mnt/work/late/sub")
    assert h.box("write", "/mnt/work/late/sub/x") == "ok"
    assert h.ctl("write", "/mnt/ro/late/sub/x") == "ok"


@pytest.mark.needs_mount_api
def test_an_unmount_on_the_host_is_seen_inside(late_host) -> None:
    h = late_host()
    h.mount("/mnt/ro/late")
    assert h.shown_in_box("/mnt/ro/late")
    assert h.host("umount", "/mnt/ro/late") == "ok"
    assert h.gone_from_box("/mnt/ro/late")
    assert h.ctl("read", "/mnt/ro/late/marker") == "ENOENT"
    h.mount("/mnt/ro/late")             # and again: a new mount, maybe with the same id
    assert h.shown_in_box("/mnt/ro/late")


@pytest.mark.needs_mount_api
def test_covered_places_stay_covered(late_host) -> None:
    h = late_host("--tmpfs", "/mnt/covered", "--hide", "/mnt/hidden")
    h.mount("/mnt/covered/late")
    h.mount("/mnt/hidden/late")
    h.mount("/mnt/ro/sentinel")         # shown once the watcher has seen all three
    assert h.shown_in_box("/mnt/ro/sentinel")
    assert h.box("read", "/mnt/covered/late/marker") == "ENOENT"
    assert h.box("read", "/mnt/hidden/late/marker") == "ENOENT"
    assert h.ctl("read", "/mnt/covered/late/marker") == "late /mnt/covered/late"


@pytest.mark.needs_mount_api
def test_root_inside_cannot_write_a_late_mount(late_host) -> None:
    h = late_host("--root")
    h.mount("/mnt/ro/late")
    assert h.box("write", "/mnt/ro/late/early") == "EROFS"
    assert h.shown_in_box("/mnt/ro/late")
    assert h.box("write", "/mnt/ro/late/from-box") == "EROFS"


@pytest.mark.needs_mount_api
def test_nothing_writable_hides_under_a_shown_mount(late_host) -> None:
    # uid 0 inside may unmount what the watcher showed (it is not locked: it covers
    # nothing that was not visible before). What is below must be the read-only place
    # it covered, never a writable copy of the host's mount that arrived by propagation.
    h = late_host("--root")
    h.mount("/mnt/ro/late")
    assert h.shown_in_box("/mnt/ro/late")
    assert h.host("mkdir", "/mnt/ro/late/sub") == "ok"
    h.mount("/mnt/ro/late/sub")
    assert h.shown_in_box("/mnt/ro/late/sub")
    # Once the watcher has shown it (read-only on top), exactly one mount is there: no
    # writable copy of the host's arrived below by propagation (deterministic, unlike
    # racing the watcher with a write).
    assert wait_until(lambda: h.box("mounts-at", "/mnt/ro/late/sub").endswith(" ro"), 10)
    assert h.box("mounts-at", "/mnt/ro/late/sub") == "1 ro"
    assert h.box("umount", "/mnt/ro/late/sub") == "ok"
    assert h.box("read", "/mnt/ro/late/sub/marker") == "ENOENT"
    assert h.box("write", "/mnt/ro/late/sub/x") == "EROFS"
    assert h.box("umount", "/mnt/ro/late") == "ok"
    assert h.box("read", "/mnt/ro/late/marker") == "ENOENT"
    assert h.box("write", "/mnt/ro/late/x") == "EROFS"
    # Positive control: the same unmount in the plain slave reveals the directory
    # below, which is writable there.
    assert h.ctl("umount", "/mnt/ro/late/sub") == "ok"
    assert h.ctl("write", "/mnt/ro/late/sub/x") == "ok"


@pytest.mark.needs_mount_api
def test_root_inside_cannot_make_a_late_mount_writable(late_host) -> None:
    h = late_host("--root")
    h.mount("/mnt/ro/late")
    assert h.shown_in_box("/mnt/ro/late")
    # Positive control first: the probe does turn a read-only mount writable where the
    # mount is not locked (uid 0 of the host's own namespace, on a mount it made ro).
    assert h.ctl("make-ro", "/mnt/ro/late") == "ro"
    assert h.ctl("remount-rw", "/mnt/ro/late") == "rw"
    assert h.box("remount-rw", "/mnt/ro/late") == "EPERM"
    assert h.box("setattr-rw", "/mnt/ro/late") == "EPERM"
    assert h.box("write", "/mnt/ro/late/from-box") == "EROFS"


def test_without_mount_setattr_late_mounts_stay_invisible(late_host) -> None:
    # Kernels before 5.12 (simulated): no watcher; the tree is private, so nothing the
    # host mounts later appears, and above all nothing appears writable.
    h = late_host(env={"RBOX_TEST_NO_MOUNT_SETATTR": "1"})
    h.mount("/mnt/ro/late")
    h.mount("/mnt/work/late")
    assert h.ctl("read", "/mnt/work/late/marker") == "late /mnt/work/late"   # propagation is synchronous
    time.sleep(0.3)
    assert h.box("read", "/mnt/ro/late/marker") == "ENOENT"
    assert h.box("read", "/mnt/work/late/marker") == "ENOENT"
    assert h.box("write", "/mnt/work/late/from-box") == "ok"                  # the cwd's own directory
    assert h.host("read", "/mnt/work/late/from-box") == "ENOENT"
