"""`python -m rootless` is the same as `rbox` (bin/rbox says why SIGINT comes first)."""

import _signal

# A SIGINT the caller ignored (`cmd &` in a script) stays ignored: signals.IGNORED reads it.
if _signal.getsignal(_signal.SIGINT) != _signal.SIG_IGN:
    _signal.signal(_signal.SIGINT, _signal.SIG_DFL)

from rootless.cli import entry  # noqa: E402 - after the signal disposition, on purpose

entry()
