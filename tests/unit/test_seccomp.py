"""The keyring filter's BPF program, run by a small classic-BPF interpreter (pure): the
keyring calls of every ABI a process may use (x86_64, x32, i386; aarch64 and arm) get
ENOSYS, everything else is allowed."""

from __future__ import annotations

import errno
import struct

import pytest

from rootless import seccomp


def run_filter(code: bytes, arch: int, nr: int) -> int:
    """What the kernel would return for struct seccomp_data {nr, arch, ...}."""
    data = struct.pack("iI", nr, arch) + b"\0" * 56
    insns = [struct.unpack("HBBI", code[i:i + 8]) for i in range(0, len(code), 8)]
    acc, pc = 0, 0
    while True:
        op, jt, jf, k = insns[pc]
        if op == seccomp.BPF_LD_W_ABS:
            acc = struct.unpack_from("I", data, k)[0]
        elif op == seccomp.BPF_JEQ_K:
            pc += jt if acc == k else jf
        elif op == seccomp.BPF_RET_K:
            return k
        else:
            raise AssertionError(f"unexpected opcode {op:#x}")
        pc += 1


DENY = seccomp.SECCOMP_RET_ERRNO | errno.ENOSYS
ALLOW = seccomp.SECCOMP_RET_ALLOW


@pytest.mark.parametrize("machine", sorted(seccomp.ABIS))
def test_keyring_calls_of_every_abi_are_refused(machine: str) -> None:
    code = seccomp.program(seccomp.ABIS[machine], x32=(machine == "x86_64"))
    for arch, *calls in seccomp.ABIS[machine]:
        for nr in calls:
            assert run_filter(code, arch, nr) == DENY
        for nr in (0, 1, 59, 60, 231, min(calls) - 1, max(calls) + 1):
            assert run_filter(code, arch, nr) == ALLOW
    assert run_filter(code, 0x12345678, seccomp.ABIS[machine][0][3]) == ALLOW   # an ABI not of this machine


def test_x32_numbers_are_refused_on_x86_64() -> None:
    code = seccomp.program(seccomp.ABIS["x86_64"], x32=True)
    arch = seccomp.ABIS["x86_64"][0][0]
    assert run_filter(code, arch, 250 | seccomp.X32_SYSCALL_BIT) == DENY
    assert run_filter(code, arch, 1 | seccomp.X32_SYSCALL_BIT) == ALLOW


@pytest.mark.parametrize(("machine", "arch", "numbers"), [
    # From the kernel's syscall tables, written out (not read from seccomp.ABIS):
    # arch/x86/entry/syscalls/syscall_64.tbl and syscall_32.tbl, include/uapi/asm-generic/unistd.h.
    ("x86_64", 0xC000003E, (248, 249, 250)), ("x86_64", 0x40000003, (286, 287, 288)),
    ("aarch64", 0xC00000B7, (217, 218, 219)),
])
def test_the_kernels_numbers_are_refused_literally(machine: str, arch: int, numbers: tuple[int, ...]) -> None:
    code = seccomp.program(seccomp.ABIS[machine], x32=(machine == "x86_64"))
    assert [run_filter(code, arch, nr) for nr in numbers] == [DENY] * 3
