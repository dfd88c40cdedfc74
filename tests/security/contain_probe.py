"""Attacks on rbox's containment, run inside a sandbox (and, for the positive controls,
in plain `unshare` or with no sandbox at all, where they must succeed).

Usage: contain_probe.py ACTION [ARG...] -- ACTION ... (actions run in order). Output is one
`key=value` line per fact; a failed system call prints its errno name, so tests assert on
what the kernel said. Standard library and ctypes only: it runs under any Python 3.

Actions:
  remount-rw PATH     remount read-write the mount PATH is on, keeping its other flags
  remount-ro PATH     the same, read-only
  write FILE TEXT     open FILE for writing (truncating) and write TEXT
  read FILE           the content of FILE
  umount PATH         umount2(PATH, 0), then with MNT_DETACH if that failed
  pid-visible PID     whether /proc/PID exists (a host pid: the host's procfs is showing)
  setgroups           setgroups([]): drop every supplementary group
  tmpfs DIR           mount a new tmpfs on DIR and write a file in it
  bind SRC DST        bind-mount SRC on DST
  chown FILE UID GID  chown
  pid1                open /proc/1/fd, /proc/1/mem, ptrace PID 1, pidfd_getfd from it,
                      and write a forged `ERROR` line into every descriptor of PID 1
  fds                 the descriptors this process has open (/proc/self/fd)
  write-through DIRNAME  create DIRNAME in every directory reachable as /proc/self/fd/N
  fd-write N TEXT     write TEXT to descriptor N
  with-fds N FILE -- ARGV...   open FILE N times (inheritable), then exec ARGV
  with-dirfd DIR -- ARGV...    open DIR (inheritable), then exec ARGV
  key-session DESC -- ARGV...  join a new session keyring, add a `user` key DESC, run ARGV
                      (env KEY_SERIAL, SESSION_SERIAL), then look for `planted` in the session
  key-attack DESC SERIAL       search the session keyring for DESC, read key SERIAL,
                      plant a key `planted` in the session keyring, print its serial
  user-keyring        the serial of the user keyring (@u), created if missing
  key-plant-in RING   add a key `planted` to the keyring with serial RING
  key-find-in RING DESC  search the keyring RING for DESC
  key-unlink KEY RING    unlink KEY from RING
  sethostname NAME    sethostname(NAME): needs CAP_SYS_ADMIN over the UTS namespace's owner
  setns-out           try setns(2) into every namespace reachable: each descriptor held, and
                      /proc/PID/ns/KIND of every visible process; print the first one that
                      was entered and differs from ours (`PID/KIND` or `fdN`), else `none`
  ask SOCKET KIND     connect to a unix SOCKET, send `KIND`, print the answer's first word
                      and how many descriptors came with it
"""

import ctypes
import errno
import os
import sys

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
libc.mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p)
libc.umount2.argtypes = (ctypes.c_char_p, ctypes.c_int)
libc.ptrace.restype = ctypes.c_long
libc.ptrace.argtypes = (ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p)

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 0x1, 0x2, 0x4, 0x8
MS_REMOUNT, MS_NOATIME, MS_NODIRATIME, MS_BIND, MS_RELATIME = 0x20, 0x400, 0x800, 0x1000, 0x200000
MNT_DETACH = 0x2
PTRACE_ATTACH, PTRACE_DETACH = 16, 17
ARCH = os.uname().machine
SYS_PIDFD_GETFD = 438
SYS_ADD_KEY = {"x86_64": 248, "aarch64": 217, "riscv64": 217, "ppc64le": 269, "s390x": 278}[ARCH]
SYS_KEYCTL = {"x86_64": 250, "aarch64": 219, "riscv64": 219, "ppc64le": 271, "s390x": 280}[ARCH]
KEY_SPEC_USER_KEYRING, KEY_SPEC_SESSION_KEYRING = -4, -3
KEYCTL_GET_KEYRING_ID, KEYCTL_JOIN_SESSION_KEYRING, KEYCTL_UNLINK, KEYCTL_SEARCH, KEYCTL_READ = 0, 1, 9, 10, 11
FORGED = b"ERROR message=forged%20by%20the%20command hint= code=0\n"


def out(key, value):
    print(f"{key}={value}", flush=True)


def err_name(e):
    return errno.errorcode.get(e, str(e))


def check(rc):
    """ctypes result -> rc, or OSError with errno."""
    if rc < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return rc


def call(rc):
    check(rc)


def attempt(key, fn):
    try:
        result = fn()
        out(key, "ok" if result is None else result)
        return True
    except OSError as e:
        out(key, err_name(e.errno))
        return False


def main(argv):
    actions = [[]]
    for i, word in enumerate(argv):
        if word == "--":
            if actions[-1] and actions[-1][0] in ("with-fds", "with-dirfd", "key-session"):
                actions[-1].append(argv[i + 1:])     # the rest is the command to run
                break
            actions.append([])
        else:
            actions[-1].append(word)
    for action in actions:
        if action:
            globals()["do_" + action[0].replace("-", "_")](*action[1:])


