"""qsharedmem: Qt 6's QSharedMemory for Python, without Qt.

Same API, same keys, same OS objects and error texts as Qt 6 (PySide6), so a Python process
and a running Qt application share memory and lock. Safer than Qt: the last detach destroys a
segment (also after crashes), a crashed lock holder does not block everyone, ``lock()`` takes a
timeout and never freezes other Python threads, and ``data()`` is a ``memoryview`` that cannot
crash the interpreter (read-only for ``ReadOnly`` attachments, valid after ``detach()``).

>>> from qsharedmem import QSharedMemory
>>> shm = QSharedMemory(QSharedMemory.platformSafeKey("doctest-demo"))
>>> shm.create(16)
True
>>> with shm.locked():
...     shm.data()[:5] = b"hello"
>>> bytes(shm.constData()[:5])
b'hello'
>>> shm.detach()
True
"""

from __future__ import annotations

import atexit as _atexit
import os as _os
import sys as _sys

from . import _qsharedmem
from ._errors import (
    AlreadyExistsError,
    InvalidKeyError,
    InvalidSizeError,
    LockError,
    LockTimeoutError,
    NotFoundError,
    OutOfResourcesError,
    PermissionDeniedError,
    SharedMemoryError,
)
from ._qsharedmem import QNativeIpcKey, QSharedMemory, QSystemSemaphore, __version__

__all__ = [
    "AlreadyExistsError",
    "InvalidKeyError",
    "InvalidSizeError",
    "LockError",
    "LockTimeoutError",
    "NotFoundError",
    "OutOfResourcesError",
    "PermissionDeniedError",
    "QNativeIpcKey",
    "QSharedMemory",
    "QSystemSemaphore",
    "SharedMemoryError",
    "__version__",
]


def _after_fork_in_child() -> None:
    _qsharedmem._after_fork_in_child()
    # multiprocessing's forked children leave through os._exit, which skips atexit; its own
    # finalizers do run, so the exit check is registered there too.
    mp_util = _sys.modules.get("multiprocessing.util")
    if mp_util is not None:
        mp_util.Finalize(None, _qsharedmem._release_at_exit, exitpriority=0)


_os.register_at_fork(after_in_child=_after_fork_in_child)
_atexit.register(_qsharedmem._release_at_exit)
