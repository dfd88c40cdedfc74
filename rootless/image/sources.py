"""What `rbox image import` reads: a directory, a tar, a `docker save` archive, an OCI
image layout (a directory or a tar of one) or a SquashFS file, turned into layer files
and a config.

Runs in: parent. Nothing here writes into the image's tree: the layers are copied as
files into the staging directory (by names this module chooses) and unpacked by the
sandboxed unpacker (unpack.py). A tar's members are only read (tarfile, random access);
blobs named by a digest are checked against it while they are copied.
"""

from __future__ import annotations

import hashlib
import json
import os
import tarfile

from rootless.errors import RboxError
from rootless.image.store import image_config
from rootless.image.unpack import ZSTD_MAGIC, UnpackError

TYPE_CHECKING = False  # not `from typing import ...`: typing costs 9 ms at start-up
if TYPE_CHECKING:
    from collections.abc import Callable

OCI_INDEX = ("application/vnd.oci.image.index.v1+json", "application/vnd.docker.distribution.manifest.list.v2+json")
REF_NAME = "org.opencontainers.image.ref.name"
CHUNK = 1 << 20


class Imported:
    """Layers (files in staging, bottom first), with the image's config and digest."""

    def __init__(self, kind: str, layers: list[str], digests: list[str], config: dict[str, object], digest: str):
        self.kind, self.layers, self.digests, self.config, self.digest = kind, layers, digests, config, digest


def bad(source: str, why: str) -> RboxError:
    return RboxError(f"cannot import `{source}`: {why}",
                     hint="SOURCE is a directory, a tar (plain, gzip, xz, zstd), a `docker save` archive, an OCI "
                          "image layout (a directory or tar; oci:PATH[:TAG]) or a SquashFS file; see rbox(1), IMAGES")


class Files:
    """Read access to a directory or to the members of a tar, by relative name."""

    def __init__(self, source: str, path: str, progress: Callable[[int], None] | None = None):
        self.source, self.path, self.progress = source, path, progress
        self.tar: tarfile.TarFile | None = None
        self.members: dict[str, tarfile.TarInfo] = {}
        if not os.path.isdir(path):
            try:
                self.tar = tarfile.open(path, "r:*")
            except (tarfile.TarError, OSError) as e:
                raise bad(source, f"not a tar archive ({e})") from None
            for m in self.tar.getmembers():
                self.members[os.path.normpath(m.name).lstrip("/")] = m

    def exists(self, name: str) -> bool:
        if self.tar is None:
            return os.path.isfile(os.path.join(self.path, name))
        m = self.members.get(name)
        return m is not None and (m.isfile() or m.issym() or m.islnk())

    def open(self, name: str):  # type: ignore[no-untyped-def]
        if self.tar is None:
            real = os.path.realpath(os.path.join(self.path, name))
            if not real.startswith(os.path.realpath(self.path) + "/"):
                raise bad(self.source, f"`{name}` points outside the layout")
            return open(real, "rb")
        m = self.members.get(name)
        # A link member (older `docker save` links a repeated layer.tar to the first) is
        # followed by tarfile among the archive's own members, never on disk.
        stream = self.tar.extractfile(m) if m is not None and (m.isfile() or m.issym() or m.islnk()) else None
        if stream is None:
            raise bad(self.source, f"it has no file `{name}`")
        return stream

    def json(self, name: str) -> object:
        if not self.exists(name):
            raise bad(self.source, f"it has no `{name}`")
        with self.open(name) as f:
            try:
                value = json.loads(f.read(16 << 20))
            except ValueError as e:
                raise bad(self.source, f"`{name}` is not valid JSON ({e})") from None
        return value

    def copy(self, name: str, dest: str, digest: str | None = None) -> str:
        """Copy `name` to `dest`; its sha256 digest, checked against `digest` if given."""
        h = hashlib.sha256()
        with self.open(name) as src, open(dest, "wb") as out:
            while chunk := src.read(CHUNK):
                h.update(chunk)
                out.write(chunk)
                if self.progress is not None:
                    self.progress(len(chunk))
        found = "sha256:" + h.hexdigest()
        if digest is not None and found != digest:
            raise bad(self.source, f"`{name}` has digest {found}, not {digest} as its manifest says")
        return found


