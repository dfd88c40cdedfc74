"""umoci as the oracle of the unpacker: one OCI layout, unpacked by `umoci unpack
--rootless` and imported by rbox, gives the same tree (names, types, modes, owners, link
targets, contents, hard links, times).

The image is three layers written here as a `docker save` archive and turned into an OCI
layout by skopeo (so the layout is skopeo's, not the tests'): a base with every kind of
entry, then whiteouts of a file and of a whole directory, an opaque directory (its
marker before, and in the last layer after, the entries of its own layer), a file
written through the usr-merge symlink `lib -> usr/lib`, types that change between
layers, a hard link to a file of a lower layer.

Owners: umoci --rootless stores each entry's owner in the `user.rootlesscontainers`
xattr (a protobuf: uid = 1, gid = 2; 2^32-1 means 0, the rootless user); rbox keeps them
as subordinate ids (uid N is base + N - 1 on the host, 0 is you). Differences by design,
checked as such: a device node is an empty file in umoci's tree and absent in rbox's
(rbox skips devices, with a notice); umoci cannot record the owner of a symlink or a
FIFO (the kernel refuses user xattrs on them) nor of an entry in a read-only directory,
so those owners are compared only on rbox's side against the layers.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pwd
import stat
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests.integration.helpers import run_rbox
from tests.integration.test_image_squash import remove_store

# openat2: layer 2 writes `lib/new.so` through the image's `lib -> usr/lib`.
pytestmark = [pytest.mark.needs_userns, pytest.mark.needs_subuid, pytest.mark.needs_oci_tools,
              pytest.mark.needs_openat2]

D, F, L, H, C, P = (tarfile.DIRTYPE, tarfile.REGTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.CHRTYPE,
                    tarfile.FIFOTYPE)
NOOP = 0xFFFFFFFF
LATIN = os.fsdecode(b"caf\xe9")


def layer(entries: list[tuple[str, bytes, int, int, bytes]]) -> bytes:
    """(name, type, mode, uid, data or link target) as a PAX tar; gid = uid + 1."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for number, (name, kind, mode, uid, data) in enumerate(entries):
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.uid, info.gid = kind, mode, uid, uid + 1
            info.mtime = 1_700_000_000 + number
            if kind in (L, H):
                info.linkname, data = data.decode(), b""
            if kind == C:
                info.devmajor, info.devminor = 1, 3
            info.size = len(data) if kind == F else 0
            tar.addfile(info, io.BytesIO(data) if kind == F else None)
    return out.getvalue()


LAYERS = [
    layer([("etc", D, 0o755, 0, b""), ("etc/passwd", F, 0o644, 0, b"root:x:0:0::/root:/bin/sh\n"),
           ("etc/gone", F, 0o600, 5, b"gone"), ("etc/shadow", F, 0o640, 0, b"secret"),
           ("usr", D, 0o755, 0, b""), ("usr/lib", D, 0o755, 0, b""), ("usr/lib/libx.so", F, 0o755, 0, b"\x7fELF"),
           ("lib", L, 0o777, 0, b"usr/lib"), ("bin", D, 0o755, 0, b""), ("bin/su", F, 0o4755, 0, b"su"),
           ("bin/sg", F, 0o2711, 0, b"sg"), ("bin/link", L, 0o777, 0, b"su"), ("bin/hard", H, 0o644, 0, b"bin/su"),
           ("abs", L, 0o777, 0, b"/etc/passwd"), ("dangling", L, 0o777, 0, b"nowhere"),
           ("dev", D, 0o755, 0, b""), ("dev/null", C, 0o666, 0, b""), ("fifo", P, 0o640, 3, b""),
           ("tmp", D, 0o1777, 0, b""), ("var", D, 0o755, 0, b""), ("var/mail", D, 0o2775, 8, b""),
           ("var/mail/m", F, 0o660, 65000, b"mail"), ("gonedir", D, 0o755, 0, b""), ("gonedir/a", F, 0o644, 0, b"a"),
           ("gonedir/sub", D, 0o755, 0, b""), ("gonedir/sub/b", F, 0o644, 0, b"b"),
           ("opaque", D, 0o755, 0, b""), ("opaque/old", F, 0o644, 0, b"old"), ("opaque/sub", D, 0o700, 7, b""),
           ("opaque/sub/x", F, 0o644, 7, b"x"), ("opaque2", D, 0o755, 0, b""), ("opaque2/old", F, 0o644, 0, b"o"),
           ("typechg", D, 0o755, 0, b""), ("typechg/in", F, 0o644, 0, b"in"), ("was_file", F, 0o644, 0, b"f"),
           ("ro", D, 0o555, 0, b""), ("ro/file", F, 0o444, 0, b"ro"), (LATIN, F, 0o644, 0, b"latin-1 name"),
           ("deep/" + "d" * 200 + "/" + "e" * 200 + "/f", F, 0o644, 0, b"deep"),
           ("big", F, 0o644, 0, os.urandom(300_000))]),
    layer([("etc/.wh.gone", F, 0o644, 0, b""), (".wh.gonedir", F, 0o644, 0, b""),
           ("opaque/.wh..wh..opq", F, 0o644, 0, b""), ("opaque/new", F, 0o640, 9, b"new"),
           ("typechg", F, 0o600, 0, b"now a file"), ("was_file", D, 0o750, 2, b""), ("was_file/in", F, 0o644, 2, b"i"),
           ("lib/new.so", F, 0o755, 0, b"through the usr-merge link"), ("etc/added", F, 0o600, 60000, b"hi"),
           ("dir2", D, 0o2750, 4, b""), ("bin/link", F, 0o755, 0, b"a file now")]),
    layer([("opaque2/new", F, 0o644, 0, b"n"), ("opaque2/.wh..wh..opq", F, 0o644, 0, b""),
           ("bin/hard2", H, 0o644, 0, b"etc/passwd"), ("etc/passwd", F, 0o644, 0, b"root:x:0:0::/:/bin/sh\n"),
           ("usr/lib/.wh.libx.so", F, 0o644, 0, b"")]),
]


