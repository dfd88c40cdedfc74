"""A real distribution: the Debian 11 (bullseye) minbase userland that .ci/run builds with
mmdebstrap (.ci/debian-image; the host is Debian 12), imported from its tar and run.

It really is another userland (os-release, dpkg's database, apt), `id` and `whoami`
name you (root with --root), its owners and set-user-ID bits are kept, GNU tar unpacking
the same tar as uid 0 of `rbox unshare` gives the same tree, and its export to SquashFS
reads back (rbox's reader against unsquashfs's listing).
"""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import re
import stat
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from rootless.image import squash
from tests.conftest import debian_image
from tests.integration import test_image_oracle
from tests.integration.helpers import run_rbox
from tests.integration.test_image_squash import remove_store

ORACLE = test_image_oracle.__file__          # run as a script: describes a tree as JSON

pytestmark = [pytest.mark.needs_userns, pytest.mark.needs_debian_image, pytest.mark.needs_squashfs_tools]


@pytest.fixture(scope="module")
def deb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[dict[str, str], Path]]:
    """The image `deb` in a store of this module's; a project directory to run from."""
    top = tmp_path_factory.mktemp("debian")
    env = {"RBOX_STORAGE": str(top / "store")}
    (top / "project").mkdir()
    try:
        r = run_rbox("image", "import", debian_image(), "deb", env=env, cwd=top, timeout=120)
        assert r.returncode == 0, r.stderr
        assert r.stderr.count("device nodes skipped") == 1
        yield env, top / "project"
    finally:
        remove_store(top / "store")


def inside(deb: tuple[dict[str, str], Path], *argv: str) -> str:
    env, project = deb
    r = run_rbox("run", *argv, env=env, cwd=project)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_it_is_debian_11_on_a_debian_12_host(deb: tuple[dict[str, str], Path]) -> None:
    release = dict(line.split("=", 1) for line in inside(deb, "--image", "deb", "--", "cat", "/etc/os-release")
                   .splitlines() if "=" in line)
    assert release["VERSION_CODENAME"] == "bullseye" and release["ID"] == "debian"
    host = Path("/etc/os-release").read_text()
    assert "VERSION_CODENAME=bullseye" not in host
    assert inside(deb, "--image", "deb", "--", "cat", "/etc/debian_version").startswith("11.")


def test_dpkg_and_apt_work(deb: tuple[dict[str, str], Path]) -> None:
    out = inside(deb, "--image", "deb", "--", "dpkg-query", "-W", "-f", "${Package} ${Status}\\n", "dpkg", "apt")
    assert out.splitlines() == ["apt install ok installed", "dpkg install ok installed"]
    assert "\nii  coreutils " in inside(deb, "--image", "deb", "--", "dpkg", "-l")
    listed = inside(deb, "--image", "deb", "--", "sh", "-c", "apt list --installed 2>/dev/null")
    assert any(line.startswith("apt/") and "[installed" in line for line in listed.splitlines())
    assert inside(deb, "--image", "deb", "--", "apt", "--version").startswith("apt 2.2.")     # bullseye's


def test_id_and_whoami_name_you(deb: tuple[dict[str, str], Path]) -> None:
    me = pwd.getpwuid(os.getuid()).pw_name
    assert inside(deb, "--image", "deb", "--", "sh", "-c", "whoami; id -un; id -u").split() == \
        [me, me, str(os.getuid())]
    assert inside(deb, "--root", "--image", "deb", "--", "sh", "-c", "whoami; id -u").split() == ["root", "0"]


@pytest.mark.needs_subuid
def test_owners_and_set_user_id_bits_stay(deb: tuple[dict[str, str], Path]) -> None:
    # Numeric ids: names come from the image's /etc/group, which rbox reads with openat2.
    out = inside(deb, "--root", "--image", "deb", "--", "stat", "-c", "%u:%g %a", "/etc/shadow", "/usr/bin/passwd",
                 "/bin/mount")
    assert out.splitlines() == ["0:42 640", "0:0 4755", "0:0 4755"]
    # Without --root the image's ids are the same numbers (its root's files are yours).
    out = inside(deb, "--image", "deb", "--", "stat", "-c", "%u:%g %a", "/etc/shadow", "/usr/bin/passwd")
    assert out.splitlines() == [f"{os.getuid()}:42 640", f"{os.getuid()}:{os.getgid()} 4755"]


