"""Where images live, and the sandbox that unpacks them.

Runs in: parent (`rbox image ...`). The unpacking itself runs in a child: an rbox
sandbox (`run --root` with the staging directory bound writable and everything else
read-only, no network), whose command is `python -m rootless.image.unpack`.

The store is `$RBOX_STORAGE`, else `$XDG_DATA_HOME/rbox`, else `~/.local/share/rbox`.
Why under the user's own directory and not /var/tmp/$USER.rbox (Charliecloud's choice):
a world-writable place lets another user create that name first and own the store; the
user's data directory is theirs alone and survives reboots and tmp cleaners. Where that
directory is on a network file system (a cluster's home), it is refused with the fix
(RBOX_STORAGE on node-local disk): an NFS server refuses files owned by subordinate ids
(they mean other users to it), and Lustre, GPFS and BeeGFS make the many small files of a
root file system slow for everyone.

Layout: `images/NAME/` (the published image: `rootfs/` and `image.json`), `tmp/` (staging
directories, one per import or pull, named after its process), `locks/NAME`, and the
blob cache `blobs/` (blobs.py; `locks/.blobs`). An import or pull unpacks into `tmp/`,
and only a complete image is renamed to `images/NAME`: a killed one leaves nothing
under the name (its staging directory is removed by the next one). Two of one name
take turns on `locks/NAME` (flock). The layers reach the unpacker through a pipe
(Unpacking says why not as files).
"""

from __future__ import annotations

import fcntl
import os
import sys

from rootless import log
from rootless import syscalls as sc
from rootless.errors import RboxError

TYPE_CHECKING = False  # not `from typing import ...`: typing costs 9 ms at start-up
if TYPE_CHECKING:
    import threading
    from collections.abc import Callable

# statfs(2) f_type of the file systems a store must not be on, with their names.
NETWORK_FS = {0x6969: "NFS", 0x0BD00BD0: "Lustre", 0x47504653: "GPFS", 0x19830326: "BeeGFS",
              0xFF534D42: "CIFS", 0xFE534D42: "SMB2", 0x00C36400: "CephFS"}
NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")
UNPACKER = ["-m", "rootless.image.unpack"]     # the interpreter's arguments (a test puts a probe there)
FIX = "export RBOX_STORAGE=/var/tmp/$USER.rbox (or another directory on this node's own disk)"


def location(environ: dict[str, str]) -> str:
    given = environ.get("RBOX_STORAGE")
    if given:
        return os.path.abspath(given)
    data = environ.get("XDG_DATA_HOME") or os.path.join(environ.get("HOME") or os.path.expanduser("~"),
                                                        ".local", "share")
    return os.path.join(os.path.abspath(data), "rbox")


def network_fs(magic: int) -> str | None:
    """The name of a network file system by its statfs magic, else None."""
    return NETWORK_FS.get(magic)


CONFIG_KEYS = ("Env", "Entrypoint", "Cmd", "WorkingDir", "User")


def image_config(raw: dict[str, object]) -> dict[str, object]:
    """What rbox keeps of an image's config (its `config` object): the keys `rbox run
    --image` applies, when set."""
    inner = raw.get("config") or {}
    if not isinstance(inner, dict):
        return {}
    return {key: inner[key] for key in CONFIG_KEYS if inner.get(key) not in (None, "", [])}


def check_name(name: str) -> str:
    if not name or len(name) > 128 or not set(name) <= NAME_CHARS or name[0] in ".-":
        raise RboxError(f"invalid image name `{name}`",
                        hint="use up to 128 letters, digits, `_`, `.` and `-`, not starting with `.` or `-`")
    return name


