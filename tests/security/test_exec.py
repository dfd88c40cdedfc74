"""Issue #15: `rbox exec` is exactly as contained as the sandbox's own command.

The escape suite's attacks, run through `rbox exec` into a running `--root` sandbox (uid 0
inside: the strongest position a command can have), as the unprivileged test user:
remounting and unmounting locked mounts, keyring system calls, inherited descriptors,
PID 1, and what only a joining process could try: setns back out of the sandbox, acting
on what U1 owns (the host name), reaching the supervisor's socket from inside. Each
attack has its positive control: here (sethostname, setns, the socket) or next to the
original attack (tests/security/test_root_mounts.py, test_fds.py, test_keyring.py),
whose controls are called again here so that each pair stays visible together.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.conftest import other_user, probe
from tests.integration import named
from tests.integration.helpers import RBOX, rbox_env
from tests.integration.named import Box
from tests.security import test_root_mounts
from tests.security.probes import PROBE, facts

pytestmark = [pytest.mark.needs_userns, pytest.mark.needs_subuid]
box = named.box      # the fixture


@pytest.fixture
def home_dir():
    """A directory in the home: read-only in the sandbox, writable by the test user."""
    path = Path(tempfile.mkdtemp(prefix=".rbox-security-", dir=os.path.expanduser("~")))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def rooted(box: Box, home_dir: Path) -> Box:
    """A detached `--root` sandbox `root` whose home shows a hidden directory."""
    (home_dir / "hidden").mkdir()
    (home_dir / "hidden" / "secret").write_text("hidden")
    box.start("root", "sleep", "1000", opts=("--root", "--net=none", "--hide", str(home_dir / "hidden")))
    return box


def exec_probe(box: Box, *args: str, name: str = "root", wrapper: tuple[str, ...] = ()) -> dict[str, list[str]]:
    r = subprocess.run([*wrapper, *RBOX, "exec", name, "--", sys.executable, PROBE, *args], cwd=box.work,
                       env=rbox_env(box.env), capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr
    assert "forged" not in r.stderr
    return facts(r.stdout)


def test_exec_cannot_remount_the_host_or_unmount_a_hide(rooted: Box, home_dir: Path) -> None:
    victim = home_dir / "victim"
    victim.write_text("original")
    f = exec_probe(rooted, "remount-rw", "/", "--", "remount-rw", str(victim), "--", "write", str(victim), "pwned",
                   "--", "umount", str(home_dir / "hidden"), "--", "read", str(home_dir / "hidden" / "secret"))
    assert f["remount"] and all(result != "ok" for result in f["remount"]), f
    assert f["write"] == ["EROFS"] and victim.read_text() == "original"
    assert "ok" not in f["umount"] + f["umount_detach"] and f["read"] == ["ENOENT"], f


def test_control_the_same_remount_and_unmount_succeed_on_mounts_of_ones_own_user_namespace(home_dir: Path) -> None:
    test_root_mounts.test_control_remount_and_write_succeed_on_a_mount_of_the_same_user_namespace(home_dir)
    test_root_mounts.test_control_unmounting_a_hide_of_the_same_user_namespace_reveals_it(home_dir)


def test_exec_has_no_capability_over_what_u1_owns(rooted: Box) -> None:
    # uid 0 of the command's user namespace; the UTS namespace belongs to the one above.
    f = exec_probe(rooted, "sethostname", "pwned", "--", "setns-out")
    assert f["sethostname"] == ["EPERM"]
    assert f["setns_out"] == ["none"]
    r = rooted.rbox("exec", "root", "--", "cat", "/proc/sys/kernel/hostname")
    assert r.stdout == "rbox\n"


def test_control_uid_0_of_the_namespaces_owner_sets_the_host_name_and_enters_a_child_namespace() -> None:
    f = test_root_mounts.control('"$PY" "$P" sethostname pwned', unshare=("-Uru",))
    assert f["sethostname"] == ["ok"]
    # A process of a user namespace below ours, and the probe enters its namespaces.
    f = test_root_mounts.control('unshare -U sleep 5 & sleep 0.3; "$PY" "$P" setns-out; kill $!',
                                 unshare=("-Ur",))
    assert f["setns_out"] != ["none"] and f["setns_out"][0].endswith("/user"), f


def test_exec_cannot_reach_pid_1(rooted: Box) -> None:
    f = exec_probe(rooted, "pid1", "--", "pid-visible", str(os.getpid()))
    assert f["fd_list"] == ["EACCES"] and f["mem"] == ["EACCES"] and f["ptrace"] == ["EPERM"]
    assert f["pidfd_getfd"] == (["EPERM"] if probe("pidfd") is None else ["ENOSYS"])
    assert f["forged_writes"] == ["0"]
    assert f["pid_visible"] == ["False"]          # the host's processes are out of sight


def test_control_a_dumpable_pid_1_is_reachable() -> None:
    test_root_mounts.test_control_a_dumpable_pid1_is_reachable_and_its_descriptors_writable()


def test_exec_gets_only_0_1_2_of_1000_inherited_descriptors(rooted: Box) -> None:
    marker = rooted.work / "marker"
    marker.touch()
    f = exec_probe(rooted, "fds", "--", "write-through", "planted",
                   wrapper=(sys.executable, PROBE, "with-fds", "1000", str(marker), "--"))
    assert f["fds"] == ["0 1 2"] and f["written_through"] == ["none"]


def test_control_without_rbox_the_descriptors_are_there(tmp_path) -> None:
    from tests.security import test_fds

    test_fds.test_control_without_rbox_the_1000_descriptors_are_there(tmp_path)


@pytest.mark.needs_keyrings
def test_exec_can_neither_find_nor_read_the_callers_keys_nor_plant_one(rooted: Box) -> None:
    script = 'exec "$@" "$KEY_SERIAL"'
    argv = [sys.executable, PROBE, "key-session", "rbox-test-secret", "--", "sh", "-c", script, "sh",
            *RBOX, "exec", "root", "--", sys.executable, PROBE, "key-attack", "rbox-test-secret"]
    r = subprocess.run(argv, cwd=rooted.work, env=rbox_env(rooted.env), capture_output=True, text=True, timeout=60,
                       stdin=subprocess.DEVNULL)
    f = facts(r.stdout)
    assert f["status"] == ["0"], r.stderr
    assert f["session"] == f["find"] == f["read"] == f["plant"] == ["ENOSYS"]
    assert f["host_finds_planted"] == ["ENOKEY"]


@pytest.mark.needs_keyrings
def test_control_without_rbox_the_keys_are_found_read_and_planted(tmp_path) -> None:
    from tests.security import test_keyring

    test_keyring.test_control_without_rbox_the_same_probe_finds_reads_and_plants(tmp_path)


def test_exec_is_as_confined_as_the_command(box: Box) -> None:
    """Your own identity: no capabilities at all, NO_NEW_PRIVS, the keyring filter, the
    same user namespace as the sandbox's command, for the command and for exec alike."""
    box.start("plain", "sleep", "1000")
    show = ("import os\n"
            "st = dict(l.split(':\\t') for l in open('/proc/self/status').read().splitlines() if ':\\t' in l)\n"
            "print(st['CapEff'], st['CapBnd'], st['NoNewPrivs'], st['Seccomp'], os.getuid(),"
            " os.readlink('/proc/self/ns/user') == os.readlink('/proc/2/ns/user'))")
    r = box.rbox("exec", "plain", "--", sys.executable, "-c", show)
    assert r.stdout.split() == ["0000000000000000", "0000000000000000", "1", "2", str(os.getuid()), "True"], r.stderr


