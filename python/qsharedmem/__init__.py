"""qsharedmem: Qt 6's QSharedMemory for Python, without Qt.

Same API, same keys, same OS objects and error texts as Qt 6 (PySide6), so a Python process
and a running Qt application share memory and lock. Safer than Qt: the last detach destroys a
segment (also after crashes), a crashed lock holder does not block everyone, ``lock()`` takes a
timeout and never freezes other Python threads, and ``data()`` is a ``memoryview`` that cannot
crash the interpreter (read-only for ``ReadOnly`` attachments, valid after ``detach()``).

``SharedMemory``, ``ShareableList`` and ``SharedMemoryManager`` are drop-ins for
``multiprocessing.shared_memory``'s classes and ``multiprocessing.managers.SharedMemoryManager``
on the same core, without the resource tracker (change the imports; ``qsharedmem.shared_memory``
and ``qsharedmem.managers`` mirror those modules): see ``docs/multiprocessing.md``.

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

import atexit as _atexit
import os as _os
import sys as _sys
import typing as _typing

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
from ._qsharedmem import (
    AtomicWord,
    Event,
    QNativeIpcKey,
    QSharedMemory,
    QSystemSemaphore,
    __version__,
)
from .shared_memory import ShareableList, SharedMemory

if _typing.TYPE_CHECKING:
    from .managers import SharedMemoryManager

__all__ = [
    "AlreadyExistsError",
    "AtomicWord",
    "Event",
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
    "ShareableList",
    "SharedMemory",
    "SharedMemoryError",
    "SharedMemoryManager",
    "__version__",
]


def __getattr__(name: str) -> object:
    # SharedMemoryManager on first use: it imports multiprocessing.managers, which programs that
    # only use QSharedMemory need not load.
    if name == "SharedMemoryManager":
        from .managers import SharedMemoryManager

        return SharedMemoryManager
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _AfterForkToken:
    """What multiprocessing's after-fork registry holds (weakly) for our callback."""


_AFTER_FORK_TOKEN = _AfterForkToken()
_registered_after_fork = False


def _finalize_with_multiprocessing(_token: object = None) -> None:
    """Runs the exit check from multiprocessing's finalizers as well as from atexit.

    multiprocessing's children started by fork and forkserver (Pool and ProcessPoolExecutor
    workers too) leave through ``os._exit``, which skips atexit; its own finalizers do run. But a
    child clears the finalizers it inherited when it starts (``Process._bootstrap``), and only
    then runs the callbacks of ``multiprocessing.util.register_after_fork``: so the finalizer is
    registered now (for a process that is running already) and again from that callback (for a
    child that is about to start, whether it inherited us through fork or imported us while
    unpickling its target, as forkserver children do).
    """
    global _registered_after_fork
    mp_util = _sys.modules.get("multiprocessing.util")
    if mp_util is None:
        return
    mp_util.Finalize(None, _qsharedmem._release_at_exit, exitpriority=0)
    if not _registered_after_fork:
        _registered_after_fork = True
        mp_util.register_after_fork(_AFTER_FORK_TOKEN, _finalize_with_multiprocessing)


def _after_fork_in_child() -> None:
    _qsharedmem._after_fork_in_child()
    _finalize_with_multiprocessing()


_os.register_at_fork(
    before=_qsharedmem._before_fork,
    after_in_parent=_qsharedmem._after_fork_in_parent,
    after_in_child=_after_fork_in_child,
)
_atexit.register(_qsharedmem._release_at_exit)
_finalize_with_multiprocessing()
