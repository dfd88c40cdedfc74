"""`rbox image import|ls|inspect|rm`, with every kind of source built here (no network):
a directory, tars (plain, gzip, xz, zstd), a `docker save` archive, an OCI layout (a
directory and a tar of one)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from tests.integration.helpers import run_rbox, start_rbox

pytestmark = pytest.mark.needs_userns

CONFIG = {"Env": ["PATH=/bin", "IMAGE_VAR=from-image"], "Entrypoint": ["/bin/echo"], "Cmd": ["hello"],
          "WorkingDir": "/work", "User": "0"}


def layer_bytes(files: dict[str, bytes], uid: int = 0, gz: bool = False) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz" if gz else "w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.mtime, info.uid, info.gid = 1_700_000_000, uid, uid
            if name.endswith("/"):
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                info.size, info.mode = len(data), 0o644
                tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


LAYERS = [layer_bytes({"etc/": b"", "etc/os-release": b"ID=rboxtest\n", "etc/gone": b"x"}),
          layer_bytes({"etc/.wh.gone": b"", "work/": b"", "work/data": b"upper\n"}, gz=True)]


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def oci_layout(top: Path, tag: str = "v1") -> str:
    """An OCI image layout of LAYERS and CONFIG; the manifest's digest."""
    blobs = top / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def blob(data: bytes) -> dict[str, object]:
        (blobs / sha(data)[7:]).write_bytes(data)
        return {"digest": sha(data), "size": len(data)}

    config = json.dumps({"architecture": "amd64", "os": "linux", "config": CONFIG}).encode()
    manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **blob(config)},
                           "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", **blob(layer)}
                                      for layer in LAYERS]}).encode()
    described = {"mediaType": "application/vnd.oci.image.manifest.v1+json", **blob(manifest),
                 "annotations": {"org.opencontainers.image.ref.name": tag}}
    (top / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [described]}))
    (top / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    return sha(manifest)


def docker_archive(path: Path) -> str:
    """What `docker save` writes: manifest.json, the config as HEX.json, DIR/layer.tar."""
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": CONFIG}).encode()
    members = {"manifest.json": b"", sha(config)[7:] + ".json": config}
    names = []
    for number, layer in enumerate(LAYERS):
        name = f"{number:064x}/layer.tar"
        members[name] = layer
        names.append(name)
    members["manifest.json"] = json.dumps([{"Config": sha(config)[7:] + ".json", "RepoTags": ["t:1"],
                                            "Layers": names}]).encode()
    path.write_bytes(layer_bytes(members))
    return sha(config)


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {"RBOX_STORAGE": str(tmp_path / "store")}


def image(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return run_rbox("image", *args, env=env, cwd=cwd)


def inspected(name: str, env: dict[str, str], cwd: Path) -> dict[str, object]:
    r = image(["inspect", name, "--json"], env, cwd)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)  # type: ignore[no-any-return]


def rootfs_of(name: str, env: dict[str, str], cwd: Path) -> Path:
    return Path(str(inspected(name, env, cwd)["rootfs"]))


@pytest.mark.parametrize("kind", ["oci-dir", "oci-tar", "oci-tag", "docker"])
def test_import_layered_image(tmp_path: Path, env: dict[str, str], kind: str) -> None:
    if kind == "docker":
        source, digest = tmp_path / "saved.tar", ""
        digest = docker_archive(source)
        given = str(source)
    else:
        digest = oci_layout(tmp_path / "layout")
        given = str(tmp_path / "layout")
        if kind == "oci-tar":
            subprocess.run(["tar", "-C", given, "-cf", str(tmp_path / "layout.tar"), "."], check=True)
            given = str(tmp_path / "layout.tar")
        elif kind == "oci-tag":
            given = f"oci:{given}:v1"
    r = image(["import", given, "img"], env, tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"img {digest}\n"
    meta = inspected("img", env, tmp_path)
    assert meta["digest"] == digest
    assert meta["config"] == CONFIG
    assert meta["layers"] == [sha(layer) for layer in LAYERS]
    assert meta["size"] == len(b"ID=rboxtest\n") + 1 + len(b"upper\n")
    root = Path(str(meta["rootfs"]))
    assert (root / "etc/os-release").read_text() == "ID=rboxtest\n"
    assert (root / "work/data").read_text() == "upper\n"
    assert not (root / "etc/gone").exists()             # the whiteout of the second layer
    human = image(["inspect", "img"], env, tmp_path).stdout
    assert f"digest: {digest}" in human and 'Entrypoint: ["/bin/echo"]' in human


def test_oci_unknown_tag_is_refused(tmp_path: Path, env: dict[str, str]) -> None:
    oci_layout(tmp_path / "layout")
    r = image(["import", f"oci:{tmp_path}/layout:nope", "img"], env, tmp_path)
    assert r.returncode == 125
    assert "no image tagged `nope`" in r.stderr and "hint:" in r.stderr


def test_oci_blob_with_wrong_digest_is_refused(tmp_path: Path, env: dict[str, str]) -> None:
    oci_layout(tmp_path / "layout")
    blob = tmp_path / "layout/blobs/sha256" / sha(LAYERS[0])[7:]
    blob.write_bytes(LAYERS[0][:-1] + b"\1")
    r = image(["import", str(tmp_path / "layout"), "img"], env, tmp_path)
    assert r.returncode == 125 and "not sha256:" in r.stderr
    assert os.listdir(tmp_path / "store/images") == [] and os.listdir(tmp_path / "store/tmp") == []


@pytest.mark.parametrize("compress", ["", "gzip", "xz", "zstd"])
def test_import_tar(tmp_path: Path, env: dict[str, str], compress: str) -> None:
    tree = tmp_path / "tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc/os-release").write_text("ID=fromtar\n")
    flag = {"": [], "gzip": ["-z"], "xz": ["-J"], "zstd": ["--zstd"]}[compress]
    subprocess.run(["tar", *flag, "-C", str(tree), "-cf", str(tmp_path / "root.tar"), "."], check=True)
    r = image(["import", str(tmp_path / "root.tar"), "t"], env, tmp_path)
    assert r.returncode == 0, r.stderr
    assert (rootfs_of("t", env, tmp_path) / "etc/os-release").read_text() == "ID=fromtar\n"


def test_import_directory_ls_and_rm(tmp_path: Path, env: dict[str, str]) -> None:
    tree = tmp_path / "tree"
    (tree / "bin").mkdir(parents=True)
    (tree / "bin/tool").write_text("#!/bin/sh\n")
    os.symlink("/bin/tool", tree / "link")
    for name in ("one", "two"):
        r = image(["import", str(tree), name], env, tmp_path)
        assert r.returncode == 0, r.stderr
    listed = json.loads(image(["ls", "--json"], env, tmp_path).stdout)
    assert [m["name"] for m in listed] == ["one", "two"]
    assert listed[0]["kind"] == "directory"
    table = image(["ls"], env, tmp_path).stdout.splitlines()
    assert table[0].split() == ["NAME", "DIGEST", "SIZE", "LAYERS", "IMPORTED"] and len(table) == 3
    root = rootfs_of("one", env, tmp_path)
    assert os.readlink(root / "link") == "/bin/tool"
    assert root.joinpath("bin/tool").stat().st_uid == os.getuid()    # root in the image: you on the host
    r = image(["rm", "one"], env, tmp_path)
    assert r.returncode == 0, r.stderr
    assert [m["name"] for m in json.loads(image(["ls", "--json"], env, tmp_path).stdout)] == ["two"]
    r = image(["rm", "one"], env, tmp_path)
    assert r.returncode == 125 and "no image `one`" in r.stderr and "hint: `rbox image ls`" in r.stderr


@pytest.mark.needs_subuid
def test_rm_removes_files_of_subordinate_ids(tmp_path: Path, env: dict[str, str]) -> None:
    locked = io.BytesIO()
    with tarfile.open(fileobj=locked, mode="w") as tar:
        for name, kind, mode in (("private", tarfile.DIRTYPE, 0o700), ("private/f", tarfile.REGTYPE, 0o600)):
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.uid, info.gid = kind, mode, 7, 7
            tar.addfile(info, io.BytesIO(b"") if kind == tarfile.REGTYPE else None)
    (tmp_path / "l.tar").write_bytes(locked.getvalue())
    assert image(["import", str(tmp_path / "l.tar"), "locked"], env, tmp_path).returncode == 0
    root = rootfs_of("locked", env, tmp_path)
    with pytest.raises(PermissionError):            # out of your reach outside the namespace
        os.listdir(root / "private")
    r = image(["rm", "locked"], env, tmp_path)
    assert r.returncode == 0, r.stderr
    assert os.listdir(tmp_path / "store/images") == [] and os.listdir(tmp_path / "store/tmp") == []


def test_killed_import_leaves_nothing_under_the_name(tmp_path: Path, env: dict[str, str]) -> None:
    """rbox is killed while it reads the source (a FIFO nobody writes): no image of that
    name, and the next import removes the dead one's staging directory."""
    fifo = tmp_path / "slow.tar"
    os.mkfifo(fifo)
    proc = start_rbox("image", "import", str(fifo), "img", env=env, cwd=tmp_path)
    staging = tmp_path / "store/tmp"
    deadline = time.monotonic() + 20
    while not (staging.is_dir() and os.listdir(staging)) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert os.listdir(staging), "the import never started"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    assert not (tmp_path / "store/images/img").exists()
    (tmp_path / "tree").mkdir()
    r = image(["import", str(tmp_path / "tree"), "img"], env, tmp_path)
    assert r.returncode == 0, r.stderr
    assert os.listdir(staging) == []
    assert (tmp_path / "store/images/img/rootfs").is_dir()


def test_concurrent_imports_of_one_name(tmp_path: Path, env: dict[str, str]) -> None:
    oci_layout(tmp_path / "layout")
    procs = [start_rbox("image", "import", str(tmp_path / "layout"), "same", env=env, cwd=tmp_path)
             for _ in range(3)]
    for p in procs:
        _, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
    assert os.listdir(tmp_path / "store/images") == ["same"]
    assert os.listdir(tmp_path / "store/tmp") == []
    assert (rootfs_of("same", env, tmp_path) / "work/data").read_text() == "upper\n"


@pytest.mark.parametrize(("args", "message"), [
    (["import", "/nonexistent", "x"], "cannot import `/nonexistent`: no such file or directory"),
    (["import", "/etc/hostname", "x"], "not a tar archive"),
    (["import", "/etc", "../x"], "invalid image name `../x`"),
    (["inspect", "nothing"], "no image `nothing`"),
    (["frobnicate"], "unknown subcommand `rbox image frobnicate`"),
    (["ls", "extra"], "`rbox image ls` takes 0 argument(s), not 1"),
])
def test_image_errors(tmp_path: Path, env: dict[str, str], args: list[str], message: str) -> None:
    r = image(args, env, tmp_path)
    assert r.returncode == 125
    assert message in r.stderr and "hint: " in r.stderr and "Traceback" not in r.stderr


def test_store_on_a_network_file_system_is_refused(tmp_path: Path) -> None:
    """The decision on statfs's magic (an NFS mount cannot be made here): pure logic."""
    where = str(tmp_path / "s")
    code = ("from rootless import syscalls as sc\nfrom rootless.image import store\n"
            "sc.statfs_type = lambda path: 0x6969\n"
            f"try:\n    store.Store.open({{'RBOX_STORAGE': {where!r}}})\n"
            "except Exception as e:\n    print(e.message); print(e.hint)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    assert "is on NFS, a network file system" in r.stdout, r.stderr
    assert "export RBOX_STORAGE=/var/tmp/$USER.rbox" in r.stdout


def test_docker_archive_with_a_linked_layer(tmp_path: Path, env: dict[str, str]) -> None:
    """Older `docker save` writes a repeated layer once and links the second layer.tar to
    it; the link is followed among the archive's own members."""
    config = json.dumps({"config": {"Cmd": ["sh"]}}).encode()
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        add("a/layer.tar", LAYERS[0])
        link = tarfile.TarInfo("b/layer.tar")
        link.type, link.linkname = tarfile.SYMTYPE, "../a/layer.tar"
        tar.addfile(link)
        add("c.json", config)
        add("manifest.json", json.dumps([{"Config": "c.json", "Layers": ["a/layer.tar", "b/layer.tar"]}]).encode())
    (tmp_path / "saved.tar").write_bytes(out.getvalue())
    r = image(["import", str(tmp_path / "saved.tar"), "linked"], env, tmp_path)
    assert r.returncode == 0, r.stderr
    meta = inspected("linked", env, tmp_path)
    assert meta["layers"] == [sha(LAYERS[0])] * 2 and meta["config"] == {"Cmd": ["sh"]}
    assert (Path(str(meta["rootfs"])) / "etc/gone").read_bytes() == b"x"


@pytest.mark.nosubid
def test_single_id_flattens_owners_and_clears_set_id_bits(tmp_path: Path, env: dict[str, str]) -> None:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, kind, mode, uid in (("d", tarfile.DIRTYPE, 0o755, 7), ("d/su", tarfile.REGTYPE, 0o4755, 5),
                                      ("d/sg", tarfile.REGTYPE, 0o2711, 6), ("null", tarfile.CHRTYPE, 0o666, 0),
                                      ("zero", tarfile.CHRTYPE, 0o666, 0)):
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.uid, info.gid = kind, mode, uid, uid
            tar.addfile(info, io.BytesIO(b"") if kind == tarfile.REGTYPE else None)
    (tmp_path / "l.tar").write_bytes(out.getvalue())
    r = image(["import", str(tmp_path / "l.tar"), "flat"], env, tmp_path)
    assert r.returncode == 0, r.stderr
    lines = r.stderr.splitlines()
    assert len([line for line in lines if "mapping only your own uid" in line]) == 1
    assert lines.count("rbox: notice: device nodes skipped (a user namespace cannot make them)") == 1
    assert lines.count("rbox: notice: set-user-ID and set-group-ID bits cleared (everything belongs to you: "
                       "no subordinate ids)") == 1
    root = rootfs_of("flat", env, tmp_path)
    for name, mode in (("d", 0o755), ("d/su", 0o755), ("d/sg", 0o711)):
        st = (root / name).stat()
        assert (st.st_uid, st.st_mode & 0o7777) == (os.getuid(), mode), name
    assert image(["rm", "flat"], env, tmp_path).returncode == 0
    assert os.listdir(tmp_path / "store/images") == []