def read(source: str, staging: str, progress: Callable[[int], None] | None = None) -> Imported:
    """The layers of SOURCE copied into `staging`, with what the image says of itself;
    `progress(bytes)` called as they are copied."""
    path, tag = source, None
    if source.startswith("oci:"):
        path, _, tag = source[4:].partition(":")
        tag = tag or None
    if not os.path.exists(path):
        raise bad(source, "no such file or directory")
    if os.path.isdir(path) and not source.startswith("oci:") and not os.path.exists(os.path.join(path, "oci-layout")):
        return _directory(source, path, staging)
    if not os.path.isdir(path) and _zstd(path):
        return _plain(path, staging, progress)   # tarfile cannot read zstd: the unpacker pipes it through `zstd`
    if not source.startswith("oci:") and _squashfs_magic(path):
        return _squashfs(source, path, staging, progress)
    files = Files(source, path, progress)
    if files.exists("oci-layout") and files.exists("index.json"):
        return _oci(files, tag, staging)
    if source.startswith("oci:"):
        raise bad(source, "not an OCI image layout (no oci-layout and index.json)")
    if files.exists("manifest.json"):
        return _docker(files, staging)
    return _plain(path, staging, progress)


def _squashfs(source: str, path: str, staging: str, progress: Callable[[int], None] | None = None) -> Imported:
    """A SquashFS file: one layer, which the unpacker reads with squash.py; the config an
    export put in /.rbox/image.json is read here, from the copy (never mounted)."""
    from rootless.image import squash

    layer = os.path.join(staging, "layer-1")
    digest = _copy_file(path, layer, progress)
    try:
        config = squash.read_sqfs_config(layer)
    except UnpackError as e:
        raise bad(source, str(e)) from None
    return Imported("squashfs", [layer], [digest], config, digest)


def _squashfs_magic(path: str) -> bool:
    if not os.path.isfile(path):             # a directory, or a FIFO (opening it would wait for a writer)
        return False
    with open(path, "rb") as f:
        return f.read(4) == b"hsqs"         # squash.MAGIC (squash.py is imported only for SquashFS)


def _zstd(path: str) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == ZSTD_MAGIC


def _plain(path: str, staging: str, progress: Callable[[int], None] | None = None) -> Imported:
    layer = os.path.join(staging, "layer-1")
    digest = _copy_file(path, layer, progress)
    return Imported("tar", [layer], [digest], {}, digest)


def _copy_file(path: str, dest: str, progress: Callable[[int], None] | None = None) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as src, open(dest, "wb") as out:
        while chunk := src.read(CHUNK):
            h.update(chunk)
            out.write(chunk)
            if progress is not None:
                progress(len(chunk))
    return "sha256:" + h.hexdigest()


