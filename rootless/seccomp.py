"""A seccomp filter that takes the kernel keyrings away from the command.

Runs in: init (after NO_NEW_PRIVS, right before the command is spawned; the command and
everything it starts inherit the filter, seccomp(2)).

Why: keyrings are not separated by user namespace. The sandbox gets a session keyring
of its own (init.new_session_keyring), but the user keyring (@u) is the caller's uid's,
and it grants that uid write access by serial number: a command inside could plant a
key there (a Kerberos credential cache, say) that the caller's session then uses, and
/proc/keys lists the host's keys by name. OCI runtimes close this the same way: Docker's
and Podman's default seccomp profiles refuse add_key, keyctl and request_key.

The filter is classic BPF, written here because the program is three comparisons per
ABI and libseccomp would be a new dependency. It answers ENOSYS, the kernel's own
answer where keyrings are compiled out, which libraries (krb5, keyutils users) already
handle by falling back (to a FILE: credential cache). Every other system call is allowed.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct

from rootless import log
from rootless.syscalls import libc

PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_ERRNO = 0x00050000

# Classic BPF opcodes (linux/bpf_common.h).
BPF_LD_W_ABS = 0x20      # BPF_LD | BPF_W | BPF_ABS
BPF_JEQ_K = 0x15         # BPF_JMP | BPF_JEQ | BPF_K
BPF_JGE_K = 0x35         # BPF_JMP | BPF_JGE | BPF_K
BPF_RET_K = 0x06         # BPF_RET | BPF_K
OFFSET_NR, OFFSET_ARCH = 0, 4   # struct seccomp_data: int nr; __u32 arch; ...

X32_SYSCALL_BIT = 0x40000000
# (audit arch, add_key, request_key, keyctl) for each ABI a process on this machine may
# use: the native one and its 32-bit compat ABI (a 32-bit binary must not slip through).
ABIS = {
    "x86_64": ((0xC000003E, 248, 249, 250), (0x40000003, 286, 287, 288)),      # x86_64, i386
    "aarch64": ((0xC00000B7, 217, 218, 219), (0x40000028, 309, 310, 311)),     # aarch64, arm
    "riscv64": ((0xC00000F3, 217, 218, 219),),
    "ppc64le": ((0xC0000015, 269, 270, 271),),
    "s390x": ((0x80000016, 278, 279, 280),),
}


def _insn(code: int, jt: int, jf: int, k: int) -> bytes:
    return struct.pack("HBBI", code, jt, jf, k)


def program(abis: tuple[tuple[int, int, int, int], ...], x32: bool) -> bytes:
    """The filter (pure): for each ABI, its keyring calls get ENOSYS; all else passes.

    Layout per ABI: load arch; if not this ABI, skip its block; load nr; three compares
    that jump to the ENOSYS return; else allow. On x86_64 the x32 ABI shares the arch
    value and sets bit 30 of nr: those numbers are refused too."""
    deny = _insn(BPF_RET_K, 0, 0, SECCOMP_RET_ERRNO | errno.ENOSYS)
    allow = _insn(BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW)
    out = b""
    for i, (arch, *calls) in enumerate(abis):
        checks = list(calls) + ([c | X32_SYSCALL_BIT for c in calls] if x32 and i == 0 else [])
        n = len(checks)
        # block: LD arch; JEQ arch ? next : skip(block); LD nr; JEQ c_j ? deny : next ...; RET allow; RET deny
        block = _insn(BPF_LD_W_ABS, 0, 0, OFFSET_ARCH)
        block += _insn(BPF_JEQ_K, 0, n + 3, arch)            # not this ABI: to the next block
        block += _insn(BPF_LD_W_ABS, 0, 0, OFFSET_NR)
        for j, nr in enumerate(checks):
            block += _insn(BPF_JEQ_K, n - j, 0, nr)          # to the deny after the allow
        block += allow + deny
        out += block
    return out + allow


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def deny_keyrings(machine: str | None = None) -> bool:
    """Install the filter; False (said with --debug) where this architecture is unknown
    to rbox or the kernel has no seccomp filters: the session keyring is then the only
    guard, as rbox(1), SECURITY says."""
    machine = machine or os.uname().machine
    abis = ABIS.get(machine)
    if abis is None:
        log.step(f"no keyring filter: unknown architecture {machine}")
        return False
    code = program(abis, x32=(machine == "x86_64"))
    buf = ctypes.create_string_buffer(code, len(code))
    prog = _SockFprog(len(code) // 8, ctypes.cast(buf, ctypes.c_void_p))
    libc.prctl.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p, ctypes.c_ulong, ctypes.c_ulong)
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(prog), 0, 0) != 0:
        err = ctypes.get_errno()
        log.step(f"no keyring filter: seccomp: {os.strerror(err)}")
        return False
    log.step("seccomp: add_key, keyctl, request_key answer ENOSYS")
    return True