class Store:
    def __init__(self, path: str):
        self.path = path

    @classmethod
    def open(cls, environ: dict[str, str]) -> Store:
        path = location(environ)
        try:
            for sub in ("", "images", "tmp", "locks"):
                os.makedirs(os.path.join(path, sub), mode=0o700, exist_ok=True)
            kind = network_fs(sc.statfs_type(path))
        except OSError as e:
            raise RboxError(f"cannot use the image store `{path}`: {e.strerror}",
                            hint="set RBOX_STORAGE to a directory you may write on this node's own disk") from None
        if kind is not None:
            raise RboxError(f"the image store `{path}` is on {kind}, a network file system: files owned by "
                            "subordinate ids and a root file system's many small files do not belong there",
                            hint=FIX)
        return cls(path)

    def image_dir(self, name: str) -> str:
        return os.path.join(self.path, "images", check_name(name))

    def lock(self, name: str) -> int:
        """An exclusive lock on `name`, held until the descriptor is closed (or the
        process dies: flock(2) locks go with the open file)."""
        fd = os.open(os.path.join(self.path, "locks", check_name(name)), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                     0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        return fd

    def staging(self) -> str:
        """A new staging directory, after removing those of imports that died."""
        tmp = os.path.join(self.path, "tmp")
        for entry in os.listdir(tmp):
            pid = entry.partition(".")[0]
            if pid.isdigit() and not _alive(int(pid)):
                remove_tree(os.path.join(tmp, entry))
        path = os.path.join(tmp, f"{os.getpid()}.{os.urandom(4).hex()}")
        os.mkdir(path, 0o700)
        return path

    def publish(self, staging: str, name: str) -> None:
        """`staging` becomes images/NAME (rename(2) is atomic); an older image of that
        name goes to tmp/ first and is removed after."""
        final = self.image_dir(name)
        old = None
        if os.path.lexists(final):
            old = self.staging()
            os.rename(final, os.path.join(old, "old"))
        os.rename(staging, final)
        if old is not None:
            remove_tree(old)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def keeps_owners() -> bool:
    """Whether `run --root` maps subordinate ids here (else one id: owners flattened).
    Asked without a warning: the unpacking sandbox gives rbox's usual one."""
    import pwd

    from rootless import userns

    uid = os.getuid()
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = str(uid)
    plan = userns.plan_idmap(True, uid, os.getgid(), name, os.environ.get("PATH"), userns.no_new_privs_set())
    return plan.mode == "subid"


def remove_tree(path: str) -> None:
    """rm -rf inside a user namespace with the --root map (rbox unshare): the files of
    subordinate ids are out of the user's reach outside it."""
    import subprocess

    r = subprocess.run([sys.executable, "-m", "rootless", "unshare", "--", "rm", "-rf", "--", path],
                       stdin=subprocess.DEVNULL, capture_output=True, text=True, env=_python_env())
    if r.returncode != 0 or os.path.lexists(path):
        raise RboxError(f"cannot remove `{path}`: {r.stderr.strip()[-300:]}",
                        hint=f"remove it by hand: rbox unshare -- rm -rf {path}")


def _python_env() -> dict[str, str]:
    """This rbox's own modules for the child interpreters, installed or not."""
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "USER", "LANG", "LC_ALL")}
    env["PYTHONPATH"] = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return env


def unpack(layers: list[str], target: str, keep_owners: bool,
           progress: Callable[[int, int], None] | None = None) -> int:
    """Unpack `layers` (files, bottom first) into the empty directory `target`, in an
    rbox sandbox where only `target` is writable (Unpacking). Returns the bytes of the
    files; `progress(layers done or -1, bytes written)` is called as the unpacker goes."""
    unpacking = Unpacking(target, keep_owners, progress)
    try:
        for path in layers:
            unpacking.feed(path)
    except BaseException:
        unpacking.abort()
        raise
    return unpacking.finish()