@pytest.mark.needs_subuid
def test_same_tree_as_gnu_tar(deb: tuple[dict[str, str], Path], tmp_path: Path) -> None:
    """GNU tar, as uid 0 of `rbox unshare` (so it may set the owners), unpacks the same tar:
    both trees described there, with the image's ids. Devices: tar cannot make them
    either (a user namespace), and rbox skips them."""
    env, project = deb
    store = Path(env["RBOX_STORAGE"])
    theirs = tmp_path / "tar"
    script = (f"mkdir {theirs} && {{ tar --numeric-owner -xpf {debian_image()} -C {theirs} 2>{tmp_path}/tar.err; "
              f"true; }} && {sys.executable} {ORACLE} {theirs} > {tmp_path}/theirs.json && "
              f"{sys.executable} {ORACLE} {store}/images/deb/rootfs > {tmp_path}/ours.json && rm -rf {theirs}")
    r = run_rbox("unshare", "--", "sh", "-c", script, env=env, cwd=project, timeout=120)
    assert r.returncode == 0, r.stderr
    errors = (tmp_path / "tar.err").read_text().splitlines()
    assert all("Cannot mknod: Operation not permitted" in e or "Exiting with failure status" in e for e in errors)
    assert len(errors) >= 8                             # /dev/null, zero, ... (control: they were there)
    ours = json.loads((tmp_path / "ours.json").read_text())
    theirs_tree = json.loads((tmp_path / "theirs.json").read_text())
    assert len(theirs_tree) > 4000
    assert ours == theirs_tree
    assert ours["usr/bin/passwd"][1:3] == [0o4755, [0, 0]]
    assert ours["etc/shadow"][2] == [0, 42]


def test_export_and_read_back(deb: tuple[dict[str, str], Path], tmp_path: Path) -> None:
    """The export, listed by unsquashfs (-lln, squashfs-tools' view) and by rbox's reader:
    the same names, types, modes, owners, sizes and link targets; and the files read
    back are the image's (a few compared with the store's tree)."""
    env, project = deb
    r = run_rbox("image", "export", "deb", str(tmp_path / "deb.sqfs"), env=env, cwd=project, timeout=120)
    assert r.returncode == 0, r.stderr
    listed = subprocess.run(["unsquashfs", "-lln", str(tmp_path / "deb.sqfs")], capture_output=True, text=True,
                            check=True).stdout
    theirs = {}
    for line in listed.splitlines():
        m = re.match(r"(\S+) (\d+)/(\d+)\s+(\d+) \S+ \S+ squashfs-root(.*)$", line)
        assert m, line
        name, _, target = m[5].lstrip("/").partition(" -> ")
        size = int(m[4]) if m[1][0] == "-" else 0
        theirs[name or "."] = (m[1], int(m[2]), int(m[3]), size, target)
    fd = os.open(tmp_path / "deb.sqfs", os.O_RDONLY)
    ours, digests = {}, {}
    try:
        members = squash.Image(fd).members(skip_config=False)
        for m in members:
            first = ours.get(m.linkname) if m.islnk() else None
            kind = {tarfile.DIRTYPE: stat.S_IFDIR, tarfile.SYMTYPE: stat.S_IFLNK, tarfile.FIFOTYPE: stat.S_IFIFO}
            mode = stat.filemode(kind.get(m.type, stat.S_IFREG) | m.mode)
            ours[m.name] = first or (mode, m.uid, m.gid, m.size, m.linkname if m.issym() else "")
            reader = members.extractfile(m)
            if reader is not None and m.name in ("etc/debian_version", "bin/bash", "usr/bin/dpkg"):
                digests[m.name] = hashlib.sha256(reader.read()).hexdigest()
    finally:
        os.close(fd)
    assert len(ours) > 4000 and ours == theirs
    assert ours["etc/shadow"][:3] == ("-rw-r-----", 0, 42) and ours["usr/bin/passwd"][0] == "-rwsr-xr-x"
    assert json.loads(subprocess.run(["unsquashfs", "-cat", str(tmp_path / "deb.sqfs"), ".rbox/image.json"],
                                     capture_output=True, check=True).stdout)["name"] == "deb"
    rootfs = Path(env["RBOX_STORAGE"]) / "images/deb/rootfs"
    assert digests == {name: hashlib.sha256((rootfs / name).read_bytes()).hexdigest() for name in digests}
    assert len(digests) == 3
