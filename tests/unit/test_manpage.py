"""The man page documents every option in its OPTIONS section, documents nothing else
there, and groff finds nothing wrong with it (charliecloud's docs-sane idea).

An option counts as documented only as an entry of OPTIONS (`.TP`, then a `.B`/`.BR`/
`.BI` line naming it): a mention in an example or in prose does not."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from rootless import options

MAN = Path(__file__).resolve().parents[2] / "man" / "rbox.1"


def section(text: str, name: str) -> list[str]:
    lines = text.splitlines()
    start = lines.index(f".SH {name}")
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith(".SH ")), len(lines))
    return lines[start + 1:end]


def entry_options(lines: list[str]) -> list[str]:
    """The options named by each `.TP` entry's tag line, in page order."""
    found = []
    for tp, tag in zip(lines, lines[1:], strict=False):
        if tp != ".TP" or not re.match(r"\.(B|BR|BI|IR|I)\s", tag):
            continue
        # roff arguments are blank-separated, "quoted" when they hold blanks; \fX
        # switches fonts and \- is a literal hyphen.
        for arg in shlex.split(re.sub(r"\\f[BIRP]", "", tag.split(None, 1)[1]).replace("\\-", "-")):
            word = arg.strip()
            if re.fullmatch(r"--?[A-Za-z][a-z-]*", word):
                found.append(word)
    return found


def table(command: str | None) -> set[str]:
    return {name for opt in options.options_for(command) for name in opt.names}


def documented() -> list[str]:
    return entry_options(section(MAN.read_text(), "OPTIONS"))


def test_the_parser_reads_entries_and_ignores_examples() -> None:
    page = [".TP", '.BR \\-p ", " \\-\\-publish " [\\fIHOST_IP\\fP:]\\fIHOST_PORT\\fP"', "Text with \\-\\-bind.",
            ".TP", ".BI \\-\\-net \" MODE\"", ".PP", ".B rbox run \\-\\-root", ".TP", ".B \\-\\-dry\\-run"]
    assert entry_options(page) == ["-p", "--publish", "--net", "--dry-run"]


def test_no_option_is_documented_twice() -> None:
    names = documented()
    assert sorted(n for n in set(names) if names.count(n) > 1) == []


@pytest.mark.parametrize("command", [None, *options.COMMANDS])
def test_every_option_of_every_command_has_an_entry(command: str | None) -> None:
    assert sorted(table(command) - set(documented())) == [], f"missing from OPTIONS in {MAN}"


def test_every_entry_is_an_option_of_some_command() -> None:
    every = set().union(*(table(c) for c in (None, *options.COMMANDS)))
    assert sorted(set(documented()) - every) == []


@pytest.mark.parametrize("command", [None, *options.COMMANDS])
def test_help_lists_every_option_of_the_command(command: str | None) -> None:
    listed = set(re.findall(r"^  (-[^ ,]*(?:, -[^ ,]*)*)", options.help_text(command), re.M))
    names = {name for entry in listed for name in entry.split(", ")}
    assert names == table(command)


def test_every_command_is_in_the_man_page() -> None:
    text = MAN.read_text()
    for command in options.COMMANDS:
        assert f".B {command}\n" in text or f".B rbox {command}" in text, command


def test_groff_reports_nothing() -> None:
    groff = shutil.which("groff")
    assert groff, "groff is needed to check the man page (Debian package groff)"
    r = subprocess.run([groff, "-man", "-ww", "-z", str(MAN)], capture_output=True, text=True, timeout=60)
    assert (r.returncode, r.stderr) == (0, "")
