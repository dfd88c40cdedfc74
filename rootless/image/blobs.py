"""The store's blob cache: layer and config blobs, content-addressed, shared by images.

Runs in: parent (`rbox image pull|import|rm`).

Layout under the store: `blobs/sha256/HEX` holds only blobs whose bytes were verified
against HEX; `blobs/partial/HEX` is a download in progress (or one a killed pull left).
A blob is fetched under an flock on its partial file, so two pulls that want the same
blob take turns and the second finds it done. The partial file is hashed again and
continued from its end with an HTTP Range request (the registry answers 206), and only
renamed into `sha256/` when the whole digest matches: a killed pull loses at most what
the kernel had not yet written, and nothing unverified is ever used.

Images name the blobs they use in image.json (`blobs`). `rbox image rm` removes the
blobs no image names any more, and every partial file, but only when no pull or import
is running: those hold `locks/.blobs` shared for their whole run, and the collection
takes it exclusively without waiting (a busy store keeps its garbage until the next rm).
"""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Callable
from io import BufferedIOBase

from rootless.errors import RboxError

CHUNK = 1 << 20
Progress = Callable[[int, bool], None]     # (bytes, fetched now rather than found on disk)


class Aborted(Exception):
    """Another download of the same pull failed: stop this one (its partial file stays)."""


def _hex(digest: str) -> str:
    algo, _, hexa = digest.partition(":")
    if algo != "sha256" or len(hexa) != 64 or not set(hexa) <= set("0123456789abcdef"):
        raise RboxError(f"unsupported digest `{digest[:80]}`", hint="rbox keeps sha256 blobs only")
    return hexa


class Blobs:
    def __init__(self, store_path: str):
        self.top = os.path.join(store_path, "blobs")
        for sub in ("sha256", "partial"):
            os.makedirs(os.path.join(self.top, sub), mode=0o700, exist_ok=True)
        self.lock_path = os.path.join(store_path, "locks", ".blobs")   # `.`: no image name starts so

    def path(self, digest: str) -> str:
        return os.path.join(self.top, "sha256", _hex(digest))

    def has(self, digest: str) -> bool:
        return os.path.isfile(self.path(digest))

    def using(self) -> int:
        """A shared hold on the cache, kept while a pull or import runs (until the
        descriptor is closed): the collection in `collect` waits for none of them."""
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_SH)
        return fd

    def adopt(self, path: str, digest: str) -> None:
        """Keep the file `path`, whose sha256 is `digest` (computed while it was copied),
        as that blob; a copy already there wins and `path` goes."""
        final = self.path(digest)
        if os.path.exists(final):
            os.unlink(path)
            return
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(fd)                # trusted once named by its digest: on disk first
        finally:
            os.close(fd)
        os.rename(path, final)

    def fetch(self, digest: str, size: int, opener: Callable[[int], tuple[int, BufferedIOBase]],
              progress: Progress, aborted: Callable[[], bool], source: str) -> bool:
        """Make sure the blob is in the cache, downloading what is missing with
        `opener(offset)` -> (start, stream). True when it was there already."""
        final = self.path(digest)
        if os.path.exists(final):
            return True
        partial = os.path.join(self.top, "partial", _hex(digest))
        fd = os.open(partial, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)          # another pull fetching it: wait for its end
            if os.path.exists(final):
                _unlink_if_same(partial, fd)
                return True
            self._download(fd, partial, digest, size, opener, progress, aborted, source)
            os.rename(partial, final)               # still under the lock: waiters then find `final`
        finally:
            os.close(fd)
        return False

    def _download(self, fd: int, partial: str, digest: str, size: int,
                  opener: Callable[[int], tuple[int, BufferedIOBase]], progress: Progress, aborted: Callable[[], bool],
                  source: str) -> None:
        import hashlib

        h = hashlib.sha256()
        have = 0
        while chunk := os.read(fd, CHUNK):          # what a killed pull left: hashed again
            h.update(chunk)
            have += len(chunk)
        if have > size:
            os.ftruncate(fd, 0)
            h, have = hashlib.sha256(), 0
        progress(have, False)
        if have < size:
            start, stream = opener(have)
            try:
                if start != have:                   # the server sent the whole blob: start over
                    os.ftruncate(fd, 0)
                    os.lseek(fd, 0, os.SEEK_SET)
                    progress(-have, False)
                    h, have = hashlib.sha256(), 0
                # read1: what has arrived (up to CHUNK), not a wait for a whole CHUNK, so a
                # stalled or killed transfer has written all it received.
                while chunk := stream.read1(CHUNK):
                    if aborted():
                        raise Aborted()
                    have += len(chunk)
                    if have > size:
                        break
                    h.update(chunk)
                    _write_all(fd, chunk)
                    progress(len(chunk), True)
            finally:
                stream.close()
        if have != size:
            if have > size:
                _unlink_if_same(partial, fd)
            raise RboxError(f"{source} sent {'more' if have > size else 'fewer'} bytes for blob {digest} than its "
                            f"manifest says ({size})", hint="try again; if it persists, the image on the registry "
                                                            "is damaged")
        found = "sha256:" + h.hexdigest()
        if found != digest:
            _unlink_if_same(partial, fd)
            raise RboxError(f"blob {digest} from {source} does not match its digest (its bytes hash to {found}); "
                            "nothing was kept", hint="the registry, or something between it and you, changed the "
                                                     "data: do not use this image until you know why")
        # The cache trusts a blob once it is named by its digest: on disk first (fsync(2)).
        os.fsync(fd)

    def collect(self, keep: set[str]) -> int | None:
        """Remove the blobs not in `keep` and every partial file, when no pull or import
        runs; the number removed, or None when the store was busy."""
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return None
            kept = {_hex(d) for d in keep if d.startswith("sha256:")}
            removed = 0
            for sub in ("sha256", "partial"):
                top = os.path.join(self.top, sub)
                for name in os.listdir(top):
                    if sub == "partial" or name not in kept:
                        try:
                            os.unlink(os.path.join(top, name))
                            removed += 1
                        except FileNotFoundError:
                            pass
            return removed
        finally:
            os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _unlink_if_same(path: str, fd: int) -> None:
    """Remove `path` if it is still the file open as `fd` (not one made since)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return
    mine = os.fstat(fd)
    if (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino):
        try:
            os.unlink(path)
        except OSError as e:
            if e.errno != errno.ENOENT:
                raise
