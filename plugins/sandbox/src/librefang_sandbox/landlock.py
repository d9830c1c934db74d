"""Filesystem confinement of child processes with Linux Landlock (no root, no cgroups, no namespaces).

A ruleset is built in the daemon (``landlock_create_ruleset`` + ``landlock_add_rule``); the child
process only calls ``prctl(PR_SET_NO_NEW_PRIVS)`` and ``landlock_restrict_self`` between fork and
exec, so the confined program can read and execute from the system folders, read and write its
workspace, and nothing else: not the daemon's home (vault, config, database), not other agents'
workspaces, not ``/proc`` (whose ``environ`` files would leak the daemon's secrets). Landlock
checks happen at ``open``, so descriptors already open (the output pipes) keep working.
"""

from __future__ import annotations

import ctypes
import os
import platform
from dataclasses import dataclass

# Syscall numbers are shared by every architecture for these recent calls.
SYS_CREATE_RULESET = 444
SYS_ADD_RULE = 445
SYS_RESTRICT_SELF = 446
PR_SET_NO_NEW_PRIVS = 38
CREATE_RULESET_VERSION = 1
RULE_PATH_BENEATH = 1

EXECUTE = 1 << 0
WRITE_FILE = 1 << 1
READ_FILE = 1 << 2
READ_DIR = 1 << 3
REMOVE_DIR = 1 << 4
REMOVE_FILE = 1 << 5
MAKE_CHAR = 1 << 6
MAKE_DIR = 1 << 7
MAKE_REG = 1 << 8
MAKE_SOCK = 1 << 9
MAKE_FIFO = 1 << 10
MAKE_BLOCK = 1 << 11
MAKE_SYM = 1 << 12
REFER = 1 << 13  # ABI 2
TRUNCATE = 1 << 14  # ABI 3
IOCTL_DEV = 1 << 15  # ABI 5

FILE_RIGHTS = EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE | IOCTL_DEV
READ_EXECUTE = EXECUTE | READ_FILE | READ_DIR
DEVICES = ("/dev/null", "/dev/zero", "/dev/random", "/dev/urandom", "/dev/full")


NET_BIND_TCP = 1 << 0  # ABI 4
NET_CONNECT_TCP = 1 << 1
SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0  # ABI 6
SCOPE_SIGNAL = 1 << 1


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


# The process's own symbols, libc's among them: find_library("c") would run `ldconfig -p` in a
# subprocess at import, that is at every daemon start.
_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long
_prctl = _libc.prctl
_prctl.restype = ctypes.c_int


def abi_version() -> int:
    """The Landlock ABI the running kernel offers (0 when Landlock is missing or disabled)."""
    if platform.system() != "Linux":
        return 0
    value = _syscall(ctypes.c_long(SYS_CREATE_RULESET), None, ctypes.c_size_t(0),
                     ctypes.c_uint32(CREATE_RULESET_VERSION))
    return int(value) if value > 0 else 0


def handled_rights(abi: int) -> int:
    """Every filesystem right the given ABI knows (all of them are denied unless a rule grants them)."""
    rights = (1 << 13) - 1
    if abi >= 2:
        rights |= REFER
    if abi >= 3:
        rights |= TRUNCATE
    if abi >= 5:
        rights |= IOCTL_DEV
    return rights


@dataclass
class Ruleset:
    """An open Landlock ruleset descriptor, applied in a child with :meth:`restrict_self`."""

    fd: int
    abi: int

    def restrict_self(self) -> None:
        """Confine the calling process (run between fork and exec; raises OSError on failure)."""
        if _prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS) failed")
        if _syscall(ctypes.c_long(SYS_RESTRICT_SELF), ctypes.c_int(self.fd), ctypes.c_uint32(0)) != 0:
            raise OSError(ctypes.get_errno(), "landlock_restrict_self failed")

    def close(self) -> None:
        """Close the descriptor in the daemon (children that need it got it at fork)."""
        try:
            os.close(self.fd)
        except OSError:
            pass


def _add(ruleset_fd: int, path: str, rights: int) -> None:
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError:
        return  # a folder missing on this system grants nothing
    try:
        if not os.path.isdir(path):
            rights &= FILE_RIGHTS  # the kernel refuses directory rights on a file
        rule = _PathBeneath(allowed_access=rights, parent_fd=fd)
        result = _syscall(ctypes.c_long(SYS_ADD_RULE), ctypes.c_int(ruleset_fd), ctypes.c_int(RULE_PATH_BENEATH),
                          ctypes.byref(rule), ctypes.c_uint32(0))
        if result != 0:
            raise OSError(ctypes.get_errno(), f"landlock_add_rule failed for {path}")
    finally:
        os.close(fd)


def build_ruleset(writable: list[str], read_only: list[str], abi: int | None = None, *,
                  allow_network: bool = True) -> Ruleset | None:
    """A ruleset granting everything under ``writable``, read+execute under ``read_only`` and the
    harmless devices; ``None`` when the kernel has no Landlock. From ABI 4 TCP bind/connect are
    refused unless ``allow_network``; from ABI 6 the confined process can neither signal processes
    outside its domain (the daemon, other commands) nor reach their abstract unix sockets."""
    abi = abi_version() if abi is None else abi
    if abi <= 0:
        return None
    handled = handled_rights(abi)
    attr = _RulesetAttr(handled_access_fs=handled)
    size = 8  # the kernel reads only the fields its ABI knows: pass no more than it expects
    if abi >= 4:
        attr.handled_access_net = 0 if allow_network else NET_BIND_TCP | NET_CONNECT_TCP
        size = 16
    if abi >= 6:
        attr.scoped = SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL
        size = 24
    fd = _syscall(ctypes.c_long(SYS_CREATE_RULESET), ctypes.byref(attr), ctypes.c_size_t(size),
                  ctypes.c_uint32(0))
    if fd < 0:
        raise OSError(ctypes.get_errno(), "landlock_create_ruleset failed")
    fd = int(fd)
    try:
        for path in read_only:
            _add(fd, path, READ_EXECUTE)
        for path in DEVICES:
            _add(fd, path, (READ_FILE | WRITE_FILE | TRUNCATE) & handled)
        for path in writable:
            _add(fd, path, handled)
    except BaseException:
        os.close(fd)
        raise
    return Ruleset(fd, abi)
