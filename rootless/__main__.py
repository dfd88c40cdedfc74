"""`python -m rootless` is the same as `rbox` (bin/rbox says why SIGINT comes first)."""

import _signal

_signal.signal(_signal.SIGINT, _signal.SIG_DFL)

from rootless.cli import entry  # noqa: E402 - after the signal disposition, on purpose

entry()
