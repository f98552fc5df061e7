"""The sandbox's syscall filter: a classic-BPF seccomp program built here, loaded by bubblewrap.

No library is needed (bubblewrap takes the compiled program on a file descriptor, ``--seccomp FD``).
The filter allows everything except the calls below, which fail with ``EPERM`` (``clone3``: ``ENOSYS``,
so the C library falls back to ``clone``, whose flags a filter can read). Another architecture's
calling convention (i386 ``int 0x80`` on x86-64, the x32 ABI) is refused outright: a filter keyed on
x86-64 numbers would not see those calls.
"""
from __future__ import annotations

import errno
import itertools
import platform
import struct

#: The calls no candidate needs and the ones that would let state or privilege cross runs or slots:
#: kernel keyrings, SysV and POSIX message-queue IPC (both live per IPC namespace, not per run),
#: namespaces, mounts, tracing and other processes' memory, BPF, perf, modules, kexec, io_uring,
#: handle-based opens, clocks and host administration.
DENIED = (
    "keyctl", "add_key", "request_key",
    "shmget", "shmat", "shmctl", "shmdt", "semget", "semop", "semctl", "semtimedop",
    "msgget", "msgsnd", "msgrcv", "msgctl",
    "mq_open", "mq_unlink", "mq_timedsend", "mq_timedreceive", "mq_notify", "mq_getsetattr",
    "unshare", "setns", "mount", "umount2", "pivot_root", "chroot",
    "open_tree", "move_mount", "fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr",
    "ptrace", "process_vm_readv", "process_vm_writev", "process_madvise", "pidfd_getfd", "kcmp",
    "bpf", "perf_event_open", "userfaultfd", "io_uring_setup", "io_uring_enter", "io_uring_register",
    "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module",
    "open_by_handle_at", "name_to_handle_at", "fanotify_init", "lookup_dcookie",
    "swapon", "swapoff", "reboot", "acct", "quotactl", "syslog",
    "settimeofday", "clock_settime", "clock_adjtime", "adjtimex", "sethostname", "setdomainname",
    "move_pages", "migrate_pages",
)

#: Syscall numbers of the supported architectures (``AUDIT_ARCH`` value, numbers by name).
ARCHES: dict[str, tuple[int, dict[str, int]]] = {
    "x86_64": (0xC000003E, {
        "keyctl": 250, "add_key": 248, "request_key": 249,
        "shmget": 29, "shmat": 30, "shmctl": 31, "shmdt": 67, "semget": 64, "semop": 65, "semctl": 66,
        "semtimedop": 220, "msgget": 68, "msgsnd": 69, "msgrcv": 70, "msgctl": 71,
        "mq_open": 240, "mq_unlink": 241, "mq_timedsend": 242, "mq_timedreceive": 243, "mq_notify": 244,
        "mq_getsetattr": 245, "unshare": 272, "setns": 308, "mount": 165, "umount2": 166, "pivot_root": 155,
        "chroot": 161, "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432,
        "fspick": 433, "mount_setattr": 442, "ptrace": 101, "process_vm_readv": 310, "process_vm_writev": 311,
        "process_madvise": 440, "pidfd_getfd": 438, "kcmp": 312, "bpf": 321, "perf_event_open": 298,
        "userfaultfd": 323, "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
        "kexec_load": 246, "kexec_file_load": 320, "init_module": 175, "finit_module": 313,
        "delete_module": 176, "open_by_handle_at": 304, "name_to_handle_at": 303, "fanotify_init": 300,
        "lookup_dcookie": 212, "swapon": 167, "swapoff": 168, "reboot": 169, "acct": 163, "quotactl": 179,
        "syslog": 103, "settimeofday": 164, "clock_settime": 227, "clock_adjtime": 305, "adjtimex": 159,
        "sethostname": 170, "setdomainname": 171, "move_pages": 279, "migrate_pages": 256,
        "clone": 56, "clone3": 435}),
    "aarch64": (0xC00000B7, {
        "keyctl": 219, "add_key": 217, "request_key": 218,
        "shmget": 194, "shmat": 196, "shmctl": 195, "shmdt": 197, "semget": 190, "semop": 193, "semctl": 191,
        "semtimedop": 192, "msgget": 186, "msgsnd": 189, "msgrcv": 188, "msgctl": 187,
        "mq_open": 180, "mq_unlink": 181, "mq_timedsend": 182, "mq_timedreceive": 183, "mq_notify": 184,
        "mq_getsetattr": 185, "unshare": 97, "setns": 268, "mount": 40, "umount2": 39, "pivot_root": 41,
        "chroot": 51, "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432,
        "fspick": 433, "mount_setattr": 442, "ptrace": 117, "process_vm_readv": 270, "process_vm_writev": 271,
        "process_madvise": 440, "pidfd_getfd": 438, "kcmp": 272, "bpf": 280, "perf_event_open": 241,
        "userfaultfd": 282, "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
        "kexec_load": 104, "kexec_file_load": 294, "init_module": 105, "finit_module": 273,
        "delete_module": 106, "open_by_handle_at": 265, "name_to_handle_at": 264, "fanotify_init": 262,
        "lookup_dcookie": 18, "swapon": 224, "swapoff": 225, "reboot": 142, "acct": 89, "quotactl": 60,
        "syslog": 116, "settimeofday": 170, "clock_settime": 112, "clock_adjtime": 266, "adjtimex": 171,
        "sethostname": 161, "setdomainname": 162, "move_pages": 239, "migrate_pages": 238,
        "clone": 220, "clone3": 435}),
}

