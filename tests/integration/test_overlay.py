"""Overlays (#14, "What the sandbox sees with an image"): an image is writable and its
writes are gone at exit; --read-only keeps it read-only; --persist DIR keeps the writes
for the next run; --overlay SRC[:UPPER] gives a writable view of a host directory;
--image FILE.sqfs mounts a SquashFS file with squashfuse. Each with the kernel's
overlayfs and with fuse-overlayfs (RBOX_OVERLAY forces the driver), for real.

The image is a busybox-static tree made here (as test_image_run.py's); the SquashFS file
is made from it with mksquashfs.
"""

from __future__ import annotations

import json
import os
import pwd
import stat
import subprocess
from pathlib import Path

import pytest

from tests.conftest import probe
from tests.integration.helpers import busybox_rootfs, live_processes, run_rbox, wait_until

pytestmark = pytest.mark.needs_userns

APPLETS = ("sh", "cat", "id", "ls", "touch", "rm", "mkdir", "mv", "chmod", "chown", "ln", "echo", "stat", "sleep",
           "test", "grep", "head", "wc")
DRIVERS = [pytest.param("kernel", marks=pytest.mark.needs_kernel_overlay),
           pytest.param("fuse", marks=pytest.mark.needs_fuse_overlayfs)]
# What the command changes in the image, one of each kind: a new file, a changed one,
# a deleted one, a directory deleted and made again (opaque), a renamed directory.
CHANGES = ("echo new > /new; echo changed > /etc/os-release; rm /etc/gone; rm -r /usr/share/doc; "
           "mkdir /usr/share/doc; mv /opt /opt2; chmod 700 /work")
SEEN = ("cat /new /etc/os-release; test -e /etc/gone || echo gone; test -e /opt || echo moved; "
        "ls /usr/share/doc | wc -l; stat -c %a /work")
CHANGED = ["new", "changed", "gone", "moved", "0", "700"]


def busybox_tree(root: Path) -> Path:
    busybox_rootfs(root, APPLETS)
    (root / "etc/gone").write_text("deleted inside\n")
    (root / "usr/share/doc/pkg").mkdir(parents=True)
    (root / "usr/share/doc/pkg/README").write_text("doc\n")
    (root / "opt").mkdir()
    return root


def digest(root: Path) -> list[tuple[str, int, int, str]]:
    """Every entry under `root`: path, mode, owner, content or link target."""
    found = []
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        what = os.readlink(path) if path.is_symlink() else path.read_text(errors="replace") if path.is_file() else ""
        found.append((str(path.relative_to(root)), st.st_mode, st.st_uid, what))
    return found


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return busybox_tree(tmp_path_factory.mktemp("overlay") / "rootfs")


@pytest.fixture(scope="module")
def sqfs(tree: Path) -> Path:
    """The tree as a SquashFS file of root's files (as `rbox image export` makes them:
    uid 0 of the archive is root inside, you on the host with --root)."""
    path = tree.parent / "image.sqfs"
    if not path.exists():
        subprocess.run(["mksquashfs", str(tree), str(path), "-quiet", "-noappend", "-no-progress", "-all-root"],
                       check=True,
                       capture_output=True, timeout=60)
    return path


def run(driver: str, image: list[str], script: str, *options: str, cwd: Path) -> tuple[int, str, str]:
    r = run_rbox("run", *image, *options, "--", "/bin/sh", "-c", script, cwd=cwd, env={"RBOX_OVERLAY": driver})
    return r.returncode, r.stdout, r.stderr


@pytest.mark.parametrize("driver", DRIVERS)
def test_the_image_is_writable_and_its_writes_are_gone_at_exit(driver: str, tree: Path, tmp_path: Path) -> None:
    before = digest(tree)
    code, out, err = run(driver, ["--rootfs", str(tree)], f"{CHANGES} && {SEEN}", cwd=tmp_path)
    assert code == 0, err
    assert out.split() == CHANGED, out
    # The next run sees the image as it was; the tree on the host never changed.
    code, out, err = run(driver, ["--rootfs", str(tree)], "cat /etc/os-release /etc/gone; ls /usr/share/doc; "
                                                           "ls /new 2>&1", cwd=tmp_path)
    assert out.splitlines()[:3] == ["ID=rbox-busybox", "deleted inside", "pkg"], out + err
    assert "No such file" in out
    assert digest(tree) == before


