"""Fixtures the integration tests share.

Runs in: the test runner."""

from __future__ import annotations

import shlex

import pytest

from tests.integration.helpers import rbox_env
from tests.integration.terminal import Terminal


@pytest.fixture
def term(tmp_path):
    """A real terminal (tmux) with an interactive bash whose PYTHONPATH finds this
    checkout's rbox; closed whatever the test did."""
    t = Terminal(str(tmp_path))
    t.line(f"export PYTHONPATH={shlex.quote(rbox_env(None)['PYTHONPATH'])}")
    yield t
    t.close()