def docker_archive(path: Path) -> None:
    diff_ids = ["sha256:" + hashlib.sha256(data).hexdigest() for data in LAYERS]
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Cmd": ["/bin/sh"]},
                         "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()
    name = hashlib.sha256(config).hexdigest() + ".json"
    members = {name: config, **{f"l{i}/layer.tar": data for i, data in enumerate(LAYERS)}}
    members["manifest.json"] = json.dumps([{"Config": name, "RepoTags": ["oracle:1"],
                                            "Layers": [f"l{i}/layer.tar" for i in range(len(LAYERS))]}]).encode()
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for member, data in members.items():
            info = tarfile.TarInfo(member)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    path.write_bytes(out.getvalue())


def subordinate_base() -> int:
    user = pwd.getpwuid(os.getuid()).pw_name
    for line in Path("/etc/subuid").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in (user, str(os.getuid())):
            return int(rest.partition(":")[0])
    raise AssertionError("no subordinate range")


def describe(root: Path, owner) -> dict[str, list[object]]:  # type: ignore[no-untyped-def]
    """path -> [type, mode, owner in the image or None, content digest or link target,
    mtime, inode group] (JSON's types: rbox's side is described inside `rbox unshare`,
    where every file of the image is readable); the inode group numbers hard-linked
    files alike."""
    found: dict[str, list[object]] = {}
    inodes: dict[int, int] = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        kind = stat.S_IFMT(st.st_mode)
        if stat.S_ISREG(st.st_mode):
            body = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            body = os.fsencode(os.readlink(path)).decode("latin-1") if stat.S_ISLNK(st.st_mode) else ""
        group = inodes.setdefault(st.st_ino, len(inodes)) if stat.S_ISREG(st.st_mode) and st.st_nlink > 1 else -1
        name = os.fsencode(str(path.relative_to(root))).decode("latin-1")
        found[name] = [oct(kind), stat.S_IMODE(st.st_mode), owner(path, st), body,
                       int(st.st_mtime) if not stat.S_ISDIR(st.st_mode) else 0, group]
    return found


def namespace_owner(path: Path, st: os.stat_result) -> list[int] | None:
    """Inside `rbox unshare` (uid 0 is you, N your subordinate base + N - 1): the image's ids."""
    return None if stat.S_ISLNK(st.st_mode) or stat.S_ISFIFO(st.st_mode) else [st.st_uid, st.st_gid]


