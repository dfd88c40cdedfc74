"""SquashFS images: rbox's own reader, and where an exported image keeps its config.

Runs in: the unpacking sandbox (`unpack.py` turns a SquashFS source into entries with
`Image.members`) and the parent (`read_sqfs_config`: what `rbox image import` and
`rbox run --image FILE.sqfs` must know before a sandbox starts). export.py writes
these files with mksquashfs.

The config convention (rbox's file format, docs/internals.md "Images"): an image
written by `rbox image export` holds `/.rbox/image.json`, a JSON object whose `config`
has the image's Env, Entrypoint, Cmd, WorkingDir and User as `rbox image inspect`
shows them (`format` is 1). `/.rbox` is rbox's: an import takes the config from it and
leaves the directory out of the tree; an image's own `/.rbox` is not exported.

Why a reader of rbox's own rather than `unsquashfs` (checked against squashfs-tools
4.5.1, Debian 12's):
- unsquashfs makes every entry by path (open without O_NOFOLLOW or O_EXCL under `-f`,
  symlink, link, chown): whatever a component of the path is at that moment is
  followed. Before 4.5.1 a crafted image wrote outside the destination: names with `/`
  or `..` (CVE-2021-40153), a symlink and a directory of one name, then a file through
  the symlink (CVE-2021-41072). 4.5.1 checks names and duplicates, but older releases
  are still shipped by long-lived distributions, and in the unpacking sandbox only
  containment would remain.
- as uid 0 of the user namespace it chowns each entry to the image's ids, and when
  chown fails (an id beyond the subordinate range) it skips the chmod as well: the
  entry keeps its creation mode (a directory 0700). Without uid 0 it keeps no owner.
  Devices fail one message each, and the exit status does not tell those from
  other errors.
- read here, a SquashFS is one more stream of entries for the unpacker (unpack.py), and
  the rules of layers apply unchanged: no `..`, no symlink followed, hard links only to
  files already made, numeric owners kept or flattened, set-id bits cleared and
  devices skipped with a single id, each notice said once. The parser is Python (a
  hostile image can make it fail, not run code) and runs in the unpacking sandbox;
  every offset is checked against the image, every block is decompressed with a
  bound (no decompression bomb), a directory is read once (no cycle), and a directory
  with an invalid name (`.`, `..`, `/`, NUL) or a name twice is refused.
- the parent reads an image's config without mounting it and without a C parser
  outside a sandbox; importing needs no squashfs-tools.
The cost: gzip, xz and lzma are read with Python's zlib and lzma, zstd with libzstd
through ctypes (syscalls.zstd_decompress; the `zstd` program, one run per block, where
the library is missing); lzo and lz4 (no decoder in Python's standard library) are
refused with the workaround. Extended attributes are not read
(the unpacker sets none, for tar layers either).

Format: squashfs(5) of Linux (fs/squashfs), version 4.0, little-endian: a superblock,
then metadata blocks (a u16 header: size, bit 15 set when stored uncompressed; at
most 8 KiB of data each) that hold the inode, directory, fragment and id tables.
"""

from __future__ import annotations

import json
import lzma
import os
import struct
import tarfile
import zlib
from collections.abc import Callable, Iterator

from rootless.image.store import CONFIG_KEYS
from rootless.image.unpack import UnpackError

MAGIC = b"hsqs"
CONFIG_DIR = ".rbox"
CONFIG_NAME = "image.json"
CONFIG_PATH = f"/{CONFIG_DIR}/{CONFIG_NAME}"
FORMAT = 1
MAX_CONFIG = 1 << 20

SUPERBLOCK = struct.Struct("<IIIIIHHHHHHQQQQQQQQ")
META_SIZE = 8192
NO_FRAGMENT = 0xFFFFFFFF
UNCOMPRESSED_DATA = 1 << 24
COMPRESSORS = {1: "gzip", 2: "lzma", 3: "lzo", 4: "xz", 5: "lz4", 6: "zstd"}
# Inode types (basic, extended): the kind of entry, and the tar type it becomes.
DIR, FILE, SYMLINK, BLK, CHR, FIFO, SOCKET = 1, 2, 3, 4, 5, 6, 7
TAR_TYPES = {DIR: tarfile.DIRTYPE, FILE: tarfile.REGTYPE, SYMLINK: tarfile.SYMTYPE, BLK: tarfile.BLKTYPE,
             CHR: tarfile.CHRTYPE, FIFO: tarfile.FIFOTYPE}
