"""The unpacker's own rules, called directly on a target directory (the sandbox around
it is tested in tests/security/test_image_unpack.py).

Every attack case asserts that nothing outside the target changed: the target lives in
`box/target`, beside `box/outside` (a directory the archives aim at) and `box/secret`
(a file they try to link or overwrite); the whole of `box` except `target` is compared
before and after. Positive controls: GNU tar unpacks the same archives as the oracle.
"""

from __future__ import annotations

import io
import os
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest

from rootless.image.unpack import Unpacker, UnpackError


def entry(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", link: str = "", mode: int = 0o644,
          uid: int = 0, gid: int = 0) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode, info.uid, info.gid = kind, link, mode, uid, gid
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    info.mtime = 1_700_000_000
    return info, data


def archive(*entries: tuple[tarfile.TarInfo, bytes], fmt: int = tarfile.PAX_FORMAT) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=fmt) as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if info.type == tarfile.REGTYPE else None)
    return out.getvalue()


def d(name: str, mode: int = 0o755) -> tuple[tarfile.TarInfo, bytes]:
    return entry(name, tarfile.DIRTYPE, mode=mode)


def f(name: str, data: bytes = b"x", mode: int = 0o644) -> tuple[tarfile.TarInfo, bytes]:
    return entry(name, tarfile.REGTYPE, data, mode=mode)


def sym(name: str, link: str) -> tuple[tarfile.TarInfo, bytes]:
    return entry(name, tarfile.SYMTYPE, link=link, mode=0o777)


def hard(name: str, link: str) -> tuple[tarfile.TarInfo, bytes]:
    return entry(name, tarfile.LNKTYPE, link=link)


def snapshot(top: Path, skip: Path) -> dict[str, tuple[int, bytes]]:
    """Every path below `top` but `skip`, with its mode and (files, links) content."""
    seen: dict[str, tuple[int, bytes]] = {}
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames[:] = [n for n in dirnames if Path(dirpath, n) != skip]
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            st = p.lstat()
            body = os.readlink(p).encode() if p.is_symlink() else p.read_bytes() if p.is_file() else b""
            seen[str(p)] = (st.st_mode, body)
    return seen


@pytest.fixture
def box(tmp_path: Path) -> Path:
    (tmp_path / "target").mkdir()
    (tmp_path / "outside").mkdir()
    (tmp_path / "secret").write_bytes(b"secret\n")
    return tmp_path


def unpack(target: Path, *layers: bytes, keep_owners: bool = False, in_root: bool | None = None) -> Unpacker:
    u = Unpacker(str(target), keep_owners, in_root)
    try:
        for layer in layers:
            u.layer(io.BytesIO(layer))
    finally:
        u.close()
    return u


# Each case: the layers, and whether the unpacker must refuse (True) or may go on.
OUT = "../outside"
ATTACKS = {
    "dot_symlink": ([archive(sym(".", OUT)), archive(f("f"))], True),
    "dot_slash_symlink": ([archive(sym("./", "/")), archive(f("f"))], True),
    "cross_layer_dotdot": ([archive(sym("x", "..")), archive(f("x/f"))], False),
    # The link resolves inside the target, where there is no such directory: refused.
    "cross_layer_deep": ([archive(sym("x", "../../outside")), archive(f("x/f"))], True),
    "cross_layer_absolute": ([archive(sym("x", str(Path.cwd()))), archive(f("x/f"))], True),
    "same_layer_symlink_parent": ([archive(sym("x", OUT), f("x/f"))], True),
    "dotdot_name": ([archive(f("../outside/f"))], True),
    "dotdot_inside": ([archive(d("a"), f("a/../../outside/f"))], True),
    "absolute_name": ([archive(f("/outside/f"))], False),
    "absolute_hardlink": ([archive(hard("h", "/etc/passwd"))], True),
    "dotdot_hardlink": ([archive(hard("h", "../secret"))], True),
    "hardlink_to_symlink": ([archive(sym("s", "../secret"), hard("h", "s"))], True),
    "hardlink_through_symlink_dir": ([archive(sym("x", ".."), hard("h", "x/secret"))], True),
    "symlink_then_file_same_name": ([archive(sym("f", "../secret"), f("f", b"pwned"))], False),
    "symlink_then_file_next_layer": ([archive(sym("f", "../secret")), archive(f("f", b"pwned"))], False),
    "whiteout_dotdot": ([archive(f(".wh.."))], True),
    "whiteout_through_symlink": ([archive(sym("x", "..")), archive(f("x/.wh.secret"))], False),
    "opaque_through_symlink": ([archive(sym("x", "../outside")), archive(f("x/.wh..wh..opq"))], True),
    "device_node": ([archive(entry("null", tarfile.CHRTYPE), entry("sda", tarfile.BLKTYPE))], False),
    "long_component": ([archive(f("a" * 300))], True),
    # Longer than PATH_MAX in all, made one component at a time: it lands inside.
    "long_path": ([archive(f("/".join(["d" * 200] * 25)))], False),
    "type_change_dir_to_symlink": ([archive(d("x"), f("x/keep")), archive(sym("x", OUT)), archive(f("x/f"))],
                                   True),
    "type_change_file_to_dir": ([archive(f("x")), archive(d("x"), f("x/f"))], False),
}


