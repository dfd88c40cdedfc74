"""rootless/instance without sandboxes: the registry on real directories of the test user's
own, the log's rotation, the record's and the environment's round trips, logind.conf."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import pytest

from rootless.errors import RboxError
from rootless.instance import logfile, registry, systemd


@pytest.fixture
def env(tmp_path) -> dict[str, str]:
    runtime = tmp_path / "xdg"
    runtime.mkdir(mode=0o700)
    return {"XDG_RUNTIME_DIR": str(runtime)}


def named_dir(env: dict[str, str]) -> Path:
    return Path(env["XDG_RUNTIME_DIR"], "rbox", "named")


def test_a_name_is_taken_while_its_lock_is_held_and_free_once_it_is_not(env) -> None:
    entry = registry.reserve("web", {"name": "web"}, env)
    assert os.stat(named_dir(env)).st_mode & 0o777 == 0o700
    assert entry.status() == "starting"
    other = registry.find("web", env)
    assert other is not None and other.alive() and other.status() == "starting"
    with pytest.raises(RboxError, match="a sandbox named `web` is starting"):
        registry.reserve("web", {}, env)
    os.close(entry.lock_fd)                 # as a killed supervisor's lock goes
    entry.lock_fd = -1
    assert other.status() == "stale"
    registry.sweep(env)                     # stale: removed, so never listed
    assert list(named_dir(env).iterdir()) == []
    again = registry.reserve("web", {"name": "web", "n": 2}, env)
    assert again.record() == {"name": "web", "n": 2}
    again.remove()
    assert list(named_dir(env).iterdir()) == []


def test_an_ended_detached_sandbox_is_kept_and_then_replaced(env) -> None:
    entry = registry.reserve("job", {"name": "job"}, env)
    entry.write(registry.EXIT, b"3")
    os.close(entry.lock_fd)
    entry.lock_fd = -1
    registry.sweep(env)
    found = registry.find("job", env)
    assert found is not None and found.status() == "exited" and found.exit_code() == 3
    registry.reserve("job", {"name": "job", "new": True}, env)     # replaced, not refused
    assert registry.find("job", env).record() == {"name": "job", "new": True}  # type: ignore[union-attr]


def test_links_in_the_registry_are_removed_as_links(env, tmp_path) -> None:
    target = tmp_path / "target"
    target.mkdir()
    (target / "keep").write_text("mine")
    (target / "lock").write_text("")
    registry.reserve("a", {}, env).remove()
    (named_dir(env) / "planted").symlink_to(target)
    registry.sweep(env)
    assert list(named_dir(env).iterdir()) == [] and sorted(os.listdir(target)) == ["keep", "lock"]
    (named_dir(env) / "b").symlink_to(target)
    registry.reserve("b", {}, env)              # the name's link goes, never followed
    assert sorted(os.listdir(target)) == ["keep", "lock"]


def test_a_registry_of_another_mode_is_refused(env) -> None:
    named = named_dir(env)
    named.mkdir(parents=True, mode=0o700)
    os.chmod(named, 0o755)
    with pytest.raises(RboxError, match="has mode 0755, not 0700"):
        registry.entries(env)


def test_the_record_and_the_environment_keep_bytes_that_are_not_utf8(env) -> None:
    odd = os.fsdecode(b"caf\xe9")
    entry = registry.reserve("bytes", {"command": ["echo", odd]}, env)
    entry.write(registry.ENV, b"A=" + os.fsencode(odd) + b"\0B=x=y\0")
    assert entry.record()["command"] == ["echo", odd]
    assert entry.environment() == {"A": odd, "B": "x=y"}


def test_the_log_is_capped_and_rotated(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(logfile, "LOG_MAX", 1000)
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    relay = logfile.Relay(fd)
    relay.open()
    for i in range(50):
        os.write(relay.write_end, f"{i:099d}\n".encode())
        assert relay.on_readable()
    relay.started()
    assert not relay.on_readable()              # every writer gone: the end
    sizes = {p.name: p.stat().st_size for p in tmp_path.iterdir()}
    assert set(sizes) == {"log", "log.1"} and all(s <= 1000 for s in sizes.values()), sizes
    text = (tmp_path / "log.1").read_text() + (tmp_path / "log").read_text()
    assert text.splitlines()[-1] == f"{49:099d}"
    relay.close()
    os.close(fd)


def test_logind_settings_the_last_file_wins() -> None:
    main = "[Login]\n#KillUserProcesses=yes\nKillUserProcesses=no\n[Other]\nKillUserProcesses=yes\n"
    assert systemd.logind_setting("KillUserProcesses", [main]) == "no"
    assert systemd.logind_setting("KillUserProcesses", [main, "[Login]\nKillUserProcesses=yes\n"]) == "yes"
    assert systemd.logind_setting("KillExcludeUsers", [main]) is None


def test_logout_is_said_only_where_logind_applies(monkeypatch) -> None:
    monkeypatch.setattr(systemd, "booted", lambda: False)
    assert not systemd.logout_ends_it("someone", has_manager=False)
    monkeypatch.setattr(systemd, "booted", lambda: True)
    monkeypatch.setattr(systemd, "_logind_texts", lambda: ["[Login]\nKillUserProcesses=yes\n"])
    assert systemd.logout_ends_it("someone", has_manager=False)
    assert not systemd.logout_ends_it("root", has_manager=False)        # KillExcludeUsers' default
    monkeypatch.setattr(systemd, "_logind_texts", lambda: [])
    assert not systemd.logout_ends_it("someone", has_manager=True)       # Debian's default: no


def test_a_held_lock_is_seen_by_another_open_file(env) -> None:
    entry = registry.reserve("held", {}, env)
    fd = os.open(named_dir(env) / "held" / "lock", os.O_RDONLY)
    with pytest.raises(BlockingIOError):
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    os.close(fd)
    entry.remove()
