"""Inside the sandbox: try to reach FUSE daemons the way a hostile command would.

Runs in: the sandbox (host python, bound in), started by test_overlay_attacks.py:
    python3 -I fuse_probe.py

1. The positive control: a sibling process of its own (a fork that sleeps) is found in
   /proc, signalled, traced (PTRACE_ATTACH) and its memory opened: `control=...`.
2. Every process /proc shows: `process=PID:COMM`.
3. `ready`, then a line of host pids (the daemons, as the test runner found them on the
   host): each is signalled, traced and its memory opened: `daemon=PID:kill=..,...`.
Each result is `ok` or the errno's name.
"""

from __future__ import annotations

import ctypes
import errno
import os
import signal
import sys
import time

libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.argtypes = (ctypes.c_long, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)
PTRACE_ATTACH, PTRACE_DETACH = 16, 17


def name(err: int) -> str:
    return errno.errorcode.get(err, str(err))


def attack(pid: int) -> str:
    found = []
    try:
        os.kill(pid, 0)
        found.append("kill=ok")
    except OSError as e:
        found.append(f"kill={name(e.errno or 0)}")
    if libc.ptrace(PTRACE_ATTACH, pid, None, None) == 0:
        found.append("ptrace=ok")
        os.waitpid(pid, 0x40000000)          # __WALL: the tracee's stop
        libc.ptrace(PTRACE_DETACH, pid, None, None)
    else:
        found.append(f"ptrace={name(ctypes.get_errno())}")
    try:
        with open(f"/proc/{pid}/mem", "rb"):
            found.append("mem=ok")
    except OSError as e:
        found.append(f"mem={name(e.errno or 0)}")
    return ",".join(found)


def main() -> int:
    sibling = os.fork()
    if sibling == 0:
        time.sleep(60)
        os._exit(0)
    seen = {int(p) for p in os.listdir("/proc") if p.isdigit()}
    print(f"control={'found' if sibling in seen else 'missing'}:{attack(sibling)}", flush=True)
    os.kill(sibling, signal.SIGKILL)
    os.waitpid(sibling, 0)
    for entry in sorted(p for p in os.listdir("/proc") if p.isdigit()):
        try:
            with open(f"/proc/{entry}/comm") as f:
                print(f"process={entry}:{f.read().strip()}")
        except OSError:
            continue
    print("ready", flush=True)
    for pid in sys.stdin.readline().split():
        print(f"daemon={pid}:{attack(int(pid))}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
