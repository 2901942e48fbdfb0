"""A child process that holds a shared memory segment for the CLI tests.

Usage: ``segment_holder.py IMPL ACTION KEY SIZE``

* ``IMPL``: ``qsharedmem``, ``pyside6`` (Qt's QSharedMemory) or ``multiprocessing``
  (``multiprocessing.shared_memory.SharedMemory``, unregistered from the resource tracker so
  that only this process decides its fate).
* ``ACTION``: ``create`` or ``attach``.
* ``KEY``: for the Qt APIs ``legacy:<key>`` (``QSharedMemory("<key>")``) or a
  ``QNativeIpcKey.toString()`` form; for multiprocessing the segment name, or ``-`` for a
  generated one.
* ``SIZE``: bytes to create (ignored by ``attach``).

Prints ``READY <pid> <name>`` once it holds the segment, then obeys one command per stdin line,
answering each with one line: ``lock`` → ``LOCKED``, ``unlock`` → ``UNLOCKED``,
``write <text>`` → ``WRITTEN``, ``read <n>`` → the hex of the first n bytes, ``detach`` →
``DETACHED``. At the end of stdin it exits normally (Qt objects are destroyed, which detaches).
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


def fail(message: str) -> None:
    print(f"FAILED {message}", flush=True)
    sys.exit(1)


def qt_like(impl: str, action: str, key: str, size: int) -> None:
    if impl == "pyside6":
        from PySide6.QtCore import QNativeIpcKey, QSharedMemory
    else:
        from qsharedmem import QNativeIpcKey, QSharedMemory
    if key.startswith("legacy:"):
        shm = QSharedMemory(key[len("legacy:") :])
    else:
        shm = QSharedMemory(QNativeIpcKey.fromString(key))
    ok = shm.create(size) if action == "create" else shm.attach()
    if not ok:
        fail(f"{action}: {shm.errorString()}")
    print(f"READY {os.getpid()} {shm.nativeKey()}", flush=True)
    for line in sys.stdin:
        command, _, argument = line.strip().partition(" ")
        if command == "lock":
            if not shm.lock():
                fail(f"lock: {shm.errorString()}")
            print("LOCKED", flush=True)
        elif command == "unlock":
            shm.unlock()
            print("UNLOCKED", flush=True)
        elif command == "write":
            view = memoryview(shm.data()).cast("B")
            data = argument.encode()
            view[: len(data)] = data
            print("WRITTEN", flush=True)
        elif command == "read":
            view = memoryview(shm.constData()).cast("B")
            print(bytes(view[: int(argument)]).hex(), flush=True)
        elif command == "detach":
            shm.detach()
            print("DETACHED", flush=True)
    del shm


def multiprocessing_segment(action: str, name: str, size: int) -> None:
    from multiprocessing import resource_tracker, shared_memory

    wanted = None if name == "-" else name
    if action == "create":
        shm = shared_memory.SharedMemory(name=wanted, create=True, size=size)
    else:
        shm = shared_memory.SharedMemory(name=wanted)
    # Python 3.11 registers every attachment with the tracker, which would unlink the segment
    # when this process ends; the test decides instead.
    resource_tracker.unregister(shm._name, "shared_memory")  # type: ignore[attr-defined]
    print(f"READY {os.getpid()} {shm.name}", flush=True)
    for line in sys.stdin:
        command, _, argument = line.strip().partition(" ")
        if command == "write":
            data = argument.encode()
            shm.buf[: len(data)] = data
            print("WRITTEN", flush=True)
        elif command == "read":
            print(bytes(shm.buf[: int(argument)]).hex(), flush=True)
        elif command == "detach":
            shm.close()
            print("DETACHED", flush=True)
            return
    shm.close()


def main() -> None:
    impl, action, key, size = sys.argv[1:5]
    if impl == "multiprocessing":
        multiprocessing_segment(action, key, int(size))
    else:
        qt_like(impl, action, key, int(size))


if __name__ == "__main__":
    main()
