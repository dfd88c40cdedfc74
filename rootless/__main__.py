"""`python -m rootless` is the same as `rbox`."""

from rootless.cli import entry

entry()
