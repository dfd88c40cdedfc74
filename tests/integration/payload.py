"""A multi-tool the integration tests run inside the sandbox (crun's tests/init.c idea).

Usage: payload.py ACTION [ARG...] -- ACTION ... (several actions run in order). Output
is one `key=value` line per fact, so tests assert on data, not on prose.

Actions:
  ids            uid, gid, euid, the uid_map/gid_map/setgroups files, joined by `|`
  status         NoNewPrivs, CapEff, CapBnd from /proc/self/status
  pids           the numeric entries of /proc
  session        whether we lead our session, and whether /dev/tty can be opened
  write PATH     try to create PATH; prints errno name or `ok`
  exit N         exit with N
  kill-self SIG  kill ourselves with signal SIG
  orphans N      start N grandchildren that outlive their parent (they sleep 0.2 s)
  zombies        list zombie processes (State: Z) in /proc
  trap SIG FILE  on SIG write the signal name to FILE and exit 7; print `ready`; wait
  leftover FILE SEC [ignore]
                 start a child that outlives us: on SIGTERM it takes SEC seconds to
                 clean up, then writes FILE and exits (`ignore`: it notes the SIGTERM in
                 FILE and carries on); print `leftover=ready` once it is armed
  sleep SEC      sleep
  loopback       listen on 127.0.0.1 and connect to it
  connect PROTO:HOST:PORT...
                 for each: connect (tcp) or send a datagram (udp), read the answer;
                 prints `PROTO:HOST:PORT=` and `open ANSWER`, `timeout` (2 s) or the errno name
  netdevs        interfaces from /proc/net/dev
  env K          print the value of K or `<unset>`
  memhog MB      allocate and touch MB megabytes; print `allocated` if that worked
  forkbomb N     fork children (each sleeps 3 s) until fork fails or N exist; print the count
  busy SEC       spin on the CPU for SEC seconds of wall time
"""

import errno
import os
import signal
import socket
import sys
import time


def main(argv):
    actions = [[]]
    for word in argv:
        if word == "--":
            actions.append([])
        else:
            actions[-1].append(word)
    for action in actions:
        if action:
            globals()["do_" + action[0].replace("-", "_")](*action[1:])


def out(key, value):
    print(f"{key}={value}", flush=True)


def do_ids():
    out("uid", os.getuid())
    out("gid", os.getgid())
    for name in ("uid_map", "gid_map", "setgroups"):
        with open(f"/proc/self/{name}") as f:
            out(name, "|".join(" ".join(line.split()) for line in f.read().splitlines()))


def do_status():
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("NoNewPrivs", "CapEff", "CapBnd", "CapPrm"):
                out(key, value.strip())


def do_pids():
    out("pids", " ".join(sorted((e for e in os.listdir("/proc") if e.isdigit()), key=int)))
    out("self", os.getpid())


def do_session():
    out("session_leader", os.getsid(0) == os.getpid())
    try:
        os.close(os.open("/dev/tty", os.O_RDWR))
        out("tty", "yes")
    except OSError as e:
        out("tty", errno.errorcode.get(e.errno, e.errno))


def do_write(path):
    try:
        with open(path, "w") as f:
            f.write("x")
        out("write", "ok")
    except OSError as e:
        out("write", errno.errorcode.get(e.errno, e.errno))


def do_exit(n):
    sys.stdout.flush()
    os._exit(int(n))


def do_kill_self(sig):
    os.kill(os.getpid(), getattr(signal, sig))
    time.sleep(5)


def do_orphans(n):
    for _ in range(int(n)):
        if os.fork() == 0:
            if os.fork() == 0:
                time.sleep(0.2)
                os._exit(0)
            os._exit(0)
        os.wait()
    time.sleep(0.6)  # the grandchildren exit as orphans of PID 1 meanwhile


def do_zombies():
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/status") as f:
                    if any(line.startswith("State:") and "Z" in line.split()[1] for line in f):
                        found.append(entry)
            except OSError:
                pass
    out("zombies", " ".join(found) or "none")


def do_trap(sig, path):
    def handler(signo, _frame):
        with open(path, "w") as f:
            f.write(signal.Signals(signo).name)
        os._exit(7)

    signal.signal(getattr(signal, sig), handler)
    out("ready", "1")
    while True:
        time.sleep(1)


def do_leftover(path, sec, mode="cleanup"):
    r, w = os.pipe()
    if os.fork() == 0:
        os.close(r)

        def on_term(signo, _frame):
            if mode == "ignore":
                with open(path, "a") as f:
                    f.write("SIGTERM ignored\n")
                return
            time.sleep(float(sec))
            with open(path, "w") as f:
                f.write("cleaned up after SIGTERM")
            os._exit(0)

        signal.signal(signal.SIGTERM, on_term)
        os.write(w, b"1")
        os.close(w)
        while True:
            time.sleep(1)
    os.close(w)
    os.read(r, 1)
    out("leftover", "ready")


def do_sleep(sec):
    time.sleep(float(sec))


def do_loopback():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    client = socket.create_connection(server.getsockname(), timeout=5)
    out("loopback", "ok" if client else "no")


def do_connect(*specs):
    for spec in specs:
        proto, host, port = spec.split(":")
        kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
        with socket.socket(socket.AF_INET, kind) as s:
            s.settimeout(2)
            try:
                s.connect((host, int(port)))
                if proto == "udp":
                    s.send(b"ping")
                out(spec, "open " + s.recv(64).decode())
            except TimeoutError:
                out(spec, "timeout")
            except OSError as e:
                out(spec, errno.errorcode.get(e.errno, e.errno))


def do_netdevs():
    with open("/proc/net/dev") as f:
        names = [line.split(":")[0].strip() for line in f.read().splitlines()[2:]]
    out("netdevs", " ".join(sorted(names)))


def do_env(key):
    out(key, os.environ.get(key, "<unset>"))


def do_memhog(mb):
    block = bytearray(int(mb) * 1024 * 1024)
    for i in range(0, len(block), 4096):
        block[i] = 1
    out("allocated", mb)


def do_forkbomb(limit):
    children = 0
    for _ in range(int(limit)):
        try:
            pid = os.fork()
        except OSError:
            break
        if pid == 0:
            time.sleep(3)
            os._exit(0)
        children += 1
    out("forked", children)


def do_busy(sec):
    end = time.monotonic() + float(sec)
    while time.monotonic() < end:
        pass


if __name__ == "__main__":
    main(sys.argv[1:])