CACHE_BLOCKS = 4096             # decoded metadata blocks kept (32 MiB at most)


class SquashError(UnpackError):
    pass


def is_squashfs(path: str) -> bool:
    """Whether `path` is a regular file that starts as a SquashFS does."""
    try:
        if not os.path.isfile(path):        # a FIFO would block the open
            return False
        with open(path, "rb") as f:
            return f.read(4) == MAGIC
    except OSError:
        return False


class Inode:
    """What an inode says: kind, permissions, owners, time; and by kind the place of a
    directory's listing, a file's blocks, a symlink's target, a device's number."""

    __slots__ = ("kind", "mode", "uid", "gid", "mtime", "number", "dir_block", "dir_offset", "dir_size",
                 "blocks_start", "fragment", "frag_offset", "size", "block_sizes", "target", "rdev")

    def __init__(self, kind: int, mode: int, uid: int, gid: int, mtime: int, number: int):
        self.kind, self.mode, self.uid, self.gid, self.mtime, self.number = kind, mode, uid, gid, mtime, number
        self.dir_block = self.dir_offset = self.dir_size = 0
        self.blocks_start = self.frag_offset = self.size = self.rdev = 0
        self.fragment = NO_FRAGMENT
        self.block_sizes: tuple[int, ...] = ()
        self.target = b""


class Cursor:
    """Sequential reading of a metadata table from (block, offset): `block` counts bytes
    from the table's start to a metadata block's header, `offset` bytes into its data."""

    def __init__(self, image: Image, table: int, block: int, offset: int):
        self.image, self.pos, self.offset = image, table + block, offset

    def read(self, n: int) -> bytes:
        out = bytearray()
        while len(out) < n:
            data, following = self.image.meta_block(self.pos)
            if self.offset > len(data):
                raise SquashError("corrupt SquashFS: a metadata reference beyond its block")
            if self.offset == len(data):
                self.pos, self.offset = following, 0
                continue
            take = data[self.offset:self.offset + n - len(out)]
            out += take
            self.offset += len(take)
        return bytes(out)

    def unpack(self, fmt: struct.Struct) -> tuple[int, ...]:
        return fmt.unpack(self.read(fmt.size))


HEADER = struct.Struct("<HHHHII")
DIR_BASIC = struct.Struct("<IIHHI")
DIR_EXT = struct.Struct("<IIIIHHI")
FILE_BASIC = struct.Struct("<IIII")
FILE_EXT = struct.Struct("<QQQIIII")
U32 = struct.Struct("<I")
TWO_U32 = struct.Struct("<II")
THREE_U32 = struct.Struct("<III")
DIR_HEADER = struct.Struct("<III")
DIR_ENTRY = struct.Struct("<HhHH")
FRAGMENT_ENTRY = struct.Struct("<QII")