#: ``clone`` flags that make a new namespace (``CLONE_NEWTIME`` exists only for clone3/unshare).
NAMESPACE_FLAGS = 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000
X32_SYSCALL_BIT = 0x40000000

_LD_W_ABS, _JA, _JEQ, _JGE, _JSET, _RET = 0x20, 0x05, 0x15, 0x35, 0x45, 0x06
_RET_ALLOW, _RET_ERRNO, _RET_KILL_PROCESS = 0x7FFF0000, 0x00050000, 0x80000000
_NR_OFFSET, _ARCH_OFFSET, _ARG0_LOW_OFFSET = 0, 4, 16  # struct seccomp_data (little-endian)


class UnsupportedArchitecture(RuntimeError):
    pass


def _insn(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
    return struct.pack("<HBBI", code, jt, jf, k)


def filter_program(machine: str | None = None) -> bytes:
    """The compiled filter (``struct sock_filter[]``) for ``machine`` (default: this one)."""
    machine = machine or platform.machine()
    if machine not in ARCHES:
        raise UnsupportedArchitecture(f"no seccomp syscall table for {machine!r} (supported: {', '.join(ARCHES)})")
    audit_arch, numbers = ARCHES[machine]
    # Every syscall passes this program, so it is a binary search over the sorted special numbers
    # (about 7 comparisons) rather than one comparison per entry.
    actions = {numbers[name]: "eperm" for name in DENIED}
    actions[numbers["clone3"]] = "enosys"
    actions[numbers["clone"]] = "clone"
    keys = sorted(actions)
    code: list[tuple] = []  # (opcode, k, true-label, false-label) or ("label", name) or ("insn", bytes)
    labels = itertools.count()

    def search(lo: int, hi: int) -> None:  # keys[lo:hi]; falls through to "allow"
        if hi - lo <= 3:
            for nr in keys[lo:hi]:
                code.append((_JEQ, nr, actions[nr], None))
            code.append(("jump", "allow"))
            return
        mid = (lo + hi) // 2
        upper = f"n{next(labels)}"
        code.append((_JGE, keys[mid], upper, None))
        search(lo, mid)
        code.append(("label", upper))
        search(mid, hi)

    head = [_insn(_LD_W_ABS, _ARCH_OFFSET), _insn(_JEQ, audit_arch, 1, 0), _insn(_RET, _RET_KILL_PROCESS),
            _insn(_LD_W_ABS, _NR_OFFSET)]
    if machine == "x86_64":
        code.append((_JGE, X32_SYSCALL_BIT, "kill", None))
    search(0, len(keys))
    blocks = {
        "allow": [_insn(_RET, _RET_ALLOW)],
        # clone: namespace flags jump over the allow to "eperm", which must come next
        "clone": [_insn(_LD_W_ABS, _ARG0_LOW_OFFSET), _insn(_JSET, NAMESPACE_FLAGS, 1, 0), _insn(_RET, _RET_ALLOW)],
        "eperm": [_insn(_RET, _RET_ERRNO | errno.EPERM)],
        "enosys": [_insn(_RET, _RET_ERRNO | errno.ENOSYS)],
        "kill": [_insn(_RET, _RET_KILL_PROCESS)],
    }
    # resolve label positions: labels take no room; "jump" is an always-true JEQ-free JA
    position = len(head)
    where: dict[str, int] = {}
    for item in code:
        if item[0] == "label":
            where[item[1]] = position
        else:
            position += 1
    for name, block in blocks.items():
        where[name] = position
        position += len(block)
    program = list(head)
    for item in code:
        if item[0] == "label":
            continue
        here = len(program)
        if item[0] == "jump":
            program.append(_insn(_JA, where[item[1]] - (here + 1)))
            continue
        opcode, k, true_label, _ = item
        offset = where[true_label] - (here + 1)
        if offset > 255:
            raise ValueError("seccomp program too long for 8-bit jumps")
        program.append(_insn(opcode, k, offset, 0))
    for block in blocks.values():
        program += block
    return b"".join(program)
