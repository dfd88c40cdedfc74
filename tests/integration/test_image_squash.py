"""`rbox image export NAME FILE` and `rbox image import FILE.sqfs NAME`, for real: mksquashfs
in its sandbox, the reader in the unpacking sandbox, as the unprivileged user.

The images are tar layers written here with owners, set-id bits and a device; the
exported file is checked with unsquashfs (squashfs-tools), independent of rbox's reader.
"""

from __future__ import annotations

import io
import json
import os
import signal
import stat
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.helpers import descendants, kill_all, live_processes, run_rbox, start_rbox, wait_until
from tests.integration.test_image import CONFIG, oci_layout

pytestmark = [pytest.mark.needs_userns, pytest.mark.needs_squashfs_tools]


def tar_of(entries: list[tuple[str, bytes, int, int, bytes]]) -> bytes:
    """(name, type, mode, uid, data) entries as a tar archive."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, kind, mode, uid, data in entries:
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.uid, info.gid, info.mtime = kind, mode, uid, uid, 1_700_000_000
            if kind == tarfile.SYMTYPE:
                info.linkname = data.decode()
            elif kind == tarfile.CHRTYPE:
                info.devmajor, info.devminor = 1, 3
            info.size = len(data) if kind == tarfile.REGTYPE else 0
            tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
    return out.getvalue()


OWNED = tar_of([("etc", tarfile.DIRTYPE, 0o755, 0, b""), ("etc/os-release", tarfile.REGTYPE, 0o644, 0, b"ID=sq\n"),
                ("bin", tarfile.DIRTYPE, 0o755, 0, b""), ("bin/su", tarfile.REGTYPE, 0o4755, 0, b"#!su\n"),
                ("var", tarfile.DIRTYPE, 0o755, 0, b""), ("var/mail", tarfile.DIRTYPE, 0o2775, 8, b""),
                ("var/mail/x", tarfile.REGTYPE, 0o664, 5, b"mail\n"), ("link", tarfile.SYMTYPE, 0o777, 0, b"/etc"),
                ("null", tarfile.CHRTYPE, 0o666, 0, b""), (".rbox", tarfile.DIRTYPE, 0o755, 0, b""),
                (".rbox/own", tarfile.REGTYPE, 0o644, 0, b"the image's own, not exported\n")])


@pytest.fixture
def env(tmp_path: Path) -> Iterator[dict[str, str]]:
    yield {"RBOX_STORAGE": str(tmp_path / "store")}
    remove_store(tmp_path / "store")


def remove_store(path: Path) -> None:
    """A store's images hold files of subordinate ids, which pytest cannot remove: they
    go where they are yours (rbox unshare)."""
    if path.exists():
        r = run_rbox("unshare", "--", "rm", "-rf", str(path))
        assert r.returncode == 0, r.stderr


def image(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_rbox("image", *args, env=env, cwd=cwd)


def imported(env: dict[str, str], cwd: Path, source: Path, name: str) -> dict[str, object]:
    r = image(env, cwd, "import", str(source), name)
    assert r.returncode == 0, r.stderr
    r = image(env, cwd, "inspect", name, "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)  # type: ignore[no-any-return]


def listing(sqfs: Path) -> dict[str, tuple[str, str]]:
    """unsquashfs's own view of the file: path -> (mode string, uid/gid)."""
    r = subprocess.run(["unsquashfs", "-lln", str(sqfs)], capture_output=True, text=True, check=True)
    found = {}
    for line in r.stdout.splitlines():
        fields = line.split()
        names = [f for f in fields if f.startswith("squashfs-root")]
        if names:
            found[names[0].removeprefix("squashfs-root").lstrip("/") or "."] = (fields[0], fields[1])
    return found


def tree(root: Path) -> dict[str, tuple[int, int, int, bytes]]:
    """Every entry: mode, owners, and content (files) or target (links), seen from the host."""
    out = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        body = os.readlink(p).encode() if p.is_symlink() else p.read_bytes() if stat.S_ISREG(st.st_mode) else b""
        out[str(p.relative_to(root))] = (st.st_mode, st.st_uid, st.st_gid, body)
    return out


