"""The seccomp filter every learner process runs under: a denylist of what a learner never needs.

Built with ``pyseccomp`` (a ctypes binding to the system's libseccomp, the library bubblewrap,
Flatpak, systemd and Docker use) rather than hand-written BPF: libseccomp knows every
architecture's syscall numbers, and its filters refuse the other ABIs a process could switch to
(32-bit ``int 0x80``, x32), which a hand-written denylist easily forgets.

The grader compiles the program once; the zygote in the sandbox loads the bytes into each
learner process with ``prctl(PR_SET_SECCOMP)`` after that process's own set-up (its mounts need
``mount``) and before any learner code runs. Denied calls fail with EPERM, so learner code sees an
ordinary ``PermissionError``; ``clone3`` fails with ENOSYS, which makes the C library fall back to
``clone``, whose flags the filter can inspect.
"""

from __future__ import annotations

import errno
import os
import tempfile

# Namespace flags of clone(2)/unshare(2): a learner process must not create any namespace (a new
# user namespace would hand it every capability inside, and with them most of the kernel).
CLONE_NEW = {"NEWTIME": 0x80, "NEWNS": 0x00020000, "NEWCGROUP": 0x02000000, "NEWUTS": 0x04000000,
             "NEWIPC": 0x08000000, "NEWUSER": 0x10000000, "NEWPID": 0x20000000, "NEWNET": 0x40000000}

DENIED = {
    # running programs: the run-time refusal of banned operators (and the audit hook) hold in this
    # process only; a program it starts (a fresh `python -c ...`) would compute without them. The
    # sandbox's own programs (bwrap, setpriv, prlimit, python) have all started before this filter.
    "execve": "running programs", "execveat": "running programs",
    # namespaces and the file-system tree
    "unshare": "new namespaces", "setns": "joining namespaces", "mount": "mounting", "umount2": "unmounting",
    "pivot_root": "changing the root", "chroot": "changing the root", "open_tree": "new mount API",
    "move_mount": "new mount API", "fsopen": "new mount API", "fsconfig": "new mount API",
    "fsmount": "new mount API", "fspick": "new mount API", "mount_setattr": "new mount API",
    # other processes
    "ptrace": "tracing", "process_vm_readv": "reading another process", "process_vm_writev": "writing another process",
    "pidfd_getfd": "stealing descriptors", "kcmp": "comparing kernel objects", "process_madvise": "another's memory",
    # kernel subsystems with a long record of privilege escalations, never needed here
    "bpf": "eBPF", "perf_event_open": "performance counters", "userfaultfd": "user page faults",
    "io_uring_setup": "io_uring", "io_uring_enter": "io_uring", "io_uring_register": "io_uring",
    "keyctl": "kernel keyrings", "add_key": "kernel keyrings", "request_key": "kernel keyrings",
    "modify_ldt": "segment descriptors", "uselib": "a.out libraries",
    "fanotify_init": "file-system monitoring", "open_by_handle_at": "opening by file handle",
    "name_to_handle_at": "file handles",
    # memory no limit counts: System V shared memory and memfd pages are outside RLIMIT_AS
    "shmget": "System V shared memory", "shmat": "System V shared memory", "shmctl": "System V shared memory",
    "shmdt": "System V shared memory", "msgget": "System V messages", "msgsnd": "System V messages",
    "msgrcv": "System V messages", "msgctl": "System V messages", "semget": "System V semaphores",
    "semop": "System V semaphores", "semtimedop": "System V semaphores", "semctl": "System V semaphores",
    "memfd_create": "anonymous files", "memfd_secret": "secret memory",
    # the machine itself (refused anyway without capabilities; denied here too)
    "kexec_load": "kexec", "kexec_file_load": "kexec", "init_module": "kernel modules",
    "finit_module": "kernel modules", "delete_module": "kernel modules", "reboot": "reboot", "swapon": "swap",
    "swapoff": "swap", "acct": "process accounting", "quotactl": "quotas", "quotactl_fd": "quotas",
    "syslog": "the kernel log", "vhangup": "terminals", "iopl": "I/O ports", "ioperm": "I/O ports",
    "settimeofday": "the clock", "clock_settime": "the clock", "clock_adjtime": "the clock", "adjtimex": "the clock",
    "lookup_dcookie": "profiling", "nfsservctl": "NFS",
}
ENOSYS_CALLS = ("clone3",)  # flags behind a pointer: refuse the call, the C library falls back to clone

# socket(2) families allowed: local sockets and IP (the network namespace is empty anyway). Every
# other family (netlink, packet, AF_ALG crypto, vsock, ...) is kernel surface a learner never needs.
ALLOWED_SOCKET_FAMILIES = (1, 2, 10)  # AF_UNIX, AF_INET, AF_INET6
MAX_SOCKET_FAMILY = 64


def _resolvable(name: str) -> bool:
    import pyseccomp

    try:
        pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, name)
    except (ValueError, OSError):
        return False
    return True


def build() -> bytes:
    """The compiled filter (BPF instructions for this machine's architecture)."""
    import pyseccomp as sc

    filt = sc.SyscallFilter(defaction=sc.ALLOW)
    eperm = sc.ERRNO(errno.EPERM)
    for name in DENIED:
        if _resolvable(name):  # older kernels' libseccomp may not know the newest calls
            filt.add_rule(eperm, name)
    for name in ENOSYS_CALLS:
        if _resolvable(name):
            filt.add_rule(sc.ERRNO(errno.ENOSYS), name)
    for flag in CLONE_NEW.values():
        filt.add_rule(eperm, "clone", sc.Arg(0, sc.MASKED_EQ, flag, flag))
    # libseccomp takes one comparison per argument and rule: deny each family in turn, then all above.
    for family in range(MAX_SOCKET_FAMILY + 1):
        if family not in ALLOWED_SOCKET_FAMILIES:
            filt.add_rule(eperm, "socket", sc.Arg(0, sc.EQ, family))
            filt.add_rule(eperm, "socketpair", sc.Arg(0, sc.EQ, family))
    filt.add_rule(eperm, "socket", sc.Arg(0, sc.GT, MAX_SOCKET_FAMILY))
    filt.add_rule(eperm, "socketpair", sc.Arg(0, sc.GT, MAX_SOCKET_FAMILY))
    with tempfile.TemporaryFile() as fh:
        filt.export_bpf(fh)
        fh.seek(0)
        program = fh.read()
    if not program or len(program) % 8:
        raise RuntimeError("libseccomp produced no usable filter")
    return program


_CACHE: dict[int, bytes] = {}


def program() -> bytes:
    """The filter, compiled once per process."""
    if os.getpid() not in _CACHE:
        _CACHE[os.getpid()] = build()
    return _CACHE[os.getpid()]
