"""Option parsing and the cli's error contract: one `rbox: error:` line, a `hint:` line,
exit 125, no traceback."""

from __future__ import annotations

import pytest

from rootless import cli, options
from rootless.errors import SpecError


def test_options_stop_at_the_command() -> None:
    p = options.parse(["run", "--net=host", "-w", "/tmp", "ls", "-l", "--root"])
    assert p.command == "run"
    assert p.values == {"net": "host", "workdir": "/tmp"}
    assert p.args == ["ls", "-l", "--root"]


def test_double_dash_ends_options() -> None:
    assert options.parse(["run", "--", "--root"]).args == ["--root"]


@pytest.mark.parametrize("argv", [["run", "-w/usr", "x"], ["run", "-w", "/usr", "x"], ["run", "--workdir=/usr", "x"],
                                  ["run", "--workdir", "/usr", "x"]])
def test_value_spellings(argv: list[str]) -> None:
    assert options.parse(argv).values["workdir"] == "/usr"


def test_repeated_options_keep_their_order_across_kinds() -> None:
    p = options.parse(["run", "--bind", "a", "--tmpfs", "/t", "--ro-bind=b:/c", "--hide", "/h", "x"])
    assert p.values["mounts"] == [("--bind", "a"), ("--tmpfs", "/t"), ("--ro-bind", "b:/c"), ("--hide", "/h")]


def test_short_env_forms() -> None:
    assert options.parse(["run", "-eA=1", "-e", "B=2", "--env=C", "x"]).values["env"] == [
        ("--env", "A=1"), ("--env", "B=2"), ("--env", "C")]


def test_fakeroot_is_root() -> None:
    assert options.parse(["run", "--fakeroot", "x"]).values["root"] is True


def test_global_debug_before_the_command() -> None:
    p = options.parse(["--debug", "run", "x"])
    assert p.values["debug"] is True and p.args == ["x"]


@pytest.mark.parametrize(("argv", "message"), [
    ([], "no command given"),
    (["frob"], "unknown command `frob`"),
    (["run", "--frob"], "unknown option `--frob` for `rbox run`"),
    (["--frob"], "unknown option `--frob` for `rbox`"),
    (["run", "--bind"], "option `--bind` needs a value (SRC[:DST])"),
    (["run", "--root=yes", "x"], "option `--root` takes no value"),
    (["run", "--net=wifi", "x"], "invalid value `wifi` for `--net`"),
    (["run", "--home", "big", "x"], "invalid value `big` for `--home`"),
])
def test_usage_errors(argv: list[str], message: str) -> None:
    with pytest.raises(SpecError) as info:
        options.parse(argv)
    assert info.value.message == message
    assert info.value.exit_code == 125


def test_main_prints_one_error_and_one_hint_and_returns_125(capfd) -> None:
    assert cli.main(["run", "--frob"]) == 125
    out, err = capfd.readouterr()
    assert out == ""
    assert err == "rbox: error: unknown option `--frob` for `rbox run`\nhint: see `rbox run --help`\n"


def test_main_without_a_command_for_run(capfd) -> None:
    assert cli.main(["run"]) == 125
    assert capfd.readouterr().err.startswith("rbox: error: `rbox run` needs a COMMAND\nhint: ")


def test_internal_errors_are_one_line_without_debug(capfd, monkeypatch) -> None:
    def boom(argv):
        raise ValueError("surprise")

    monkeypatch.setattr(cli, "_main", boom)
    assert cli.main(["run", "x"]) == 125
    err = capfd.readouterr().err
    assert err == ("rbox: error: internal error: ValueError: surprise\n"
                   "hint: run again with --debug and report this as a bug\n")


def test_internal_errors_show_a_traceback_with_debug(capfd, monkeypatch) -> None:
    def boom(argv):
        raise ValueError("surprise")

    monkeypatch.setattr(cli, "_main", boom)
    monkeypatch.setenv("RBOX_DEBUG", "1")
    assert cli.main(["run", "x"]) == 125
    assert "Traceback (most recent call last)" in capfd.readouterr().err


@pytest.mark.parametrize("argv", [["--help"], ["-h"], ["run", "--help"], ["sh", "-h"]])
def test_help_exits_0_on_stdout(capfd, argv: list[str]) -> None:
    assert cli.main(argv) == 0
    out, err = capfd.readouterr()
    assert out.startswith("usage: rbox") and err == ""


def test_version(capfd) -> None:
    from rootless import __version__

    assert cli.main(["--version"]) == 0
    assert capfd.readouterr().out == f"rbox {__version__}\n"


def test_help_lists_every_option_of_the_table() -> None:
    text = options.help_text("run")
    for opt in options.SANDBOX_OPTIONS:
        for name in opt.names:
            assert name in text
