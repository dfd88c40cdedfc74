"""The SquashFS reader (rootless/image/squash.py) with the unpacker, called directly on a
target directory (the sandbox around them: tests/integration/test_image_squash.py).

Images are made by mksquashfs as the test user (owners, devices and sockets through its
pseudo definitions). Hostile ones are made by patching an image whose tables are stored
uncompressed (-noI -noD -noF -noX): names mksquashfs would never write (`..`, `a/b`, one
name twice, a directory that contains itself). Every attack asserts that nothing outside
the target changed (tests/unit/test_unpack.py's snapshot, with its positive control).
Oracle for the trees: GNU tar unpacking the same source.
"""

from __future__ import annotations

import lzma
import os
import random
import signal
import stat
import struct
import subprocess
import tarfile
import zlib
from pathlib import Path

import pytest

from rootless.image import squash
from rootless.image.unpack import Unpacker, UnpackError, squashfs
from tests.unit.test_unpack import describe, make_sample, snapshot

pytestmark = pytest.mark.needs_squashfs_tools

RAW = ["-noI", "-noD", "-noF", "-noX"]      # tables stored as they are: names can be patched


def mksquashfs(src: Path, out: Path, *extra: str) -> Path:
    subprocess.run(["mksquashfs", str(src), str(out), "-noappend", "-quiet", "-no-progress", "-no-xattrs", *extra],
                   check=True, capture_output=True, stdin=subprocess.DEVNULL)
    return out


def unpack(image: Path, target: Path, keep_owners: bool = False) -> Unpacker:
    fd = os.open(image, os.O_RDONLY)
    u = Unpacker(str(target), keep_owners)
    try:
        squashfs(u, fd)
    finally:
        u.close()
        os.close(fd)
    return u


def members(image: Path) -> dict[str, tarfile.TarInfo]:
    fd = os.open(image, os.O_RDONLY)
    try:
        return {m.name: m for m in squash.Image(fd).members()}
    finally:
        os.close(fd)


@pytest.fixture
def box(tmp_path: Path) -> Path:
    """box/target, beside box/outside and box/secret (what an attack aims at); the
    images are made beside `box`."""
    box = tmp_path / "box"
    (box / "target").mkdir(parents=True)
    (box / "outside").mkdir()
    (box / "secret").write_bytes(b"secret\n")
    return box


# --- the same tree as GNU tar makes ------------------------------------------------------

@pytest.mark.parametrize("options", [["-comp", "gzip"], ["-comp", "xz", "-b", "4K"], ["-comp", "lzma"],
                                     ["-comp", "zstd", "-no-fragments"], ["-comp", "gzip", "-b", "4K", *RAW],
                                     ["-comp", "zstd", "-always-use-fragments", "-b", "8K"]],
                         ids=["gzip", "xz-4K", "lzma", "zstd-nofrag", "raw-4K", "zstd-frag-8K"])
def test_same_tree_as_gnu_tar(tmp_path: Path, options: list[str]) -> None:
    src, ours, theirs = tmp_path / "src", tmp_path / "ours", tmp_path / "theirs"
    make_sample(src)
    (src / "bin/multi").write_bytes(os.urandom(20_000) + bytes(70_000) + os.urandom(10_001))  # blocks, a hole
    ours.mkdir()
    theirs.mkdir()
    subprocess.run(f"tar -C {src} -cf - . | tar -C {theirs} -xpf -", shell=True, check=True)
    u = unpack(mksquashfs(src, tmp_path / "image.sqfs", *options), ours)
    expected = describe(theirs)
    assert len(expected) > 15
    assert describe(ours) == expected
    assert u.size == sum(p.stat().st_size for p in src.rglob("*") if p.is_file() and not p.is_symlink()) - \
        (src / "bin/tool").stat().st_size            # the hard link counted once
    for p in (ours / "ro", theirs / "ro", src / "ro"):
        p.chmod(0o755)      # so that pytest can remove them


