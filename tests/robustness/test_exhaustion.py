"""Exhausted limits: rbox says which one ran out and how to raise it (exit 125, one
`rbox: error:` and a `hint:`), never blames the command (126), never a traceback, and
leaves nothing behind.

- RLIMIT_NPROC (`ulimit -u`): swept from far too low to enough, every network mode.
- RLIMIT_NOFILE (`ulimit -n`) from 5 to 11 (below 5 the interpreter itself cannot
  start), and 1,100 descriptors open under `ulimit -n 4096` (select() cannot watch a
  descriptor of 1024 or more; rbox polls).
- A full $XDG_RUNTIME_DIR: a 4-inode tmpfs of the test's own, in a user and mount
  namespace of its own.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys

import pytest

from tests.integration.helpers import RBOX, rbox_env
from tests.robustness.leftovers import Snapshot, wait_clean

pytestmark = pytest.mark.needs_userns
MODES = [pytest.param("none"), pytest.param("slirp4netns", marks=pytest.mark.needs_slirp4netns),
         pytest.param("pasta", marks=pytest.mark.needs_pasta)]


def rbox_limited(limit: int, value: int, *args: str, **kw: object) -> subprocess.CompletedProcess[str]:
    def preexec() -> None:
        resource.setrlimit(limit, (value, resource.getrlimit(limit)[1]))

    return subprocess.run([*RBOX, *args], env=rbox_env(None), capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL, preexec_fn=preexec, **kw)  # type: ignore[call-overload]


def assert_rbox_error(r: subprocess.CompletedProcess[str], *words: str) -> None:
    """125 with one error and a hint that says what to raise."""
    assert r.returncode == 125, (r.returncode, r.stderr)
    lines = [line for line in r.stderr.splitlines() if not line.startswith("rbox: warning:")]
    assert len(lines) == 2 and lines[0].startswith("rbox: error: ") and lines[1].startswith("hint: "), r.stderr
    assert any(word in lines[1] for word in words), r.stderr


def tasks_of_mine() -> int:
    """Processes and threads of this uid now: what RLIMIT_NPROC counts."""
    count = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}").st_uid == os.getuid():
                    count += len(os.listdir(f"/proc/{entry}/task"))
            except OSError:
                continue
    return count


@pytest.mark.parametrize("mode", MODES)
def test_too_few_processes_is_rbox_s_error_with_the_limit_named(mode: str) -> None:
    before = Snapshot([])
    # The count moves a little (this host's PID 1 reaps orphaned zombies, which still
    # count, about once a second): the sweep is dense around it, from 1 (no fork at all).
    base = tasks_of_mine()
    outcomes = {}
    for limit in (1, *(base + extra for extra in (0, 1, 2, 3, 4, 6, 8, 10, 12, 16, 20, 40))):
        r = rbox_limited(resource.RLIMIT_NPROC, limit, "run", f"--net={mode}", "--", "true")
        outcomes[limit] = r.returncode
        assert "Traceback" not in r.stderr and "internal error" not in r.stderr, r.stderr
        if r.returncode != 0:
            # Never 126 "cannot execute": the command is not to blame for rbox's fork.
            assert_rbox_error(r, "ulimit -u")
    assert outcomes[1] == 125 and outcomes[base + 40] == 0, outcomes
    assert not wait_clean(before)


@pytest.mark.parametrize("mode", MODES)
def test_too_few_file_descriptors_is_rbox_s_error_with_the_limit_named(mode: str) -> None:
    before = Snapshot([])
    outcomes = {}
    for value in (5, 6, 7, 8, 9, 10, 11, 1024):
        r = rbox_limited(resource.RLIMIT_NOFILE, value, "run", f"--net={mode}", "--", "true")
        outcomes[value] = r.returncode
        assert "Traceback" not in r.stderr and "internal error" not in r.stderr, r.stderr
        if r.returncode != 0:
            assert_rbox_error(r, "ulimit -n")
    assert outcomes[5] == 125 and outcomes[1024] == 0, outcomes
    assert not wait_clean(before)


# Opens 1,100 inheritable descriptors under `ulimit -n 4096`, then becomes rbox.
MANY_FDS = ("import os, resource, sys\n"
            "resource.setrlimit(resource.RLIMIT_NOFILE, (4096, max(4096, resource.getrlimit(7)[1])))\n"
            "for _ in range(1100):\n"
            "    os.set_inheritable(os.open('/dev/null', os.O_RDONLY), True)\n"
            "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])\n")


@pytest.mark.parametrize("mode", MODES)
def test_every_mode_works_with_1100_descriptors_open(mode: str) -> None:
    before = Snapshot([])
    r = subprocess.run([sys.executable, "-c", MANY_FDS, *RBOX[1:], "run", f"--net={mode}", "--", "sh", "-c",
                        "exit 3"], env=rbox_env(None), capture_output=True, text=True, timeout=60,
                       stdin=subprocess.DEVNULL)
    assert r.returncode == 3, r.stderr
    assert not wait_clean(before)


def test_a_pseudo_terminal_works_with_1100_descriptors_open() -> None:
    master, slave = os.openpty()
    try:
        r = subprocess.run([sys.executable, "-c", MANY_FDS, *RBOX[1:], "run", "--net=none", "--", "sh", "-c",
                            "test -t 0 && exit 4"], env=rbox_env(None), timeout=60, stdin=slave,
                           capture_output=True, text=True, start_new_session=True)
    finally:
        os.close(slave)
        os.close(master)
    assert r.returncode == 4, r.stderr


# In a user and mount namespace of its own (only its own uid mapped), the test fills a
# 4-inode tmpfs and runs rbox with it as XDG_RUNTIME_DIR. no_new_privs makes rbox map
# its own uid only: the setuid newuidmap cannot work in a namespace that maps one id.
FULL_RUNTIME = """
import json, os, subprocess, sys
from rootless import syscalls as sc
uid, gid = os.getuid(), os.getgid()
sc.unshare(sc.CLONE_NEWUSER | sc.CLONE_NEWNS)
for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
    with open(f"/proc/self/{name}", "w") as f:
        f.write(text)
