"""Class 3 of issue #10: the sandbox has a session keyring of its own.

The caller's session keyring holds Kerberos `KEYRING:` caches and AFS tokens on HPC
systems. The probe joins a fresh session keyring (so the test never touches the
user's real one), adds a key to it, and runs the attack inside rbox: look the key up in
the session keyring, read it by serial number, plant a key for the caller to find.
The positive control runs the same attack without rbox.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.helpers import RBOX, rbox_env
from tests.security.probes import PROBE, facts

pytestmark = [pytest.mark.needs_userns, pytest.mark.needs_keyrings]



def attack(*wrapper: str, tmp_path: Path) -> dict[str, list[str]]:
    """key-session DESC -- [wrapper] probe key-attack DESC $KEY_SERIAL"""
    script = 'exec "$@" "$KEY_SERIAL"'
    argv = [sys.executable, PROBE, "key-session", "rbox-test-secret", "--", "sh", "-c", script, "sh",
            *wrapper, sys.executable, PROBE, "key-attack", "rbox-test-secret"]
    r = subprocess.run(argv, cwd=tmp_path, env=rbox_env(None), capture_output=True, text=True, timeout=60,
                       stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr
    f = facts(r.stdout)
    assert f["status"] == ["0"], r.stderr
    return f


def test_the_sandbox_can_neither_find_nor_read_the_callers_keys_nor_plant_one(tmp_path) -> None:
    f = attack(*RBOX, "run", "--net=none", "--", tmp_path=tmp_path)
    # The keyring calls answer ENOSYS inside (rootless/seccomp.py), as where the kernel has
    # no keyrings; behind that filter the sandbox also has a session keyring of its own.
    assert f["session"] == ["ENOSYS"] and f["session"] != f["host_session"]
    assert f["find"] == ["ENOSYS"]
    assert f["read"] == ["ENOSYS"]
    assert f["plant"] == ["ENOSYS"]
    assert f["host_finds_planted"] == ["ENOKEY"]       # the caller never sees a planted key


def test_control_without_rbox_the_same_probe_finds_reads_and_plants(tmp_path) -> None:
    f = attack(tmp_path=tmp_path)
    assert f["session"] == f["host_session"]
    assert f["find"] == f["host_key"]
    assert f["read"] == ["'host-secret'"]
    assert f["host_finds_planted"] == f["plant"]


def test_the_sandbox_cannot_plant_a_key_in_the_callers_user_keyring(tmp_path) -> None:
    """Found while proving class 3: keyrings are not namespaced, and a key (or keyring)
    whose permissions grant something to your uid (the `user` bits) stays reachable by
    serial number, which /proc/keys lists. The user keyring @u is `user: all`, so without
    the seccomp filter a key planted there from inside is found by the caller's session
    searches (pam_keyinit links @u into it). The control below plants for real."""
    ring = facts(subprocess.run([sys.executable, PROBE, "user-keyring"], capture_output=True, text=True,
                                timeout=30).stdout)["user_keyring"][0]
    r = subprocess.run([*RBOX, "run", "--net=none", "--", sys.executable, PROBE, "key-plant-in", ring],
                       cwd=tmp_path, env=rbox_env(None), capture_output=True, text=True, timeout=60,
                       stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr
    found = facts(subprocess.run([sys.executable, PROBE, "key-find-in", ring, "planted"], capture_output=True,
                                 text=True, timeout=30).stdout)["find_in"]
    if found[0].isdigit():
        # What the attack left in the test user's real user keyring goes.
        subprocess.run([sys.executable, PROBE, "key-unlink", found[0], ring], timeout=30)
    assert found == ["ENOKEY"]


def test_control_without_rbox_a_key_planted_in_the_user_keyring_is_found(tmp_path) -> None:
    ring = facts(subprocess.run([sys.executable, PROBE, "user-keyring"], capture_output=True, text=True,
                                timeout=30).stdout)["user_keyring"][0]
    planted = subprocess.run([sys.executable, PROBE, "key-plant-in", ring], capture_output=True, text=True,
                             timeout=30)
    assert planted.returncode == 0, planted.stderr
    found = facts(subprocess.run([sys.executable, PROBE, "key-find-in", ring, "planted"], capture_output=True,
                                 text=True, timeout=30).stdout)["find_in"]
    try:
        assert found[0].isdigit()
    finally:
        if found[0].isdigit():
            subprocess.run([sys.executable, PROBE, "key-unlink", found[0], ring], timeout=30)