def test_owners_devices_sockets_as_members(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "etc").mkdir(parents=True)
    (src / "etc/app").write_text("app\n")
    image = mksquashfs(src, tmp_path / "i.sqfs", "-p", "etc/app m 4750 5 6", "-p", "etc m 755 0 70000",
                       "-p", "null c 666 0 0 1 3", "-p", "sda b 660 0 6 8 0", "-p", "sock i 755 0 0 s",
                       "-p", "fifo i 600 7 7 f", "-p", "abs s 777 0 0 /etc/app")
    found = members(image)
    assert sorted(found) == [".", "abs", "etc", "etc/app", "fifo", "null", "sda"]       # the socket skipped
    app = found["etc/app"]
    assert (app.type, app.mode, app.uid, app.gid, app.size) == (tarfile.REGTYPE, 0o4750, 5, 6, 4)
    assert (found["etc"].uid, found["etc"].gid) == (0, 70000)
    assert (found["null"].type, found["null"].devmajor, found["null"].devminor) == (tarfile.CHRTYPE, 1, 3)
    assert (found["sda"].type, found["sda"].devmajor, found["sda"].devminor) == (tarfile.BLKTYPE, 8, 0)
    assert (found["fifo"].type, found["fifo"].uid) == (tarfile.FIFOTYPE, 7)
    assert (found["abs"].type, found["abs"].linkname) == (tarfile.SYMTYPE, "/etc/app")


def test_extractfile_as_tarfile_does(tmp_path: Path) -> None:
    """A regular file's bytes (read(n) a piece, read() to the end); None for anything else."""
    src = tmp_path / "src"
    src.mkdir()
    data = os.urandom(300_000)
    (src / "f").write_bytes(data)
    os.symlink("f", src / "s")
    fd = os.open(mksquashfs(src, tmp_path / "i.sqfs", "-b", "4K"), os.O_RDONLY)
    try:
        members = squash.Image(fd).members()
        seen = {}
        for m in members:
            reader = members.extractfile(m)
            seen[m.name] = None if reader is None else reader.read(10) + reader.read()
    finally:
        os.close(fd)
    assert seen == {".": None, "f": data, "s": None}


