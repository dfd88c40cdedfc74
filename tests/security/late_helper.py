"""A host that mounts things while a sandbox runs, for test_late_mounts.py.

Usage:
  late_helper.py host RBOX-ARGS...   (run inside `unshare -Urm`: the test's own "host")
  late_helper.py serve               (a probe server: in the sandbox, and in a control
                                      namespace that is a plain slave of the "host")

`host` mounts a tmpfs on /mnt in its own mount namespace and makes it shared, as
systemd makes `/` shared on a real host; lays out directories there; starts the control
server in `unshare -m --propagation slave` and rbox RBOX-ARGS (cwd /mnt/work) running
the probe server; prints `ready`; then answers one line per request on stdin:

  host mount PATH | host umount PATH | host mkdir PATH | host read PATH
  box  CMD PATH     (forwarded to the server in the sandbox)
  ctl  CMD PATH     (forwarded to the server in the control namespace)

Server commands: `read PATH` (its content or an errno name), `write PATH` (`ok` or an
errno name), `make-ro PATH` and `remount-rw PATH` (a bind remount: `ro`/`rw` after it,
or an errno name), `setattr-rw PATH` (mount_setattr clearing MOUNT_ATTR_RDONLY),
`umount PATH` (lazily; `ok` or an errno name).
Words are tab-separated. Everything the host starts dies with it (PR_SET_PDEATHSIG);
rbox and the control server exit when their stdin closes, which `host` does at EOF.
Standard library only: the server runs on the sandbox's read-only view of this file.
"""

import ctypes
import errno
import os
import subprocess
import sys

libc = ctypes.CDLL(None, use_errno=True)
libc.mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p)
libc.syscall.restype = ctypes.c_long
MS_RDONLY, MS_REMOUNT, MS_BIND, MS_SHARED = 0x1, 0x20, 0x1000, 0x100000
LAYOUT = ("work/late", "ro/late", "robind/late", "bind/late", "covered/late", "hidden/late", "ro/sentinel")


def errname(e: OSError) -> str:
    return errno.errorcode.get(e.errno or 0, str(e.errno))


def check(rc: int) -> None:
    if rc < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def mount(src, dst, fstype, flags, data=None) -> None:
    enc = [None if s is None else os.fsencode(s) for s in (src, dst, fstype, data)]
    check(libc.mount(enc[0], enc[1], enc[2], flags, enc[3]))


class MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


def state(path: str) -> str:
    return "ro" if os.statvfs(path).f_flag & os.ST_RDONLY else "rw"


def serve_one(cmd: str, path: str) -> str:
    try:
        if cmd == "read":
            with open(path) as f:
                return f.read().strip()
        if cmd == "write":
            with open(path, "w") as f:
                f.write("written from inside\n")
            return "ok"
        if cmd == "make-ro":
            mount(None, path, None, MS_REMOUNT | MS_BIND | MS_RDONLY)
            return state(path)
        if cmd == "remount-rw":
            mount(None, path, None, MS_REMOUNT | MS_BIND)
            return state(path)
        if cmd == "umount":
            check(libc.umount2(os.fsencode(path), 2))   # MNT_DETACH
            return "ok"
        if cmd == "mounts-at":
            # How many mounts are stacked at `path` here (mountinfo's 5th field), and the
            # top one's state: a clone that stayed a slave of the host's mount lets the
            # host's own copy arrive below the one rbox shows.
            with open("/proc/self/mountinfo") as f:
                count = sum(1 for line in f if line.split(" ")[4] == path)
            return f"{count} {state(path)}"
        if cmd == "setattr-rw":
            attr = MountAttr(0, 0x1, 0, 0)  # clear MOUNT_ATTR_RDONLY
            check(libc.syscall(442, -100, os.fsencode(path), 0, ctypes.byref(attr), ctypes.sizeof(attr)))
            return state(path)
    except OSError as e:
        return errname(e)
    return f"unknown command {cmd}"


def serve() -> None:
    print("ready", flush=True)
    for line in sys.stdin:
        cmd, _, path = line.rstrip("\n").partition("\t")
        print(serve_one(cmd, path), flush=True)


def die_with_parent() -> None:
    check(libc.prctl(1, 9, 0, 0, 0))   # PR_SET_PDEATHSIG, SIGKILL


def start(argv: list[str], **kw) -> subprocess.Popen:
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            preexec_fn=die_with_parent, **kw)
    line = proc.stdout.readline().strip()
    if line != "ready":
        raise SystemExit(f"{argv[:4]} did not start (said {line!r}, exit {proc.poll()})")
    return proc


def ask(proc: subprocess.Popen, cmd: str, path: str) -> str:
    proc.stdin.write(f"{cmd}\t{path}\n")
    proc.stdin.flush()
    answer = proc.stdout.readline()
    return answer.strip() if answer else f"server gone (exit {proc.poll()})"


def host_one(cmd: str, path: str) -> str:
    try:
        if cmd == "mount":
            mount("late", path, "tmpfs", 0, "mode=0777")
            with open(f"{path}/marker", "w") as f:
                f.write(f"late {path}\n")
        elif cmd == "umount":
            check(libc.umount2(os.fsencode(path), 0))
        elif cmd == "mkdir":
            os.makedirs(path)
        elif cmd == "read":
            with open(path) as f:
                return f.read().strip()
        else:
            return f"unknown command {cmd}"
    except OSError as e:
        return errname(e)
    return "ok"


def host(rbox_args: list[str]) -> None:
    mount("tmpfs", "/mnt", "tmpfs", 0, "mode=0755")
    mount(None, "/mnt", None, MS_SHARED)
    for d in LAYOUT:
        os.makedirs(f"/mnt/{d}")
    me = os.path.abspath(__file__)
    ctl = start(["unshare", "-m", "--propagation", "slave", sys.executable, me, "serve"])
    box = start([sys.executable, "-m", "rootless", "run", *rbox_args, "--", sys.executable, me, "serve"],
                cwd="/mnt/work")
    print("ready", flush=True)
    for line in sys.stdin:
        where, cmd, path = line.rstrip("\n").split("\t")
        if where == "host":
            answer = host_one(cmd, path)
        else:
            answer = ask(box if where == "box" else ctl, cmd, path)
        print(answer, flush=True)
    for proc in (box, ctl):
        proc.stdin.close()
        proc.wait(timeout=30)


if __name__ == "__main__":
    if sys.argv[1] == "host":
        host(sys.argv[2:])
    else:
        serve()
