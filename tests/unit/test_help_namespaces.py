"""`rbox --help` and rbox(1) name the same namespaces (issue #13, item 15: the help text
once left out the cgroup namespace the man page lists)."""

from __future__ import annotations

import re
from pathlib import Path

from rootless import options

MAN = Path(__file__).resolve().parents[2] / "man" / "rbox.1"
KINDS = ("user", "PID", "mount", "UTS", "IPC", "cgroup", "network")


def named(text: str) -> set[str]:
    return {kind for kind in KINDS if re.search(rf"\b{kind}\b", text)}


def test_help_and_man_page_list_the_same_namespaces() -> None:
    help_line = next(line for line in options.help_text(None).splitlines() if "namespaces" in line)
    man = MAN.read_text()
    description = man.split(".SH DESCRIPTION\n", 1)[1].split("namespaces", 1)[0]
    assert named(help_line) == named(description) == set(KINDS)


def test_stage1_creates_exactly_those_namespaces() -> None:
    """The list is what stage-1 unshares (and the user namespace before it)."""
    source = (Path(__file__).resolve().parents[2] / "rootless" / "stage1.py").read_text()
    flags = set(re.findall(r"CLONE_NEW(\w+)", source))
    assert {"USER", "NS", "PID", "UTS", "IPC", "CGROUP", "NET"} <= flags