@pytest.mark.parametrize("driver", DRIVERS)
def test_persist_keeps_the_writes_for_the_next_run(driver: str, tree: Path, tmp_path: Path) -> None:
    before = digest(tree)
    keep = tmp_path / "keep"
    code, _, err = run(driver, ["--rootfs", str(tree), "--persist", str(keep)], CHANGES, cwd=tmp_path)
    assert code == 0, err
    code, out, err = run(driver, ["--rootfs", str(tree), "--persist", str(keep)], SEEN, cwd=tmp_path)
    assert (code, out.split()) == (0, CHANGED), out + err
    assert digest(tree) == before
    # DIR is yours alone; the changed files are in DIR/upper.
    st = keep.stat()
    assert (stat.S_IMODE(st.st_mode), st.st_uid) == (0o700, os.getuid())
    assert (keep / "upper/new").read_text() == "new\n" and (keep / "work").is_dir()
    assert (keep / "rbox-overlay").read_text() == f"driver={driver}\n"


def test_persist_is_refused_while_another_sandbox_uses_it(tree: Path, tmp_path: Path, spawn) -> None:
    keep = tmp_path / "keep"
    first = spawn("run", "--rootfs", str(tree), "--persist", str(keep), "--", "/bin/sh", "-c",
                  "echo up; sleep 30", cwd=tmp_path)
    assert first.stdout is not None
    assert first.stdout.readline() == "up\n"
    r = run_rbox("run", "--rootfs", str(tree), "--persist", str(keep), "--", "/bin/sh", "-c", "true", cwd=tmp_path)
    assert r.returncode == 125
    assert f"--persist `{keep}` is in use by another rbox" in r.stderr and "hint: " in r.stderr
    first.kill()
    first.wait(timeout=30)
    assert wait_until(lambda: run_rbox("run", "--rootfs", str(tree), "--persist", str(keep), "--", "/bin/sh", "-c",
                                       "true", cwd=tmp_path).returncode == 0, timeout=10)


@pytest.mark.parametrize(("args", "message"), [
    (["--persist", "keep"], "--persist is for an image: it needs --image or --rootfs"),
    (["--read-only"], "--read-only is for an image"),
    (["--rootfs", "{tree}", "--read-only", "--persist", "keep"], "--read-only and --persist exclude each other"),
    (["--rootfs", "{tree}", "--persist", "{tree}/etc/keep"], "overlaps `{tree}`"),
    (["--rootfs", "{tree}", "--persist", "file"], "--persist `file` is not a directory"),
    (["--overlay", "file"], "--overlay `file` is not a directory"),
    (["--overlay", "src:src/up"], "overlaps `{tmp}/src`"),
    (["--image", "{tree}"], "is a directory"),
    (["--image", "./file"], "is not a SquashFS file"),
])
def test_overlay_option_errors(tree: Path, tmp_path: Path, args: list[str], message: str) -> None:
    (tmp_path / "file").write_text("x")
    (tmp_path / "src").mkdir()
    args = [a.format(tree=tree, tmp=tmp_path) for a in args]
    r = run_rbox("run", *args, "--", "true", cwd=tmp_path)
    assert r.returncode == 125, r.stderr
    assert message.format(tree=tree, tmp=tmp_path) in r.stderr and "hint: " in r.stderr


@pytest.mark.parametrize(("image", "driver", "missing"), [("tree", "fuse", "fuse-overlayfs"),
                                                         ("sqfs", "kernel", "squashfuse")])
def test_a_missing_fuse_program_is_named(image: str, driver: str, missing: str, tree: Path, tmp_path: Path,
                                        request: pytest.FixtureRequest) -> None:
    (tmp_path / "bin").mkdir()
    option = ["--rootfs", str(tree)] if image == "tree" else ["--image", str(request.getfixturevalue("sqfs"))]
    r = run_rbox("run", "--net=none", *option, "--", "true", cwd=tmp_path,
                 env={"PATH": str(tmp_path / "bin"), "RBOX_OVERLAY": driver})
    assert r.returncode == 125
    assert f"rbox: error: `{missing}` is not installed" in r.stderr and f"package `{missing}`" in r.stderr


def test_persist_dir_of_another_user_is_refused(tree: Path, tmp_path: Path) -> None:
    # /tmp itself: a directory the user may write but does not own (root's, sticky).
    r = run_rbox("run", "--rootfs", str(tree), "--persist", "/tmp", "--", "true", cwd=tmp_path)
    assert r.returncode == 125 and "--persist `/tmp` belongs to another user" in r.stderr


@pytest.mark.parametrize("driver", DRIVERS)
def test_overlay_of_a_host_directory_without_an_image(driver: str, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "file").write_text("original\n")
    other = tmp_path / "other"
    other.mkdir()
    upper = tmp_path / "upper"
    script = f"echo changed > {src}/file; echo new > {src}/sub/new; rm -r {src}/sub; cat {src}/file; ls {src}"
    # Repeatable: a second --overlay (of `other`) in the first run, written too.
    for options, extra in ((["--overlay", str(src), "--overlay", str(other)], f"; echo x > {other}/x"),
                           (["--overlay", f"{src}:{upper}"], "")):
        r = run_rbox("run", *options, "--", "sh", "-c", script + extra, cwd=tmp_path, env={"RBOX_OVERLAY": driver})
        assert (r.returncode, r.stdout) == (0, "changed\nfile\n"), r.stderr
        assert (src / "file").read_text() == "original\n" and sorted(os.listdir(src)) == ["file", "sub"]
        assert os.listdir(other) == []
    # With UPPER, the next run finds the changes; without, they are gone.
    r = run_rbox("run", "--overlay", f"{src}:{upper}", "--", "sh", "-c", f"cat {src}/file; ls {src}", cwd=tmp_path,
                 env={"RBOX_OVERLAY": driver})
    assert r.stdout == "changed\nfile\n", r.stderr
    assert (upper / "upper/file").read_text() == "changed\n"


