"""One adapter per implementation: the operations the workloads need, each done the way the
library's own documentation does it.

* qsharedmem and PySide6 share Qt's API, so one class serves both (POSIX keys from
  ``platformSafeKey``, System V keys from ``legacyNativeKey``, Qt's default on Linux).
* ``multiprocessing``: ``shared_memory.SharedMemory`` with a ``multiprocessing.Lock`` (which a
  child can only inherit: the contention workloads fork their children).
* ``posix_ipc``: ``SharedMemory`` (mapped with ``mmap``) with a named ``Semaphore``.
* ``sysv_ipc``: ``SharedMemory`` with a ``Semaphore`` that uses ``SEM_UNDO`` (as Qt's does).

PySide6 never removes a POSIX segment (Qt cannot count attachments on Linux), so its
``destroy`` and its create+detach loop unlink the file, as a Qt application has to.
"""

from __future__ import annotations

import mmap
import multiprocessing
import os
from collections.abc import Callable
from multiprocessing import shared_memory
from typing import Any

import posix_ipc
import sysv_ipc

from ._harness import DEV_SHM, SYSV_IPC_OBJECTS, unique_name

POSIX = "POSIX"
SYSTEM_V = "System V"

Loop = Callable[[int], object]


class PeerError(RuntimeError):
    """An operation a benchmark relies on failed."""


class Handle:
    """One attachment to a segment: its lock, a view of its memory, and how to let go."""

    def __init__(
        self,
        peer: Peer,
        spec: Any,
        lock: Callable[[], object],
        unlock: Callable[[], object],
        view: Callable[[], memoryview],
        detach: Callable[[], object],
        native: Any,
    ) -> None:
        self.peer = peer
        self.spec = spec  # what attach() needs, also in a forked child
        self.lock = lock
        self.unlock = unlock
        self.view = view  # release every view before detach()
        self.detach = detach
        self.native = native  # the library's own object


class Peer:
    """An implementation under test."""

    label: str
    family: str
    backend: str

    def create(self, size: int) -> Handle:
        raise NotImplementedError

    def attach(self, spec: Any) -> Handle:
        raise NotImplementedError

    def destroy(self, handle: Handle) -> None:
        """Detaches the creator's handle and removes whatever the library leaves behind."""
        raise NotImplementedError

    def attach_detach_loop(self, spec: Any) -> Loop:
        """``loop(n)``: n times attach to the existing segment ``spec`` and detach."""
        raise NotImplementedError

    def create_detach_loop(self, size: int) -> Loop:
        """``loop(n)``: n times create a new segment of ``size`` bytes and detach (removing it,
        for libraries that do not remove it on the last detach)."""
        raise NotImplementedError


# --------------------------------------------------------------------------------------------
# qsharedmem and PySide6: the same API


