"""Port of Qt's ``producerconsumer_helper`` (tests/auto/corelib/ipc/qsharedmemory/producerconsumer).

Usage: ``producerconsumer.py [--impl qsharedmem|pyside6] <mode> <key.toString()>``
with ``<mode>`` one of ``readonly_segfault``, ``producer``, ``consumer``.

Same protocol and exit codes as Qt's helper: exactly two positional arguments, else a usage
message and exit 1; an unknown mode warns and exits 0; any failed create/attach/lock/unlock/
detach warns on stderr and exits 1.

* ``readonly_segfault`` — create(1024, ReadOnly), lock, write byte 0, unlock. With Qt the write
  crashes the process (SIGSEGV), which is what Qt's test expects. qsharedmem's read-only
  ``data()`` refuses the write with ``TypeError`` instead (a deliberate difference, SPEC §4.4);
  the helper then prints ``TypeError: <message> (memoryview, readonly=True)`` and
  ``byte0=<value>`` and carries on to unlock and exit 0, so the test can tell "refused"
  (TypeError line, exit 0) from "written" (``wrote`` line) and from "crashed" (SIGSEGV).
* ``producer`` — create(1024) (on AlreadyExists: attach), print an empty line (ready), set byte 0
  to 'Q', then five rounds waiting for consumers to change it, then 'E'; then block reading one
  byte from stdin and exit 0.
* ``consumer`` — attach (up to 5000 tries, 1 ms apart), replace 'Q' by ++i until 'E', detach.

The 1 ms / 10 ms pauses are Qt's pacing of its polling loops (the synchronisation is the lock
and the byte in shared memory), kept as in Qt.
"""

from __future__ import annotations

import sys
import time

from helper_common import EXIT_FAILURE, EXIT_SUCCESS, load, pop_impl, warn


def set_byte(sm, pos: int, value: int | str) -> None:
    if isinstance(value, str):
        value = ord(value)
    sm.data()[pos] = value & 0xFF


def get_byte(sm, pos: int) -> str:
    return chr(sm.constData()[pos])


def readonly_segfault(QSharedMemory, key) -> int:
    shared_memory = QSharedMemory(key)
    shared_memory.create(1024, QSharedMemory.AccessMode.ReadOnly)
    shared_memory.lock()
    view = shared_memory.data()
    try:
        view[0] = ord("a")  # Qt: set(sharedMemory, 0, 'a')
    except TypeError as exc:
        readonly = getattr(view, "readonly", None)
        print(f"TypeError: {exc} ({type(view).__name__}, readonly={readonly})", flush=True)
        print(f"byte0={shared_memory.constData()[0]}", flush=True)
    else:
        print("wrote", flush=True)
    del view
    shared_memory.unlock()
    return EXIT_SUCCESS


def producer(QSharedMemory, key) -> int:
    producer = QSharedMemory(key)

    size = 1024
    if not producer.create(size):
        if producer.error() == QSharedMemory.SharedMemoryError.AlreadyExists:
            if not producer.attach():
                warn("Could not attach to", producer.nativeKey())
                return EXIT_FAILURE
        else:
            warn("Could not create", producer.nativeKey(), producer.errorString())
            return EXIT_FAILURE
    # tell parent we're ready
    print("", flush=True)

    if not producer.lock():
        warn("Could not lock", producer.nativeKey())
        return EXIT_FAILURE
    set_byte(producer, 0, "Q")
    if not producer.unlock():
        warn("Could not lock", producer.nativeKey())
        return EXIT_FAILURE

    i = 0
    while i < 5:
        if not producer.lock():
            warn("Could not lock", producer.nativeKey())
            return EXIT_FAILURE
        if get_byte(producer, 0) == "Q":
            if not producer.unlock():
                warn("Could not unlock", producer.nativeKey())
                return EXIT_FAILURE
            time.sleep(0.001)
            continue
        i += 1
        set_byte(producer, 0, "Q")
        if not producer.unlock():
            warn("Could not unlock", producer.nativeKey())
            return EXIT_FAILURE
        time.sleep(0.001)

    if not producer.lock():
        warn("Could not lock", producer.nativeKey())
        return EXIT_FAILURE
    set_byte(producer, 0, "E")
    if not producer.unlock():
        warn("Could not unlock", producer.nativeKey())
        return EXIT_FAILURE

    # wait for the parent to tell us that all consumers are gone (Qt: getchar())
    sys.stdin.buffer.read(1)
    return EXIT_SUCCESS


def consumer(QSharedMemory, key) -> int:
    consumer = QSharedMemory(key)

    tries = 0
    while not consumer.attach():
        if tries == 5000:
            warn("consumer exiting, waiting too long")
            return EXIT_FAILURE
        tries += 1
        time.sleep(0.001)

    i = 0
    while True:
        if not consumer.lock():
            warn("Could not lock", consumer.nativeKey())
            return EXIT_FAILURE
        if get_byte(consumer, 0) == "Q":
            i += 1
            set_byte(consumer, 0, i)
        if get_byte(consumer, 0) == "E":
            if not consumer.unlock():
                warn("Could not unlock", consumer.nativeKey())
                return EXIT_FAILURE
            break
        if not consumer.unlock():
            warn("Could not unlock", consumer.nativeKey())
            return EXIT_FAILURE
        time.sleep(0.01)

    if not consumer.detach():
        warn("Could not detach", consumer.nativeKey())
        return EXIT_FAILURE
    return EXIT_SUCCESS


MODES = {"readonly_segfault": readonly_segfault, "producer": producer, "consumer": consumer}


def main(argv: list[str]) -> int:
    args = list(argv[1:])
    impl = pop_impl(args)
    if len(args) != 2:
        print(
            f"Usage: {argv[0]} [--impl qsharedmem|pyside6] <mode> <key>\n"
            "<mode> is one of: readonly_segfault, producer, consumer",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    function, key_string = args
    QSharedMemory, QNativeIpcKey = load(impl, "QSharedMemory", "QNativeIpcKey")
    key = QNativeIpcKey.fromString(key_string)

    mode = MODES.get(function)
    if mode is None:
        warn("Unknown function", function)
        return EXIT_SUCCESS
    # Run in a function so that the QSharedMemory objects are destroyed (detached, their lock
    # semaphore cleaned up) before the interpreter exits, like C++ stack objects in Qt's helper.
    return mode(QSharedMemory, key)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
