"""A QSharedMemory driven line by line over stdin/stdout: the peer process of the interop tests.

Usage: ``qt_peer.py [--impl pyside6|qsharedmem] <key spec>``

The default implementation is PySide6 (the real Qt 6); ``--impl qsharedmem`` runs the very same
protocol on qsharedmem, for scenarios that need qsharedmem in a process of its own (e.g. one that
is SIGKILLed while holding the lock).

Key spec — how the peer builds its handle, so that the tests cover every way a Qt application
names a segment:

* ``legacy:<name>`` — ``QSharedMemory(name)`` (Qt's legacy string key, System V on Linux);
* ``safe:<type>:<name>`` — ``QSharedMemory(QSharedMemory.platformSafeKey(name, Type(type)))``
  with the integer key type (256 POSIX, 81 System V, 84 System V 'T');
* ``string:<text>`` — ``QSharedMemory(QNativeIpcKey.fromString(text))`` (a key passed from
  another process as ``toString()``).

On start the peer prints ``READY <key.toString()>``. Then every input line is one command and
gets exactly one output line, a JSON object ``{"result": ..., "error": <error().name>,
"errorString": ...}``. Commands (``<mode>`` is ``ReadOnly`` or ``ReadWrite``):

* ``create <size> [<mode>]``, ``attach [<mode>]``, ``detach``, ``lock``, ``unlock``,
  ``isAttached``, ``size``, ``key``, ``nativeKey``, ``toString`` — the QSharedMemory calls;
* ``write <offset> <hex>`` / ``read <offset> <count>`` — bytes through ``data()`` /
  ``constData()`` (hex in, hex out; ``null`` result if not attached);
* ``incr <offset> <times>`` — ``times`` times: ``lock()``, read the little-endian u32 at
  ``offset``, store it + 1, ``unlock()``. The read and the write are separate steps on purpose,
  so that without mutual exclusion concurrent increments get lost. Result: True, or the failing
  call's name;
* ``announce <word>`` — prints ``{"event": "<word>"}`` first, then runs the rest of the line as
  a command (``announce locking lock``): the test sees that the peer is about to block;
* ``destroy`` / ``new`` — delete the handle (Qt's destructor: detach, release the lock, clean up
  the lock semaphore it owns) / make a fresh one from the key spec;
* ``exit`` — leave at once with ``os._exit(0)``, without destructors (as a crash would, but
  orderly); end of input destroys the handle and exits normally.

A command that raises answers ``{"exception": <class name>, "message": ...}`` instead.
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


def load(impl: str):
    if impl == "pyside6":
        from PySide6.QtCore import QNativeIpcKey, QSharedMemory
    elif impl == "qsharedmem":
        from qsharedmem import QNativeIpcKey, QSharedMemory
    else:
        raise SystemExit(f"unknown implementation {impl!r}")
    return QSharedMemory, QNativeIpcKey


class Peer:
    def __init__(self, impl: str, spec: str) -> None:
        self.QSharedMemory, self.QNativeIpcKey = load(impl)
        self.spec = spec
        self.shm = self.make()

    def make(self):
        QSharedMemory, QNativeIpcKey = self.QSharedMemory, self.QNativeIpcKey
        kind, _, rest = self.spec.partition(":")
        if kind == "legacy":
            return QSharedMemory(rest)
        if kind == "safe":
            type_value, _, name = rest.partition(":")
            return QSharedMemory(
                QSharedMemory.platformSafeKey(name, QNativeIpcKey.Type(int(type_value)))
            )
        if kind == "string":
            return QSharedMemory(QNativeIpcKey.fromString(rest))
        raise SystemExit(f"bad key spec {self.spec!r}")

    def mode(self, args: list[str]):
        name = args[0] if args else "ReadWrite"
        return getattr(self.QSharedMemory.AccessMode, name)

    def incr(self, offset: int, times: int) -> bool | str:
        shm = self.shm
        for _ in range(times):
            if not shm.lock():
                return "lock"
            view = shm.data()
            value = int.from_bytes(bytes(view[offset : offset + 4]), "little")
            os.sched_yield()  # let the others run between the read and the write
            view[offset : offset + 4] = (value + 1).to_bytes(4, "little")
            del view
            if not shm.unlock():
                return "unlock"
        return True

    def run(self, words: list[str]):
        command, args = words[0], words[1:]
        shm = self.shm
        if command == "create":
            return shm.create(int(args[0]), self.mode(args[1:]))
        if command == "attach":
            return shm.attach(self.mode(args))
        if command in ("detach", "lock", "unlock", "isAttached", "size", "key", "nativeKey"):
            return getattr(shm, command)()
        if command == "toString":
            return shm.nativeIpcKey().toString()
        if command == "write":
            view = shm.data()
            if view is None:
                return None
            data = bytes.fromhex(args[1])
            view[int(args[0]) : int(args[0]) + len(data)] = data
            return True
        if command == "read":
            view = shm.constData()
            if view is None:
                return None
            return bytes(view[int(args[0]) : int(args[0]) + int(args[1])]).hex()
        if command == "incr":
            return self.incr(int(args[0]), int(args[1]))
        if command == "announce":
            print(json.dumps({"event": args[0]}), flush=True)
            return self.run(args[1:])
        if command == "destroy":
            self.shm = None
            del shm
            return True
        if command == "new":
            self.shm = self.make()
            return True
        if command == "exit":
            os._exit(0)
        raise ValueError(f"unknown command {command!r}")

    def answer(self, result) -> None:
        shm = self.shm
        reply = {"result": result}
        if shm is not None:
            reply["error"] = shm.error().name
            reply["errorString"] = shm.errorString()
        print(json.dumps(reply), flush=True)


def main(argv: list[str]) -> int:
    args = argv[1:]
    impl = "pyside6"
    if len(args) >= 2 and args[0] == "--impl":
        impl, args = args[1], args[2:]
    if len(args) != 1:
        print(f"usage: {argv[0]} [--impl pyside6|qsharedmem] <key spec>", file=sys.stderr)
        return 1
    peer = Peer(impl, args[0])
    print("READY", peer.shm.nativeIpcKey().toString(), flush=True)
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        try:
            result = peer.run(words)
        except Exception as exc:  # reported to the test, which decides whether it is expected
            print(json.dumps({"exception": type(exc).__name__, "message": str(exc)}), flush=True)
            continue
        peer.answer(result)
    # End of input: destroy the handle now (Qt's destructor), not during interpreter teardown.
    peer.shm = None
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
