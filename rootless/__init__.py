"""rbox: a rootless sandbox for shared Linux machines."""

__version__ = "0.1.0"
