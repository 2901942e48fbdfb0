"""Looking at a system semaphore from outside: its value, and whether a process waits on it.

Tests use these to see that a helper process is *blocked* in ``acquire()`` (a handshake with
the kernel instead of a sleep), and what value a semaphore has after processes exited.

* System V (any key type 1..255): ``ftok(<key file>, <type>)``, then ``GETVAL`` and
  ``GETNCNT`` (processes waiting for the value to increase) through ``sysv_ipc``.
* POSIX: the value through ``posix_ipc``; the number of waiters from glibc's ``sem_t`` in
  ``/dev/shm/sem.<name>`` (64-bit atomics layout, x86_64 and aarch64: the first 8 bytes are
  the value in the low half and the waiter count in the high half; ``sem_wait`` and
  ``sem_timedwait`` count themselves there while they sleep).
"""

from __future__ import annotations

import struct
import time
from pathlib import Path
from typing import Any

import posix_ipc
import pytest
import sysv_ipc

from support.impls import POSIX_TYPE, type_value


def _posix_name(key: Any) -> str:
    return key.nativeKey()


def _sysv(key: Any) -> sysv_ipc.Semaphore:
    unix_key = sysv_ipc.ftok(key.nativeKey(), type_value(key.type()), silence_warning=True)
    return sysv_ipc.Semaphore(unix_key)


def value(key: Any) -> int:
    """The semaphore's current value."""
    if type_value(key.type()) == POSIX_TYPE:
        sem = posix_ipc.Semaphore(_posix_name(key))
        try:
            return sem.value
        finally:
            sem.close()
    return _sysv(key).value


def waiters(key: Any) -> int:
    """How many processes (threads) are blocked waiting for the semaphore to increase."""
    if type_value(key.type()) == POSIX_TYPE:
        path = Path("/dev/shm") / ("sem." + _posix_name(key).lstrip("/"))
        (data,) = struct.unpack("=Q", path.read_bytes()[:8])
        return data >> 32
    return _sysv(key).waiting_for_nonzero


def exists(key: Any) -> bool:
    """Whether the OS object exists."""
    try:
        if type_value(key.type()) == POSIX_TYPE:
            posix_ipc.Semaphore(_posix_name(key)).close()
        else:
            _sysv(key)
    except (posix_ipc.ExistentialError, sysv_ipc.ExistentialError, OSError):
        return False
    return True


def wait_until_waiting(key: Any, child: Any, count: int = 1, timeout: float = 60.0) -> None:
    """Return once ``count`` waiters are blocked on the semaphore; fail if ``child`` exits."""
    deadline = time.monotonic() + timeout
    while waiters(key) < count:
        if child.proc.poll() is not None:
            pytest.fail(
                f"{child.describe()} exited ({child.proc.returncode}) instead of waiting; "
                f"stderr:\n{child.stderr()}"
            )
        if time.monotonic() > deadline:
            pytest.fail(f"nobody started waiting on {key.toString()} within {timeout} s")
        time.sleep(0.005)


__all__ = ["exists", "value", "wait_until_waiting", "waiters"]
