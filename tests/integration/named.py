"""What the named-sandbox tests share: a runtime directory of their own, rbox run in it,
and at the end `rbox stop --all` and a check that nothing of theirs is left.

Runs in: the test runner."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from tests.integration.helpers import RBOX, kill_all, rbox_env, run_rbox
from tests.robustness.leftovers import Snapshot, wait_clean


class Box:
    """rbox with XDG_RUNTIME_DIR=<tmp>/xdg, started from <tmp>/work (a project directory,
    bound read-write into the sandboxes)."""

    def __init__(self, tmp_path: Path):
        self.runtime = tmp_path / "xdg"
        self.runtime.mkdir(mode=0o700)
        self.work = tmp_path / "work"
        self.work.mkdir()
        self.env = {"XDG_RUNTIME_DIR": str(self.runtime)}
        self.named = self.runtime / "rbox" / "named"

    def rbox(self, *args: str, timeout: float = 60, **kw: object) -> subprocess.CompletedProcess[str]:
        return run_rbox(*args, cwd=self.work, env={**self.env, **kw.pop("env", {})},  # type: ignore[dict-item]
                        timeout=timeout, **kw)  # type: ignore[arg-type]

    def popen(self, *args: str, **kw: object) -> subprocess.Popen[str]:
        return subprocess.Popen([*RBOX, *args], cwd=self.work, env=rbox_env({**self.env, **kw.pop("env", {})}),
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, **kw)  # type: ignore[call-overload]

    def start(self, name: str, *command: str, opts: tuple[str, ...] = ("--net=none",)) -> None:
        r = self.rbox("run", "-d", "--name", name, *opts, "--", *command)
        assert (r.returncode, r.stdout) == (0, f"{name}\n"), r.stderr

    def ps(self, *args: str) -> list[dict[str, object]]:
        r = self.rbox("ps", "--json", *args)
        assert r.returncode == 0, r.stderr
        rows = json.loads(r.stdout)
        assert isinstance(rows, list)
        return rows

    def row(self, name: str) -> dict[str, object]:
        (found,) = [r for r in self.ps("-a") if r["name"] == name]
        return found

    def entries(self) -> list[str]:
        return sorted(p.name for p in self.named.iterdir()) if self.named.exists() else []

    def stop_seeing_the_trap(self, name: str) -> None:
        """`rbox stop`: SIGTERM reaches the command's TERM trap (which writes `term`), well
        within the grace time, and nothing of the sandbox is left."""
        began = time.monotonic()
        r = self.rbox("stop", "-t", "20", name)
        assert (r.returncode, r.stdout) == (0, f"{name}\n"), r.stderr
        assert (self.work / "term").read_text() == "trapped\n"
        assert time.monotonic() - began < 10
        assert self.ps("-a") == [] and self.entries() == []


def stop_all_and_check(box: Box, before: Snapshot) -> None:
    r = box.rbox("stop", "--all", "-t", "0")
    left = wait_clean(before)
    # What a failed test (or a mutant) left is killed before it is reported: never litter.
    kill_all(set(left.get("processes", {})))  # type: ignore[call-overload]
    assert r.returncode == 0, r.stderr
    assert not left, f"left behind: {left}"
    assert box.entries() == []


@pytest.fixture
def box(tmp_path):
    """A Box; afterwards every sandbox of it stopped and nothing of it left."""
    b = Box(tmp_path)
    before = Snapshot([str(b.runtime)])
    yield b
    stop_all_and_check(b, before)
