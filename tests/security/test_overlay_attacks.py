"""Overlays against a hostile command (#14): its writes never reach the lower layer (the
image, the host directory of --overlay), the upper layer is out of its reach, the FUSE
daemons are out of its reach (no pid to signal, trace or read), and their mounts check
the command's own permissions, not the daemon's.

Every attack runs for real as the unprivileged test user, with the kernel's overlayfs and
with fuse-overlayfs, and has a positive control: the same writes through a writable bind
change the tree; the same probe against a process it can see (a sibling) succeeds; the
same file is readable for an id that may read it.
"""

from __future__ import annotations

import os
import select
import subprocess
import time
from pathlib import Path

import pytest

from tests.integration.helpers import RBOX, descendants, rbox_env, run_rbox
from tests.integration.test_overlay import DRIVERS, busybox_tree, digest
from tests.security.probes import facts

pytestmark = pytest.mark.needs_userns
FUSE_PROBE = str(Path(__file__).with_name("fuse_probe.py"))
DAEMONS = ("fuse-overlayfs", "squashfuse")
# Everything a uid 0 inside may try on a tree under $R, then whether it saw its writes.
WRITES = ("R=$1; echo pwned > $R/etc/os-release; echo planted > $R/planted; : > $R/etc/group; rm -rf $R/usr; "
          "mv $R/opt $R/opt2; chmod 777 $R/etc; chown 4242:4242 $R/etc/passwd; ln $R/etc/passwd $R/etc/hard; "
          "ln -s / $R/escape; mkdir -p $R/work/a/b; echo x > $R/work/a/b/c; "
          "cat $R/etc/os-release $R/planted; test -e $R/usr || echo usr-gone; test -e /overlays || echo no-workspace")
SEEN = ["pwned", "planted", "usr-gone", "no-workspace"]


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return busybox_tree(tmp_path / "rootfs")


@pytest.mark.parametrize("driver", DRIVERS)
def test_writes_in_the_image_never_reach_it(driver: str, tree: Path, tmp_path: Path) -> None:
    before = digest(tree)
    r = run_rbox("run", "--root", "--net=none", "--rootfs", str(tree), "--", "/bin/sh", "-c", WRITES, "sh", "",
                 cwd=tmp_path, env={"RBOX_OVERLAY": driver})
    assert (r.returncode, r.stdout.split()) == (0, SEEN), r.stderr
    assert digest(tree) == before


def test_control_the_same_writes_through_a_writable_bind_change_the_tree(tree: Path, tmp_path: Path) -> None:
    before = digest(tree)
    r = run_rbox("run", "--root", "--net=none", "--bind", f"{tree}:/mnt", "--", "sh", "-c", WRITES, "sh", "/mnt",
                 cwd=tmp_path)
    assert r.stdout.split()[:3] == SEEN[:3], r.stderr
    assert digest(tree) != before


@pytest.mark.parametrize("driver", DRIVERS)
def test_writes_under_overlay_never_reach_the_host_directory(driver: str, tree: Path, tmp_path: Path) -> None:
    """--overlay of a host directory, with --root; then the control, --bind, which
    lets the same writes through."""
    before = digest(tree)
    for option, changed in (("--overlay", False), ("--bind", True)):
        r = run_rbox("run", "--root", "--net=none", option, str(tree), "--", "sh", "-c", WRITES, "sh", str(tree),
                     cwd=tmp_path, env={"RBOX_OVERLAY": driver})
        assert r.stdout.split()[:3] == SEEN[:3], r.stderr
        assert (digest(tree) != before) == changed, option


def read_until(stream: int, word: str, timeout: float = 30.0) -> list[str]:
    """Lines from a pipe up to and including `word` (all of them at EOF)."""
    lines, data = [], b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and select.select([stream], [], [], max(0.0, deadline - time.monotonic()))[0]:
        chunk = os.read(stream, 4096)
        if not chunk:
            break
        data += chunk
        *done, rest = data.split(b"\n")
        data = rest
        lines += [line.decode(errors="replace") for line in done]
        if word in lines:
            break
    return lines


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


