"""Validation before anything starts: every rule gives one SpecError."""

from __future__ import annotations

import os

import pytest

from rootless import options, spec
from rootless.errors import SpecError


def make(argv: list[str], environ: dict[str, str] | None = None, cwd: str = "/work") -> spec.Spec:
    return spec.from_parsed(options.parse(argv), environ if environ is not None else {"PATH": "/bin"}, cwd, False)


def test_defaults() -> None:
    s = make(["run", "true"])
    assert (s.command, s.root, s.net, s.home_mode) == (["true"], False, "slirp4netns", "ro")
    assert (s.ports, s.allow_host_loopback) == ([], False)
    assert (s.hostname, s.workdir) == ("rbox", "/work")
    assert s.uid == os.getuid()


def test_bind_forms(tmp_path) -> None:
    (tmp_path / "src").mkdir()
    s = make(["run", "--bind", "src", "--ro-bind", f"{tmp_path}/src:/in", "true"], cwd=str(tmp_path))
    assert [(m.kind, m.src, m.dst) for m in s.mounts] == [
        ("--bind", str(tmp_path / "src"), str(tmp_path / "src")), ("--ro-bind", str(tmp_path / "src"), "/in")]


def test_bind_source_symlinks_are_resolved_on_the_host(tmp_path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    s = make(["run", "--bind", f"{tmp_path}/link:/x", "true"])
    assert s.mounts[0].src == str(tmp_path / "real")


@pytest.mark.parametrize(("argv", "message"), [
    (["run", "--bind", "/no/such", "x"], "cannot bind `/no/such`: No such file or directory"),
    (["run", "--bind", "/etc:relative", "x"], "the destination of --bind must be an absolute path, not `relative`"),
    (["run", "--bind", "/etc:/", "x"], "--bind cannot replace the sandbox's `/`"),
    (["run", "--tmpfs", "/", "x"], "--tmpfs cannot replace the sandbox's `/`"),
    (["run", "--hostname", "-bad", "x"], "invalid host name `-bad`"),
    (["run", "--hostname", "a" * 65, "x"], "invalid host name `" + "a" * 65 + "`"),
    (["run", "--hostname", "sp ace", "x"], "invalid host name `sp ace`"),
    (["run", "-e", "=v", "x"], "invalid environment setting `=v`"),
    (["sh", "ls"], "`rbox sh` takes no command words without -c"),
    (["run"], "`rbox run` needs a COMMAND"),
])
def test_rules(argv: list[str], message: str) -> None:
    with pytest.raises(SpecError) as info:
        make(argv)
    assert info.value.message == message


def test_relative_paths_are_taken_from_the_current_directory() -> None:
    s = make(["run", "--tmpfs", "scratch", "--hide", "../secret", "-w", "sub", "true"], cwd="/work/proj")
    assert [m.dst for m in s.mounts] == ["/work/proj/scratch", "/work/secret"]
    assert s.workdir == "/work/proj/sub"


def test_environment_rules() -> None:
    env = {"PATH": "/bin", "HOME": "/h", "KEEP": "k"}
    s = make(["run", "--unsetenv", "HOME", "-e", "A=1", "-e", "KEEP", "-e", "MISSING", "true"], env)
    assert s.env == {"PATH": "/bin", "KEEP": "k", "A": "1", "RBOX_SANDBOX": "1"}
    s = make(["run", "--clearenv", "-e", "KEEP", "-e", "B=", "true"], env)
    assert s.env == {"KEEP": "k", "B": "", "RBOX_SANDBOX": "1"}


@pytest.mark.parametrize(("argv", "stdin_tty", "pty"), [
    (["run", "x"], True, True), (["run", "x"], False, False),
    (["run", "-t", "x"], False, True), (["run", "-T", "x"], True, False), (["sh"], True, True),
])
def test_pty_rules(argv: list[str], stdin_tty: bool, pty: bool) -> None:
    s = spec.from_parsed(options.parse(argv), {"PATH": "/bin"}, "/work", stdin_tty)
    assert s.pty is pty


def test_tty_and_no_tty_exclude_each_other() -> None:
    with pytest.raises(SpecError, match="exclude each other"):
        make(["run", "-t", "-T", "x"])


def test_sh_runs_the_login_shell() -> None:
    import pwd

    assert make(["sh"]).command == [pwd.getpwuid(os.getuid()).pw_shell or "/bin/sh"]