class QtApiPeer(Peer):
    def __init__(self, family: str, shared_memory_class: Any, backend: str) -> None:
        self.family = family
        self.backend = backend
        self.label = f"{family} {backend}"
        self.cls = shared_memory_class
        # Qt cannot tell when the last process detaches from a POSIX segment, so it never
        # removes one; every Qt application that wants it gone unlinks it itself.
        self.leaks_segment = family == "PySide6" and backend == POSIX

    def key(self, name: str) -> Any:
        if self.backend == POSIX:
            return self.cls.platformSafeKey(name)
        return self.cls.legacyNativeKey(name)

    def _file(self, shm: Any) -> str:
        return str(DEV_SHM / shm.nativeKey().lstrip("/"))

    def _handle(self, shm: Any, name: str) -> Handle:
        return Handle(self, name, shm.lock, shm.unlock, shm.data, shm.detach, shm)

    def create(self, size: int) -> Handle:
        name = unique_name("seg")
        shm = self.cls(self.key(name))
        if not shm.create(size):
            raise PeerError(f"{self.label}: create({size}): {shm.errorString()}")
        return self._handle(shm, name)

    def attach(self, spec: Any) -> Handle:
        shm = self.cls(self.key(spec))
        if not shm.attach():
            raise PeerError(f"{self.label}: attach: {shm.errorString()}")
        return self._handle(shm, spec)

    def destroy(self, handle: Handle) -> None:
        shm = handle.native
        path = self._file(shm)
        shm.detach()
        if self.leaks_segment:
            os.unlink(path)

    def attach_detach_loop(self, spec: Any) -> Loop:
        shm = self.cls(self.key(spec))
        attach, detach = shm.attach, shm.detach

        def loop(count: int) -> None:
            for _ in range(count):
                if not attach():
                    raise PeerError(f"{self.label}: attach: {shm.errorString()}")
                detach()

        return loop

    def create_detach_loop(self, size: int) -> Loop:
        shm = self.cls(self.key(unique_name("cd")))
        create, detach = shm.create, shm.detach
        path, unlink = self._file(shm), os.unlink

        def loop(count: int) -> None:
            for _ in range(count):
                if not create(size):
                    raise PeerError(f"{self.label}: create: {shm.errorString()}")
                detach()

        def loop_and_unlink(count: int) -> None:
            for _ in range(count):
                if not create(size):
                    raise PeerError(f"{self.label}: create: {shm.errorString()}")
                detach()
                unlink(path)

        return loop_and_unlink if self.leaks_segment else loop


# --------------------------------------------------------------------------------------------
# multiprocessing.shared_memory + multiprocessing.Lock


class MultiprocessingPeer(Peer):
    family = "multiprocessing"
    backend = POSIX
    label = "multiprocessing"

    def _handle(self, shm: shared_memory.SharedMemory, lock: Any) -> Handle:
        # A view of its own: releasing it must not release the object's `buf`.
        return Handle(
            self,
            (shm.name, lock),
            lock.acquire,
            lock.release,
            lambda: memoryview(shm.buf),
            shm.close,
            shm,
        )

    def create(self, size: int) -> Handle:
        shm = shared_memory.SharedMemory(name=unique_name("mp"), create=True, size=size)
        return self._handle(shm, multiprocessing.Lock())

    def attach(self, spec: Any) -> Handle:
        name, lock = spec
        return self._handle(shared_memory.SharedMemory(name=name), lock)

    def destroy(self, handle: Handle) -> None:
        handle.native.close()
        handle.native.unlink()

    def attach_detach_loop(self, spec: Any) -> Loop:
        name = spec[0]
        segment = shared_memory.SharedMemory

        def loop(count: int) -> None:
            for _ in range(count):
                segment(name=name).close()

        return loop

    def create_detach_loop(self, size: int) -> Loop:
        name = unique_name("cd")
        segment = shared_memory.SharedMemory

        def loop(count: int) -> None:
            for _ in range(count):
                shm = segment(name=name, create=True, size=size)
                shm.close()
                shm.unlink()

        return loop


# --------------------------------------------------------------------------------------------
# posix_ipc: SharedMemory + mmap, and a named Semaphore


