"""`rbox image export NAME FILE`: an image as one SquashFS file, for shared file systems.

Runs in: parent. mksquashfs runs in an rbox sandbox (store.sandbox): uid 0 over the
subordinate ids, as the unpacking sandbox, because the image's files belong to those ids
and only there can all of them be read. It sees the image's tree and the config file
read-only, has no network, and writes only the descriptor of the output it is given
(--pass-fd), which it reopens as /proc/self/fd/N.

Owners: as the image has them inside the user namespace: what belongs to your
subordinate base plus N-1 on the host is stored as uid N, what is yours as uid 0; a
SquashFS made by another user's export reads the same. With a single id every file is
yours, uid 0 inside; `-all-root` says so explicitly, so that a file of an id that is no
longer mapped (the overflow id, 65534) is not stored as that id either.

The file appears complete or not at all: mksquashfs writes an unnamed file (O_TMPFILE,
open(2)) in the destination's directory, which is linked under its name only when
mksquashfs has succeeded and the data is on disk (fsync). A killed export leaves
nothing: the kernel frees an unnamed file with its last descriptor. Where the file
system has no O_TMPFILE (NFS, some others), a hidden `.NAME.rbox-PID.part` beside the
destination takes its place, removed on any failure rbox sees (a kill -9 can leave it,
never FILE). An existing FILE is replaced only with --force (rename(2), atomic);
without it, linkat(2) refuses to replace one that appeared in the meantime.

The config (Env, Entrypoint, Cmd, WorkingDir, User) goes in as /.rbox/image.json
(squash.py), a pseudo file of mksquashfs (`-p`), so the image's tree is not touched.
Compression: zstd at its default level 3 where mksquashfs offers it (as fast as lz4 here,
as small as gzip -9, which takes 20 times longer), else mksquashfs's default, gzip;
squashfuse and Linux (since 4.14) read both.
"""

from __future__ import annotations

import errno
import os
import shlex
import shutil

from rootless.errors import RboxError
from rootless.image import squash, store
from rootless.image.store import Store

MKSQUASHFS_HINT = ("install squashfs-tools, which has mksquashfs (Debian, Ubuntu: apt-get install squashfs-tools; "
                   "Fedora, RHEL: dnf install squashfs-tools)")


def export(the_store: Store, name: str, meta: dict[str, object], dest: str, force: bool) -> str:
    """Write the image `name` to `dest`; the path written."""
    mksquashfs = shutil.which("mksquashfs", path=os.environ.get("PATH") or os.defpath)
    if mksquashfs is None:
        raise RboxError("`rbox image export` needs mksquashfs, which is not installed", hint=MKSQUASHFS_HINT)
    dest = os.path.abspath(dest)
    _check_destination(dest, force)
    rootfs = os.path.join(the_store.image_dir(name), "rootfs")
    lock = the_store.lock(name)               # an import or rm of the name waits for the export
    fd, named = _open_output(dest)
    meta_dir = None
    try:
        meta_dir = the_store.staging()
        config = os.path.join(meta_dir, squash.CONFIG_NAME)
        with open(config, "wb") as f:
            f.write(squash.config_json(meta))
        argv = [mksquashfs, rootfs, f"/proc/self/fd/{fd}", "-noappend", "-no-xattrs", "-no-progress", "-quiet",
                *compression(mksquashfs), *([] if store.keeps_owners() else ["-all-root"]),
                "-p", f"/{squash.CONFIG_DIR} d 755 0 0",
                "-p", f"{squash.CONFIG_PATH} f 444 0 0 cat {shlex.quote(config)}",
                "-e", squash.CONFIG_DIR]            # last: -e takes the rest; an image's own /.rbox is left out
        code, _ = store.sandbox(sandbox_argv(rootfs, meta_dir, fd) + argv, keep=[fd])
        if code != 0:
            raise RboxError(f"mksquashfs failed (exit status {code}); `{dest}` was not written",
                            hint="its message above says why (a full disk, a quota?)")
        os.fsync(fd)
        _publish(fd, named, dest, force)
    except BaseException:
        if named is not None:
            _unlink(named)
        raise
    finally:
        os.close(fd)
        os.close(lock)
        if meta_dir is not None:
            shutil.rmtree(meta_dir, ignore_errors=True)
    return dest