class Unpacking:
    """The unpacking sandbox, started before the layers need to exist (a pull starts it
    before it asks the registry anything, and it unpacks each layer as soon as that one
    and those below it are in the cache), fed through one pipe: each layer framed by a
    header (unpack.frames), then an end mark. A pull that fails closes the pipe without
    it, and the unpacker stops without a word.

    A pipe, not a descriptor of the layer's file: a descriptor passed into the sandbox,
    read-only as it may be, lets the command open the file again for writing through
    /proc/self/fd/N (proc(5): the magic link reaches the file as opened here, on a
    writable mount, and the sandbox's root owns it). A blob in the cache is trusted by
    every later image; a hostile layer that broke the unpacker must not rewrite it."""

    def __init__(self, target: str, keep_owners: bool, progress: Callable[[int, int], None] | None = None):
        import threading

        read, self.pipe = os.pipe()
        self.progress = progress
        command = [sys.executable, *UNPACKER, *(["--keep-owners"] if keep_owners else []), target, str(read)]
        try:
            self.child = start(sandbox_argv(target, [read]) + command, capture=True, keep=[read])
        except BaseException:
            os.close(self.pipe)
            raise
        finally:
            os.close(read)
        self.broken = False
        self.result: tuple[int, str] = (125, "")
        # After the fork: no thread of ours is copied into the sandbox's processes.
        self.reader = threading.Thread(target=self._read, name="rbox-unpack-output", daemon=True)
        self.reader.start()

    def _read(self) -> None:
        self.result = wait(self.child, self._report)

    def _report(self, line: str) -> None:
        fields = dict(f.partition("=")[::2] for f in line.split())
        if self.progress is not None and fields.get("bytes", "").isdigit():
            layer = fields.get("layer", "")
            self.progress(int(layer) if layer.isdigit() else -1, int(fields["bytes"]))

    def feed(self, path: str) -> None:
        """The next layer: the file's bytes into the pipe, blocking while the unpacker
        is behind. An unpacker that stopped (a broken layer) gets nothing more: finish()
        says why."""
        if self.broken:
            return
        from rootless.image.unpack import ZSTD_MAGIC

        try:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                head = os.pread(f.fileno(), 4, 0)
                kind = b"z" if head == ZSTD_MAGIC else b"s" if head == b"hsqs" else b"t"   # squash.MAGIC
                _write_all(self.pipe, kind + size.to_bytes(8, "big"))
                offset = 0
                while offset < size:
                    sent = os.sendfile(self.pipe, f.fileno(), offset, min(size - offset, 1 << 30))
                    if sent == 0:
                        raise RboxError(f"`{path}` became shorter while it was read", hint="run the command again")
                    offset += sent
        except BrokenPipeError:
            self.broken = True

    def finish(self) -> int:
        """The end mark, then wait for the unpacker: the bytes of its files, or an
        RboxError."""
        if not self.broken:
            try:
                _write_all(self.pipe, b"e")
            except BrokenPipeError:
                pass
        self._close()
        code, output = self.result
        if code != 0:
            raise RboxError(f"unpacking failed (exit status {code}); nothing was kept",
                            hint="the message above says which entry of which layer; the archive may be damaged "
                                 "or hostile")
        size = output.rpartition("size=")[2].strip()
        return int(size) if size.isdigit() else 0

    def abort(self) -> None:
        """Stop it (the caller failed): the pipe ends without the end mark, the
        unpacker stops there without a word (unpack.Stopped), and is waited for."""
        self._close()

    def _close(self) -> None:
        if self.pipe >= 0:
            os.close(self.pipe)
            self.pipe = -1
        self.reader.join()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def sandbox_argv(target: str, fds: list[int]) -> list[str]:
    """The unpacking sandbox, up to its command: uid 0 over the subordinate ids (the
    owners in the layers), no network, `target` the only place bound writable."""
    return ["run", "--root", "--net=none", "-T", "--bind", target, *[f"--pass-fd={fd}" for fd in fds], "--"]


def sandbox(argv: list[str], capture: bool = False, on_line: Callable[[str], None] | None = None,
            keep: list[int] | None = None) -> tuple[int, str]:
    """rbox ARGV in a child process (start), waited for (wait): its exit status, and its
    standard output when `capture` (each line also given to `on_line` as it comes)."""
    return wait(start(argv, capture, keep), on_line)