@pytest.mark.parametrize("driver", DRIVERS)
@pytest.mark.needs_squashfuse
def test_fuse_daemons_are_out_of_the_commands_reach(driver: str, tree: Path, tmp_path: Path) -> None:
    """A SquashFS image: squashfuse serves it (and fuse-overlayfs the overlay, with the
    FUSE driver). The command (--root, the host's python bound in) finds every process it
    can see and attacks the daemons' host pids: none is visible, none can be signalled,
    traced or read. The control: a sibling of its own, seen and attacked alike, is."""
    os.symlink("usr/lib", tree / "lib")
    os.symlink("usr/lib64", tree / "lib64")
    sqfs = tmp_path / "image.sqfs"
    subprocess.run(["mksquashfs", str(tree), str(sqfs), "-quiet", "-noappend", "-no-progress", "-all-root"],
                   check=True, capture_output=True, timeout=60)
    proc = subprocess.Popen([*RBOX, "run", "--root", "--net=none", "--image", str(sqfs), "--ro-bind", "/usr",
                             "--ro-bind", f"{FUSE_PROBE}:/probe.py", "--", "/usr/bin/python3", "-I", "/probe.py"],
                            cwd=tmp_path, env=rbox_env({"RBOX_OVERLAY": driver}), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdin is not None and proc.stderr is not None
        lines = read_until(proc.stdout.fileno(), "ready")
        assert "ready" in lines, (lines, proc.stderr.read1(65536))
        inside = facts("\n".join(lines))
        family = descendants(proc.pid)
        daemons = {pid: comm(pid) for pid in family if comm(pid) in DAEMONS}
        command = next(pid for pid in family
                       if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"/usr/bin/python3\0-I\0/probe.py"))
        namespaces = {os.readlink(f"/proc/{pid}/ns/pid") for pid in daemons}
        own = os.readlink(f"/proc/{command}/ns/pid")
        proc.stdin.write(" ".join(map(str, daemons)).encode() + b"\n")
        proc.stdin.flush()
        lines = read_until(proc.stdout.fileno(), "never", timeout=10)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # The daemons really run, each outside the command's PID namespace.
    assert sorted(daemons.values()) == (sorted(DAEMONS) if driver == "fuse" else ["squashfuse"]), daemons
    assert own not in namespaces
    # The control: a process it can see, it can signal, trace and read.
    assert inside["control"] == ["found:kill=ok,ptrace=ok,mem=ok"], inside
    # Nothing of the daemons is visible, and their pids name nothing it can reach.
    assert not [p for p in inside["process"] if p.split(":", 1)[1] in DAEMONS], inside["process"]
    results = facts("\n".join(lines))["daemon"]
    assert len(results) == len(daemons)
    for result in results:
        assert result.split(":", 1)[1] == "kill=ESRCH,ptrace=ESRCH,mem=ENOENT", results


@pytest.fixture(params=["dir", pytest.param("sqfs", marks=pytest.mark.needs_squashfuse)])
def secret_image(request, tree: Path, tmp_path: Path) -> list[str]:
    """The image with /secret (mode 0600) of uid 5: a directory tree (the owner set
    through `rbox unshare`: a subordinate id of the test user's, who cannot read it on
    the host either), or a SquashFS file (fuse-overlayfs over squashfuse has no ACLs, so
    only rbox's mount option makes the kernel check permissions there)."""
    if request.param == "sqfs":
        image = tmp_path / "image.sqfs"
        subprocess.run(["mksquashfs", str(tree), str(image), "-quiet", "-noappend", "-no-progress", "-p",
                        "secret f 600 5 5 echo only uid 5"], check=True, capture_output=True, timeout=60)
        return ["--image", str(image)]
    secret = tree / "secret"
    secret.write_text("only uid 5\n")
    secret.chmod(0o600)
    r = run_rbox("unshare", "--", "chown", "5:5", str(secret))
    assert r.returncode == 0, r.stderr
    return ["--rootfs", str(tree)]


@pytest.mark.parametrize("driver", DRIVERS)
@pytest.mark.needs_subuid
def test_the_overlay_checks_the_commands_own_permissions(driver: str, secret_image: list[str], tmp_path: Path) -> None:
    """The FUSE daemon runs with capabilities over the layers (CAP_DAC_OVERRIDE among
    them); its mount must not lend them (default_permissions): without --root, the
    command reads and writes no file its own ids may not. The control: with --root (root
    inside over these ids) it reads it."""
    script = "cat /secret; echo x > /secret"
    r = run_rbox("run", "--net=none", *secret_image, "--", "/bin/sh", "-c", script, cwd=tmp_path,
                 env={"RBOX_OVERLAY": driver})
    assert r.stdout == "" and r.stderr.count("Permission denied") == 2, r.stdout + r.stderr
    r = run_rbox("run", "--root", "--net=none", *secret_image, "--", "/bin/sh", "-c", script, cwd=tmp_path,
                 env={"RBOX_OVERLAY": driver})
    assert (r.returncode, r.stdout) == (0, "only uid 5\n"), r.stderr


def test_an_overlay_above_the_current_directory_wins_over_its_bind(tmp_path: Path) -> None:
    """The current directory is bound read-write, unless an --overlay at or above it
    covers it: then the command's writes there are the overlay's, and the host's
    directory stays as it was. The control: without the overlay they reach it."""
    project = tmp_path / "src" / "project"
    project.mkdir(parents=True)
    (project / "file").write_text("original\n")
    for options, after in ((["--overlay", str(tmp_path / "src")], "original\n"), ([], "changed\n")):
        r = run_rbox("run", "--net=none", *options, "--", "sh", "-c", "echo changed > file; cat file", cwd=project)
        assert (r.returncode, r.stdout) == (0, "changed\n"), r.stderr
        assert (project / "file").read_text() == after, options