@pytest.mark.parametrize("driver", DRIVERS)
@pytest.mark.needs_squashfuse
def test_a_squashfs_image(driver: str, sqfs: Path, tmp_path: Path) -> None:
    code, out, err = run(driver, ["--image", str(sqfs), "--root"], f"{CHANGES} && {SEEN}; id -u", cwd=tmp_path)
    assert (code, out.split()) == (0, [*CHANGED, "0"]), out + err
    code, out, err = run(driver, ["--image", str(sqfs)], "cat /etc/os-release; ls /new 2>&1; touch /x", "--read-only",
                         cwd=tmp_path)
    assert out.startswith("ID=rbox-busybox\n") and "No such file" in out, out + err
    assert code != 0 and "Read-only file system" in err
    # Unmounted with the sandbox: rbox returns when no squashfuse (nor fuse-overlayfs) is left.
    assert not [c for c in live_processes().values()
                if os.path.basename(c.split(" ")[0]) in ("squashfuse", "fuse-overlayfs")]


def test_a_squashfs_image_by_its_relative_name(sqfs: Path) -> None:
    r = run_rbox("run", "--image", sqfs.name, "--read-only", "--", "/bin/cat", "/etc/os-release", cwd=sqfs.parent)
    assert (r.returncode, r.stdout) == (0, "ID=rbox-busybox\n"), r.stderr


@pytest.mark.parametrize("driver", DRIVERS)
def test_protections_with_a_writable_image(driver: str, tree: Path, tmp_path: Path) -> None:
    """As without an image: the project directory writable and really the host's, the
    home read-only, /tmp private, your entry in passwd (in the file itself, so useradd
    works), the sandbox's /etc/hosts."""
    project = tmp_path / "project"
    project.mkdir()
    home = os.path.expanduser("~")
    script = (f"echo data > out; touch {home}/rbox-overlay-test 2>/dev/null && echo home-written; "
              "touch /tmp/private; id -un; grep -c rbox /etc/hosts; echo extra:x:4242:4242::/:/bin/sh >> /etc/passwd "
              "&& grep -c : /etc/passwd")
    code, out, err = run(driver, ["--rootfs", str(tree)], script, cwd=project)
    assert code == 0, err
    assert out.split() == [pwd.getpwuid(os.getuid()).pw_name, "1", "3"]
    assert (project / "out").read_text() == "data\n"
    assert not Path(home, "rbox-overlay-test").exists() and not Path("/tmp/private").exists()
    assert (tree / "etc/passwd").read_text() == "root:x:0:0:root:/root:/bin/sh\n"


@pytest.mark.needs_fuse_overlayfs
def test_check_names_the_overlay_driver() -> None:
    """`rbox check` says which driver this host uses: the kernel's overlayfs exactly
    when the tests' own attempt (conftest's probe) works."""
    name = "kernel: overlayfs in a user namespace (Linux 5.11)"
    for env, uses_kernel in (({}, probe("kernel_overlay") is None), ({"RBOX_OVERLAY": "fuse"}, False)):
        r = run_rbox("check", "--json", env=env)
        found = {f["name"]: f for f in json.loads(r.stdout)}[name]
        assert ("use the kernel's overlayfs" in found["detail"]) == uses_kernel, found
        assert ("use fuse-overlayfs" in found["detail"]) == (not uses_kernel), found


@pytest.mark.parametrize("driver", DRIVERS)
@pytest.mark.needs_squashfuse
def test_a_damaged_squashfs_file_is_reported_not_waited_on(driver: str, tmp_path: Path) -> None:
    """rbox reads the file's superblock (and its config) itself before anything starts:
    a damaged file is an error at once (exit 125), never a daemon left waiting."""
    damaged = tmp_path / "damaged.sqfs"
    damaged.write_bytes(b"hsqs" + b"0" * 500)
    r = run_rbox("run", "--image", str(damaged), "--", "/bin/sh", "-c", "true", cwd=tmp_path,
                 env={"RBOX_OVERLAY": driver}, timeout=20)
    assert r.returncode == 125, r.stderr
    assert f"rbox: error: --image `{damaged}`: SquashFS version" in r.stderr and "\nhint: " in r.stderr
