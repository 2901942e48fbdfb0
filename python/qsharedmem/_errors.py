"""The exceptions qsharedmem raises.

``QSharedMemory`` itself follows Qt: its methods return ``False`` and record ``error()`` and
``errorString()``. Exceptions appear where Python needs them: ``with shm.locked():`` that cannot
lock, unpickling a handle whose segment is gone, and the ``SharedMemory`` class (the
``multiprocessing.shared_memory`` drop-in), which raises instead of returning ``False``.

Every exception is a :class:`SharedMemoryError`, itself an :class:`OSError`; each subclass also
derives from the builtin a Python programmer would catch for that failure (``FileExistsError``,
``FileNotFoundError``, ``PermissionError``, ``TimeoutError``, ``ValueError``), and carries
``errno`` (when the OS reported one), ``strerror`` (Qt's ``errorString()`` text) and
``qt_error`` (the ``QSharedMemory.SharedMemoryError`` member).
"""

from __future__ import annotations

from typing import Any

from ._enums import SharedMemoryError as _QtError
from ._enums import SystemSemaphoreError as _QtSemaphoreError

__all__ = [
    "AlreadyExistsError",
    "InvalidKeyError",
    "InvalidSizeError",
    "LockError",
    "LockTimeoutError",
    "NotFoundError",
    "OutOfResourcesError",
    "PermissionDeniedError",
    "SharedMemoryError",
]


class SharedMemoryError(OSError):
    """Base class of every qsharedmem error."""

    qt_error: _QtError | _QtSemaphoreError = _QtError.UnknownError

    def __init__(self, errno: int | None, strerror: str, qt_error: int | None = None) -> None:
        super().__init__(errno, strerror)
        if qt_error is not None:
            self.qt_error = _QtError(qt_error)

    def __str__(self) -> str:
        return str(self.strerror)

    def __reduce__(self) -> tuple[Any, ...]:
        # OSError's own reduce passes ``filename`` as the third argument, which is ``qt_error``
        # here; multiprocessing pickles every exception a worker or a manager raises.
        return (
            _rebuild_error,
            (type(self), self.errno, self.strerror, self.qt_error, self.filename),
            self.__dict__ or None,
        )


def _rebuild_error(
    cls: type[SharedMemoryError],
    errno: int | None,
    strerror: str,
    qt_error: _QtError | _QtSemaphoreError,
    filename: str | None,
) -> SharedMemoryError:
    exception = cls(errno, strerror)
    exception.qt_error = qt_error
    exception.filename = filename
    return exception


class PermissionDeniedError(SharedMemoryError, PermissionError):
    """``QSharedMemory.PermissionDenied``: the segment or its lock belongs to another user."""

    qt_error = _QtError.PermissionDenied


class InvalidSizeError(SharedMemoryError, ValueError):
    """``QSharedMemory.InvalidSize``: a size of 0, or one the system refuses."""

    qt_error = _QtError.InvalidSize


class InvalidKeyError(SharedMemoryError, ValueError):
    """``QSharedMemory.KeyError``: an empty key, or one the OS cannot name an object with."""

    qt_error = _QtError.KeyError


class AlreadyExistsError(SharedMemoryError, FileExistsError):
    """``QSharedMemory.AlreadyExists``: creating a segment that exists."""

    qt_error = _QtError.AlreadyExists


class NotFoundError(SharedMemoryError, FileNotFoundError):
    """``QSharedMemory.NotFound``: attaching to a segment that does not exist."""

    qt_error = _QtError.NotFound


class LockError(SharedMemoryError):
    """``QSharedMemory.LockError``: the lock could not be taken or released."""

    qt_error = _QtError.LockError


class LockTimeoutError(LockError, TimeoutError):
    """The lock was not free within the timeout."""


class OutOfResourcesError(SharedMemoryError):
    """``QSharedMemory.OutOfResources``: not enough memory, descriptors or ``/dev/shm`` space."""

    qt_error = _QtError.OutOfResources


_BY_QT_ERROR: dict[int, type[SharedMemoryError]] = {
    _QtError.PermissionDenied: PermissionDeniedError,
    _QtError.InvalidSize: InvalidSizeError,
    _QtError.KeyError: InvalidKeyError,
    _QtError.AlreadyExists: AlreadyExistsError,
    _QtError.NotFound: NotFoundError,
    _QtError.LockError: LockError,
    _QtError.OutOfResources: OutOfResourcesError,
}


def error_for(qt_error: int, message: str, errno: int | None = None) -> SharedMemoryError:
    """The exception for a Qt error code and text (used by the extension module)."""
    import errno as _errno

    if qt_error == _QtError.LockError and errno == _errno.ETIMEDOUT:
        return LockTimeoutError(errno, message, qt_error)
    cls = _BY_QT_ERROR.get(qt_error, SharedMemoryError)
    return cls(errno, message, qt_error)


def semaphore_error_for(qt_error: int, message: str, errno: int | None = None) -> SharedMemoryError:
    """The exception for a ``QSystemSemaphore`` error code and text (used by the extension).

    The class is the one of the ``QSharedMemory`` error of the same name (``KeyError`` →
    :class:`InvalidKeyError`, ...); ``qt_error`` is the ``QSystemSemaphore.SystemSemaphoreError``
    member.
    """
    member = _QtSemaphoreError(qt_error)
    cls = _BY_QT_ERROR.get(_QtError.__members__.get(member.name, _QtError.UnknownError))
    exception = (cls or SharedMemoryError)(errno, message)
    exception.qt_error = member
    return exception