def umoci_owner(path: Path, st: os.stat_result) -> list[int] | None:
    if stat.S_ISLNK(st.st_mode) or stat.S_ISFIFO(st.st_mode):
        return None                                 # umoci cannot record it (see the docstring)
    try:
        data = os.getxattr(path, "user.rootlesscontainers", follow_symlinks=False)
    except OSError:
        return None                                 # not recorded
    fields, i = {1: 0, 2: 0}, 0
    while i < len(data):                            # protobuf: a varint key, a varint value
        key, i = _varint(data, i)
        value, i = _varint(data, i)
        fields[key >> 3] = 0 if value == NOOP else value
    return [fields[1], fields[2]]


def _varint(data: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[i]
        value |= (byte & 0x7F) << shift
        i, shift = i + 1, shift + 7
        if not byte & 0x80:
            return value, i


def test_rbox_unpacks_what_umoci_unpacks(tmp_path: Path) -> None:
    docker_archive(tmp_path / "saved.tar")
    subprocess.run(["skopeo", "copy", "-q", f"docker-archive:{tmp_path}/saved.tar", f"oci:{tmp_path}/layout:t"],
                   check=True, capture_output=True)
    subprocess.run(["umoci", "unpack", "--rootless", "--image", f"{tmp_path}/layout:t", str(tmp_path / "bundle")],
                   check=True, capture_output=True)
    env = {"RBOX_STORAGE": str(tmp_path / "store")}
    try:
        compare(tmp_path, env)
    finally:
        remove_store(tmp_path / "store")


def compare(tmp_path: Path, env: dict[str, str]) -> None:
    r = run_rbox("image", "import", f"oci:{tmp_path}/layout:t", "oracle", env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stderr == "rbox: notice: device nodes skipped (a user namespace cannot make them)\n"
    r = run_rbox("unshare", "--", sys.executable, __file__, str(tmp_path / "store/images/oracle/rootfs"), env=env,
                 cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    ours = json.loads(r.stdout)
    theirs = json.loads(json.dumps(describe(tmp_path / "bundle/rootfs", umoci_owner)))
    # By design: umoci makes an empty file for a device node; rbox skips it.
    assert theirs.pop("dev/null")[:2] == [oct(stat.S_IFREG), 0o666] and "dev/null" not in ours
    # Owners where umoci recorded them (not on symlinks, FIFOs, nor in a read-only
    # directory, where it cannot set the xattr); the rest compared whole.
    recorded = {name: entry[2] for name, entry in theirs.items() if entry[2] is not None}
    assert len(recorded) > 20
    owners = {name: entry[2] for name, entry in ours.items()}
    assert {name: owners[name] for name in recorded if name in ours} == recorded
    for entry in (*ours.values(), *theirs.values()):
        entry[2] = None
    assert ours == theirs
    # The layers' own words, so that an error shared by both would still show.
    assert ours["lib"][3] == "usr/lib" and ours["usr/lib/new.so"][0] == oct(stat.S_IFREG)
    assert "usr/lib/libx.so" not in ours and "gonedir" not in ours and "etc/gone" not in ours
    assert sorted(n for n in ours if n.startswith("opaque")) == ["opaque", "opaque/new", "opaque2", "opaque2/new"]
    assert ours["bin/hard"][5] == ours["bin/su"][5] >= 0
    # bin/hard2 links the lower layer's etc/passwd, which its own layer then replaces:
    # the link keeps the old file, as with tar.
    assert ours["bin/hard2"][3] == hashlib.sha256(b"root:x:0:0::/root:/bin/sh\n").hexdigest() != ours["etc/passwd"][3]
    assert owners["var/mail/m"] == [65000, 65001] and owners["ro/file"] == [0, 1] and ours["bin/su"][1] == 0o4755
    assert ours["typechg"][0] == oct(stat.S_IFREG) and ours["was_file"][0] == oct(stat.S_IFDIR)
    # The owners umoci cannot record: rbox's as the layers give them.
    st = (tmp_path / "store/images/oracle/rootfs/fifo").lstat()
    assert (st.st_uid, st.st_gid) == (subordinate_base() + 2, subordinate_base() + 3)
    (tmp_path / "bundle/rootfs/ro").chmod(0o755)       # so that pytest can remove it


if __name__ == "__main__":
    # Run by the test inside `rbox unshare`: rbox's tree described with the image's ids.
    print(json.dumps(describe(Path(sys.argv[1]), namespace_owner)))
