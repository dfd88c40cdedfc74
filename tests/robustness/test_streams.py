"""rbox started with stdin, stdout or stderr closed: the command's exit status always,
every network mode working, rbox's own messages going nowhere when stderr is closed.

Closed descriptors are the caller's doing (`rbox ... >&-`, a daemon's exec); the
numbers 0-2 must not be taken by rbox's own pipes and helpers meanwhile (the
containment work reserves them at start; see rbox(1), EXIT STATUS).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.integration.helpers import RBOX, rbox_env
from tests.robustness.leftovers import Snapshot, wait_clean

pytestmark = pytest.mark.needs_userns
MODES = [pytest.param("none"), pytest.param("slirp4netns", marks=pytest.mark.needs_slirp4netns),
         pytest.param("pasta", marks=pytest.mark.needs_pasta)]


def run_closed(tmp_path: Path, fd: int, *args: str) -> tuple[int, str, str]:
    """rbox ARGS with descriptor `fd` closed (a shell's `<&-`, `>&-` or `2>&-`); its
    exit status, and what it wrote to the descriptors left open (files read after)."""
    out, err = tmp_path / "out", tmp_path / "err"
    redirects = {0: f"<&- >{out} 2>{err}", 1: f">&- 2>{err}", 2: f">{out} 2>&-"}[fd]
    r = subprocess.run(["sh", "-c", f'"$@" {redirects}', "sh", *RBOX, *args], env=rbox_env(None), timeout=60,
                       stdin=subprocess.DEVNULL)
    return r.returncode, *(p.read_text(errors="replace") if p.exists() else "" for p in (out, err))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("fd", [0, 1, 2])
def test_every_network_mode_works_with_a_standard_descriptor_closed(tmp_path, mode: str, fd: int) -> None:
    before = Snapshot([])
    code, out, err = run_closed(tmp_path, fd, "run", f"--net={mode}", "--", "sh", "-c",
                                "echo hello 2>/dev/null; exit 7")
    assert code == 7, err
    assert "rbox:" not in err and "Traceback" not in err
    if fd != 1:
        assert out == "hello\n"
    assert not wait_clean(before)


@pytest.mark.parametrize("fd", [1, 2])
def test_rbox_s_own_error_with_stdout_or_stderr_closed_is_still_125(tmp_path, fd: int) -> None:
    code, out, err = run_closed(tmp_path, fd, "run", "--net=bogus", "--", "true")
    assert code == 125
    if fd == 1:
        assert err == "rbox: error: invalid value `bogus` for `--net`\nhint: choose one of: slirp4netns, pasta, " \
                      "none, host\n"
    assert "Traceback" not in out + err


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["run", "--dry-run", "--net=none", "--", "true"],
                                  ["check", "--json"]])
def test_output_to_a_closed_stdout_is_dropped_without_a_traceback(tmp_path, args: list[str]) -> None:
    code, _, err = run_closed(tmp_path, 1, *args)
    assert code in (0, 1), err        # `rbox check` exits 1 when the host lacks something
    assert err == "" or "Traceback" not in err and "internal error" not in err


def test_output_to_a_pipe_nobody_reads_is_dropped_without_a_traceback() -> None:
    # `| true`: the reader is gone before rbox writes its plan (EPIPE, SIGPIPE ignored).
    r = subprocess.run(["sh", "-c", '"$@" | true', "sh", *RBOX, "--help"], env=rbox_env(None),
                       capture_output=True, text=True, timeout=60)
    assert r.stderr == ""
