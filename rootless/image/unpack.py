"""Unpacking image layers (tar archives) into a directory, safely.

Runs in: the unpacking sandbox, as `python -m rootless.image.unpack` (the command of the
`rbox run --root` that store.py starts, where only the target is writable), reading the
layers from a pipe that the store feeds (`frames`). The class works on a descriptor of
the target and nothing else, so tests call it directly too.

Layers are untrusted archives. tarfile only parses the headers here (never extractall:
its checks go through the host's realpath, and Debian 12's 3.11 has no filters); every
file is made by this module, relative to the target's descriptor:
- names: a leading `/` is dropped (as GNU tar does), `.` components go, and a `..`
  component fails the layer (nothing in an image needs one);
- parents are opened one component at a time with O_NOFOLLOW. A component that is a
  symlink (a later layer writing `x/f` over `x -> ..`, the cross-layer escape) is
  resolved with openat2(RESOLVE_IN_ROOT), which treats the target as `/`, so neither the
  link nor a `..` in it leaves the target (openat2(2)). Without openat2 (before Linux
  5.6) such a path fails the layer;
- the last component is never followed: what is in its place is removed first (a path
  that changes type between layers), then made anew with O_CREAT|O_EXCL, mkdirat,
  symlinkat; a symlink is written as it is and never resolved;
- hard links only to a regular file already in the tree (linkat does not follow a
  symlink without AT_SYMLINK_FOLLOW, and the type is checked before);
- numeric ids only: the user and group names in the headers are ignored;
- whiteouts per the OCI image layer spec: `.wh.NAME` removes NAME of the layers below,
  `.wh..wh..opq` empties its directory of what the layers below put there, wherever
  in the layer the marker comes (what this layer wrote before it stays);
- device nodes are skipped (mknod is not allowed in a user namespace), with one notice;
- with a single id (no subordinate ids), everything belongs to the user: set-user-ID
  and set-group-ID bits are cleared, with one notice.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import sys
import tarfile

from rootless import syscalls as sc

TYPE_CHECKING = False  # not `from typing import ...`: typing costs 9 ms at start-up
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from typing import BinaryIO

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
CHUNK = 1 << 20
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
REPORT_EVERY = 4 << 20          # progress lines on stdout: `bytes=N` this often, `layer=N` after each

Path = tuple[str, ...]

TYPE_CHECKING = False  # not `from typing import ...`: typing costs 9 ms at start-up (run --image imports this)
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import IO, Any, Protocol

    class Members(Protocol):
        """What a layer is to the unpacker: tarfile.TarFile, or squash.Members."""

        def __iter__(self) -> Iterator[tarfile.TarInfo]: ...

        def extractfile(self, member: tarfile.TarInfo, /) -> IO[bytes] | Any | None: ...


class UnpackError(Exception):
    pass


class Stopped(Exception):
    """The store closed the pipe before the end of the layers: it gave up (its own
    error is what the user sees)."""


def has_openat2() -> bool:
    try:
        os.close(sc.openat2("/", os.O_RDONLY | os.O_DIRECTORY, sc.RESOLVE_IN_ROOT))
    except OSError:
        return False
    return True


def parts(name: str) -> Path:
    """The components of a member's name, relative to the target."""
    found = tuple(p for p in name.split("/") if p not in ("", "."))
    if ".." in found:
        raise UnpackError(f"`{name}` goes up with `..`: refusing the layer")
    return found