sc.mount(None, "/", None, sc.MS_REC | sc.MS_PRIVATE)
runtime = sys.argv[1]
sc.mount("tmpfs", runtime, "tmpfs", 0, "size=64k,nr_inodes=4,mode=0700")
filled = 0
while True:
    try:
        os.mkdir(f"{runtime}/fill{filled}")
        filled += 1
    except OSError:
        break
sc.set_no_new_privs()
results = []
for args in json.loads(sys.argv[2]):
    r = subprocess.run([sys.executable, "-m", "rootless", "run", *args, "--", "true"], capture_output=True,
                       text=True, env=dict(os.environ, XDG_RUNTIME_DIR=runtime), stdin=subprocess.DEVNULL)
    results.append([args, r.returncode, r.stderr])
print(json.dumps({"filled": filled, "results": results, "left": sorted(os.listdir(runtime))}))
"""


def test_a_full_runtime_directory_is_a_clear_error(tmp_path) -> None:
    import json

    from tests.conftest import probe

    runtime = tmp_path / "runtime"
    runtime.mkdir()
    modes = [["--net=none"]] + [[f"--net={m}", "-p", "18765:80"] for m in ("slirp4netns", "pasta")
                                if probe(m) is None]
    before = Snapshot([])
    r = subprocess.run([sys.executable, "-c", FULL_RUNTIME, str(runtime), json.dumps(modes)], env=rbox_env(None),
                       capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["filled"] >= 1
    for args, code, stderr in report["results"]:
        assert "Traceback" not in stderr and "internal error" not in stderr, stderr
        if args != ["--net=none"]:
            # The helpers need a directory there (a FIFO, a socket); nothing else may fail.
            errors = [line for line in stderr.splitlines() if not line.startswith("rbox: warning:")]
            assert code == 125, stderr
            assert errors[0].startswith(f"rbox: error: no space left for `{runtime}/"), stderr
            assert errors[1].startswith("hint: the filesystem is full or out of inodes"), stderr
            assert "XDG_RUNTIME_DIR" in errors[1], stderr
        else:
            assert code in (0, 125), stderr
    assert report["left"] == [f"fill{i}" for i in range(report["filled"])], report["left"]
    assert not wait_clean(before)


def test_the_nested_user_namespace_at_the_namespace_limit_is_a_clear_error(tmp_path) -> None:
    # In a user namespace of our own, user.max_user_namespaces = 1 leaves room for
    # stage-1's namespace only. As root there rbox has no subordinate ids, so it maps
    # its one id and gives the command a nested namespace: that one is over the limit.
    import shlex

    rbox = " ".join(shlex.quote(w) for w in (*RBOX, "run", "--net=none", "--", "true"))
    r = subprocess.run(["unshare", "-Ur", "sh", "-c", f"echo 1 > /proc/sys/user/max_user_namespaces && {rbox}"],
                       cwd=tmp_path, env=rbox_env(None), capture_output=True, text=True, timeout=60,
                       stdin=subprocess.DEVNULL)
    assert r.returncode == 125, r.stderr
    assert r.stderr.splitlines()[-2:] == [
        "rbox: error: cannot create the nested user namespace: the limit on user namespaces is reached (ENOSPC)",
        "hint: end other sandboxes or containers of yours, or an administrator can raise user.max_user_namespaces; "
        "with subordinate ids no nested namespace is needed (see rbox(1), HOST SETUP)"]
