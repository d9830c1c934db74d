"""Dropping every Linux capability in a child process (when the daemon runs as root).

A command run by a root daemon would otherwise keep root's capabilities: set the clock, change file
owners, mount, open raw sockets, read any file regardless of its mode. Between fork and exec the
child clears its ambient set, empties its bounding set (so executing a binary as uid 0 cannot give the
capabilities back) and drops its effective, permitted and inheritable sets. The uid stays 0, but a
uid without capabilities is only the owner of root's files, and Landlock limits which of those it
reaches. All structures are built in the daemon; the child only makes system calls.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable

PR_CAPBSET_DROP = 24
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
CAPABILITY_VERSION_3 = 0x20080522

# The process's own symbols, libc's among them: find_library("c") would run `ldconfig -p` in a
# subprocess at import, that is at every daemon start.
_libc = ctypes.CDLL(None, use_errno=True)


class _Header(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _Data(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def has_capabilities() -> bool:
    """Whether this process holds any effective capability (root, usually)."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("CapEff:"):
                    return int(line.split()[1], 16) != 0
    except OSError:
        pass
    return os.geteuid() == 0


def last_capability() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap") as handle:
            return int(handle.read())
    except (OSError, ValueError):
        return 40


def dropper() -> Callable[[], None]:
    """The function a child calls (between fork and exec) to drop every capability; raises OSError."""
    header = _Header(CAPABILITY_VERSION_3, 0)
    data = (_Data * 2)()
    caps = list(range(last_capability() + 1))
    prctl, capset = _libc.prctl, _libc.capset

    def drop() -> None:
        prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)  # fails harmlessly on old kernels
        for cap in caps:
            if prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 and ctypes.get_errno() not in (0, 22):
                raise OSError(ctypes.get_errno(), "PR_CAPBSET_DROP failed")
        if capset(ctypes.byref(header), data) != 0:
            raise OSError(ctypes.get_errno(), "capset failed")

    return drop