def mount_point(path):
    """The last-mounted, longest mount point at or above path (/proc/self/mountinfo:
    os.path.ismount misses a bind mount from the same filesystem)."""
    path = os.path.realpath(path)
    best = "/"
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4].replace("\\040", " ")
            if (path == point or path.startswith(point.rstrip("/") + "/")) and len(point) >= len(best):
                best = point
    return best


def remount(path, readonly):
    """Remount the mount PATH is on, read-only or read-write, keeping its other flags (a
    locked nosuid or nodev must be given again, or the kernel refuses: EPERM)."""
    path = mount_point(path)
    out("mountpoint", path)
    keep = os.statvfs(path).f_flag
    flags = MS_REMOUNT | MS_BIND | (MS_RDONLY if readonly else 0)
    for st, ms in ((os.ST_NOSUID, MS_NOSUID), (os.ST_NODEV, MS_NODEV), (os.ST_NOEXEC, MS_NOEXEC),
                   (os.ST_NOATIME, MS_NOATIME), (os.ST_NODIRATIME, MS_NODIRATIME), (os.ST_RELATIME, MS_RELATIME)):
        if keep & st:
            flags |= ms
    attempt("remount", lambda: call(libc.mount(None, path.encode(), None, flags, None)))


def do_remount_rw(path):
    remount(path, readonly=False)


def do_remount_ro(path):
    remount(path, readonly=True)


def do_write(path, text):
    def write():
        with open(path, "w") as f:
            f.write(text)
    attempt("write", write)


def do_read(path):
    def read():
        with open(path) as f:
            return repr(f.read())
    attempt("read", read)


def do_umount(path):
    if not attempt("umount", lambda: call(libc.umount2(path.encode(), 0))):
        attempt("umount_detach", lambda: call(libc.umount2(path.encode(), MNT_DETACH)))


def do_pid_visible(pid):
    out("pid_visible", os.path.exists(f"/proc/{pid}"))


def do_setgroups():
    out("groups_before", " ".join(map(str, os.getgroups())))
    attempt("setgroups", lambda: os.setgroups([]))


def do_tmpfs(path):
    if attempt("tmpfs", lambda: call(libc.mount(b"tmpfs", path.encode(), b"tmpfs", 0, b"mode=0755"))):
        do_write(os.path.join(path, "inside-tmpfs"), "x")


def do_bind(src, dst):
    attempt("bind", lambda: call(libc.mount(src.encode(), dst.encode(), None, MS_BIND, None)))


def do_chown(path, uid, gid):
    attempt("chown", lambda: os.chown(path, int(uid), int(gid)))


def do_pid1():
    attempt("fd_list", lambda: " ".join(sorted(os.listdir("/proc/1/fd"), key=int)))
    attempt("mem", lambda: os.close(os.open("/proc/1/mem", os.O_RDONLY)))
    attempt("environ", lambda: len(open("/proc/1/environ", "rb").read()))

    def trace():
        call(libc.ptrace(PTRACE_ATTACH, 1, None, None))
        os.waitpid(1, 0x40000000)       # __WALL: until it stops, so that it can be detached
        libc.ptrace(PTRACE_DETACH, 1, None, None)
    attempt("ptrace", trace)

    def getfd():
        pidfd = os.pidfd_open(1)
        try:
            for n in range(3, 64):
                try:
                    os.close(check(libc.syscall(SYS_PIDFD_GETFD, pidfd, n, 0)))
                    return f"fd{n}"
                except OSError as e:
                    if e.errno != errno.EBADF:
                        raise
            raise OSError(errno.EBADF, "no descriptor")
        finally:
            os.close(pidfd)
    attempt("pidfd_getfd", getfd)
    forged = 0
    for n in range(64):
        try:
            fd = os.open(f"/proc/1/fd/{n}", os.O_WRONLY | os.O_NONBLOCK)
        except OSError:
            continue
        try:
            os.write(fd, FORGED)
            forged += 1
        except OSError:
            pass
        os.close(fd)
    out("forged_writes", forged)


def do_fds():
    own = f"/proc/{os.getpid()}/fd"      # the listing's own descriptor(s)
    names = []
    for n in sorted(int(x) for x in os.listdir("/proc/self/fd")):
        try:
            if os.readlink(f"/proc/self/fd/{n}") != own:
                names.append(n)
        except OSError:
            continue
    out("fds", " ".join(map(str, names)))


def do_write_through(name):
    made = []
    for n in sorted(int(x) for x in os.listdir("/proc/self/fd")):
        path = f"/proc/self/fd/{n}/{name}"
        try:
            with open(path, "w") as f:
                f.write("planted through an inherited descriptor")
            made.append(str(n))
        except OSError:
            continue
    out("written_through", " ".join(made) or "none")


