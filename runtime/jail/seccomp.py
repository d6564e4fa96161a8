"""The sandbox's seccomp filter, compiled to BPF by libseccomp (through ctypes: no build step).

A deny list in the spirit of Docker's and Flatpak's default profiles: what a function never needs and an
attacker would want. Denied calls fail with EPERM (clone3 with ENOSYS, so that libc falls back to clone,
whose namespace flags the filter can see); everything else is allowed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
from pathlib import Path

# What a function never needs: mounting and namespaces, tracing other processes, the kernel's keyrings,
# modules, BPF, perf, io_uring, clock and system settings, reboot, swap, quotas, handles to arbitrary inodes.
DENIED = (
    "mount", "umount2", "pivot_root", "chroot", "move_mount", "open_tree", "fsopen", "fsconfig", "fsmount",
    "fspick", "mount_setattr", "unshare", "setns",
    "ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_getfd",
    "keyctl", "add_key", "request_key",
    "init_module", "finit_module", "delete_module", "kexec_load", "kexec_file_load",
    "bpf", "perf_event_open", "userfaultfd", "io_uring_setup", "io_uring_enter", "io_uring_register",
    "open_by_handle_at", "name_to_handle_at", "lookup_dcookie",
    "swapon", "swapoff", "reboot", "syslog", "acct", "quotactl", "quotactl_fd", "vhangup", "nfsservctl",
    "settimeofday", "clock_settime", "clock_adjtime", "adjtimex", "iopl", "ioperm", "uselib", "personality",
    "move_pages", "migrate_pages", "mbind", "set_mempolicy",
    "fanotify_init",
)
# clone() flags that would create a namespace.
NAMESPACE_FLAGS = (0x10000000, 0x20000000, 0x40000000, 0x04000000, 0x08000000, 0x00020000, 0x02000000,
                   0x00000080)   # NEWUSER, NEWPID, NEWNET, NEWIPC, NEWUTS, NEWNS, NEWCGROUP, NEWTIME
TIOCSTI = 0x5412                  # push characters into a terminal's input

_ACT_ALLOW = 0x7FFF0000
_ATTR_OPTIMIZE = 8                # SCMP_FLTATR_CTL_OPTIMIZE
_CMP_MASKED_EQ = 7
_CMP_EQ = 4


class SeccompUnavailable(Exception):
    """libseccomp cannot be loaded or refused the filter; the message says what to install."""


class _ArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("datum_a", ctypes.c_uint64),
                ("datum_b", ctypes.c_uint64)]


def _errno(code: int) -> int:
    return 0x00050000 | (code & 0xFFFF)      # SCMP_ACT_ERRNO(code)


def _library() -> ctypes.CDLL:
    name = ctypes.util.find_library("seccomp") or "libseccomp.so.2"
    try:
        lib = ctypes.CDLL(name, use_errno=True)
    except OSError as exc:
        raise SeccompUnavailable(f"libseccomp is not installed ({exc}): apt-get install -y libseccomp2") from None
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint,
                                           ctypes.POINTER(_ArgCmp)]
    lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.seccomp_attr_set.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32]
    return lib


def write_filter(path: Path) -> Path:
    """Compile the filter for this machine's architecture into `path` (raw BPF, as bwrap --seccomp reads)."""
    lib = _library()
    ctx = lib.seccomp_init(_ACT_ALLOW)
    if not ctx:
        raise SeccompUnavailable("seccomp_init failed")
    try:
        # A binary tree of the system call numbers, not a list: every system call of a sandbox passes the filter.
        lib.seccomp_attr_set(ctx, _ATTR_OPTIMIZE, 2)      # libseccomp 2.5+; older ones keep the list

        def rule(action: int, name: str, *compares: tuple[int, int, int, int]) -> None:
            number = lib.seccomp_syscall_resolve_name(name.encode())
            if number < 0:          # not a system call on this architecture (e.g. iopl on arm64)
                return
            array = (_ArgCmp * max(1, len(compares)))(*[_ArgCmp(*c) for c in compares])
            code = lib.seccomp_rule_add_array(ctx, action, number, len(compares), array)
            if code < 0:
                raise SeccompUnavailable(f"libseccomp refused the rule for {name}: {os.strerror(-code)}")

        for name in DENIED:
            rule(_errno(errno.EPERM), name)
        rule(_errno(errno.ENOSYS), "clone3")   # its flags are in memory a filter cannot read
        for flag in NAMESPACE_FLAGS:
            rule(_errno(errno.EPERM), "clone", (0, _CMP_MASKED_EQ, flag, flag))
        rule(_errno(errno.EPERM), "ioctl", (1, _CMP_EQ, TIOCSTI, 0))
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(path.name + f".{os.getpid()}")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            code = lib.seccomp_export_bpf(ctx, fd)
        finally:
            os.close(fd)
        if code < 0:
            raise SeccompUnavailable(f"libseccomp could not export the filter: {os.strerror(-code)}")
        os.replace(temporary, path)
        return path
    finally:
        lib.seccomp_release(ctx)