@pytest.mark.parametrize("in_root", [True, False], ids=["openat2", "nofollow"])
@pytest.mark.parametrize("case", sorted(ATTACKS))
def test_attack_stays_inside(box: Path, case: str, in_root: bool) -> None:
    layers, refused = ATTACKS[case]
    before = snapshot(box, box / "target")
    # Without openat2, a path through a symlink is refused instead of resolved.
    through_symlink = case.startswith(("cross_layer", "same_layer", "whiteout_through", "opaque_through",
                                       "type_change_dir_to_symlink"))
    if refused or (through_symlink and not in_root):
        with pytest.raises(UnpackError):
            unpack(box / "target", *layers, in_root=in_root)
    else:
        unpack(box / "target", *layers, in_root=in_root)
    assert snapshot(box, box / "target") == before
    assert (box / "secret").read_bytes() == b"secret\n"


def test_probe_sees_an_escape(box: Path) -> None:
    """Positive control for the snapshot: a write outside the target is seen."""
    before = snapshot(box, box / "target")
    (box / "outside" / "f").write_bytes(b"x")
    assert snapshot(box, box / "target") != before


def test_cross_layer_lands_inside(box: Path) -> None:
    """`x -> ..` then `x/f`: f is resolved with the target as `/`, so it lands at its top."""
    unpack(box / "target", archive(sym("x", "..")), archive(f("x/f", b"data")), in_root=True)
    assert (box / "target" / "f").read_bytes() == b"data"
    assert os.readlink(box / "target" / "x") == ".."


def test_usr_merge_layers(box: Path) -> None:
    """The legitimate use of a symlinked parent: `lib -> usr/lib`, then `lib/x`."""
    unpack(box / "target", archive(d("usr"), d("usr/lib"), sym("lib", "usr/lib")), archive(f("lib/x", b"so")),
           in_root=True)
    assert (box / "target/usr/lib/x").read_bytes() == b"so"


def test_symlink_replaced_not_followed(box: Path) -> None:
    unpack(box / "target", archive(sym("f", "../secret")), archive(f("f", b"new")))
    assert (box / "target/f").read_bytes() == b"new" and not (box / "target/f").is_symlink()


def test_hardlink_to_file_inside(box: Path) -> None:
    unpack(box / "target", archive(f("a", b"one")), archive(hard("b", "a")))
    assert os.stat(box / "target/a").st_ino == os.stat(box / "target/b").st_ino


def test_devices_skipped_with_one_notice(box: Path) -> None:
    u = unpack(box / "target", archive(entry("null", tarfile.CHRTYPE), entry("zero", tarfile.CHRTYPE)))
    assert u.notices == ["device nodes skipped (a user namespace cannot make them)"]
    assert os.listdir(box / "target") == []


def test_setid_stripped_when_flattened(box: Path) -> None:
    u = unpack(box / "target", archive(f("su", mode=0o4755), f("sg", mode=0o2755), f("plain", mode=0o1755)))
    assert stat.S_IMODE(os.stat(box / "target/su").st_mode) == 0o755
    assert stat.S_IMODE(os.stat(box / "target/sg").st_mode) == 0o755
    assert stat.S_IMODE(os.stat(box / "target/plain").st_mode) == 0o1755   # the sticky bit stays
    assert len(u.notices) == 1 and "set-user-ID" in u.notices[0]


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_whiteout_removes_lower(box: Path) -> None:
    unpack(box / "target", archive(d("a"), f("a/x"), f("a/y")), archive(f("a/.wh.x")))
    assert tree(box / "target") == ["a", "a/y"]