def do_fd_write(n, text):
    attempt("fd_write", lambda: os.write(int(n), text.encode()))


def do_with_fds(count, path, argv):
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = int(count) + 64
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
    for _ in range(int(count)):
        os.set_inheritable(os.open(path, os.O_RDONLY), True)
    os.execv(argv[0], argv)


def do_with_dirfd(path, argv):
    os.set_inheritable(os.open(path, os.O_RDONLY | os.O_DIRECTORY), True)
    os.execv(argv[0], argv)


def keyctl(*args):
    return check(libc.syscall(SYS_KEYCTL, *(ctypes.c_long(a) for a in args)))


def add_key(desc, payload, ring):
    return check(libc.syscall(SYS_ADD_KEY, b"user", desc.encode(), payload, ctypes.c_size_t(len(payload)),
                              ctypes.c_long(ring)))


def search(ring, desc):
    kind, name = ctypes.create_string_buffer(b"user"), ctypes.create_string_buffer(desc.encode())
    return keyctl(KEYCTL_SEARCH, ring, ctypes.addressof(kind), ctypes.addressof(name), 0)


def do_key_session(desc, argv):
    import subprocess

    keyctl(KEYCTL_JOIN_SESSION_KEYRING, 0)
    serial = add_key(desc, b"host-secret", KEY_SPEC_SESSION_KEYRING)
    session = keyctl(KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, 0)
    out("host_key", serial)
    out("host_session", session)
    r = subprocess.run(argv, env=dict(os.environ, KEY_SERIAL=str(serial), SESSION_SERIAL=str(session)))
    out("status", r.returncode)
    attempt("host_finds_planted", lambda: search(KEY_SPEC_SESSION_KEYRING, "planted"))


def do_key_attack(desc, serial):
    attempt("session", lambda: keyctl(KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, 0))
    attempt("find", lambda: search(KEY_SPEC_SESSION_KEYRING, desc))

    def read():
        buf = ctypes.create_string_buffer(256)
        n = keyctl(KEYCTL_READ, int(serial), ctypes.addressof(buf), 256)
        return repr(buf.raw[:n].decode())
    attempt("read", read)
    attempt("plant", lambda: add_key("planted", b"from-the-sandbox", KEY_SPEC_SESSION_KEYRING))


def do_user_keyring():
    attempt("user_keyring", lambda: keyctl(KEYCTL_GET_KEYRING_ID, KEY_SPEC_USER_KEYRING, 1))


def do_key_plant_in(ring):
    attempt("plant_in", lambda: add_key("planted", b"from-the-sandbox", int(ring)))


def do_key_find_in(ring, desc):
    attempt("find_in", lambda: search(int(ring), desc))


def do_key_unlink(key, ring):
    attempt("unlink", lambda: keyctl(KEYCTL_UNLINK, int(key), int(ring)))


def do_sethostname(name):
    attempt("sethostname", lambda: call(libc.sethostname(name.encode(), len(name))))


NS_KINDS = ("user", "mnt", "net", "uts", "ipc", "pid", "cgroup")


def do_setns_out():
    def here(kind):
        return os.stat(f"/proc/self/ns/{kind}").st_ino

    def try_enter(fd, label):
        st = os.fstat(fd)
        for kind in NS_KINDS:
            try:
                if st.st_ino == here(kind):
                    return None             # our own: nothing to gain
            except OSError:
                continue
        if libc.setns(fd, 0) == 0:
            return label
        return None

    found = None
    for n in sorted(int(x) for x in os.listdir("/proc/self/fd")):
        try:
            found = found or try_enter(n, f"fd{n}")
        except OSError:
            continue
    for pid in sorted(int(x) for x in os.listdir("/proc") if x.isdigit()):
        for kind in NS_KINDS:
            try:
                fd = os.open(f"/proc/{pid}/ns/{kind}", os.O_RDONLY)
            except OSError:
                continue
            try:
                found = found or try_enter(fd, f"{pid}/{kind}")
            finally:
                os.close(fd)
    out("setns_out", found or "none")


def do_ask(path, kind):
    import array
    import socket

    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    try:
        s.connect(path)
        try:
            s.sendall(kind.encode() + b"\n")
        except BrokenPipeError:
            pass            # refused before it read: its answer is waiting all the same
        fds = array.array("i")
        data, ancdata, _, _ = s.recvmsg(4096, socket.CMSG_LEN(64 * fds.itemsize))
        for level, ctype, cdata in ancdata:
            if level == socket.SOL_SOCKET and ctype == socket.SCM_RIGHTS:
                fds.frombytes(cdata[:len(cdata) - (len(cdata) % fds.itemsize)])
        out("answer", data.split()[0].decode() if data.split() else "none")
        out("answer_fds", len(fds))
    except OSError as e:
        out("answer", err_name(e.errno))


if __name__ == "__main__":
    main(sys.argv[1:])