def sandbox_argv(rootfs: str, meta_dir: str, fd: int) -> list[str]:
    """mksquashfs's sandbox, up to its command: uid 0 over the subordinate ids (every
    file of the image readable), no network, the image and the config shown read-only
    (also when the store is under /tmp, which the sandbox has its own of), the output
    only as the descriptor `fd`."""
    return ["run", "--root", "--net=none", "-T", "--ro-bind", rootfs, "--ro-bind", meta_dir, f"--pass-fd={fd}", "--"]


def _check_destination(dest: str, force: bool) -> None:
    if os.path.isdir(dest):
        raise RboxError(f"`{dest}` is a directory", hint="name the file to write, e.g. DIR/NAME.sqfs")
    if os.path.lexists(dest) and not force:
        raise RboxError(f"`{dest}` exists", hint="choose another name, or replace it with --force")


def compression(mksquashfs: str) -> list[str]:
    """zstd's default level where this mksquashfs has zstd (its -help lists its compressors)."""
    import subprocess

    r = subprocess.run([mksquashfs, "-help"], stdin=subprocess.DEVNULL, capture_output=True, text=True)
    listed = []
    for line in (r.stdout + r.stderr).partition("Compressors available:")[2].splitlines()[1:]:
        if not line.strip() or line.lstrip().startswith("-"):
            break
        listed.append(line.split()[0])
    return ["-comp", "zstd", "-Xcompression-level", "3"] if "zstd" in listed else []


def _open_output(dest: str) -> tuple[int, str | None]:
    """A descriptor to write the image to: an unnamed file in dest's directory, else a
    hidden file beside it (its name is returned, to remove it on failure)."""
    directory = os.path.dirname(dest)
    try:
        try:
            return os.open(directory, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o644), None
        except OSError as e:
            if e.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                raise
        named = os.path.join(directory, f".{os.path.basename(dest)}.rbox-{os.getpid()}.part")
        return os.open(named, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644), named
    except OSError as e:
        raise RboxError(f"cannot write `{dest}`: {e.strerror}",
                        hint="choose a directory that exists and that you may write" if e.errno in
                        (errno.ENOENT, errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR)
                        else "check the destination's file system (full, read-only?)") from None


def _publish(fd: int, named: str | None, dest: str, force: bool) -> None:
    """The finished file under its name: linked (never replacing) or, with --force,
    renamed over what is there."""
    try:
        if not force:
            _link(fd, named, dest)          # EEXIST: never replaced
            return
        temporary = named
        if temporary is None:
            temporary = os.path.join(os.path.dirname(dest), f".{os.path.basename(dest)}.rbox-{os.getpid()}.part")
            _link(fd, None, temporary)
        try:
            os.replace(temporary, dest)
        except BaseException:
            _unlink(temporary)
            raise
    except FileExistsError:
        raise RboxError(f"`{dest}` exists (made while the export ran)",
                        hint="choose another name, or replace it with --force") from None
    except OSError as e:
        raise RboxError(f"cannot write `{dest}`: {e.strerror}", hint="check the destination's directory") from None
    finally:
        if named is not None and not force:
            _unlink(named)


def _link(fd: int, named: str | None, dest: str) -> None:
    """A name for the file: the unnamed one through /proc/self/fd/N, which linkat(2)
    follows with AT_SYMLINK_FOLLOW (os.link without a dir_fd calls link(2), which
    would link the magic symlink itself)."""
    if named is not None:
        os.link(named, dest, follow_symlinks=False)
        return
    proc = os.open("/proc/self/fd", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.link(str(fd), dest, src_dir_fd=proc, follow_symlinks=True)
    finally:
        os.close(proc)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
