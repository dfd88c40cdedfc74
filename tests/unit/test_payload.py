"""How the command is found on PATH (shell rules, not execvp's), and exec errors."""

from __future__ import annotations

import pytest

from rootless import payload
from rootless.errors import RboxError
from tests.unit.test_spec import make


@pytest.fixture
def path(tmp_path):
    a, b, locked = tmp_path / "a", tmp_path / "b", tmp_path / "locked"
    for d in (a, b, locked):
        d.mkdir()
    (a / "tool").write_text("")          # not executable
    (b / "tool").write_text("")
    (b / "tool").chmod(0o755)
    (a / "plain").write_text("")
    locked.chmod(0)
    yield f"{locked}:{a}:{b}", a, b
    locked.chmod(0o700)


def test_first_executable_wins_over_an_earlier_plain_file(path) -> None:
    value, _, b = path
    assert payload.find_command("tool", value) == str(b / "tool")


def test_plain_file_is_returned_so_exec_fails_with_eacces(path) -> None:
    value, a, _ = path
    assert payload.find_command("plain", value) == str(a / "plain")


def test_missing_is_enoent_even_past_an_unsearchable_directory(path) -> None:
    with pytest.raises(FileNotFoundError):
        payload.find_command("nothing-here", path[0])


def test_names_with_a_slash_are_not_searched() -> None:
    assert payload.find_command("./x", "/nowhere") == "./x"


@pytest.mark.parametrize(("err", "code", "message"), [
    (2, 127, "command not found: `cmd`"),
    (13, 126, "cannot execute `cmd`: Permission denied"),
    (8, 126, "cannot execute `cmd`: Exec format error"),
    (21, 126, "cannot execute `cmd`: Is a directory"),
])
def test_exec_error_codes(err: int, code: int, message: str) -> None:
    err = payload.exec_error(make(["run", "cmd"]), err)
    assert isinstance(err, RboxError)
    assert (err.exit_code, err.message) == (code, message)


def test_missing_interpreter_is_127_with_its_own_message(tmp_path) -> None:
    (tmp_path / "s").write_text("#!/none\n")
    err = payload.exec_error(make(["run", "./s"], cwd=str(tmp_path)), 2)
    assert err.exit_code == 127 and "interpreter" in err.message