@pytest.mark.parametrize("marker_last", [False, True], ids=["marker_first", "marker_last"])
def test_opaque_directory(box: Path, marker_last: bool) -> None:
    """An opaque marker hides the lower layers' entries, wherever it comes in its layer,
    and keeps what its own layer put there (also in a directory the lower layer had)."""
    upper = [f("a/new"), f("a/sub/mine")]
    marker = [f("a/.wh..wh..opq")]
    unpack(box / "target", archive(d("a"), f("a/old"), d("a/sub"), f("a/sub/lower"), f("b")),
           archive(*(upper + marker if marker_last else marker + upper)))
    assert tree(box / "target") == ["a", "a/new", "a/sub", "a/sub/mine", "b"]


def test_type_change_between_layers(box: Path) -> None:
    unpack(box / "target", archive(d("x"), f("x/in")), archive(f("x", b"file")), archive(sym("y", "x")))
    assert (box / "target/x").read_bytes() == b"file"
    assert os.readlink(box / "target/y") == "x"


def test_not_a_tar(box: Path) -> None:
    with pytest.raises(UnpackError, match="not a valid tar"):
        unpack(box / "target", b"\x00garbage" * 200)


# --- GNU tar as the oracle --------------------------------------------------------------

def make_sample(src: Path) -> None:
    """A small tree with every kind of entry an image has."""
    (src / "etc").mkdir(parents=True)
    (src / "etc/os-release").write_text("ID=test\n")
    (src / "bin").mkdir()
    (src / "bin/tool").write_bytes(os.urandom(300_000))
    (src / "bin/tool").chmod(0o755)
    os.link(src / "bin/tool", src / "bin/tool2")
    (src / "usr/lib").mkdir(parents=True)
    os.symlink("usr/lib", src / "lib")
    os.symlink("/etc/os-release", src / "usr/lib/os-release")
    os.symlink("missing", src / "dangling")
    (src / "tmp").mkdir()
    (src / "tmp").chmod(0o1777)
    (src / "ro").mkdir()
    (src / "ro/file").write_text("ro\n")
    (src / "ro").chmod(0o555)
    (src / "empty").write_bytes(b"")
    os.mkfifo(src / "fifo")
    os.makedirs(src / ("deep/" + "n" * 120 + "/" + "m" * 120))
    (src / ("deep/" + "n" * 120 + "/" + "m" * 120 + "/long-" + "l" * 150)).write_text("long\n")
    (src / os.fsdecode(b"latin-\xe9")).write_text("bytes\n")
    (src / "private").write_text("p\n")
    (src / "private").chmod(0o600)


def describe(root: Path) -> dict[str, tuple[str, int, bytes]]:
    out = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        rel = os.fsencode(str(p.relative_to(root))).decode("latin-1")
        if stat.S_ISLNK(st.st_mode):
            out[rel] = ("link", 0, os.readlink(p).encode())
        elif stat.S_ISREG(st.st_mode):
            out[rel] = ("file", stat.S_IMODE(st.st_mode), p.read_bytes() + b"/nlink=%d" % st.st_nlink)
        else:
            out[rel] = (oct(stat.S_IFMT(st.st_mode)), stat.S_IMODE(st.st_mode), b"")
    return out


@pytest.mark.parametrize("fmt", ["gnu", "pax", "ustar-gz", "xz"])
def test_same_tree_as_gnu_tar(tmp_path: Path, fmt: str) -> None:
    src, ours, theirs = tmp_path / "src", tmp_path / "ours", tmp_path / "theirs"
    make_sample(src)
    theirs.mkdir()
    ours.mkdir()
    layer = tmp_path / "layer.tar"
    flags = {"gnu": ["--format=gnu"], "pax": ["--format=pax"], "ustar-gz": ["--format=gnu", "-z"],
             "xz": ["--format=pax", "-J"]}[fmt]
    subprocess.run(["tar", *flags, "-cf", str(layer), "-C", str(src), "."], check=True)
    subprocess.run(["tar", "-xpf", str(layer), "-C", str(theirs)], check=True)
    with open(layer, "rb") as stream:
        u = Unpacker(str(ours), False)
        u.layer(stream)
        u.close()
    expected = describe(theirs)
    assert len(expected) > 15
    assert describe(ours) == expected
    for p in (ours / "ro", theirs / "ro"):
        p.chmod(0o755)      # so that pytest can remove them
