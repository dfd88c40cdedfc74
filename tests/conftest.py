"""Test-suite rules.

- Never as root: root would hide every rootless bug. RBOX_TEST_AS_ROOT=1 overrides.
- Tests declare what the host must offer with markers (needs_userns, needs_subuid, ...;
  one per name in PROBES). A missing capability skips the test with its reason (shown by
  -ra), unless RBOX_TEST_REQUIRE names it: CI sets that, so on CI a missing capability
  fails instead of quietly skipping (a skip reported as a pass is a defect). This is the
  only place a test may skip: an inline `pytest.skip` would bypass RBOX_TEST_REQUIRE.
- A name in RBOX_TEST_REQUIRE that no probe knows is an error: a typo would otherwise
  silently stop requiring the feature.
"""

from __future__ import annotations

import functools
import os
import pwd
import subprocess
import sys

import pytest

REQUIRED = {name for name in os.environ.get("RBOX_TEST_REQUIRE", "").split(",") if name}


def pytest_configure(config: pytest.Config) -> None:
    if os.geteuid() == 0 and os.environ.get("RBOX_TEST_AS_ROOT") != "1":
        pytest.exit("run the tests as an unprivileged user (root hides rootless bugs); "
                    "RBOX_TEST_AS_ROOT=1 overrides", returncode=4)
    unknown = sorted(REQUIRED - set(PROBES))
    if unknown:
        pytest.exit(f"RBOX_TEST_REQUIRE names unknown capabilities: {', '.join(unknown)} "
                    f"(known: {', '.join(PROBES)})", returncode=4)


# Every capability a marker may name (`needs_NAME`, or `nosubid`), with what it checks.
PROBES = ("userns", "subuid", "slirp4netns", "pasta", "dns_stub", "vm", "vm_broken", "tmux", "install", "nosubid",
          "tiocsti", "zsh", "iproute2", "unprivileged", "two_users", "suppgroup", "keyrings",
          # Kernel facilities newer than rbox's floor (4.18): absent under tests/oldkernel's filter.
          "pidfd", "old_kernel", "mount_api", "openat2",
          # A Slurm cluster this user can run jobs on (tests/slurm/cluster), Open MPI's tools.
          "slurm", "slurm_memory", "mpi",
          # Overlays (#14): the kernel's overlayfs in a user namespace, and the FUSE programs.
          "kernel_overlay", "fuse_overlayfs", "squashfuse",
          # Images: mksquashfs/unsquashfs, umoci and skopeo (the oracle), the Debian image .ci/run builds.
          "squashfs_tools", "oci_tools", "debian_image",
          # `rbox image pull`'s tests: a registry of their own on loopback, images pushed with skopeo.
          "registry")


