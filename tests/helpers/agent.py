"""The test suite's one child agent: a peer process that a test drives one command at a time.

Run as ``python agent.py [--impl qsharedmem|pyside6] [KEY]``; the parent side is
``support.agent`` (``start_agent(procs, key, impl=...)``). ``KEY``, a ``QNativeIpcKey``
``toString()``, is preloaded as ``key``.

The parent writes one JSON message per line. The agent answers each with exactly one reply line,
``@@agent@@ `` followed by a JSON object; anything else it prints is output of the command in
flight and comes before that command's reply. Messages:

* ``{"run": "<python source>"}`` — run the source in the agent's namespace, which lives as long
  as the process; reply ``{"value": "<repr>"}``, the value of the last statement if it is an
  expression (else None).
* ``{"op": "<name>", "handle": "h", "args": [...]}`` — a named operation (the ``op_*`` functions
  below) on the handle ``h``, a variable of the same namespace. The agent prints ``> <name>``
  before it runs the operation, the handshake for one that blocks (``lock``); reply
  ``{"value": "<repr>", "e": [<error().name>, <errorString()>]}`` with the handle's error after
  the operation (``null`` if there is no such handle).
* A command that raises (KeyboardInterrupt included) replies
  ``{"error": "<class name>", "message": "<str>"}``.

Right after its imports the agent sends one unsolicited reply, ``{"value": "<pid>"}``: the start
handshake. ``ready()`` in source prints ``READY``, the handshake of a command that goes on to
block. End of input clears the namespace (every handle is destroyed, as at the end of a program)
and exits 0; the ``exit`` operation destroys the handles and leaves with ``os._exit(code)``.

With ``QSHAREDMEM_TEST_STOP_AT=<step>`` in the environment, qsharedmem prints
``qsharedmem-test-stop <step> <pid>`` instead of a reply and stops itself at that step (see
src/testpoint.rs).

The namespace starts with ``os``, ``sys``, ``signal``, ``struct``, ``threading``, ``ready``,
``key``, ``QSharedMemory`` and ``QNativeIpcKey`` (of the chosen implementation), and
``qsharedmem`` with ``--impl qsharedmem`` (the default).
"""

from __future__ import annotations

import ast
import json
import os
import sys
from collections.abc import Callable
from typing import Any

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

REPLY = "@@agent@@ "
READY = "READY"


# ------------------------------------------------------------------------------------------------
# The named operations: op_<name>(agent, handle name, *args)


class MpSegment:
    """A ``multiprocessing.shared_memory.SharedMemory`` with the Qt-like calls the operations use.

    Unregistered from the resource tracker (Python 3.11 registers every attachment, and would
    unlink the segment when this process ends): the test decides its fate.
    """

    def __init__(self, name: str | None, size: int | None) -> None:
        from multiprocessing import resource_tracker, shared_memory

        if size is None:
            self.shm = shared_memory.SharedMemory(name=name)
        else:
            self.shm = shared_memory.SharedMemory(name=name, create=True, size=size)
        resource_tracker.unregister(self.shm._name, "shared_memory")  # type: ignore[attr-defined]
        self.name = self.shm.name
        self.open = True

    def data(self) -> memoryview | None:
        return self.shm.buf if self.open else None

    constData = data

    def nativeKey(self) -> str:
        return self.name

    def detach(self) -> bool:
        if self.open:
            self.shm.close()
            self.open = False
        return True


class Agent:
    """The agent process: its namespace, its implementation and the operations."""

    def __init__(self, impl: str, key_text: str | None) -> None:
        import signal
        import struct
        import threading

        self.impl = impl
        if impl == "pyside6":
            from PySide6.QtCore import QNativeIpcKey, QSharedMemory

            extra: dict[str, Any] = {}
        elif impl == "qsharedmem":
            import qsharedmem
            from qsharedmem import QNativeIpcKey, QSharedMemory

            extra = {"qsharedmem": qsharedmem}
        else:
            raise SystemExit(f"unknown implementation {impl!r}")
        self.S, self.K = QSharedMemory, QNativeIpcKey
        self.namespace: dict[str, Any] = {
            "__name__": "__agent__",
            "os": os,
            "sys": sys,
            "signal": signal,
            "struct": struct,
            "threading": threading,
            "QSharedMemory": QSharedMemory,
            "QNativeIpcKey": QNativeIpcKey,
            "ready": ready,
            "key": None if key_text is None else QNativeIpcKey.fromString(key_text),
            **extra,
        }

    # -- helpers of the operations
    def handle(self, name: str) -> Any:
        return self.namespace[name]

    def mode(self, value: int | str | None) -> Any:
        """An AccessMode from its value or its name (ReadWrite by default)."""
        if value is None:
            return self.S.AccessMode.ReadWrite
        if isinstance(value, str):
            return getattr(self.S.AccessMode, value)
        return self.S.AccessMode(value)

    def error_of(self, name: str | None) -> list[str] | None:
        sm = self.namespace.get(name) if name else None
        if sm is None or not hasattr(sm, "errorString"):
            return None
        return [sm.error().name, sm.errorString()]

    # -- running commands
    def run(self, code: str) -> Any:
        """Execute ``code``; its value: the value of the last statement if it is an expression."""
        tree = ast.parse(code, "<agent>")
        last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
        exec(compile(tree, "<agent>", "exec"), self.namespace)
        if last is None:
            return None
        return eval(compile(ast.Expression(last.value), "<agent>", "eval"), self.namespace)

    def op(self, name: str, handle: str | None, args: list[Any]) -> Any:
        function: Callable[..., Any] | None = OPERATIONS.get(name)
        if function is None:
            raise ValueError(f"unknown operation {name!r}")
        print(f"> {name}", flush=True)
        return function(self, handle, *args)

    def clear(self) -> None:
        """Destroy every handle (their destructors run, as at a normal end of the program)."""
        self.namespace.clear()