class Child:
    """A started sandbox: its PID, the read end of its standard output when captured
    (else -1), and the thread that passes its standard error on to ours."""

    def __init__(self, pid: int, output_fd: int, relay: threading.Thread):
        self.pid, self.output_fd, self.relay = pid, output_fd, relay


def start(argv: list[str], capture: bool = False, keep: list[int] | None = None) -> Child:
    """rbox ARGV in a child process, with no configuration file applied (a site
    profile's binds must not widen the unpacking sandbox), from `/` (no cwd bind). The
    child keeps only the descriptors in `keep` (those it passes with --pass-fd) and its
    standard ones: stdin /dev/null, stdout a pipe when `capture`, stderr a pipe whose
    lines a thread of ours writes to our stderr. So it needs no terminal, and it runs in
    a process group of its own: a terminal's Ctrl-C or Ctrl-Z is for rbox, whose end
    ends it (below), not for the unpacker, which would print a traceback."""
    import threading

    read_end, write_end = os.pipe() if capture else (-1, -1)
    err_read, err_write = os.pipe()
    caller = os.getpid()
    pid = os.fork()
    if pid == 0:
        code = 125
        try:
            # A killed pull or import takes its sandbox with it (stage-1 and init follow
            # their parents the same way; prctl(2)). The end of the layers' pipe stops
            # the unpacker too (unpack.Stopped); this also covers a sandbox still
            # starting, which would otherwise start for nothing.
            import signal

            sc.set_pdeathsig(signal.SIGKILL)
            if os.getppid() != caller:
                os._exit(125)           # the caller died before the line above
            os.setpgid(0, 0)
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            os.dup2(err_write, 2)
            if capture:
                os.dup2(write_end, 1)
            # The caller's locks (the image's name, the blob cache) are flock(2) locks,
            # held while any descriptor of their open file lives: a sandbox process that
            # outlives this call by a moment must not hold them. Nor may it hold the
            # write ends of the layers' pipes (the unpacker would never see their end).
            _close_others(set(keep or []))
            code = _sandbox_child(argv)
        except RboxError as e:
            from rootless.cli import _print_error

            _print_error(e.message, e.hint)
            code = e.exit_code
        except BaseException as e:  # noqa: BLE001 - the child must never return into the caller
            os.write(2, f"rbox: error: unpacking sandbox: {type(e).__name__}: {e}\n".encode())
        finally:
            os._exit(code)
    if capture:
        os.close(write_end)
    os.close(err_write)
    # After the fork: no thread of ours is copied into the sandbox's processes.
    relay = threading.Thread(target=_relay, args=(err_read,), name="rbox-sandbox-stderr", daemon=True)
    relay.start()
    return Child(pid, read_end, relay)


def _relay(fd: int) -> None:
    with os.fdopen(fd, "rb") as f:
        for line in f:
            log.write_raw(line.decode(errors="replace"))


def wait(child: Child, on_line: Callable[[str], None] | None = None) -> tuple[int, str]:
    """The exit status of the child and what it wrote on its captured standard output,
    read to its end."""
    output = b""
    if child.output_fd >= 0:
        with os.fdopen(child.output_fd, "rb") as f:
            for line in f:
                output += line
                if on_line is not None:
                    on_line(line.decode(errors="replace"))
    child.relay.join()
    _, status = os.waitpid(child.pid, 0)          # retried after a signal handler ran (PEP 475)
    return os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status), \
        output.decode(errors="replace")


def _close_others(keep: set[int]) -> None:
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2 and fd not in keep:
            try:
                os.close(fd)
            except OSError:
                pass        # listdir's own descriptor, closed already


def _sandbox_child(argv: list[str]) -> int:
    from rootless import fds, options, parent, spec

    os.chdir("/")
    parsed = options.parse(argv)
    the_spec = spec.from_parsed(parsed, _python_env(), "/", False, argv)
    the_spec.cwd_warning = None        # `/` is not bound, as meant: no warning about it
    fds.seal(the_spec.pass_fds)
    return parent.run(the_spec)
