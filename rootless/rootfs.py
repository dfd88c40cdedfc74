"""Entering the workspace and pivoting into the new root.

Runs in: init (PID 1 of the new PID namespace, in the new mount namespace).

The sequence is bubblewrap's and mkosi's:
  1. make every mount a slave, so nothing we mount propagates back to the host, while
     the host's automounts (autofs homes on HPC nodes) still propagate in;
  2. mount a tmpfs workspace on /tmp (in our mount namespace only), and pivot_root into
     it with the host's root moved to /oldroot;
  3. carry out the mount plan from /oldroot into /newroot (mounts.py);
  4. pivot_root(".", ".") inside /newroot and detach the old root: the host's root is not
     reachable from the sandbox afterwards (pivot_root(2), NOTES).
"""

from __future__ import annotations

import os

from rootless import log
from rootless import syscalls as sc
from rootless.errors import MountError
from rootless.mounts import NEWROOT, OLDROOT, Op

WORKSPACE = "/tmp"


def build(ops: list[Op]) -> None:
    enter_workspace()
    for op in ops:
        log.step(op.describe())
        op.apply(OLDROOT, NEWROOT)
    finish_pivot()


def enter_workspace() -> None:
    try:
        sc.mount(None, "/", None, sc.MS_REC | sc.MS_SLAVE)
        sc.mount("tmpfs", WORKSPACE, "tmpfs", sc.MS_NOSUID | sc.MS_NODEV, "mode=0755")
        os.chdir(WORKSPACE)
        os.mkdir("newroot")
        os.mkdir("oldroot")
        sc.pivot_root(WORKSPACE, "oldroot")
        os.chdir("/")
    except OSError as e:
        raise MountError(f"cannot set up the sandbox's root ({getattr(e, 'call', 'setup')}): {e.strerror}",
                         hint="run `rbox check`; rbox needs mounts in a user namespace (see rbox(1), HOST SETUP)"
                         ) from None


def finish_pivot() -> None:
    try:
        sc.umount2(OLDROOT, sc.MNT_DETACH)
        os.chdir(NEWROOT)
        sc.pivot_root(".", ".")
        sc.umount2(".", sc.MNT_DETACH)
        os.chdir("/")
    except OSError as e:
        raise MountError(f"cannot pivot into the sandbox's root: {e.strerror}",
                         hint="run again with --debug to see the mount that caused it, and report this as a bug"
                         ) from None