def test_single_id_flattens_strips_and_skips_each_said_once(box: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for name in ("su", "sg", "sticky"):
        (src / name).write_text(name)
    image = mksquashfs(src, tmp_path / "i.sqfs", "-p", "su m 4755 0 0", "-p", "sg m 2755 3 3",
                       "-p", "sticky m 1755 0 0", "-p", "null c 666 0 0 1 3", "-p", "zero c 666 0 0 1 5",
                       "-p", "s1 i 755 0 0 s", "-p", "s2 i 755 0 0 s")
    before = snapshot(box, box / "target")
    u = unpack(image, box / "target")
    assert snapshot(box, box / "target") == before
    modes = {p.name: (stat.S_IMODE(p.stat().st_mode), p.stat().st_uid) for p in (box / "target").iterdir()}
    assert modes == {"su": (0o755, os.getuid()), "sg": (0o755, os.getuid()), "sticky": (0o1755, os.getuid())}
    assert sorted(u.notices) == [
        "device nodes skipped (a user namespace cannot make them)",
        "set-user-ID and set-group-ID bits cleared (everything belongs to you: no subordinate ids)",
        "sockets skipped (an image's sockets are made by its programs when they run)"]


# --- the config an export carries ---------------------------------------------------------

CONFIG = {"Env": ["PATH=/bin", "A=b c"], "Entrypoint": ["/bin/sh", "-c"], "Cmd": ["echo hi"], "WorkingDir": "/w",
          "User": "0"}


def test_config_read_and_left_out_of_the_tree(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / ".rbox").mkdir(parents=True)
    (src / ".rbox/image.json").write_bytes(squash.config_json({"name": "n", "digest": "sha256:x",
                                                              "config": {**CONFIG, "Other": 1}}))
    (src / "etc").mkdir()
    image = mksquashfs(src, tmp_path / "i.sqfs")
    assert squash.read_sqfs_config(str(image)) == CONFIG
    assert sorted(members(image)) == [".", "etc"]
    (tmp_path / "t").mkdir()
    unpack(image, tmp_path / "t")
    assert os.listdir(tmp_path / "t") == ["etc"]


def test_config_through_a_symlink_is_not_read(tmp_path: Path) -> None:
    """/.rbox as a symlink to a directory with an image.json: not followed."""
    src = tmp_path / "src"
    (src / "real").mkdir(parents=True)
    (src / "real/image.json").write_bytes(squash.config_json({"config": CONFIG}))
    os.symlink("real", src / ".rbox")
    assert squash.read_sqfs_config(str(mksquashfs(src, tmp_path / "i.sqfs"))) == {}
    (src / ".rbox").unlink()
    (src / ".rbox").mkdir()
    os.symlink("../real/image.json", src / ".rbox/image.json")
    assert squash.read_sqfs_config(str(mksquashfs(src, tmp_path / "j.sqfs"))) == {}
    # Control: the same file where it belongs is read.
    (src / ".rbox/image.json").unlink()
    (src / ".rbox/image.json").write_bytes(squash.config_json({"config": CONFIG}))
    assert squash.read_sqfs_config(str(mksquashfs(src, tmp_path / "k.sqfs"))) == CONFIG


@pytest.mark.parametrize(("data", "message"), [
    (b"{", "is not valid JSON"),
    (b"[]", "not a JSON object"),
    (b'{"format": 2, "config": {}}', "has format 2; this rbox reads format 1"),
    (b'{"format": 1, "config": {"Env": "PATH=/bin"}}', "`Env` must be a list of strings"),
    (b'{"format": 1, "config": {"Cmd": ["a", 1]}}', "`Cmd` must be a list of strings"),
    (b'{"format": 1, "config": {"WorkingDir": ["/"]}}', "`WorkingDir` must be a string"),
])
def test_invalid_config_is_an_error(data: bytes, message: str) -> None:
    with pytest.raises(squash.SquashError, match=message):
        squash.parse_config(data)


def test_config_keys_only() -> None:
    data = b'{"format": 1, "config": {"Cmd": ["x"], "Volumes": {}, "User": null}}'
    assert squash.parse_config(data) == {"Cmd": ["x"]}


# --- hostile images ----------------------------------------------------------------------

def patch(data: bytes, old: bytes, new: bytes) -> bytes:
    assert len(old) == len(new) and data.count(old) == 1, f"{old!r} must occur once"
    return data.replace(old, new)


def crafted(tmp_path: Path, kind: str, outside: Path) -> Path:
    """An image that mksquashfs would not make, by patching names in its raw tables. The
    attack is in `sub/` (the root's listing is read by the parent too, for the config)."""
    top = tmp_path / f"src-{kind}"
    src = top / "sub"
    src.mkdir(parents=True)
    if kind in ("symlink_then_dir", "absolute_symlink_then_dir"):
        # `sub/escapeAAAA1 -> outside` (beside the target) and a directory `escapeAAAA2/`
        # with a file, renamed to the same name: the file would land in `outside`.
        os.symlink(symlink_target(kind, outside), src / "escapeAAAA1")
        (src / "escapeAAAA2").mkdir()
        (src / "escapeAAAA2/pwned").write_text("pwned\n")
        old, new = b"escapeAAAA2", b"escapeAAAA1"
    elif kind == "dotdot_dir":
        (src / "Qz").mkdir()
        (src / "Qz/outside").mkdir()
        (src / "Qz/outside/pwned").write_text("pwned\n")
        old, new = b"Qz", b".."
    elif kind == "slash_name":
        (src / "upXoutside").mkdir()
        (src / "upXoutside/pwned").write_text("pwned\n")
        old, new = b"upXoutside", b"up/outside"
    elif kind == "nul_name":
        (src / "nulXname").write_text("x")
        old, new = b"nulXname", b"nul\0name"
    else:
        raise AssertionError(kind)
    image = mksquashfs(top, tmp_path / f"{kind}.sqfs", *RAW)
    image.write_bytes(patch(image.read_bytes(), old, new))
    return image


def symlink_target(kind: str, outside: Path) -> str:
    """From TARGET/sub/, the directory `outside` beside TARGET."""
    return str(outside) if kind.startswith("absolute") else "../../outside"


ATTACKS = {"symlink_then_dir": "two entries named b'escapeAAAA1' in one directory",
           "absolute_symlink_then_dir": "two entries named b'escapeAAAA1' in one directory",
           "dotdot_dir": "invalid name b'..'", "slash_name": "invalid name b'up/outside'",
           "nul_name": "invalid name b'nul\\x00name'"}


@pytest.mark.parametrize("kind", sorted(ATTACKS))
def test_crafted_image_is_refused_and_writes_nothing_outside(box: Path, kind: str) -> None:
    (box.parent / "images").mkdir()
    image = crafted(box.parent / "images", kind, box / "outside")
    before = snapshot(box, box / "target")
    with pytest.raises(UnpackError) as caught:
        unpack(image, box / "target")
    assert ATTACKS[kind] in str(caught.value)
    assert snapshot(box, box / "target") == before
    assert not list((box / "outside").iterdir())


def test_probe_sees_an_escape(box: Path) -> None:
    """Positive control for the snapshot: a write outside the target is seen."""
    before = snapshot(box, box / "target")
    (box / "outside" / "pwned").write_text("pwned\n")
    assert snapshot(box, box / "target") != before


def test_crafted_directory_that_contains_itself(tmp_path: Path) -> None:
    """A directory whose entry names the root directory's inode: read once, then refused."""
    src = tmp_path / "src"
    (src / "d/CYCLEDIR").mkdir(parents=True)
    image = mksquashfs(src, tmp_path / "i.sqfs", *RAW)
    data = bytearray(image.read_bytes())
    root = struct.unpack_from("<Q", data, 32)[0]
    name = data.index(b"CYCLEDIR")
    entry, header = name - 8, name - 8 - 12           # `d` has one entry: its header is just before it
    struct.pack_into("<I", data, header + 4, root >> 16)
    struct.pack_into("<H", data, entry, root & 0xFFFF)
    image.write_bytes(bytes(data))
    (tmp_path / "t").mkdir()

    def endless(signum: int, frame: object) -> None:
        raise TimeoutError("the cycle was followed")
    previous = signal.signal(signal.SIGALRM, endless)
    signal.alarm(10)
    try:
        with pytest.raises(UnpackError, match="a directory reached twice"):
            unpack(image, tmp_path / "t")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
        # Followed (a mutant), the cycle leaves a tree deeper than pytest's cleanup (and
        # Python's recursion limit) can remove; rm(1) walks any depth.
        subprocess.run(["rm", "-rf", str(tmp_path / "t")], check=True)


def test_damaged_images_fail_cleanly(box: Path, tmp_path: Path) -> None:
    """Random bytes changed, or the image cut short: the reader fails with UnpackError (never
    another exception, a hang, or a write outside the target)."""
    src = tmp_path / "src"
    make_sample(src)
    (src / "ro").chmod(0o755)
    rng = random.Random(14)
    for number, options in enumerate((RAW, ["-comp", "gzip", "-b", "4K"])):
        good = mksquashfs(src, tmp_path / "good.sqfs", *options).read_bytes()
        tables = struct.unpack_from("<Q", good, 64)[0]       # the inode table, then the others, to the end
        before = snapshot(box, box / "target")
        for round_ in range(80):
            data = bytearray(good)
            if round_ % 8 == 0:
                data = data[:rng.randrange(len(data))]
            else:
                for _ in range(rng.randint(1, 6)):
                    where = rng.randrange(96) if rng.random() < 0.3 else rng.randrange(tables, len(data))
                    data[where] = rng.randrange(256)
            (tmp_path / "bad.sqfs").write_bytes(bytes(data))
            target = box / "target" / f"{number}-{round_}"
            target.mkdir()
            try:
                unpack(tmp_path / "bad.sqfs", target)
            except UnpackError:
                pass
            for p in target.rglob("*"):     # a mode from the damage must not stop the cleanup
                if p.is_dir() and not p.is_symlink():
                    p.chmod(0o755)
        assert snapshot(box, box / "target") == before


def test_blocks_are_decompressed_with_a_bound() -> None:
    big = bytes(1 << 20)
    with pytest.raises(squash.SquashError):
        squash._zlib(zlib.compress(big), 8192)
    with pytest.raises(squash.SquashError):
        squash._lzma(lzma.compress(big), 8192, lzma.FORMAT_XZ)
    zstd = subprocess.run(["zstd", "-q", "-c"], input=big, capture_output=True, check=True).stdout
    small = subprocess.run(["zstd", "-q", "-c"], input=big[:8192], capture_output=True, check=True).stdout
    for decompress in (squash._zstd, squash._zstd_program):        # libzstd, and the program without it
        with pytest.raises(squash.SquashError):
            decompress(zstd, 8192)
        assert decompress(small, 8192) == big[:8192]                # control
    assert squash._zlib(zlib.compress(big[:8192]), 8192) == big[:8192]


def test_unreadable_compression_is_refused_with_the_way_out(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    image = mksquashfs(tmp_path / "src", tmp_path / "i.sqfs", "-comp", "lz4")
    with pytest.raises(squash.SquashError, match="compressed with lz4, which rbox cannot read") as caught:
        squash.read_sqfs_config(str(image))
    assert "-comp gzip" in str(caught.value)


def test_not_a_squashfs(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"hsqs" + bytes(200))
    with pytest.raises(squash.SquashError, match="SquashFS version 0.0"):
        squash.read_sqfs_config(str(tmp_path / "f"))
    os.mkfifo(tmp_path / "fifo")
    assert not squash.is_squashfs(str(tmp_path / "fifo"))      # not opened: it would block
    assert not squash.is_squashfs(str(tmp_path / "missing"))