class Image:
    """A SquashFS 4.0 image open as `fd` (read with pread: nothing else moves it)."""

    def __init__(self, fd: int):
        self.fd = fd
        self.length = os.fstat(fd).st_size
        head = os.pread(fd, SUPERBLOCK.size, 0)
        if len(head) < SUPERBLOCK.size or head[:4] != MAGIC:
            raise SquashError("not a SquashFS image (no `hsqs` superblock)")
        (_, self.inode_count, _, self.block_size, self.fragment_count, compressor, block_log, _, id_count,
         major, minor, self.root, bytes_used, id_table, _, self.inode_table, self.directory_table,
         fragment_table, _) = SUPERBLOCK.unpack(head)
        if (major, minor) != (4, 0):
            raise SquashError(f"SquashFS version {major}.{minor}: only 4.0 (Linux 2.6.29 and later) is read")
        if not 12 <= block_log <= 20 or self.block_size != 1 << block_log:
            raise SquashError("corrupt SquashFS: invalid block size")
        if bytes_used > self.length:
            raise SquashError(f"truncated SquashFS: {self.length} bytes of {bytes_used}")
        self.end = bytes_used
        self.decompress = self._decompressor(compressor)
        self.cache: dict[int, tuple[bytes, int]] = {}
        self.fragments: dict[int, bytes] = {}
        self.ids = self._table(id_table, id_count, U32, 2048)
        self.fragment_index = fragment_table

    # --- reading, every position checked against the image --------------------------

    def read(self, pos: int, n: int) -> bytes:
        if pos < 0 or n < 0 or pos + n > self.end:
            raise SquashError("corrupt SquashFS: a reference beyond the end of the image")
        data = os.pread(self.fd, n, pos)
        if len(data) != n:
            raise SquashError("truncated SquashFS")
        return data

    def meta_block(self, pos: int) -> tuple[bytes, int]:
        """The data of the metadata block at `pos`, and where the next one starts."""
        found = self.cache.get(pos)
        if found is not None:
            return found
        (header,) = struct.unpack("<H", self.read(pos, 2))
        size = header & 0x7FFF
        raw = self.read(pos + 2, size)
        data = raw if header & 0x8000 else self.decompress(raw, META_SIZE)
        if len(data) > META_SIZE:
            raise SquashError("corrupt SquashFS: a metadata block larger than 8 KiB")
        if len(self.cache) >= CACHE_BLOCKS:
            self.cache.clear()
        self.cache[pos] = (data, pos + 2 + size)
        return self.cache[pos]

    def _table(self, start: int, count: int, fmt: struct.Struct, per_block: int) -> list[tuple[int, ...]]:
        """A lookup table (ids, fragments): an index of u64 positions of its metadata blocks at `start`."""
        blocks = (count + per_block - 1) // per_block
        index = struct.unpack(f"<{blocks}Q", self.read(start, 8 * blocks))
        entries = []
        for number in range(count):
            cursor = Cursor(self, 0, index[number // per_block], (number % per_block) * fmt.size)
            entries.append(cursor.unpack(fmt))
        return entries

    def _decompressor(self, compressor: int) -> Callable[[bytes, int], bytes]:
        name = COMPRESSORS.get(compressor, f"number {compressor}")
        if name == "gzip":
            return _zlib
        if name in ("xz", "lzma"):
            kind = lzma.FORMAT_XZ if name == "xz" else lzma.FORMAT_ALONE
            return lambda data, limit: _lzma(data, limit, kind)
        if name == "zstd":
            return _zstd
        raise SquashError(f"the image is compressed with {name}, which rbox cannot read (it reads gzip, xz, "
                          "lzma and zstd): make it again with `mksquashfs ... -comp gzip`, or unpack it with "
                          "unsquashfs and import the directory")

    # --- inodes and directories -------------------------------------------------------

    def inode(self, ref: int) -> Inode:
        cursor = Cursor(self, self.inode_table, ref >> 16, ref & 0xFFFF)
        kind, mode, uid_index, gid_index, mtime, number = cursor.unpack(HEADER)
        extended = kind > 7
        basic = kind - 7 if extended else kind
        if not 1 <= basic <= 7:
            raise SquashError(f"corrupt SquashFS: inode type {kind}")
        ino = Inode(basic, mode & 0o7777, self._id(uid_index), self._id(gid_index), mtime, number)
        if basic == DIR:
            if extended:
                _, ino.dir_size, ino.dir_block, _, _, ino.dir_offset, _ = cursor.unpack(DIR_EXT)
            else:
                ino.dir_block, _, ino.dir_size, ino.dir_offset, _ = cursor.unpack(DIR_BASIC)
        elif basic == FILE:
            if extended:
                ino.blocks_start, ino.size, _, _, ino.fragment, ino.frag_offset, _ = cursor.unpack(FILE_EXT)
            else:
                ino.blocks_start, ino.fragment, ino.frag_offset, ino.size = cursor.unpack(FILE_BASIC)
            count = ino.size // self.block_size
            if ino.fragment == NO_FRAGMENT and ino.size % self.block_size:
                count += 1
            if count * 4 > self.end:            # more block sizes than the image has bytes
                raise SquashError("corrupt SquashFS: a file larger than the image can hold")
            ino.block_sizes = struct.unpack(f"<{count}I", cursor.read(4 * count))
        elif basic == SYMLINK:
            _, length = cursor.unpack(TWO_U32)
            if length > 4096:
                raise SquashError("corrupt SquashFS: a symlink target longer than PATH_MAX")
            ino.target = cursor.read(length)
            if b"\0" in ino.target:
                raise SquashError("corrupt SquashFS: a symlink target with a NUL byte")
        elif basic in (BLK, CHR):
            _, ino.rdev = cursor.unpack(TWO_U32)
        return ino

    def _id(self, index: int) -> int:
        if index >= len(self.ids):
            raise SquashError("corrupt SquashFS: an owner beyond its id table")
        return self.ids[index][0]

    def listing(self, ino: Inode) -> list[tuple[bytes, int]]:
        """A directory's entries (name, inode reference), names checked."""
        left = ino.dir_size - 3                 # the size counts `.` and `..`, which are not stored
        cursor = Cursor(self, self.directory_table, ino.dir_block, ino.dir_offset)
        entries: list[tuple[bytes, int]] = []
        seen: set[bytes] = set()
        while left > 0:
            count, start, _ = cursor.unpack(DIR_HEADER)
            left -= DIR_HEADER.size
            if count >= 256:
                raise SquashError("corrupt SquashFS: a directory header of more than 256 entries")
            for _ in range(count + 1):
                offset, _, _, name_size = cursor.unpack(DIR_ENTRY)
                name = cursor.read(name_size + 1)
                left -= DIR_ENTRY.size + len(name)
                if name in (b".", b"..") or b"/" in name or b"\0" in name:
                    raise SquashError(f"invalid name {name!r} in a directory: refusing the image")
                if name in seen:
                    raise SquashError(f"two entries named {name!r} in one directory: refusing the image")
                seen.add(name)
                entries.append((name, (start << 16) | offset))
        if left < 0:
            raise SquashError("corrupt SquashFS: a directory listing longer than its size")
        return entries

    # --- file contents ----------------------------------------------------------------

    def chunks(self, ino: Inode) -> Iterator[bytes]:
        """A regular file's bytes, block by block; each block's size checked."""
        pos, left = ino.blocks_start, ino.size
        for entry in ino.block_sizes:
            want = min(self.block_size, left)
            stored = entry & ~UNCOMPRESSED_DATA
            if stored > self.block_size:
                raise SquashError("corrupt SquashFS: a data block larger than a block")
            if stored == 0:                     # a sparse block: zeros, nothing stored
                data = bytes(want)
            elif entry & UNCOMPRESSED_DATA:
                data = self.read(pos, stored)
            else:
                data = self.decompress(self.read(pos, stored), self.block_size)
            if len(data) != want:
                raise SquashError("corrupt SquashFS: a data block of the wrong size")
            pos += stored
            left -= want
            yield data
        if ino.fragment != NO_FRAGMENT and left:
            block = self._fragment(ino.fragment)
            tail = block[ino.frag_offset:ino.frag_offset + left]
            if len(tail) != left:
                raise SquashError("corrupt SquashFS: a file's tail beyond its fragment")
            yield tail

    def _fragment(self, number: int) -> bytes:
        found = self.fragments.get(number)
        if found is not None:
            return found
        if number >= self.fragment_count:
            raise SquashError("corrupt SquashFS: a fragment beyond its table")
        index = struct.unpack("<Q", self.read(self.fragment_index + 8 * (number // 512), 8))[0]
        start, size, _ = Cursor(self, 0, index, (number % 512) * FRAGMENT_ENTRY.size).unpack(FRAGMENT_ENTRY)
        stored = size & ~UNCOMPRESSED_DATA
        if stored > self.block_size:
            raise SquashError("corrupt SquashFS: a fragment block larger than a block")
        raw = self.read(start, stored)
        data = raw if size & UNCOMPRESSED_DATA else self.decompress(raw, self.block_size)
        if len(self.fragments) >= 8:
            self.fragments.clear()
        self.fragments[number] = data
        return data

    # --- the tree, as tar members ------------------------------------------------------

    def members(self, skip_config: bool = True) -> Members:
        return Members(self, skip_config)

    def find(self, *names: bytes) -> Inode | None:
        """The inode at a path of names from the root, never through a symlink."""
        ino = self.inode(self.root)
        for name in names:
            if ino.kind != DIR:
                return None
            refs = dict(self.listing(ino))
            if name not in refs:
                return None
            ino = self.inode(refs[name])
        return ino

    def contents(self, ino: Inode, limit: int) -> bytes:
        if ino.size > limit:
            raise SquashError(f"a file of {ino.size} bytes where at most {limit} are expected")
        return b"".join(self.chunks(ino))


class Members:
    """The image's tree as tar members, parents first (what Unpacker.members reads):
    `iter` gives the members, `extractfile` the current regular file's bytes. A hard
    link (an inode met again) becomes a tar hard link to the first name of a regular
    file, a copy of anything else. Sockets are skipped (tar has no type for them)."""

    def __init__(self, image: Image, skip_config: bool):
        self.image, self.skip_config = image, skip_config
        self.notices: list[str] = []
        self.current: tuple[tarfile.TarInfo, Inode] | None = None

    def __iter__(self) -> Iterator[tarfile.TarInfo]:
        root = self.image.inode(self.image.root)
        if root.kind != DIR:
            raise SquashError("corrupt SquashFS: its root is not a directory")
        first_names: dict[int, str] = {}            # inode number -> the name its file was made under
        visited: set[int] = set()
        stack: list[tuple[str, Inode]] = [("", root)]
        while stack:
            path, ino = stack.pop()
            if ino.number in visited:
                raise SquashError("corrupt SquashFS: a directory reached twice (a cycle)")
            visited.add(ino.number)
            yield self._info(path or ".", ino)
            children = []
            for name, ref in self.image.listing(ino):
                if not path and name == CONFIG_DIR.encode() and self.skip_config:
                    continue                         # rbox's own: read by read_sqfs_config
                child = self.image.inode(ref)
                child_path = (path + "/" if path else "") + os.fsdecode(name)
                if child.kind == DIR:
                    children.append((child_path, child))
                elif child.kind == SOCKET:
                    self._notice("sockets skipped (an image's sockets are made by its programs when they run)")
                else:
                    yield from self._file(child_path, child, first_names)
            stack.extend(reversed(children))

    def _file(self, path: str, ino: Inode, first_names: dict[int, str]) -> Iterator[tarfile.TarInfo]:
        first = first_names.get(ino.number)
        if first is not None and ino.kind == FILE:
            info = self._info(path, ino)
            info.type, info.linkname, info.size = tarfile.LNKTYPE, first, 0
            yield info
            return
        first_names.setdefault(ino.number, path)
        info = self._info(path, ino)
        self.current = (info, ino)
        yield info
        self.current = None

    def _info(self, path: str, ino: Inode) -> tarfile.TarInfo:
        info = tarfile.TarInfo(path)
        info.type = TAR_TYPES[ino.kind]
        info.mode, info.uid, info.gid, info.mtime = ino.mode, ino.uid, ino.gid, ino.mtime
        if ino.kind == FILE:
            info.size = ino.size
        elif ino.kind == SYMLINK:
            info.linkname = os.fsdecode(ino.target)
        elif ino.kind in (BLK, CHR):
            info.devmajor, info.devminor = (ino.rdev >> 8) & 0xFFF, (ino.rdev & 0xFF) | ((ino.rdev >> 12) & 0xFFF00)
        return info

    def _notice(self, text: str) -> None:
        if text not in self.notices:
            self.notices.append(text)

    def extractfile(self, member: tarfile.TarInfo) -> Reader | None:
        """The bytes of the member just given, if it is a regular file (else None, as tarfile)."""
        if self.current is None or self.current[0] is not member or self.current[1].kind != FILE:
            return None
        return Reader(self.image.chunks(self.current[1]))


class Reader:
    """A file object over a file's chunks (what shutil.copyfileobj needs: `read`)."""

    def __init__(self, chunks: Iterator[bytes]):
        self.chunks, self.pending = chunks, b""

    def read(self, n: int = -1) -> bytes:
        """Up to `n` bytes (at most one block's: what is left of it); all the rest when n < 0."""
        if n < 0:
            out, self.pending = self.pending + b"".join(self.chunks), b""
            return out
        while not self.pending:
            chunk = next(self.chunks, None)
            if chunk is None:
                return b""
            self.pending = chunk
        if n >= len(self.pending):
            out, self.pending = self.pending, b""
        else:
            out, self.pending = self.pending[:n], self.pending[n:]
        return out


# --- decompression, bounded ---------------------------------------------------------


def _zlib(data: bytes, limit: int) -> bytes:
    d = zlib.decompressobj()
    try:
        out = d.decompress(data, limit)
    except zlib.error as e:
        raise SquashError(f"corrupt SquashFS: a gzip block does not decompress ({e})") from None
    if d.unconsumed_tail or not d.eof:
        raise SquashError("corrupt SquashFS: a gzip block larger than a block, or cut short")
    return out


def _lzma(data: bytes, limit: int, kind: int) -> bytes:
    d = lzma.LZMADecompressor(format=kind)
    try:
        out = d.decompress(data, limit + 1)
    except lzma.LZMAError as e:
        raise SquashError(f"corrupt SquashFS: an xz block does not decompress ({e})") from None
    if len(out) > limit or not d.eof:
        raise SquashError("corrupt SquashFS: an xz block larger than a block, or cut short")
    return out


def _zstd(data: bytes, limit: int) -> bytes:
    """Python 3.11 has no zstd: libzstd through ctypes (syscalls.py), else the `zstd`
    program, its output read to `limit` at most."""
    from rootless import syscalls as sc

    try:
        out = sc.zstd_decompress(data, limit)
    except ValueError:
        raise SquashError("corrupt SquashFS: a zstd block does not decompress, or is larger than a block") from None
    return out if out is not None else _zstd_program(data, limit)


def _zstd_program(data: bytes, limit: int) -> bytes:
    import subprocess
    import threading

    try:
        proc = subprocess.Popen(["zstd", "-dcq"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL)
    except FileNotFoundError:
        raise SquashError("the image is zstd-compressed and the `zstd` program is not installed") from None
    assert proc.stdin is not None and proc.stdout is not None

    def feed() -> None:
        try:
            proc.stdin.write(data)          # type: ignore[union-attr]
            proc.stdin.close()              # type: ignore[union-attr]
        except OSError:
            pass                            # it stopped reading: its status says why
    writer = threading.Thread(target=feed)
    writer.start()
    out = proc.stdout.read(limit + 1)
    if len(out) > limit:
        proc.kill()
    proc.stdout.close()
    writer.join()
    if proc.wait() != 0 or len(out) > limit:
        raise SquashError("corrupt SquashFS: a zstd block does not decompress, or is larger than a block")
    return out


# --- the config convention ------------------------------------------------------------


def config_json(meta: dict[str, object]) -> bytes:
    """What `rbox image export` writes at /.rbox/image.json, from the store's image.json."""
    config = meta.get("config") or {}
    assert isinstance(config, dict)
    record = {"format": FORMAT, "name": meta.get("name"), "digest": meta.get("digest"),
              "layers": meta.get("layers"), "config": {k: config[k] for k in CONFIG_KEYS if k in config}}
    return json.dumps(record, indent=1).encode() + b"\n"


def parse_config(data: bytes) -> dict[str, object]:
    """The image config (Env, Entrypoint, Cmd, WorkingDir, User) in an /.rbox/image.json:
    keys of the wrong type are an error (the file may come from anyone)."""
    try:
        record = json.loads(data)
    except ValueError as e:
        raise SquashError(f"{CONFIG_PATH} is not valid JSON ({e})") from None
    if not isinstance(record, dict) or not isinstance(record.get("config", {}), dict):
        raise SquashError(f"{CONFIG_PATH} is not a JSON object with a `config` object")
    if record.get("format") != FORMAT:
        raise SquashError(f"{CONFIG_PATH} has format {record.get('format')!r}; this rbox reads format {FORMAT}")
    config = record.get("config", {})
    found: dict[str, object] = {}
    for key in CONFIG_KEYS:
        value = config.get(key)
        if value is None:
            continue
        if key in ("WorkingDir", "User"):
            ok = isinstance(value, str)
        else:
            ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
        if not ok:
            kind = "a string" if key in ("WorkingDir", "User") else "a list of strings"
            raise SquashError(f"{CONFIG_PATH}: `{key}` must be {kind}")
        found[key] = value
    return found


def read_sqfs_config(path: str) -> dict[str, object]:
    """The config an exported image carries ({} when it has no /.rbox/image.json), read
    without mounting it. Raises SquashError (an UnpackError) when `path` is not a
    SquashFS this reader can read, or the file is invalid."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        image = Image(fd)
        ino = image.find(CONFIG_DIR.encode(), CONFIG_NAME.encode())
        if ino is None or ino.kind != FILE:
            return {}
        return parse_config(image.contents(ino, MAX_CONFIG))
    finally:
        os.close(fd)