@pytest.mark.needs_subuid
def test_export_keeps_owners_and_config_and_imports_back(tmp_path: Path, env: dict[str, str]) -> None:
    (tmp_path / "owned.tar").write_bytes(OWNED)
    oci_layout(tmp_path / "layout")
    imported(env, tmp_path, tmp_path / "layout", "cfg")
    meta = imported(env, tmp_path, tmp_path / "owned.tar", "owned")
    r = image(env, tmp_path, "export", "owned", "owned.sqfs")
    assert (r.returncode, r.stdout) == (0, f"{tmp_path}/owned.sqfs\n"), r.stderr
    found = listing(tmp_path / "owned.sqfs")
    # As in the image inside the user namespace: uid 0 is 0, the others their own ids.
    assert found["etc/os-release"] == ("-rw-r--r--", "0/0")
    assert found["bin/su"] == ("-rwsr-xr-x", "0/0")
    assert found["var/mail"] == ("drwxrwsr-x", "8/8")
    assert found["var/mail/x"] == ("-rw-rw-r--", "5/5")
    assert found["link"][0].startswith("l")
    assert found[".rbox/image.json"] == ("-r--r--r--", "0/0") and ".rbox/own" not in found
    # The config of an image goes along, and comes back with an import.
    r = image(env, tmp_path, "export", "cfg", "cfg.sqfs")
    assert r.returncode == 0, r.stderr
    shown = subprocess.run(["unsquashfs", "-cat", str(tmp_path / "cfg.sqfs"), ".rbox/image.json"],
                           capture_output=True, check=True).stdout
    assert json.loads(shown)["config"] == CONFIG and json.loads(shown)["format"] == 1
    back = imported(env, tmp_path, tmp_path / "cfg.sqfs", "cfg2")
    assert (back["config"], back["kind"]) == (CONFIG, "squashfs")
    # The tree comes back as it was, owners included (/.rbox is rbox's: left out).
    again = imported(env, tmp_path, tmp_path / "owned.sqfs", "owned2")
    before = {k: v for k, v in tree(Path(str(meta["rootfs"]))).items() if not k.startswith(".rbox")}
    assert tree(Path(str(again["rootfs"]))) == before
    assert again["size"] == meta["size"] - len(b"the image's own, not exported\n")


def test_export_refuses_to_overwrite_unless_forced(tmp_path: Path, env: dict[str, str]) -> None:
    (tmp_path / "t.tar").write_bytes(tar_of([("a", tarfile.REGTYPE, 0o644, 0, b"one\n")]))
    imported(env, tmp_path, tmp_path / "t.tar", "t")
    (tmp_path / "out.sqfs").write_bytes(b"precious\n")
    r = image(env, tmp_path, "export", "t", "out.sqfs")
    assert (r.returncode, r.stderr) == (125, f"rbox: error: `{tmp_path}/out.sqfs` exists\n"
                                             "hint: choose another name, or replace it with --force\n")
    assert (tmp_path / "out.sqfs").read_bytes() == b"precious\n"
    r = image(env, tmp_path, "export", "t", "out.sqfs", "--force")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "out.sqfs").read_bytes()[:4] == b"hsqs"
    assert sorted(os.listdir(tmp_path)) == ["out.sqfs", "store", "t.tar"]    # no temporary file left


@pytest.mark.parametrize(("args", "message", "hint"), [
    (["export", "nothing", "x.sqfs"], "no image `nothing`", "rbox image ls"),
    (["export", "t", "/nonexistent/x.sqfs"], "cannot write `/nonexistent/x.sqfs`: No such file or directory",
     "choose a directory that exists and that you may write"),
    (["export", "t", "ro/x.sqfs"], "ro/x.sqfs`: Permission denied", "that you may write"),
    (["export", "t", "."], "is a directory", "name the file to write"),
    (["export", "t"], "`rbox image export` takes 2 argument(s), not 1", "usage: rbox image"),
])
@pytest.mark.needs_unprivileged
def test_export_errors(tmp_path: Path, env: dict[str, str], args: list[str], message: str, hint: str) -> None:
    (tmp_path / "t.tar").write_bytes(tar_of([("a", tarfile.REGTYPE, 0o644, 0, b"one\n")]))
    imported(env, tmp_path, tmp_path / "t.tar", "t")
    (tmp_path / "ro").mkdir(mode=0o555)
    r = image(env, tmp_path, *args)
    assert r.returncode == 125, r.stderr
    assert message in r.stderr and hint in r.stderr.partition("\nhint: ")[2], r.stderr
    assert "Traceback" not in r.stderr
    assert not list((tmp_path / "ro").iterdir())


