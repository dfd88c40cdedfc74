"""Entering the workspace and pivoting into the new root.

Runs in: init (PID 1 of the new PID namespace, in the new mount namespace).

The sequence is bubblewrap's and mkosi's, with one change in propagation:
  1. make every mount private: nothing we mount propagates back to the host, and nothing
     the host mounts from now on propagates in. (bubblewrap makes them slaves, so the
     host's later mounts arrive as the host made them, writable: rbox's class-8 hole.
     A mount that arrived before this step is part of the tree and is made read-only
     with the rest in step 3.) The host's later mounts are shown by stage-1 instead,
     read-only (latemounts.py);
  2. mount a tmpfs workspace on /tmp (in our mount namespace only), and pivot_root into
     it with the host's root moved to /oldroot;
  3. carry out the mount plan from /oldroot into /newroot (mounts.py);
  4. pivot_root(".", ".") inside /newroot and detach the old root: the host's root is not
     reachable from the sandbox afterwards (pivot_root(2), NOTES);
  5. make the tree shared: peer groups of its own, which nothing outside belongs to. A
     mount stage-1 adds later propagates from here to the copies in a mount namespace
     made below this one (mount_namespaces(7), "shared subtrees"), where it arrives
     locked read-only when its source is read-only and the copy crosses into a less
     privileged user namespace.
"""

from __future__ import annotations

import os

from rootless import log
from rootless import syscalls as sc
from rootless.errors import MountError
from rootless.mounts import NEWROOT, OLDROOT, Op, seal_image

WORKSPACE = "/tmp"


def build(ops: list[Op]) -> None:
    enter_workspace()
    for op in ops:
        log.step(op.describe())
        op.apply(OLDROOT, NEWROOT)
    seal_image()            # an image's tree (--rootfs, --image): the underlay read-only too
    finish_pivot()


def enter_workspace() -> None:
    try:
        sc.mount(None, "/", None, sc.MS_REC | sc.MS_PRIVATE)
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
        sc.mount(None, "/", None, sc.MS_REC | sc.MS_SHARED)
    except OSError as e:
        raise MountError(f"cannot pivot into the sandbox's root: {e.strerror}",
                         hint="run again with --debug to see the mount that caused it, and report this as a bug"
                         ) from None