def _directory(source: str, path: str, staging: str) -> Imported:
    """A directory, as one layer made by GNU tar: your files belong to root in the
    image (your own id on the host), as in Charliecloud."""
    import subprocess

    layer = os.path.join(staging, "layer-1")
    r = subprocess.run(["tar", "--numeric-owner", "--owner=0", "--group=0", "-C", path, "-cf", layer, "."],
                       stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if r.returncode != 0:
        raise bad(source, f"tar could not read it: {r.stderr.strip()[-300:]}")
    digest = _copy_file(layer, layer + ".tmp")
    os.unlink(layer + ".tmp")
    return Imported("directory", [layer], [digest], {}, digest)


def _docker(files: Files, staging: str) -> Imported:
    manifest = files.json("manifest.json")
    if not isinstance(manifest, list) or not manifest or not isinstance(manifest[0], dict):
        raise bad(files.source, "manifest.json lists no image")
    if len(manifest) > 1:
        raise bad(files.source, f"the archive holds {len(manifest)} images; import one at a time")
    entry = manifest[0]
    config_name = str(entry.get("Config", ""))
    config = files.json(config_name)
    if not isinstance(config, dict):
        raise bad(files.source, f"`{config_name}` is not a JSON object")
    layers, digests = [], []
    for number, name in enumerate(entry.get("Layers") or [], 1):
        dest = os.path.join(staging, f"layer-{number}")
        digests.append(files.copy(str(name), dest))
        layers.append(dest)
    digest = "sha256:" + hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()
    if config_name.startswith("blobs/sha256/"):
        digest = "sha256:" + config_name.rsplit("/", 1)[1]
    elif config_name.endswith(".json") and len(config_name) == 69:
        digest = "sha256:" + config_name[:64]
    return Imported("docker-archive", layers, digests, image_config(config), digest)


def _blob(digest: object) -> str:
    text = str(digest)
    algo, _, hexa = text.partition(":")
    if algo != "sha256" or len(hexa) != 64 or not set(hexa) <= set("0123456789abcdef"):
        raise RboxError(f"unsupported digest `{text[:80]}`", hint="rbox imports sha256 blobs only")
    return f"blobs/sha256/{hexa}"


def _oci(files: Files, tag: str | None, staging: str) -> Imported:
    index = files.json("index.json")
    if not isinstance(index, dict):
        raise bad(files.source, "index.json is not a JSON object")
    manifests = _dicts(index.get("manifests"))
    if tag is not None:
        manifests = [m for m in manifests if _tag(m) == tag]
        if not manifests:
            raise bad(files.source, f"no image tagged `{tag}` in index.json")
    if len(manifests) != 1:
        raise bad(files.source, f"index.json lists {len(manifests)} images: choose one with oci:PATH:TAG")
    descriptor = manifests[0]
    for _ in range(4):                   # an index of indexes: pick this host's platform
        if descriptor.get("mediaType") not in OCI_INDEX:
            break
        nested = _verified_json(files, descriptor)
        descriptor = _platform(files.source, _dicts(nested.get("manifests")))
    manifest = _verified_json(files, descriptor)
    configs = _dicts([manifest.get("config")])
    if not configs:
        raise bad(files.source, "its manifest names no config")
    config = _verified_json(files, configs[0])
    layers, digests = [], []
    for number, layer in enumerate(_dicts(manifest.get("layers")), 1):
        dest = os.path.join(staging, f"layer-{number}")
        digests.append(files.copy(_blob(layer.get("digest")), dest, str(layer.get("digest"))))
        layers.append(dest)
    return Imported("oci", layers, digests, image_config(config), str(descriptor.get("digest")))


def _tag(descriptor: dict[str, object]) -> object:
    annotations = descriptor.get("annotations")
    return annotations.get(REF_NAME) if isinstance(annotations, dict) else None


def _dicts(value: object) -> list[dict[str, object]]:
    """The JSON objects of a JSON list (anything else in it ignored)."""
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def _verified_json(files: Files, descriptor: dict[str, object]) -> dict[str, object]:
    name = _blob(descriptor.get("digest"))
    with files.open(name) as f:
        data = f.read(16 << 20)
    if "sha256:" + hashlib.sha256(data).hexdigest() != descriptor.get("digest"):
        raise bad(files.source, f"`{name}` does not match its digest")
    try:
        value = json.loads(data)
    except ValueError as e:
        raise bad(files.source, f"`{name}` is not valid JSON ({e})") from None
    if not isinstance(value, dict):
        raise bad(files.source, f"`{name}` is not a JSON object")
    return value


GOARCH = {"x86_64": "amd64", "aarch64": "arm64", "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64"}


def _platform(source: str, manifests: list[dict[str, object]]) -> dict[str, object]:
    import platform

    arch = GOARCH.get(platform.machine(), platform.machine())
    for m in manifests:
        p = m.get("platform") or {}
        if isinstance(p, dict) and p.get("os") == "linux" and p.get("architecture") == arch:
            return m
    raise bad(source, f"no image for linux/{arch} in its index")