class Unpacker:
    def __init__(self, target: str, keep_owners: bool, in_root: bool | None = None):
        self.root = os.open(target, DIR_FLAGS)
        self.keep_owners = keep_owners
        self.in_root = has_openat2() if in_root is None else in_root
        self.notices: list[str] = []
        self.size = 0                   # bytes of regular files written
        self.reported = 0               # self.size when `report` was last called
        self.report: Callable[[int], None] | None = None

    def close(self) -> None:
        os.close(self.root)

    def notice(self, text: str) -> None:
        if text not in self.notices:        # each said once
            self.notices.append(text)

    def layer(self, stream: object) -> None:
        """One tar archive (any compression tarfile knows), applied over the tree."""
        try:
            with tarfile.open(fileobj=stream, mode="r|*") as tar:  # type: ignore[call-overload]
                self.members(tar)
        except tarfile.TarError as e:
            raise UnpackError(f"not a valid tar archive: {e}") from None

    def members(self, tar: Members) -> None:
        """One layer's entries, applied over the tree: a tar archive's, or a SquashFS
        image's as squash.py reads them (the same rules for both)."""
        made: set[Path] = set()           # what this layer wrote (an opaque marker keeps it)
        dirs: list[tuple[Path, tarfile.TarInfo]] = []
        for member in tar:
            self.member(tar, member, made, dirs)
        # Directory modes last (as tar does): a 0555 directory must not stop its own files.
        for path, member in reversed(dirs):
            self._dir_metadata(path, member)

    def member(self, tar: Members, m: tarfile.TarInfo, made: set[Path],
               dirs: list[tuple[Path, tarfile.TarInfo]]) -> None:
        path = parts(m.name)
        try:
            self._member(tar, m, path, made, dirs)
        except OSError as e:
            raise UnpackError(f"cannot unpack `{m.name[:200]}`: {e.strerror}") from None

    def _member(self, tar: Members, m: tarfile.TarInfo, path: Path, made: set[Path],
                dirs: list[tuple[Path, tarfile.TarInfo]]) -> None:
        if not path:
            if m.isdir():
                return            # `./`: the target itself
            raise UnpackError(f"`{m.name}` would replace the image's root with a non-directory: refusing the layer")
        base = path[-1]
        if base == OPAQUE:
            self._opaque(path[:-1], made)
            return
        if base.startswith(WHITEOUT):
            hidden = base[len(WHITEOUT):]
            if hidden in ("", ".", ".."):
                raise UnpackError(f"invalid whiteout `{m.name}`: refusing the layer")
            self._remove(path[:-1] + (hidden,))
            return
        if m.ischr() or m.isblk():
            self.notice("device nodes skipped (a user namespace cannot make them)")
            return
        parent = self._open_dir(path[:-1], made)
        try:
            self._clear_place(parent, base, m.isdir())
            made.add(path)
            if m.isdir():
                if not _exists(parent, base):
                    os.mkdir(base, 0o700, dir_fd=parent)
                dirs.append((path, m))
            elif m.isreg():
                self._file(tar, m, parent, base)
            elif m.issym():
                os.symlink(m.linkname, base, dir_fd=parent)
                self._owner(base, parent, m)
                os.utime(base, ns=_times(m), dir_fd=parent, follow_symlinks=False)
            elif m.islnk():
                self._hardlink(m, parent, base)
            elif m.isfifo():
                os.mkfifo(base, 0o600, dir_fd=parent)
                self._owner(base, parent, m)
                os.chmod(base, self._mode(m), dir_fd=parent)
                os.utime(base, ns=_times(m), dir_fd=parent, follow_symlinks=False)
            else:
                self.notice(f"entries of tar type {m.type!r} skipped")
        finally:
            os.close(parent)

    def _open_dir(self, path: Path, made: set[Path] | None) -> int:
        """A descriptor of the directory `path` under the target, never leaving it; the
        missing components made when `made` is given (as tar does), else ENOENT."""
        fd = os.dup(self.root)
        try:
            for i, name in enumerate(path):
                try:
                    nfd = os.open(name, DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if made is None:
                        raise
                    os.mkdir(name, 0o755, dir_fd=fd)
                    nfd = os.open(name, DIR_FLAGS, dir_fd=fd)
                except OSError as e:
                    if e.errno not in (errno.ELOOP, errno.ENOTDIR):
                        raise
                    if not stat.S_ISLNK(os.lstat(name, dir_fd=fd).st_mode):
                        raise
                    nfd = self._through_symlink(path[:i + 1])
                if made is not None:
                    made.add(path[:i + 1])      # the layer has it (an opaque marker keeps it)
                os.close(fd)
                fd = nfd
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _through_symlink(self, path: Path) -> int:
        """A directory reached through a symlink an earlier entry made (usr-merged
        images: `lib -> usr/lib`, then `lib/x`), resolved with the target as `/`."""
        shown = "/".join(path)
        if not self.in_root:
            raise UnpackError(f"`{shown}` is a symlink, and following it safely needs openat2 (Linux 5.6)")
        try:
            return sc.openat2(shown, os.O_RDONLY | os.O_DIRECTORY,
                              sc.RESOLVE_IN_ROOT | sc.RESOLVE_NO_MAGICLINKS, dirfd=self.root)
        except OSError as e:
            raise UnpackError(f"`{shown}` is a symlink that leads to no directory in the image: {e.strerror}"
                              ) from None

    def _clear_place(self, parent: int, base: str, want_dir: bool) -> None:
        """Remove what is at `base` unless it is the directory a directory entry wants:
        the new entry replaces it (the upper layer wins, whatever the types)."""
        try:
            st = os.lstat(base, dir_fd=parent)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            if not want_dir:
                shutil.rmtree(base, dir_fd=parent)      # fd-based: never follows a symlink
        else:
            os.unlink(base, dir_fd=parent)

    def _remove(self, path: Path) -> None:
        try:
            parent = self._open_dir(path[:-1], None)
        except (FileNotFoundError, NotADirectoryError):
            return                      # nothing below to hide
        try:
            self._clear_place(parent, path[-1], False)
        finally:
            os.close(parent)

    def _opaque(self, path: Path, made: set[Path]) -> None:
        """Empty `path` of the lower layers' entries, keeping what this layer made."""
        try:
            fd = self._open_dir(path, None)
        except (FileNotFoundError, NotADirectoryError):
            return
        try:
            for name in os.listdir(fd):
                child = path + (name,)
                if child not in made:
                    self._clear_place(fd, name, False)
                elif stat.S_ISDIR(os.lstat(name, dir_fd=fd).st_mode):
                    self._opaque(child, made)
        finally:
            os.close(fd)

    def _file(self, tar: Members, m: tarfile.TarInfo, parent: int, base: str) -> None:
        fd = os.open(base, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                     dir_fd=parent)
        with os.fdopen(fd, "wb") as out:
            source = tar.extractfile(m)
            if source is not None:
                shutil.copyfileobj(source, out, CHUNK)
                self.size += m.size
                if self.report is not None and self.size - self.reported >= REPORT_EVERY:
                    self.reported = self.size
                    self.report(self.size)
            out.flush()
            self._owner(fd, None, m)
            os.chmod(fd, self._mode(m))      # after chown, which clears set-id bits
            os.utime(fd, ns=_times(m))

    def _hardlink(self, m: tarfile.TarInfo, parent: int, base: str) -> None:
        target = parts(m.linkname)
        if not target:
            raise UnpackError(f"hard link `{m.name}` to the image's root: refusing the layer")
        try:
            tdir = self._open_dir(target[:-1], None)
        except FileNotFoundError:
            raise UnpackError(f"hard link `{m.name}` to `{m.linkname}`, which is not in the image") from None
        try:
            try:
                st = os.lstat(target[-1], dir_fd=tdir)
            except FileNotFoundError:
                raise UnpackError(f"hard link `{m.name}` to `{m.linkname}`, which is not in the image") from None
            if not stat.S_ISREG(st.st_mode):
                raise UnpackError(f"hard link `{m.name}` to `{m.linkname}`, which is not a regular file: "
                                  "refusing the layer")
            os.link(target[-1], base, src_dir_fd=tdir, dst_dir_fd=parent, follow_symlinks=False)
        finally:
            os.close(tdir)

    def _dir_metadata(self, path: Path, m: tarfile.TarInfo) -> None:
        try:
            fd = self._open_dir(path, None)
        except OSError:
            return                      # removed later in the layer
        try:
            self._owner(fd, None, m)
            os.chmod(fd, self._mode(m))
            os.utime(fd, ns=_times(m))
        finally:
            os.close(fd)

    def _mode(self, m: tarfile.TarInfo) -> int:
        mode = m.mode & 0o7777
        if not self.keep_owners and mode & (stat.S_ISUID | stat.S_ISGID):
            self.notice("set-user-ID and set-group-ID bits cleared (everything belongs to you: no subordinate ids)")
            mode &= ~(stat.S_ISUID | stat.S_ISGID)
        return mode

    def _owner(self, where: int | str, parent: int | None, m: tarfile.TarInfo) -> None:
        if not self.keep_owners:
            return
        try:
            if parent is None:
                os.chown(where, m.uid, m.gid)
            else:
                os.chown(where, m.uid, m.gid, dir_fd=parent, follow_symlinks=False)
        except OSError as e:
            if e.errno != errno.EINVAL:
                raise
            # chown(2): EINVAL when the id is not mapped in this user namespace.
            self.notice("owners beyond your subordinate id range are left as yours")


def _times(m: tarfile.TarInfo) -> tuple[int, int]:
    """Access and modification time for utime: pax headers give fractions of seconds."""
    ns = int(m.mtime * 10**9)
    return ns, ns


def _exists(parent: int, base: str) -> bool:
    try:
        os.lstat(base, dir_fd=parent)
    except FileNotFoundError:
        return False
    return True


class Frame:
    """The next `length` bytes of the pipe, as a file for tarfile's stream mode."""

    def __init__(self, raw: BinaryIO, length: int):
        self.raw, self.left = raw, length

    def read(self, n: int = -1) -> bytes:
        if self.left <= 0:
            return b""
        data = self.raw.read(self.left if n < 0 else min(n, self.left))
        if not data:
            raise Stopped()             # the store went away mid-layer
        self.left -= len(data)
        return data

    def drain(self) -> None:
        """Read to the frame's end: what follows an archive's end (tar's padding), so
        that the next frame's header is where the next read starts."""
        while self.read(CHUNK):
            pass


def frames(raw: BinaryIO) -> Iterator[tuple[bytes, Frame]]:
    """The layers on the store's pipe (store.Unpacking): each a header, `t` (tar), `z`
    (zstd) or `s` (SquashFS) and the length as 8 bytes big-endian, then the layer; `e`
    ends. The pipe's end before `e` means the store gave up (Stopped: its own error is
    what the user sees)."""
    while True:
        head = raw.read(9)
        if head[:1] == b"e":
            return
        if len(head) != 9 or head[:1] not in (b"t", b"z", b"s"):
            raise Stopped()
        yield head[:1], Frame(raw, int.from_bytes(head[1:], "big"))


def spill(frame: Frame, target: str) -> int:
    """A SquashFS frame into a file of this sandbox's own (squash.py reads at offsets, a
    pipe has none): unnamed (O_TMPFILE) beside the tree, so on disk, never in the tree,
    and gone with its descriptor; a memfd where the file system has no O_TMPFILE. The
    store never reads it back, so that this sandbox can write it matters to nobody."""
    try:
        fd = os.open(target, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
    except OSError:
        fd = os.memfd_create("rbox-squashfs", os.MFD_CLOEXEC)
    while chunk := frame.read(CHUNK):
        view = memoryview(chunk)
        while view:
            view = view[os.write(fd, view):]
    return fd


def unpack_zstd(unpacker: Unpacker, frame: Frame) -> None:
    """zstd, which Python 3.11 lacks, through the `zstd` program: a thread copies the
    frame into it, tarfile reads what it writes."""
    import subprocess
    import threading

    try:
        proc = subprocess.Popen(["zstd", "-dcq"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    except FileNotFoundError:
        raise UnpackError("the layer is zstd-compressed and the `zstd` program is not installed") from None
    assert proc.stdin is not None and proc.stdout is not None
    stdin = proc.stdin

    def copy() -> None:
        try:
            while chunk := frame.read(CHUNK):
                stdin.write(chunk)
        except (BrokenPipeError, Stopped):
            pass                        # zstd stopped reading (the tar failed): drained below
        finally:
            try:
                stdin.close()
            except BrokenPipeError:
                pass

    copier = threading.Thread(target=copy, daemon=True)
    copier.start()
    try:
        unpacker.layer(proc.stdout)
        while proc.stdout.read(CHUNK):
            pass
    except BaseException:
        proc.kill()
        raise
    finally:
        proc.stdout.close()
        copier.join()
        frame.drain()
    if proc.wait() != 0:
        raise UnpackError("zstd could not decompress it")


def squashfs(unpacker: Unpacker, fd: int) -> None:
    """A SquashFS image as one layer, read by squash.py (its docstring says why not unsquashfs)."""
    from rootless.image import squash

    members = squash.Image(fd).members()
    try:
        unpacker.members(members)
    finally:
        for text in members.notices:
            unpacker.notice(text)


def main(argv: list[str]) -> int:
    """`unpack [--keep-owners] TARGET FD`: the layers, bottom first, framed on the pipe
    FD that the store feeds (frames); never a descriptor of a layer's file, which this
    sandbox could open again for writing through /proc/self/fd."""
    import _signal

    # A terminal's Ctrl-C reaches every process of the group, and rbox passes it on to
    # this command: the store ends the unpacking (the pipe, or its death), not a signal
    # that would print a traceback here.
    _signal.signal(_signal.SIGINT, _signal.SIG_IGN)
    keep = argv[:1] == ["--keep-owners"]
    if keep:
        argv = argv[1:]
    target, fd = argv[0], int(argv[1])
    unpacker = Unpacker(target, keep)
    unpacker.report = lambda n: print(f"bytes={n}", flush=True)
    raw = os.fdopen(fd, "rb")
    try:
        for number, (kind, frame) in enumerate(frames(raw), 1):
            try:
                if kind == b"s":
                    layer = spill(frame, target)
                    try:
                        squashfs(unpacker, layer)
                    finally:
                        os.close(layer)
                elif kind == b"z":
                    unpack_zstd(unpacker, frame)
                else:
                    unpacker.layer(frame)
                    frame.drain()
            except UnpackError as e:
                raise UnpackError(f"layer {number}: {e}") from None
            print(f"layer={number} bytes={unpacker.size}", flush=True)
    except UnpackError as e:
        sys.stderr.write(f"rbox: error: {e}\n")
        return 1
    except Stopped:
        return 3
    finally:
        for text in unpacker.notices:
            sys.stderr.write(f"rbox: notice: {text}\n")
    sys.stdout.write(f"size={unpacker.size}\n")       # for image.json (store.py)
    return 0


if __name__ == "__main__":
    # The module's imported copy, not __main__'s: squash.py's errors derive from its UnpackError.
    from rootless.image import unpack

    sys.exit(unpack.main(sys.argv[1:]))