OPERATIONS: dict[str, Callable[..., Any]] = {}


def operation(function: Callable[..., Any]) -> Callable[..., Any]:
    OPERATIONS[function.__name__.removeprefix("op_")] = function
    return function


@operation
def op_key(agent: Agent, h: str, spec: str) -> bool:
    """Make the handle ``h`` from a key spec, each way a Qt application names a segment:

    ``legacy:<name>`` — ``QSharedMemory(name)`` (Qt's legacy string key, System V on Linux);
    ``safe:<type>:<name>`` — ``QSharedMemory(platformSafeKey(name, Type(type)))``;
    ``string:<text>`` or just ``<text>`` — ``QSharedMemory(QNativeIpcKey.fromString(text))``.
    """
    S, K = agent.S, agent.K
    kind, _, rest = spec.partition(":")
    if kind == "legacy":
        sm = S(rest)
    elif kind == "safe":
        type_value, _, name = rest.partition(":")
        sm = S(S.platformSafeKey(name, K.Type(int(type_value))))
    else:
        sm = S(K.fromString(rest if kind == "string" else spec))
    agent.namespace[h] = sm
    return True


@operation
def op_new(agent: Agent, h: str) -> bool:
    """``h = QSharedMemory()``."""
    agent.namespace[h] = agent.S()
    return True


@operation
def op_mp(agent: Agent, h: str, name: str | None, size: int | None = None) -> str:
    """``h`` = a multiprocessing segment: created (``size`` given; ``name`` None: a generated
    one) or attached by name. Returns its name."""
    segment = MpSegment(name, size)
    agent.namespace[h] = segment
    return segment.name


@operation
def op_drop(agent: Agent, h: str) -> bool:
    """Delete the handle (Qt's destructor: detach, release the lock, clean up)."""
    del agent.namespace[h]
    return True


@operation
def op_create(agent: Agent, h: str, size: int, mode: int | str | None = None) -> bool:
    return agent.handle(h).create(size, agent.mode(mode))


@operation
def op_attach(agent: Agent, h: str, mode: int | str | None = None) -> bool:
    return agent.handle(h).attach(agent.mode(mode))


@operation
def op_lock(agent: Agent, h: str, timeout: float | None = None) -> bool:
    """``lock()``, or ``lock(timeout)`` (qsharedmem only: PySide6's lock() has no timeout)."""
    sm = agent.handle(h)
    if agent.impl == "pyside6" or timeout is None:
        return sm.lock()
    return sm.lock(timeout)


# The operations that are one call of a handle's method without arguments: name -> method.
METHOD_OPERATIONS = {
    "detach": "detach",
    "unlock": "unlock",
    "died": "lockOwnerDied",
    "attached": "isAttached",
    "size": "size",
    "nativeKey": "nativeKey",
}
for _name, _method in METHOD_OPERATIONS.items():
    OPERATIONS[_name] = lambda agent, h, method=_method: getattr(agent.handle(h), method)()


@operation
def op_toString(agent: Agent, h: str) -> str:
    return agent.handle(h).nativeIpcKey().toString()


def _bytes_view(view: Any) -> memoryview:
    view = memoryview(view)
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")


@operation
def op_write(agent: Agent, h: str, offset: int, hex_data: str) -> bool | None:
    """Write bytes (given as hex) through ``data()``; None if not attached."""
    view = agent.handle(h).data()
    if view is None:
        return None
    data = bytes.fromhex(hex_data)
    _bytes_view(view)[offset : offset + len(data)] = data
    return True


