"""The syscall filter's program, run through a small classic-BPF interpreter: for every syscall
number the action is what ``seccomp.DENIED`` says, ``clone`` is judged by its flags, and another
architecture's calls are killed. (The real kernel's verdicts are checked in test_sandbox_local.py.)"""
from __future__ import annotations

import errno
import struct

import pytest

from mdreward.sandbox import seccomp

ALLOW, KILL = 0x7FFF0000, 0x80000000
EPERM, ENOSYS = 0x00050000 | errno.EPERM, 0x00050000 | errno.ENOSYS


def run_filter(program: bytes, nr: int, arch: int, arg0: int = 0) -> int:
    data = struct.pack("<iIQ6Q", nr, arch, 0, arg0, 0, 0, 0, 0, 0)
    insns = [struct.unpack("<HBBI", program[i:i + 8]) for i in range(0, len(program), 8)]
    acc, pc, steps = 0, 0, 0
    while True:
        code, jt, jf, k = insns[pc]
        steps += 1
        if code == 0x20:  # ld [k]
            acc = struct.unpack_from("<I", data, k)[0]
            pc += 1
        elif code == 0x05:  # ja
            pc += 1 + k
        elif code in (0x15, 0x35, 0x45):  # jeq, jge, jset
            taken = acc == k if code == 0x15 else acc >= k if code == 0x35 else bool(acc & k)
            pc += 1 + (jt if taken else jf)
        elif code == 0x06:  # ret
            return k
        else:
            raise AssertionError(f"unexpected opcode {code:#x}")
        assert steps < 64, "a syscall should pass the filter in a few dozen steps"


@pytest.mark.parametrize("machine", sorted(seccomp.ARCHES))
def test_every_syscall_gets_the_documented_action(machine):
    program = seccomp.filter_program(machine)
    audit_arch, numbers = seccomp.ARCHES[machine]
    denied = {numbers[name] for name in seccomp.DENIED}
    for nr in range(0, 600):
        expected = EPERM if nr in denied else ENOSYS if nr == numbers["clone3"] else ALLOW
        assert run_filter(program, nr, audit_arch) == expected, (machine, nr)
    clone = numbers["clone"]
    assert run_filter(program, clone, audit_arch, 0x11 | 0x01000000 | 0x00200000) == ALLOW  # fork()'s flags
    assert run_filter(program, clone, audit_arch, 0x003D0F00) == ALLOW  # a thread's flags
    for flag in (0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000, 0x40000000):
        assert run_filter(program, clone, audit_arch, flag | 0x11) == EPERM
    assert run_filter(program, 0, 0x40000003) == KILL  # i386 convention
    if machine == "x86_64":
        assert run_filter(program, 0x40000000 | 250, audit_arch) == KILL  # x32 keyctl


def test_an_unknown_architecture_is_refused():
    with pytest.raises(seccomp.UnsupportedArchitecture):
        seccomp.filter_program("riscv64")