@functools.cache
def probe(name: str) -> str | None:
    """None when the host offers `name`, else the reason it does not."""
    if name == "userns":
        # Fork-free for the runner: a child interpreter tries unshare(CLONE_NEWUSER).
        code = "from rootless import syscalls as s; s.unshare(s.CLONE_NEWUSER)"
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
        return None if r.returncode == 0 else f"unprivileged user namespaces unavailable: {r.stderr.strip()[-200:]}"
    if name == "subuid":
        from rootless import userns

        user = pwd.getpwuid(os.getuid()).pw_name
        if not userns.read_subids(userns.SUBUID, user, os.getuid()):
            return f"no subordinate uid range for {user} in /etc/subuid"
        if not userns.which("newuidmap", os.environ.get("PATH")):
            return "newuidmap not on PATH"
        return None
    if name in ("slirp4netns", "pasta"):
        from rootless.net import pasta, slirp

        try:
            (slirp if name == "slirp4netns" else pasta).preflight(os.environ.get("PATH"))
        except Exception as e:  # noqa: BLE001 - the probe reports any reason
            return str(getattr(e, "message", e))
        return None
    if name == "dns_stub":
        import socket

        try:
            found = socket.gethostbyname("rbox-test.internal")
        except OSError as e:
            return f"no local resolver serving rbox-test.internal ({e}); .ci/run starts one"
        return None if found == "198.51.100.7" else f"rbox-test.internal resolves to {found}"
    if name == "vm":
        from pathlib import Path

        if Path("/proc/1/comm").read_text().strip() != "systemd":
            return "not in the systemd VM test bed (PID 1 is not systemd): run `sudo tests/vm/run`"
        uid = os.getuid()
        if not Path(f"/sys/fs/cgroup/user.slice/user-{uid}.slice/user@{uid}.service").is_dir():
            return "no user manager (user@UID.service) for this user: run `sudo tests/vm/run`"
        return None
    if name == "vm_broken":
        if os.environ.get("RBOX_VM_PHASE") != "broken":
            return "only in the VM test bed's second phase (drop-in removed, user namespaces disabled)"
        return None
    if name in ("tmux", "zsh", "iproute2"):
        import shutil

        tool = "ip" if name == "iproute2" else name
        return None if shutil.which(tool) else f"{tool} is not installed (Debian package {name})"
    if name in ("squashfs_tools", "oci_tools"):
        import shutil

        tools, packages = ((("mksquashfs", "unsquashfs"), "squashfs-tools") if name == "squashfs_tools"
                           else (("umoci", "skopeo"), "umoci, skopeo"))
        missing = [tool for tool in tools if not shutil.which(tool)]
        return f"{', '.join(missing)} not installed (Debian packages {packages})" if missing else None
    if name == "debian_image":
        path = debian_image()
        if os.access(path, os.R_OK):
            return None
        return f"no Debian image tar at {path} (.ci/run builds it with mmdebstrap; RBOX_TEST_DEBIAN_TAR)"
    if name == "install":
        from tests.integration.helpers import RBOX_SCRIPT

        if os.path.exists(RBOX_SCRIPT):
            return None
        return f"rbox is not installed beside {sys.executable} (pip install .)"
    if name == "registry":
        import shutil

        missing = [tool for tool in ("docker-registry", "skopeo", "openssl") if not shutil.which(tool)]
        if missing:
            return f"{', '.join(missing)} not installed (Debian packages docker-registry, skopeo, openssl)"
        return None
    if name == "two_users":
        # A second local user the test can act as (class 6 of issue #10: state planted by
        # another user). .ci/run creates `rboxother` and a sudoers drop-in for it.
        other = other_user()
        try:
            pwd.getpwnam(other)
        except KeyError:
            return f"no local user `{other}` (RBOX_TEST_OTHER_USER; .ci/run creates rboxother)"
        try:
            r = subprocess.run(["sudo", "-n", "-u", other, "true"], capture_output=True, text=True, timeout=30,
                               stdin=subprocess.DEVNULL)
        except FileNotFoundError:
            return "sudo is not installed"
        if r.returncode != 0:
            return f"cannot act as {other}: `sudo -n -u {other} true` failed: {r.stderr.strip()[-200:]}"
        return None
    if name == "suppgroup":
        if set(os.getgroups()) - {os.getgid()}:
            return None
        return "the test user has no supplementary group (.ci/run adds rboxtest to the group rboxsup)"
    if name == "keyrings":
        code = "from rootless import syscalls as s; s.join_session_keyring()"
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
        return None if r.returncode == 0 else f"no kernel keyrings: {r.stderr.strip()[-200:]}"
    if name == "mount_api":
        # open_tree/move_mount/mount_setattr (Linux 5.12): how later host mounts are shown.
        from rootless import syscalls

        if not syscalls.has_mount_setattr():
            return "no mount_setattr (Linux 5.12) on this kernel: later host mounts are not shown at all"
        return None
    if name == "kernel_overlay":
        # The test's own attempt, as rbox makes it (overlay.py): a user and mount namespace,
        # a tmpfs upper layer with user extended attributes (6.6), overlayfs with userxattr (5.11).
        r = subprocess.run(["unshare", "-Urm", sys.executable, "-c", KERNEL_OVERLAY], capture_output=True, text=True,
                           timeout=30)
        return None if r.returncode == 0 else f"no overlayfs in a user namespace here: {r.stderr.strip()[-200:]}"
    if name in ("fuse_overlayfs", "squashfuse"):
        import shutil

        tools = ("fuse-overlayfs",) if name == "fuse_overlayfs" else ("squashfuse", "mksquashfs")
        missing = [tool for tool in tools if not shutil.which(tool)]
        if missing:
            return f"{' and '.join(missing)} not installed (Debian packages fuse-overlayfs, squashfuse, squashfs-tools)"
        if not os.access("/dev/fuse", os.R_OK | os.W_OK):
            return "/dev/fuse is missing or not usable (.ci/setup-host makes it 0666)"
        return None
    if name == "openat2":
        # RESOLVE_IN_ROOT (Linux 5.6): how the unpacker follows an image's own symlink
        # (usr-merge: `lib -> usr/lib`, then `lib/x`); before it, such a layer is refused.
        from rootless.image.unpack import has_openat2

        return None if has_openat2() else "no openat2 (Linux 5.6) on this kernel: paths through an image's symlinks " \
            "are refused"
    if name == "pidfd":
        # The test's own use of pidfd_open(2), Linux 5.3 (rbox falls back without it).
        try:
            os.close(os.pidfd_open(os.getpid()))
        except OSError as e:
            return f"no pidfd_open (Linux 5.3) on this kernel: {e.strerror}"
        return None
    if name == "old_kernel":
        # Under tests/oldkernel/launch.py: the system calls added after 4.18 answer ENOSYS.
        try:
            os.close(os.pidfd_open(os.getpid()))
        except OSError:
            return None
        return "not under the old-kernel filter (tests/oldkernel/run)"
    if name == "nosubid":
        from rootless import userns

        user = pwd.getpwuid(os.getuid()).pw_name
        if userns.read_subids(userns.SUBUID, user, os.getuid()):
            return f"{user} has a subordinate uid range (run these as a user without one)"
        return None
    if name == "tiocsti":
        # The kernel's own policy, read independently of rbox: since Linux 6.2 the sysctl
        # dev.tty.legacy_tiocsti=0 makes TIOCSTI fail for everyone without CAP_SYS_ADMIN.
        try:
            with open("/proc/sys/dev/tty/legacy_tiocsti") as f:
                allowed = f.read().strip() != "0"
        except FileNotFoundError:
            allowed = True     # before 6.2: always allowed
        return None if allowed else "this kernel refuses TIOCSTI to everyone (dev.tty.legacy_tiocsti=0)"
    if name == "slurm":
        from tests.slurm.jobs import cluster_problem

        return cluster_problem()
    if name == "slurm_memory":
        from tests.slurm.jobs import memory_limit_problem

        return memory_limit_problem()
    if name == "mpi":
        import shutil

        missing = [tool for tool in ("mpicc", "mpirun") if not shutil.which(tool)]
        if missing:
            return f"{' and '.join(missing)} not installed (Debian packages openmpi-bin libopenmpi-dev)"
        return None
    if name == "unprivileged":
        return None if os.geteuid() != 0 else "running as root: permission checks pass for every file"
    raise ValueError(name)