def test_export_without_mksquashfs_names_the_package(tmp_path: Path, env: dict[str, str]) -> None:
    (tmp_path / "t.tar").write_bytes(tar_of([("a", tarfile.REGTYPE, 0o644, 0, b"one\n")]))
    imported(env, tmp_path, tmp_path / "t.tar", "t")
    (tmp_path / "bin").mkdir()
    r = image({**env, "PATH": str(tmp_path / "bin")}, tmp_path, "export", "t", "x.sqfs")
    assert r.returncode == 125
    assert "rbox: error: `rbox image export` needs mksquashfs, which is not installed" in r.stderr
    assert "hint: install squashfs-tools" in r.stderr and "apt-get install squashfs-tools" in r.stderr
    assert not (tmp_path / "x.sqfs").exists()


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A store with `big`, an image of 32 MiB that does not compress: mksquashfs takes a
    while over it, long enough to be seen and stopped."""
    top = tmp_path_factory.mktemp("big")
    (top / "t.tar").write_bytes(tar_of([("a", tarfile.REGTYPE, 0o644, 0, os.urandom(32 << 20))]))
    env = {"RBOX_STORAGE": str(top / "store")}
    imported(env, top, top / "t.tar", "big")
    (top / "t.tar").unlink()
    yield env
    remove_store(top / "store")


def test_killed_export_leaves_no_file_and_no_process(tmp_path: Path, big: dict[str, str]) -> None:
    """rbox is killed while mksquashfs writes (stopped there, so the moment is certain): no
    FILE, no temporary file, and the sandbox with mksquashfs goes too. Control: the data
    was being written, to the unnamed file (/proc shows mksquashfs's descriptor of it)."""
    out = tmp_path / "out"
    out.mkdir()
    proc = start_rbox("image", "export", "big", str(out / "t.sqfs"), env=big, cwd=tmp_path)
    started: set[int] = set()
    try:
        pid = wait_for_mksquashfs(proc)
        os.kill(pid, signal.SIGSTOP)
        started.update(descendants(proc.pid))
        targets = {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
        assert any(t.startswith(f"{out}/#") for t in targets), targets     # O_TMPFILE: a name like DIR/#1234
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        assert wait_until(lambda: not set(live_processes()) & started, timeout=10), \
            {p: c for p, c in live_processes().items() if p in started}
        assert os.listdir(out) == []
    finally:
        kill_all(started)
        proc.kill()
        proc.communicate(timeout=10)


def test_a_file_made_during_the_export_is_not_replaced(tmp_path: Path, big: dict[str, str]) -> None:
    """FILE appears while mksquashfs runs (stopped there, so the moment is certain): the
    export fails and leaves it as it is; with --force the same race replaces it."""
    for force in ([], ["--force"]):
        dest = tmp_path / f"t{len(force)}.sqfs"
        proc = start_rbox("image", "export", "big", str(dest), *force, env=big, cwd=tmp_path)
        pid = wait_for_mksquashfs(proc)
        os.kill(pid, signal.SIGSTOP)
        dest.write_text("made meanwhile\n")
        os.kill(pid, signal.SIGCONT)
        _, err = proc.communicate(timeout=30)
        if force:
            assert proc.returncode == 0, err
            assert dest.read_bytes()[:4] == b"hsqs"
        else:
            assert proc.returncode == 125
            assert f"`{dest}` exists (made while the export ran)" in err
            assert dest.read_text() == "made meanwhile\n"
        assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def wait_for_mksquashfs(proc: subprocess.Popen[str]) -> int:
    """The pid of the mksquashfs an export started in its sandbox (not `mksquashfs -help`,
    which export.compression runs first, nor a child mksquashfs forks for the pseudo
    file's command, briefly called mksquashfs too)."""
    found: list[int] = []

    def comm(pid: int) -> str:
        return Path(f"/proc/{pid}/comm").read_text().strip()

    def look() -> bool:
        for pid in descendants(proc.pid):
            try:
                parent = int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                if comm(pid) == "mksquashfs" and comm(parent) != "mksquashfs" and b"-noappend" in argv:
                    found.append(pid)
                    return True
            except (OSError, ValueError, IndexError):
                continue
        return proc.poll() is not None
    assert wait_until(look, timeout=30) and found, proc.communicate(timeout=30)
    return found[0]


def test_run_an_imported_squashfs(tmp_path: Path, env: dict[str, str]) -> None:
    """A SquashFS made by mksquashfs itself (not by rbox): imported, it runs."""
    src = tmp_path / "src"
    (src / "bin").mkdir(parents=True)
    busybox = Path("/bin/busybox")
    assert busybox.exists(), "needs busybox-static (.ci/setup-host installs it)"
    (src / "bin/busybox").write_bytes(busybox.read_bytes())
    (src / "bin/busybox").chmod(0o755)
    os.symlink("busybox", src / "bin/sh")
    os.symlink("busybox", src / "bin/cat")
    (src / "etc").mkdir()
    (src / "etc/os-release").write_text("ID=from-squashfs\n")
    subprocess.run(["mksquashfs", str(src), str(tmp_path / "bb.sqfs"), "-quiet", "-no-progress"],
                   check=True, capture_output=True)
    imported(env, tmp_path, tmp_path / "bb.sqfs", "bb")
    r = run_rbox("run", "--image", "bb", "--", "/bin/cat", "/etc/os-release", env=env, cwd=tmp_path)
    assert (r.returncode, r.stdout) == (0, "ID=from-squashfs\n"), r.stderr


@pytest.mark.nosubid
def test_single_id_export_and_import(tmp_path: Path, env: dict[str, str]) -> None:
    """With a single id: the import of a SquashFS flattens owners, clears set-id bits and
    skips devices, each said once; the export stores every file as uid 0."""
    src = tmp_path / "src"
    (src / "bin").mkdir(parents=True)
    (src / "bin/su").write_text("#!su\n")
    subprocess.run(["mksquashfs", str(src), str(tmp_path / "in.sqfs"), "-quiet", "-no-progress",
                    "-p", "bin/su m 4755 0 0", "-p", "bin m 755 5 5", "-p", "null c 666 0 0 1 3",
                    "-p", "zero c 666 0 0 1 5"], check=True, capture_output=True)
    r = image(env, tmp_path, "import", str(tmp_path / "in.sqfs"), "flat")
    assert r.returncode == 0, r.stderr
    lines = r.stderr.splitlines()
    assert lines.count("rbox: notice: device nodes skipped (a user namespace cannot make them)") == 1
    assert lines.count("rbox: notice: set-user-ID and set-group-ID bits cleared (everything belongs to you: "
                       "no subordinate ids)") == 1
    r = image(env, tmp_path, "inspect", "flat", "--json")
    root = Path(json.loads(r.stdout)["rootfs"])
    assert stat.S_IMODE((root / "bin/su").stat().st_mode) == 0o755
    assert {p.stat().st_uid for p in root.rglob("*")} == {os.getuid()}
    r = image(env, tmp_path, "export", "flat", "out.sqfs")
    assert r.returncode == 0, r.stderr
    found = listing(tmp_path / "out.sqfs")
    assert {owners for _, owners in found.values()} == {"0/0"}
    assert found["bin/su"][0] == "-rwxr-xr-x" and "null" not in found


@pytest.mark.needs_squashfuse
def test_run_a_squashfs_file_applies_its_config(tmp_path: Path) -> None:
    """`rbox run --image FILE.sqfs` with no command runs what the file's /.rbox/image.json
    (as `rbox image export` writes it) says, with its Env and WorkingDir; `-e` wins. A
    damaged config is an error, not a silent run."""
    src = tmp_path / "src"
    (src / "bin").mkdir(parents=True)
    (src / "bin/busybox").write_bytes(Path("/bin/busybox").read_bytes())
    (src / "bin/busybox").chmod(0o755)
    for applet in ("sh", "echo", "pwd"):
        os.symlink("busybox", src / "bin" / applet)
    (src / "work").mkdir()
    (src / ".rbox").mkdir()
    config = {"Env": ["PATH=/bin", "FROM_IMAGE=yes"], "Entrypoint": ["/bin/sh", "-c"],
              "Cmd": ["echo $FROM_IMAGE; pwd"], "WorkingDir": "/work"}
    (src / ".rbox/image.json").write_text(json.dumps({"format": 1, "config": config}))
    sqfs = tmp_path / "cfg.sqfs"
    subprocess.run(["mksquashfs", str(src), str(sqfs), "-quiet", "-no-progress"], check=True, capture_output=True)
    r = run_rbox("run", "--image", str(sqfs), cwd=tmp_path)
    assert (r.returncode, r.stdout) == (0, "yes\n/work\n"), r.stderr
    r = run_rbox("run", "-e", "FROM_IMAGE=mine", "--image", str(sqfs), cwd=tmp_path)
    assert (r.returncode, r.stdout) == (0, "mine\n/work\n"), r.stderr
    (src / ".rbox/image.json").write_text('{"format": 1, "config": {"Cmd": "not a list"}}')
    subprocess.run(["mksquashfs", str(src), str(sqfs), "-quiet", "-no-progress", "-noappend"], check=True,
                   capture_output=True)
    r = run_rbox("run", "--image", str(sqfs), cwd=tmp_path)
    assert r.returncode == 125 and "`Cmd` must be a list of strings" in r.stderr and "hint:" in r.stderr, r.stderr
