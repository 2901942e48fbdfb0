"""A child process that runs QSharedMemory operations on command, for multi-process tests.

Usage: ``shm_agent.py [qsharedmem|pyside6]``. Prints ``READY``, then reads one JSON array per
line from stdin, e.g. ``["attach", "h", 1]``. Before running a command it prints ``> <name>``
(so a test knows the agent is inside a call that may block, e.g. ``lock``), afterwards
``= {"r": <result>, "e": [<error().name>, <errorString()>]}``. Handles are named by the test.

Commands: ``key h <QNativeIpcKey.toString()>`` (make handle h), ``new h`` (``QSharedMemory()``),
``create h size [mode]``,
``attach h [mode]``, ``detach h``, ``lock h [timeout]`` (PySide6: no timeout), ``unlock h``,
``died h`` (lockOwnerDied), ``write h offset hex``, ``read h offset length`` (→ hex),
``fill h byte`` (write every byte of data()), ``sum h`` (read every byte), ``size h``,
``attached h``, ``churn h stopfile`` (attach/read/detach new handles with h's key until the
file exists; returns the outcome counts), ``incr h offset count`` (``count`` locked
increments of the little-endian u64 at ``offset``; returns how many of those locks reported
a dead owner), ``drop h`` (delete the handle), ``exit code`` (destroys the handles, then
``os._exit``).

With ``QSHAREDMEM_TEST_STOP_AT`` set, qsharedmem prints ``qsharedmem-test-stop <step> <pid>``
in place of a result and stops itself at that step (see src/testpoint.rs).
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


def load(impl: str):
    if impl == "pyside6":
        from PySide6.QtCore import QNativeIpcKey, QSharedMemory
    else:
        from qsharedmem import QNativeIpcKey, QSharedMemory
    return QSharedMemory, QNativeIpcKey


def main() -> None:
    impl = sys.argv[1] if len(sys.argv) > 1 else "qsharedmem"
    S, K = load(impl)
    handles: dict[str, object] = {}

    def mode(args: list, at: int):
        return S.AccessMode(args[at]) if len(args) > at else S.AccessMode.ReadWrite

    def run(cmd: str, h: str, args: list):
        sm = handles.get(h)
        if cmd == "key":
            handles[h] = S(K.fromString(args[0]))
            return True
        if cmd == "new":
            handles[h] = S()
            return True
        if cmd == "create":
            return sm.create(args[0], mode(args, 1))
        if cmd == "attach":
            return sm.attach(mode(args, 0))
        if cmd == "detach":
            return sm.detach()
        if cmd == "lock":
            if impl == "pyside6" or not args or args[0] is None:
                return sm.lock()
            return sm.lock(args[0])
        if cmd == "unlock":
            return sm.unlock()
        if cmd == "died":
            return sm.lockOwnerDied()
        if cmd == "write":
            data = bytes.fromhex(args[1])
            memoryview(sm.data())[args[0] : args[0] + len(data)] = data
            return True
        if cmd == "read":
            return bytes(memoryview(sm.constData())[args[0] : args[0] + args[1]]).hex()
        if cmd == "fill":
            view = memoryview(sm.data())
            view[:] = bytes([args[0]]) * len(view)
            return len(view)
        if cmd == "sum":
            return sum(bytes(memoryview(sm.constData())))
        if cmd == "size":
            return sm.size()
        if cmd == "attached":
            return sm.isAttached()
        if cmd == "incr":
            offset, count = args
            view = memoryview(sm.data())
            died = 0
            for _ in range(count):
                if not sm.lock():
                    raise RuntimeError(f"lock failed: {sm.errorString()}")
                if impl != "pyside6" and sm.lockOwnerDied():
                    died += 1
                value = int.from_bytes(view[offset : offset + 8], "little")
                view[offset : offset + 8] = (value + 1).to_bytes(8, "little")
                sm.unlock()
            return died
        if cmd == "churn":
            # attach / read / detach with a fresh handle until the file args[0] exists; counts
            # the outcomes (the segment comes and goes under the test's own cycles).
            outcomes: dict[str, int] = {}
            key = sm.nativeIpcKey()
            while not os.path.exists(args[0]):
                other = S(key)
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
        if cmd == "drop":
            del handles[h]
            return True
        raise ValueError(f"unknown command {cmd!r}")

    print("READY", flush=True)
    sm = None
    for line in sys.stdin:
        if not line.strip():
            continue
        cmd, *rest = json.loads(line)
        if cmd == "exit":
            handles.clear()  # their destructors run (as at a normal exit), then no more cleanup
            sm = None
            sys.stdout.flush()
            os._exit(rest[0] if rest else 0)
        h, args = (rest[0], rest[1:]) if rest else ("", [])
        print(f"> {cmd}", flush=True)
        try:
            result = run(cmd, h, args)
        except Exception as exc:  # reported to the test, which decides
            result = {"exception": type(exc).__name__, "message": str(exc)}
        sm = handles.get(h)
        error = [sm.error().name, sm.errorString()] if sm is not None else None
        print("= " + json.dumps({"r": result, "e": error}), flush=True)


if __name__ == "__main__":
    main()