KERNEL_OVERLAY = """
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
def mount(src, dst, fstype, data):
    if libc.mount(src.encode(), dst.encode(), fstype.encode(), 0, data.encode()) < 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()), dst)
mount("tmpfs", "/tmp", "tmpfs", "mode=0700")
for d in ("l", "u", "w", "m"):
    os.mkdir("/tmp/" + d)
os.setxattr("/tmp/u", "user.test", b"1")
mount("overlay", "/tmp/m", "overlay", "lowerdir=/tmp/l,upperdir=/tmp/u,workdir=/tmp/w,userxattr")
os.mkdir("/tmp/m/x")
assert os.path.isdir("/tmp/u/x")
"""
def debian_image() -> str:
    """A Debian userland as a tar (mmdebstrap, made by .ci/run as root before the suite)."""
    return os.environ.get("RBOX_TEST_DEBIAN_TAR", "/var/cache/rbox-test/debian-bullseye.tar")


def other_user() -> str:
    return os.environ.get("RBOX_TEST_OTHER_USER", "rboxother")


def pytest_runtest_setup(item: pytest.Item) -> None:
    for marker in item.iter_markers():
        if not marker.name.startswith("needs_") and marker.name != "nosubid":
            continue
        feature = marker.name.removeprefix("needs_")
        reason = probe(feature)
        if reason is None:
            continue
        if feature in REQUIRED:
            pytest.fail(f"{feature} is required here (RBOX_TEST_REQUIRE) but missing: {reason}")
        pytest.skip(reason)


@pytest.fixture
def spawn():
    """start_rbox() whose processes are SIGKILLed at teardown, whatever the test did:
    a failing assertion must not leave a sandbox running."""
    from tests.integration.helpers import start_rbox

    started = []

    def _spawn(*args, **kw):
        proc = start_rbox(*args, **kw)
        started.append(proc)
        return proc

    yield _spawn
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
        # Not communicate(): were a sandbox left running (the failure under test), it
        # would hold these pipes open and the teardown would wait for it.
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
