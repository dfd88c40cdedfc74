"""The man page documents every option, and groff finds nothing wrong with it
(charliecloud's docs-sane idea)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from rootless import options

MAN = Path(__file__).resolve().parents[2] / "man" / "rbox.1"


def help_options() -> set[str]:
    found = set()
    for command in (None, *options.COMMANDS):
        found |= set(re.findall(r"(?<![\w-])(--?[a-z][a-z-]*)", options.help_text(command)))
    return found


def man_text() -> str:
    # groff spells a literal hyphen `\-`.
    return MAN.read_text().replace("\\-", "-")


def test_help_shows_options() -> None:
    assert {"--bind", "--root", "-w", "--version"} <= help_options()


@pytest.mark.parametrize("option", sorted(help_options()))
def test_every_option_of_help_is_in_the_man_page(option: str) -> None:
    assert re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", man_text()), f"{option} missing from man/rbox.1"


def test_every_option_in_the_man_page_exists() -> None:
    table = {name for cmd in (None, *options.COMMANDS) for opt in options.options_for(cmd) for name in opt.names}
    documented = set(re.findall(r"^\.(?:B|BR|BI) (--?[a-z][a-z-]*)", man_text(), re.M))
    assert documented - table == set()


def test_every_command_is_in_the_man_page() -> None:
    text = MAN.read_text()
    for command in options.COMMANDS:
        assert f".B {command}\n" in text or f".B rbox {command}" in text, command


def test_groff_reports_nothing() -> None:
    groff = shutil.which("groff")
    assert groff, "groff is needed to check the man page (Debian package groff)"
    r = subprocess.run([groff, "-man", "-ww", "-z", str(MAN)], capture_output=True, text=True, timeout=60)
    assert (r.returncode, r.stderr) == (0, "")
