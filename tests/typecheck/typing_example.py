"""Typed use of the public API: ``make lint`` runs ``mypy --strict`` on this file.

It checks that python/qsharedmem/_qsharedmem.pyi types ordinary user code as intended:
``assert_type`` pins the return types, and each ``# type: ignore[...]`` marks a call the stub
must reject (``--strict`` includes ``--warn-unused-ignores``, so a stub that starts accepting
one of them fails the check). Not a pytest module (no ``test_`` prefix); it also runs as a
script (``python tests/typing_example.py``), where ``assert_type`` does nothing.
"""

from __future__ import annotations

import os
from typing import Literal, assert_type

from qsharedmem import (
    LockError,
    LockTimeoutError,
    NotFoundError,
    QNativeIpcKey,
    QSharedMemory,
    QSystemSemaphore,
    ShareableList,
    SharedMemory,
    SharedMemoryError,
    SharedMemoryManager,
)


def keys(name: str) -> QNativeIpcKey:
    key = QSharedMemory.platformSafeKey(name)
    assert_type(key, QNativeIpcKey)
    assert_type(key.type(), QNativeIpcKey.Type)
    assert_type(QNativeIpcKey.DefaultTypeForOs, QNativeIpcKey.Type)
    assert_type(QNativeIpcKey.legacyDefaultTypeForOs(), QNativeIpcKey.Type)
    assert_type(key.toString(), str)

    # Qt's string form is how processes pass keys to each other.
    again = QNativeIpcKey.fromString(key.toString())
    assert again == key
    posix = QNativeIpcKey("/" + name, QNativeIpcKey.Type.PosixRealtime)
    assert_type(QNativeIpcKey(posix), QNativeIpcKey)
    assert_type(QNativeIpcKey(QNativeIpcKey.Type.SystemV).isEmpty(), bool)
    assert_type(QSharedMemory.isKeyTypeSupported(QNativeIpcKey.Type.SystemV), bool)

    return key


def shared_memory(key: QNativeIpcKey) -> None:
    shm = QSharedMemory(key)
    if not shm.create(64) and shm.error() == QSharedMemory.AlreadyExists:
        shm.attach(QSharedMemory.AccessMode.ReadWrite)
    assert_type(shm.error(), QSharedMemory.SharedMemoryError)
    assert_type(QSharedMemory.ReadOnly, Literal[QSharedMemory.AccessMode.ReadOnly])
    if not shm.isAttached():
        raise SystemExit(f"cannot use {key.toString()}: {shm.errorString()}")

    with shm.locked(timeout=1.0) as locked:
        assert_type(locked, QSharedMemory)
        view = locked.data()
        assert_type(view, memoryview | None)
        assert view is not None
        view[:5] = b"hello"
        assert_type(shm.lockOwnerDied(), bool)

    data = shm.constData()
    assert data is not None
    assert bytes(data[:5]) == b"hello"
    assert_type(shm.size(), int)

    if shm.lock(0.5):
        try:
            assert_type(shm.nativeIpcKey(), QNativeIpcKey)
        finally:
            shm.unlock()

    shm.detach()


class Named(QSharedMemory):
    """A subclass with a constructor of its own, as with PySide6."""

    def __init__(self, name: str) -> None:
        super().__init__(QSharedMemory.platformSafeKey(name))
        self.label = name


def subclass(name: str) -> None:
    with Named(name) as shm:
        assert_type(shm, Named)
        if shm.create(16):
            with shm.locked() as again:
                assert_type(again, Named)
                assert again.label == name


def errors(name: str) -> None:
    shm = QSharedMemory(QSharedMemory.platformSafeKey(name))  # not attached: cannot lock
    try:
        with shm.locked(timeout=0):
            pass
    except LockTimeoutError as e:
        assert_type(e.errno, int | None)
    except LockError as e:
        print("no lock:", e.strerror)
    try:
        SharedMemory(name + "-missing")
    except NotFoundError as e:
        assert isinstance(e, FileNotFoundError)
    except SharedMemoryError as e:
        print("unexpected:", e.qt_error)


def semaphore(name: str) -> None:
    sem = QSystemSemaphore(name, 1, QSystemSemaphore.AccessMode.Create)
    assert_type(sem.error(), QSystemSemaphore.SystemSemaphoreError)
    assert_type(QSystemSemaphore.Create, Literal[QSystemSemaphore.AccessMode.Create])
    assert_type(QSystemSemaphore.Open, Literal[QSystemSemaphore.AccessMode.Open])
    if sem.acquire(timeout=1):
        sem.release()
    with sem as held:
        assert_type(held, QSystemSemaphore)
    assert_type(sem.nativeIpcKey(), QNativeIpcKey)
    sem.setNativeKey(QSystemSemaphore.platformSafeKey(name), 1, QSystemSemaphore.Open)


def multiprocessing_style() -> None:
    with SharedMemory(create=True, size=32) as block:
        buf = block.buf
        assert buf is not None
        buf[0] = 1
        assert_type(block.name, str | None)
        with block.locked():
            buf[1] = 2


def shareable_lists() -> None:
    numbers = ShareableList([1, 2, 3])
    assert_type(numbers, ShareableList[int])
    assert_type(numbers[0], int)
    numbers[0] = 7
    numbers[1] = "seven"  # type: ignore[assignment]
    assert_type(numbers.shm, SharedMemory)
    with numbers.locked(timeout=1.0):
        assert_type(numbers.format, str)
    again: ShareableList[int] = ShareableList(name=numbers.shm.name)
    with again:
        assert_type(again[-1], int)
        assert_type(len(again), int)
    numbers.shm.close()


def manager() -> None:
    with SharedMemoryManager() as smm:
        assert_type(smm.SharedMemory(16), SharedMemory)
        words = smm.ShareableList(["a", "b"])
        assert_type(words, ShareableList[str])
        words.shm.close()


def rejected(shm: QSharedMemory, sem: QSystemSemaphore, key: QNativeIpcKey) -> None:
    """Calls the stub must reject (each is a TypeError at runtime too); never called."""
    QNativeIpcKey(key, QNativeIpcKey.Type.SystemV)  # type: ignore[call-overload]
    QSharedMemory(42)  # type: ignore[arg-type]
    shm.create("64")  # type: ignore[arg-type]
    shm.setKey(None)  # type: ignore[arg-type]
    shm.setNativeKey(key, QNativeIpcKey.Type.SystemV)  # type: ignore[call-overload]
    sem.release(1.5)  # type: ignore[arg-type]
    ShareableList([[1]])  # type: ignore[type-var]
    QSystemSemaphore.isKeyTypeSupported(type=QNativeIpcKey.Type.SystemV)  # type: ignore[call-arg]


def main() -> None:
    name = f"typing-example-{os.getpid()}"
    shared_memory(keys(name))
    subclass(name + "-sub")
    errors(name + "-err")
    semaphore(name)
    multiprocessing_style()
    shareable_lists()
    manager()


if __name__ == "__main__":
    main()
