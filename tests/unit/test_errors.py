from __future__ import annotations

import pytest

from rootless.errors import RboxError, waitstatus_to_code


@pytest.mark.parametrize(("status", "code"), [
    (0, 0), (42 << 8, 42), (255 << 8, 255), (15, 143), (9, 137), (11 | 0x80, 139)])
def test_waitstatus_to_code(status: int, code: int) -> None:
    # Raw wait statuses: exit(n) is n << 8; death by signal N is N (0x80 = core dumped).
    assert waitstatus_to_code(status) == code


def test_default_exit_code_is_125_and_can_be_chosen() -> None:
    assert RboxError("x").exit_code == 125
    assert RboxError("x", exit_code=127).exit_code == 127