class PosixIpcPeer(Peer):
    family = "posix_ipc"
    backend = POSIX
    label = "posix_ipc"

    def _handle(self, name: str, mapping: mmap.mmap, semaphore: Any) -> Handle:
        def detach() -> None:
            mapping.close()
            semaphore.close()

        return Handle(
            self,
            name,
            semaphore.acquire,
            semaphore.release,
            lambda: memoryview(mapping),
            detach,
            (mapping, semaphore),
        )

    @staticmethod
    def _map(name: str, flags: int = 0, size: int = 0) -> mmap.mmap:
        segment = posix_ipc.SharedMemory(name, flags, size=size)
        try:
            return mmap.mmap(segment.fd, segment.size)
        finally:
            segment.close_fd()

    def create(self, size: int) -> Handle:
        name = "/" + unique_name("pi")
        mapping = self._map(name, posix_ipc.O_CREX, size)
        semaphore = posix_ipc.Semaphore(name + "_lock", posix_ipc.O_CREX, initial_value=1)
        return self._handle(name, mapping, semaphore)

    def attach(self, spec: Any) -> Handle:
        return self._handle(spec, self._map(spec), posix_ipc.Semaphore(spec + "_lock"))

    def destroy(self, handle: Handle) -> None:
        handle.detach()
        posix_ipc.unlink_shared_memory(handle.spec)
        posix_ipc.unlink_semaphore(handle.spec + "_lock")

    def attach_detach_loop(self, spec: Any) -> Loop:
        map_segment = self._map

        def loop(count: int) -> None:
            for _ in range(count):
                map_segment(spec).close()

        return loop

    def create_detach_loop(self, size: int) -> Loop:
        name = "/" + unique_name("cd")
        map_segment, unlink, create = self._map, posix_ipc.unlink_shared_memory, posix_ipc.O_CREX

        def loop(count: int) -> None:
            for _ in range(count):
                map_segment(name, create, size).close()
                unlink(name)

        return loop


# --------------------------------------------------------------------------------------------
# sysv_ipc: SharedMemory and a Semaphore with SEM_UNDO


class SysvIpcPeer(Peer):
    family = "sysv_ipc"
    backend = SYSTEM_V
    label = "sysv_ipc"

    def _handle(self, segment: Any, semaphore: Any) -> Handle:
        semaphore.undo = True  # crash-safe, like Qt's System V lock
        return Handle(
            self,
            (segment.key, semaphore.key),
            semaphore.acquire,
            semaphore.release,
            lambda: memoryview(segment),
            segment.detach,
            (segment, semaphore),
        )

    def create(self, size: int) -> Handle:
        segment = sysv_ipc.SharedMemory(None, sysv_ipc.IPC_CREX, size=size, init_character=b"\0")
        semaphore = sysv_ipc.Semaphore(None, sysv_ipc.IPC_CREX, initial_value=1)
        SYSV_IPC_OBJECTS.extend((segment, semaphore))
        return self._handle(segment, semaphore)

    def attach(self, spec: Any) -> Handle:
        segment_key, semaphore_key = spec
        return self._handle(sysv_ipc.SharedMemory(segment_key), sysv_ipc.Semaphore(semaphore_key))

    def destroy(self, handle: Handle) -> None:
        segment, semaphore = handle.native
        segment.detach()
        segment.remove()
        semaphore.remove()
        for obj in (segment, semaphore):
            SYSV_IPC_OBJECTS.remove(obj)

    def attach_detach_loop(self, spec: Any) -> Loop:
        segment = sysv_ipc.SharedMemory(spec[0])
        segment.detach()
        attach, detach = segment.attach, segment.detach

        def loop(count: int) -> None:
            for _ in range(count):
                attach()
                detach()

        return loop

    def create_detach_loop(self, size: int) -> Loop:
        segment_class, flags = sysv_ipc.SharedMemory, sysv_ipc.IPC_CREX

        def loop(count: int) -> None:
            for _ in range(count):
                segment = segment_class(None, flags, size=size)
                segment.detach()
                segment.remove()

        return loop


def all_peers() -> dict[str, Peer]:
    """Every implementation, qsharedmem first."""
    from PySide6.QtCore import QSharedMemory as QtSharedMemory
    from qsharedmem import QSharedMemory

    peers: list[Peer] = [
        QtApiPeer("qsharedmem", QSharedMemory, POSIX),
        QtApiPeer("qsharedmem", QSharedMemory, SYSTEM_V),
        QtApiPeer("PySide6", QtSharedMemory, POSIX),
        QtApiPeer("PySide6", QtSharedMemory, SYSTEM_V),
        MultiprocessingPeer(),
        PosixIpcPeer(),
        SysvIpcPeer(),
    ]
    return {peer.label: peer for peer in peers}
