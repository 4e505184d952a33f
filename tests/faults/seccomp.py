"""Real system-call failures for fault tests: a seccomp filter makes the kernel itself return
an errno from chosen system calls (optionally only for one file descriptor). The code under
test is unchanged and sees exactly what a failing disk would give it (``OSError`` from
``os.fsync`` etc.). A filter cannot be removed: install it in a child process only.

Linux on x86-64 or aarch64; needs no privilege (``PR_SET_NO_NEW_PRIVS`` first).
"""

from __future__ import annotations

import ctypes
import os
import platform
import struct

PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_ERRNO = 0x00050000
BPF_LD_W_ABS = 0x00 | 0x00 | 0x20
BPF_JEQ_K = 0x05 | 0x10 | 0x00
BPF_RET_K = 0x06 | 0x00

ARCHES = {
    "x86_64": (0xC000003E, {"fsync": 74, "fdatasync": 75, "ftruncate": 77, "write": 1}),
    "aarch64": (0xC00000B7, {"fsync": 82, "fdatasync": 83, "ftruncate": 46, "write": 64}),
}


def _insn(code: int, jt: int, jf: int, k: int) -> bytes:
    return struct.pack("=HBBI", code, jt, jf, k & 0xFFFFFFFF)


def fail_syscalls(rules: list[tuple[str, int | None, int]]) -> None:
    """Install a filter: each (syscall, fd or None for any, errno) makes that call fail."""
    arch, numbers = ARCHES[platform.machine()]
    program = [_insn(BPF_LD_W_ABS, 0, 0, 4)]  # seccomp_data.arch
    body: list[bytes] = []
    for name, fd, err in rules:
        # A = nr; if A != nr: skip this rule; (fd: A = args[0] low word; if A != fd: skip); return errno
        rule = [_insn(BPF_LD_W_ABS, 0, 0, 0)]
        tail = [_insn(BPF_RET_K, 0, 0, SECCOMP_RET_ERRNO | err)]
        if fd is not None:
            tail = [_insn(BPF_LD_W_ABS, 0, 0, 16), _insn(BPF_JEQ_K, 0, 1, fd)] + tail
        rule.append(_insn(BPF_JEQ_K, 0, len(tail), numbers[name]))
        body += rule + tail
    allow = [_insn(BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW)]
    program.append(_insn(BPF_JEQ_K, 0, len(body), arch))  # another ABI: allow everything
    program += body + allow
    code = b"".join(program)
    buffer = ctypes.create_string_buffer(code, len(code))

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    fprog = SockFprog(len(program), ctypes.addressof(buffer))
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECCOMP)")


def fd_of(path: str | os.PathLike[str]) -> int:
    """The descriptor of this process that is open on ``path`` (exactly one must be)."""
    target = os.path.realpath(path)
    found = [int(fd) for fd in os.listdir("/proc/self/fd") if os.path.realpath(f"/proc/self/fd/{fd}") == target]
    if len(found) != 1:
        raise RuntimeError(f"{len(found)} descriptors open on {target}")
    return found[0]