@operation
def op_read(agent: Agent, h: str, offset: int, count: int) -> str | None:
    """Read bytes through ``constData()``, as hex; None if not attached."""
    view = agent.handle(h).constData()
    if view is None:
        return None
    return bytes(_bytes_view(view)[offset : offset + count]).hex()


@operation
def op_fill(agent: Agent, h: str, byte: int) -> int:
    """Write ``byte`` to every byte of ``data()``; returns how many."""
    view = _bytes_view(agent.handle(h).data())
    view[:] = bytes([byte]) * len(view)
    return len(view)


@operation
def op_sum(agent: Agent, h: str) -> int:
    """Read every byte of ``constData()``; returns their sum."""
    return sum(bytes(_bytes_view(agent.handle(h).constData())))


@operation
def op_incr(agent: Agent, h: str, offset: int, count: int) -> int:
    """``count`` locked increments of the little-endian u64 at ``offset``; returns how many of
    those locks reported a dead owner (qsharedmem only: Qt cannot tell)."""
    sm = agent.handle(h)
    view = _bytes_view(sm.data())
    died = 0
    for _ in range(count):
        if not sm.lock():
            raise RuntimeError(f"lock failed: {sm.errorString()}")
        if agent.impl != "pyside6" and sm.lockOwnerDied():
            died += 1
        value = int.from_bytes(view[offset : offset + 8], "little")
        view[offset : offset + 8] = (value + 1).to_bytes(8, "little")
        sm.unlock()
    return died


@operation
def op_incr32(agent: Agent, h: str, offset: int, times: int) -> bool | str:
    """``times`` times: ``lock()``, read the little-endian u32 at ``offset``, yield the CPU, store
    it + 1, ``unlock()``. The read and the write are separate steps on purpose, so that without
    mutual exclusion concurrent increments get lost. Returns True, or the failing call's name."""
    sm = agent.handle(h)
    for _ in range(times):
        if not sm.lock():
            return "lock"
        view = _bytes_view(sm.data())
        value = int.from_bytes(bytes(view[offset : offset + 4]), "little")
        os.sched_yield()  # let the others run between the read and the write
        view[offset : offset + 4] = (value + 1).to_bytes(4, "little")
        del view
        if not sm.unlock():
            return "unlock"
    return True


@operation
def op_churn(agent: Agent, h: str, stopfile: str) -> dict[str, int]:
    """Attach / read / detach fresh handles with h's key until the file ``stopfile`` exists (the
    segment comes and goes under the test's own cycles); returns the outcome counts."""
    outcomes: dict[str, int] = {}
    key = agent.handle(h).nativeIpcKey()
    while not os.path.exists(stopfile):
        other = agent.S(key)
        if other.attach():
            bytes(memoryview(other.constData())[:64])
            outcome = "attached" if other.detach() else "detach failed"
        elif other.error().name == "NotFound":
            outcome = "NotFound"
        else:
            outcome = f"{other.error().name}: {other.errorString()}"
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        del other
    return outcomes


@operation
def op_exit(agent: Agent, h: str | None, code: int = 0) -> None:
    """Destroy the handles (their destructors run), then leave at once with ``os._exit(code)``."""
    agent.clear()
    sys.stdout.flush()
    os._exit(code)


# ------------------------------------------------------------------------------------------------
# The process


def ready(text: str = READY) -> None:
    print(text, flush=True)


def reply(message: dict[str, Any]) -> None:
    print(REPLY + json.dumps(message), flush=True)


def main(argv: list[str]) -> int:
    args = argv[1:]
    impl = "qsharedmem"
    if len(args) >= 2 and args[0] == "--impl":
        impl, args = args[1], args[2:]
    if len(args) > 1:
        print(f"usage: {argv[0]} [--impl qsharedmem|pyside6] [KEY]", file=sys.stderr)
        return 2
    agent = Agent(impl, args[0] if args else None)
    reply({"value": repr(os.getpid())})
    for line in sys.stdin:
        if not line.strip():
            continue
        message = json.loads(line)
        handle = message.get("handle")
        try:
            if "run" in message:
                answer: dict[str, Any] = {"value": repr(agent.run(message["run"]))}
            else:
                value = agent.op(message["op"], handle, message.get("args", []))
                answer = {"value": repr(value), "e": agent.error_of(handle)}
        except BaseException as exc:  # KeyboardInterrupt is a result the tests look for
            if isinstance(exc, SystemExit):
                raise
            answer = {"error": type(exc).__name__, "message": str(exc)}
        reply(answer)
    # stdin closed: leave the way a program does (handles are released by their destructors)
    agent.clear()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