def test_a_process_inside_a_sandbox_gets_nothing_from_the_supervisors_socket(box: Box) -> None:
    box.start("target", "sleep", "1000")
    sock = str(box.named / "target" / "sock")
    # Another sandbox that can see the runtime directory (bound by mistake) asks for it.
    r = box.rbox("run", "--net=none", "--bind", str(box.runtime), "--", sys.executable, PROBE, "ask", sock, "EXEC")
    assert r.returncode == 0, r.stderr
    assert facts(r.stdout) == {"answer": ["ERROR"], "answer_fds": ["0"]}


def test_control_the_supervisor_answers_on_the_host(box: Box) -> None:
    box.start("target", "sleep", "1000")
    r = subprocess.run([sys.executable, PROBE, "ask", str(box.named / "target" / "sock"), "EXEC"],
                       capture_output=True, text=True, timeout=30)
    assert facts(r.stdout) == {"answer": ["NAMESPACES"], "answer_fds": ["8"]}


@pytest.mark.needs_two_users
def test_two_users_may_use_the_same_name(box: Box) -> None:
    """Names are per user: another user's `same` is another sandbox, and neither's
    commands see or stop the other's."""
    tree = str(Path(__file__).resolve().parents[2])
    other = ["sudo", "-n", "-u", other_user(), "env", f"PYTHONPATH={tree}", "XDG_RUNTIME_DIR=", "sh", "-c",
             'cd / && exec "$@"', "sh", sys.executable, "-m", "rootless"]

    def as_other(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*other, *args], capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)

    r = as_other("run", "-d", "--name", "same", "--net=none", "--", "sleep", "1000")
    assert (r.returncode, r.stdout) == (0, "same\n"), r.stderr
    try:
        box.start("same", "sleep", "1000")
        import json

        theirs = json.loads(as_other("ps", "--json").stdout)
        ours = box.ps()
        assert [row["name"] for row in theirs] == [row["name"] for row in ours] == ["same"]
        assert theirs[0]["pid"] != ours[0]["pid"]
        assert box.rbox("stop", "same").returncode == 0
        assert [row["state"] for row in json.loads(as_other("ps", "--json").stdout)] == ["running"]
        r = as_other("exec", "same", "--", "true")
        assert r.returncode == 0, r.stderr
    finally:
        r = as_other("stop", "--all", "-t", "0")
    assert r.returncode == 0, r.stderr
