"""Hostile and bad input: a table of bad calls, each with its exact expected outcome.

Every row drives one implementation through one bad input and returns what it observed:
``["raises", <exception type>]``, or the return value with ``error().name`` and
``errorString()`` (Qt's code and text). The qsharedmem outcome is written in the row. The Qt
column says how PySide6 6.12 (the oracle, asked live in the same run) compares:

* ``SAME`` — PySide6 observes exactly the same (Qt defines the behaviour; we match it);
* ``Differs(observation, why)`` — a deliberate difference; PySide6's own observation is
  asserted too, so the documented difference stays true;
* ``QtChild(outcome, why)`` — PySide6 would hang or crash the test process, so the row runs
  with PySide6 in a child process, bounded by a timeout: ``"hangs"``, ``"SIGSEGV"``...;
* ``NoQt(why)`` — PySide6 has no such call (qsharedmem extensions such as ``lock(timeout)``).

NUL in keys (decided here, see docs/reliability.md): the OS takes names as C strings, and Qt
passes the bytes before the NUL, so two different keys silently share one segment. qsharedmem
refuses a native key with a NUL in create() and attach() with ``KeyError``. Legacy keys are not
affected: their native name is a hash of the whole key.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any

import pytest
from support.impls import load_impl
from support.keys import KeyRegistry
from support.processes import child_env

Observation = list[Any]


class Same:
    def __repr__(self) -> str:
        return "SAME"


SAME = Same()


@dataclasses.dataclass(frozen=True)
class Differs:
    observation: Observation
    why: str


@dataclasses.dataclass(frozen=True)
class QtChild:
    outcome: str  # "hangs", "SIGSEGV", or a JSON observation printed by the child
    code: str  # Python run with PySide6 in a child; argv[1] is a unique key name
    why: str


@dataclasses.dataclass(frozen=True)
class NoQt:
    why: str


@dataclasses.dataclass(frozen=True)
class Row:
    id: str
    run: Callable[[Any, Any], Observation]
    expected: Observation
    qt: Same | Differs | QtChild | NoQt

    def __str__(self) -> str:
        return self.id


class Env:
    """What a row may use: unique key names (cleaned up at teardown)."""

    def __init__(self, impl: Any, make_key: KeyRegistry) -> None:
        self.impl = impl
        self.make_key = make_key

    def name(self, tag: str) -> str:
        return self.make_key(tag)

    def key(self, tag: str, row: str = "POSIX") -> Any:
        S = self.impl.QSharedMemory
        key = S.platformSafeKey(self.make_key(tag), self.impl.key_type(row))
        return self.make_key.record(key)

    def shm(self, tag: str, row: str = "POSIX") -> Any:
        return self.impl.QSharedMemory(self.key(tag, row))


def outcome(sm: Any, ok: Any) -> Observation:
    return [ok, sm.error().name, sm.errorString()]


def raises(call: Callable[[], Any]) -> Observation:
    try:
        value = call()
    except Exception as exc:
        return ["raises", type(exc).__name__]
    return ["returns", value if isinstance(value, bool | int | str | type(None)) else repr(value)]


ROWS: list[Row] = []


def row(id: str, expected: Observation, qt: Any = SAME):
    def register(run: Callable[[Any, Any], Observation]):
        ROWS.append(Row(id, run, expected, qt))
        return run

    return register


INIT = "QSharedMemoryPrivate::initKey: unable to set key on lock "
EINVAL_SEM = INIT + "(QSystemSemaphore::handle: unknown error: Invalid argument)"
NUL_TEXT = (
    "QSharedMemory::handle: key contains a NUL character (the OS would cut the name there, "
    "making it the same key as its first part)"
)
T = "raises"

# ------------------------------------------------------------------------------------------------
# Wrong argument types and values


@row("QSharedMemory(123)", [T, "TypeError"])
def _(impl, env):
    return raises(lambda: impl.QSharedMemory(123))


@row("QSharedMemory(b'key')", [T, "TypeError"])
def _(impl, env):
    return raises(lambda: impl.QSharedMemory(b"key"))


@row("QSharedMemory(['key'])", [T, "TypeError"])
def _(impl, env):
    return raises(lambda: impl.QSharedMemory(["key"]))


@row("QSharedMemory(3.5)", [T, "TypeError"])
def _(impl, env):
    return raises(lambda: impl.QSharedMemory(3.5))


@row("QNativeIpcKey('k', 'posix')", [T, "TypeError"])
def _(impl, env):
    return raises(lambda: impl.QNativeIpcKey("k", "posix"))


@row("QNativeIpcKey('k', 2.5)", [T, "TypeError"])
def _(impl, env):
    return raises(lambda: impl.QNativeIpcKey("k", 2.5))


@row("QNativeIpcKey(b'k')", [T, "TypeError"])
def _(impl, env):
    return raises(lambda: impl.QNativeIpcKey(b"k"))


@row(
    "QNativeIpcKey.Type(-1)",
    [T, "ValueError"],
    Differs(["returns", "<Type.-1: -1>"], "PySide6's enum takes any int; Qt has no type -1"),
)
def _(impl, env):
    return raises(lambda: impl.QNativeIpcKey.Type(-1))


@row(
    "QNativeIpcKey.Type(2**40)",
    [T, "ValueError"],
    Differs(["returns", "<Type.1099511627776: 1099511627776>"], "PySide6's enum takes any int"),
)
def _(impl, env):
    return raises(lambda: impl.QNativeIpcKey.Type(2**40))


@row("QNativeIpcKey.fromString(123)", [T, "TypeError"])
def _(impl, env):
    return raises(lambda: impl.QNativeIpcKey.fromString(123))


@row("QSharedMemory.platformSafeKey(5)", [T, "TypeError"])
def _(impl, env):
    return raises(lambda: impl.QSharedMemory.platformSafeKey(5))


@row(
    "QSharedMemory.platformSafeKey(None)",
    [T, "TypeError"],
    Differs(["returns", "<QNativeIpcKey>"], "PySide6 converts None to an empty QString"),
)
def _(impl, env):
    result = raises(lambda: impl.QSharedMemory.platformSafeKey(None))
    return ["returns", "<QNativeIpcKey>"] if result[0] == "returns" else result


@row(
    "QSharedMemory.platformSafeKey('k', 99999)",
    [T, "ValueError"],
    Differs([T, "TypeError"], "qsharedmem takes an int for the type and checks its range"),
)
def _(impl, env):
    return raises(lambda: impl.QSharedMemory.platformSafeKey("k", 99999))


@row("QSharedMemory.legacyNativeKey(b'k')", [T, "TypeError"])
def _(impl, env):
    return raises(lambda: impl.QSharedMemory.legacyNativeKey(b"k"))


@row("setKey(5)", [T, "TypeError"])
def _(impl, env):
    return raises(lambda: impl.QSharedMemory().setKey(5))


@row(
    "setKey(None)",
    [T, "TypeError"],
    Differs(["returns", None], "PySide6 converts None to an empty QString"),
)
def _(impl, env):
    return raises(lambda: impl.QSharedMemory().setKey(None))


@row("setNativeKey(5)", [T, "TypeError"])
def _(impl, env):
    return raises(lambda: impl.QSharedMemory().setNativeKey(5))


@row("setNativeKey('k', 'posix')", [T, "TypeError"])
def _(impl, env):
    return raises(lambda: impl.QSharedMemory().setNativeKey("k", "posix"))


@row(
    "setNativeKey('k', -1)",
    [T, "ValueError"],
    Differs([T, "TypeError"], "qsharedmem takes an int for the type and checks its range"),
)
def _(impl, env):
    return raises(lambda: impl.QSharedMemory().setNativeKey("k", -1))


@row("setNativeKey(QNativeIpcKey, type)", [T, "TypeError"])
def _(impl, env):
    K = impl.QNativeIpcKey
    return raises(lambda: impl.QSharedMemory().setNativeKey(K("k"), impl.key_type("POSIX")))


@row(
    "isKeyTypeSupported(256)",
    ["returns", True],
    Differs([T, "TypeError"], "qsharedmem also takes a plain int for the type"),
)
def _(impl, env):
    return raises(lambda: impl.QSharedMemory.isKeyTypeSupported(256))


@row("isKeyTypeSupported('posix')", [T, "TypeError"])
def _(impl, env):
    return raises(lambda: impl.QSharedMemory.isKeyTypeSupported("posix"))


# ------------------------------------------------------------------------------------------------
# Sizes


def _size_row(label: str, size: Any, expected: Observation, qt: Any = SAME) -> None:
    @row(f"create({label})", expected, qt)
    def _(impl, env):
        sm = env.shm("size")
        try:
            ok = sm.create(size)
        except Exception as exc:
            return [T, type(exc).__name__]
        result = [*outcome(sm, ok), sm.isAttached()]
        if ok:
            sm.detach()
        return result


LESS = "QSharedMemory::create: create size is less then 0"
_size_row("0", 0, [False, "InvalidSize", LESS, False])
_size_row("-1", -1, [False, "InvalidSize", LESS, False])
_size_row("-2**63", -(2**63), [False, "InvalidSize", LESS, False])
_size_row("2**63", 2**63, [T, "OverflowError"])
_size_row("2**64", 2**64, [T, "OverflowError"])
_size_row("-2**63-1", -(2**63) - 1, [T, "OverflowError"])
_size_row("'10'", "10", [T, "TypeError"])
_size_row("None", None, [T, "TypeError"])
_size_row("[10]", [10], [T, "TypeError"])
# As PySide6 converts its qsizetype: a number that is no integer is an overflow, a bool an int.
_size_row("1.5", 1.5, [T, "OverflowError"])
_size_row("2.0", 2.0, [T, "OverflowError"])
_size_row("True", True, [True, "NoError", "", True])
_size_row("False", False, [False, "InvalidSize", LESS, False])


@row(
    "create(1 TiB) POSIX, more than /dev/shm has",
    [False, "OutOfResources", "<needed 1099511631872 bytes, free ...>", False],
    Differs(
        [True, "NoError", "", True],
        "Qt only ftruncate()s: the sparse 1 TiB segment 'works' until a write finds no page "
        "and the process dies of SIGBUS; qsharedmem reserves every page and says how much is "
        "missing",
    ),
)
def _(impl, env):
    sm = env.shm("huge")
    ok = sm.create(1 << 40)
    result = [*outcome(sm, ok), sm.isAttached()]
    text = result[2]
    if "needed 1099511631872 bytes" in text and "bytes free in /dev/shm" in text:
        result[2] = "<needed 1099511631872 bytes, free ...>"
    if ok:
        sm.detach()
        if impl.is_qt:
            os.unlink("/dev/shm/" + sm.nativeKey().lstrip("/"))  # Qt leaks POSIX segments
    return result


@row(
    "create(1 TiB) System V, more than the kernel allows",
    [False, "OutOfResources", "QSharedMemory::create: out of resources", False],
)
def _(impl, env):
    sm = env.shm("huge", "SystemV-Q")
    ok = sm.create(1 << 40)
    result = [*outcome(sm, ok), sm.isAttached()]
    if ok:
        sm.detach()
    return result


# ------------------------------------------------------------------------------------------------
# Keys: empty, NUL, '/', too long, '.', '..', odd characters


def _key_row(
    label: str, make: Callable[[Any, Any], Any], op: str, expected: Observation, qt: Any = SAME
) -> None:
    @row(f"{op}() with {label}", expected, qt)
    def _(impl, env):
        sm = impl.QSharedMemory(make(impl, env))
        ok = sm.create(64) if op == "create" else sm.attach()
        result = outcome(sm, ok)
        if ok:
            sm.detach()
        return result


def native(text: str, row: str = "POSIX"):
    """A native key built from ``text``, where ``{n}`` is replaced by a unique name."""

    def make(impl, env):
        text_ = text.format(n=env.name("key"))
        # What the OS would name (Qt cuts at a NUL) is what the cleanup must know about.
        env.make_key.record(impl.QNativeIpcKey(text_.split("\0")[0], impl.key_type(row)))
        return impl.QNativeIpcKey(text_, impl.key_type(row))

    return make


def legacy(text: str):
    def make(impl, env):
        key = impl.QSharedMemory.legacyNativeKey(text.format(n=env.name("legacy")))
        return env.make_key.record(key)

    return make


for _op in ("create", "attach"):
    _key_row(
        "an empty POSIX key",
        native(""),
        _op,
        [
            False,
            "KeyError",
            INIT + "(QSystemSemaphore::handle: key is empty)"
            if _op == "create"
            else "QSharedMemory::handle: key is empty",
        ],
    )
    _key_row(
        "an empty System V key",
        native("", "SystemV-Q"),
        _op,
        [False, "KeyError", INIT + "(QSystemSemaphore::handle:: key is empty)"],
    )
    _key_row(
        "a POSIX key with an inner '/'", native("/{n}/x"), _op, [False, "UnknownError", EINVAL_SEM]
    )
    _key_row(
        "a POSIX key '/../etc/x'", native("/../etc/{n}"), _op, [False, "UnknownError", EINVAL_SEM]
    )
    _key_row(
        "a POSIX key of 300 characters",
        native("/{n}" + "x" * 300),
        _op,
        [False, "UnknownError", EINVAL_SEM],
    )
    _key_row(
        "a System V key of 300 characters",
        native("/tmp/{n}" + "x" * 300, "SystemV-Q"),
        _op,
        [False, "KeyError", INIT + "(QSystemSemaphore::handle:: unable to make key)"],
    )
    _key_row(
        "a POSIX key with a NUL",
        native("/{n}\0tail"),
        _op,
        [False, "KeyError", NUL_TEXT],
        Differs(
            [True, "NoError", ""]
            if _op == "create"
            else [False, "NotFound", "QSharedMemory::attach (shm_open): doesn't exist"],
            "Qt cuts the name at the NUL: '/x\\0tail' is the segment '/x' "
            "(see test_qt_aliases_keys_at_a_nul)",
        ),
    )
    _key_row(
        "a System V key with a NUL",
        native("/tmp/{n}\0tail", "SystemV-Q"),
        _op,
        [False, "KeyError", NUL_TEXT],
        Differs(
            [True, "NoError", ""]
            if _op == "create"
            else [False, "NotFound", "QSharedMemory::attach (shmget): doesn't exist"],
            "Qt cuts the key file's path at the NUL",
        ),
    )
    for _name, _dir in (
        ("/..", "/dev/shm/.. (which is /dev)"),
        ("/.", "/dev/shm/. (the directory itself)"),
    ):
        _key_row(
            f"a POSIX key '{_name}'",
            native(_name),
            _op,
            [False, "KeyError", "QSharedMemory::attach (shm_open): bad name"],
            SAME
            if _op == "attach"
            else Differs(
                [False, "AlreadyExists", "QSharedMemory::attach (shm_open): already exists"],
                f"Qt tries to create {_dir} and reports that it exists",
            ),
        )

_key_row(
    "a legacy key with a NUL (hashed: no aliasing)",
    legacy("{n}\0tail"),
    "create",
    [True, "NoError", ""],
)
_key_row(
    "a legacy key of 300 letters (kept in the file name: too long)",
    legacy("{n}" + "y" * 300),
    "create",
    [False, "KeyError", INIT + "(QSystemSemaphore::handle:: unable to make key)"],
)
_key_row(
    "a POSIX key with a newline and an emoji",
    native("/{n}\n\U0001f600"),
    "create",
    [True, "NoError", ""],
)
_key_row(
    "QNativeIpcKey.fromString('garbage')",
    lambda impl, env: impl.QNativeIpcKey.fromString("garbage"),
    "create",
    [False, "KeyError", INIT + "(QSystemSemaphore::handle:: key is empty)"],
)
_key_row(
    "QNativeIpcKey.fromString('posix:')",
    lambda impl, env: impl.QNativeIpcKey.fromString("posix:"),
    "create",
    [False, "KeyError", INIT + "(QSystemSemaphore::handle: key is empty)"],
)
_key_row(
    "QNativeIpcKey.fromString('systemv-999:/tmp/x')",
    lambda impl, env: impl.QNativeIpcKey.fromString("systemv-999:/tmp/x"),
    "attach",
    [False, "KeyError", INIT + "(QSystemSemaphore::handle:: key is empty)"],
)
_key_row(
    "QNativeIpcKey.fromString('posix:/%ZZ%00')",
    lambda impl, env: impl.QNativeIpcKey.fromString("posix:/%ZZ%00" + env.name("pct")),
    "attach",
    [False, "NotFound", "QSharedMemory::attach (shm_open): doesn't exist"],
)
UNSUPPORTED_INIT = INIT + "(QSystemSemaphore::setNativeKey: unsupported key type)"


def odd_type(value: int):
    """A key of a type Linux does not support, named by a path in /tmp (Qt may use it)."""

    def make(impl, env):
        path = f"/tmp/{env.name('oddtype')}"
        env.make_key.record_native(path, 0x51)  # what Qt leaves for it is System V
        return impl.QNativeIpcKey(path, impl.QNativeIpcKey.Type(value))

    return make


for _op in ("create", "attach"):
    _key_row("a Windows key", odd_type(0x101), _op, [False, "KeyError", UNSUPPORTED_INIT])
_key_row(
    "key type 0x102",
    odd_type(0x102),
    "attach",
    [False, "KeyError", UNSUPPORTED_INIT],
    Differs(
        [False, "NotFound", "QSharedMemory::attach (shmget): doesn't exist"],
        "Qt 6.12 treats every type it does not know as System V (undefined behaviour in its "
        "documentation); qsharedmem reports it as unsupported",
    ),
)


@row(
    "fromString of 4 KiB of garbage",
    ["returns", False],
)
def _(impl, env):
    return raises(lambda: impl.QNativeIpcKey.fromString("%" * 4096 + ":\x00?=&").isValid())


# ------------------------------------------------------------------------------------------------
# AccessMode out of range


def _mode_row(label: str, call: Callable[[Any, Any], Any], expected: Observation, qt: Any) -> None:
    @row(label, expected, qt)
    def _(impl, env):
        sm = env.shm("mode")
        return raises(lambda: call(impl, sm))


ENUM_DIFF = "qsharedmem takes 0/1 as AccessMode (ValueError otherwise); PySide6 only its enum"
_mode_row(
    "attach(2)", lambda i, sm: sm.attach(2), [T, "ValueError"], Differs([T, "TypeError"], ENUM_DIFF)
)
_mode_row(
    "attach(-1)",
    lambda i, sm: sm.attach(-1),
    [T, "ValueError"],
    Differs([T, "TypeError"], ENUM_DIFF),
)
_mode_row(
    "attach(2**70)",
    lambda i, sm: sm.attach(2**70),
    [T, "OverflowError"],
    Differs([T, "TypeError"], ENUM_DIFF),
)
_mode_row("attach('ReadOnly')", lambda i, sm: sm.attach("ReadOnly"), [T, "TypeError"], SAME)
_mode_row("attach(1.0)", lambda i, sm: sm.attach(1.0), [T, "TypeError"], SAME)
_mode_row(
    "create(64, 7)",
    lambda i, sm: sm.create(64, 7),
    [T, "ValueError"],
    Differs([T, "TypeError"], ENUM_DIFF),
)
_mode_row(
    "create(64, SharedMemoryError.KeyError)",
    lambda i, sm: sm.create(64, i.QSharedMemory.SharedMemoryError.KeyError),
    [T, "TypeError"],
    SAME,
)


# ------------------------------------------------------------------------------------------------
# Methods in the wrong state


@row("detach() twice", [True, False, "NoError", ""])
def _(impl, env):
    sm = env.shm("twice")
    assert sm.create(64)
    return [sm.detach(), sm.detach(), sm.error().name, sm.errorString()]


@row("detach() never attached", [False, "NoError", ""])
def _(impl, env):
    sm = env.shm("never")
    return outcome(sm, sm.detach())


@row("unlock() without lock()", [False, "NoError", ""])
def _(impl, env):
    sm = env.shm("unlock")
    assert sm.create(64)
    result = outcome(sm, sm.unlock())
    sm.detach()
    return result


@row("unlock() twice", [True, False, "NoError", ""])
def _(impl, env):
    sm = env.shm("unlock2")
    assert sm.create(64)
    assert sm.lock()
    result = [sm.unlock(), sm.unlock(), sm.error().name, sm.errorString()]
    sm.detach()
    return result


@row("lock() never attached", [False, "LockError", "QSharedMemory::lock: unable to lock"])
def _(impl, env):
    sm = env.shm("nolock")
    return outcome(sm, sm.lock())


@row("lock() twice on one handle", [True, True, "NoError", ""])
def _(impl, env):
    sm = env.shm("relock")
    assert sm.create(64)
    result = [sm.lock(), sm.lock(), sm.error().name, sm.errorString()]
    sm.unlock()
    sm.detach()
    return result


# Qt's lock is its semaphore, which outlives the segment; ours is that semaphore too (with a
# robust mutex beside it while a segment exists), so lock() works without a segment, as Qt's.
@row("lock() after detach() (POSIX)", [True, "NoError", ""])
def _(impl, env):
    sm = env.shm("afterdetach")
    assert sm.create(64)
    assert sm.detach()
    ok = sm.lock()
    result = outcome(sm, ok)
    if ok:
        sm.unlock()
    return result


@row("lock() from another thread of the locking handle", [True, True])
def _(impl, env):
    sm = env.shm("thread")
    assert sm.create(64)
    assert sm.lock()
    seen: list[Any] = []
    worker = threading.Thread(target=lambda: seen.append(sm.lock()))
    worker.start()
    worker.join(10)
    result = [not worker.is_alive(), *seen]  # Qt: lockedByMe is per handle
    sm.unlock()
    sm.detach()
    return result


@row(
    "unlock() from another thread than the locker",
    [
        False,
        "LockError",
        "QSharedMemory::unlock: unable to unlock (locked by another thread)",
        True,
    ],
    Differs(
        [True, "NoError", "", False],
        "a robust mutex can only be released by its owner; qsharedmem refuses on every backend",
    ),
)
def _(impl, env):
    sm = env.shm("otherthread")
    assert sm.create(64)
    assert sm.lock()
    seen: list[Any] = []
    worker = threading.Thread(target=lambda: seen.append(sm.unlock()))
    worker.start()
    worker.join(10)
    result = [*outcome(sm, seen[0]), sm.unlock()]
    sm.detach()
    return result


LOCK_TWICE_CHILD = r"""
import os, sys
os.environ["QT_QPA_PLATFORM"] = "offscreen"
from PySide6.QtCore import QNativeIpcKey, QSharedMemory
key = QSharedMemory.platformSafeKey(sys.argv[1])
a, b = QSharedMemory(key), QSharedMemory(key)
assert a.create(64) and b.attach()
a.lock()
print("locked", flush=True)
b.lock()  # the same thread, through a second handle
print("returned", flush=True)
"""


@row(
    "lock() through a second handle on the thread that holds the lock",
    [
        False,
        "LockError",
        "QSharedMemory::lock: unable to lock (this thread already holds the lock through "
        "another handle)",
    ],
    QtChild("hangs", LOCK_TWICE_CHILD, "Qt's semaphore waits for itself forever"),
)
def _(impl, env):
    a = env.shm("samethread")
    b = impl.QSharedMemory(a.nativeIpcKey())
    assert a.create(64) and b.attach()
    assert a.lock()
    result = outcome(b, b.lock())
    a.unlock()
    b.detach()
    a.detach()
    return result


@row("data() on a detached handle", [None, None, 0])
def _(impl, env):
    sm = env.shm("data")
    assert sm.create(64)
    sm.detach()
    return [sm.data(), sm.constData(), sm.size()]


STALE_VIEW_CHILD = r"""
import os, sys
os.environ["QT_QPA_PLATFORM"] = "offscreen"
from PySide6.QtCore import QSharedMemory
sm = QSharedMemory(QSharedMemory.platformSafeKey(sys.argv[1]))
assert sm.create(1 << 20)
view = memoryview(sm.data())
sm.detach()
print(sum(view[:]), flush=True)  # the mapping is gone
"""


@row(
    "a data() view used after detach()",
    [True, 1 << 20],
    QtChild("SIGSEGV", STALE_VIEW_CHILD, "Qt unmaps under the view: use after unmap"),
)
def _(impl, env):
    sm = env.shm("stale")
    assert sm.create(1 << 20)
    view = sm.data()
    view[:] = b"\x01" * len(view)
    detached = sm.detach()
    return [detached, sum(view)]  # the view keeps the mapping alive


READONLY_CHILD = r"""
import os, sys
os.environ["QT_QPA_PLATFORM"] = "offscreen"
from PySide6.QtCore import QSharedMemory
key = QSharedMemory.platformSafeKey(sys.argv[1])
owner = QSharedMemory(key)
assert owner.create(64)
reader = QSharedMemory(key)
assert reader.attach(QSharedMemory.AccessMode.ReadOnly)
memoryview(reader.data())[0] = 1
print("wrote", flush=True)
"""


@row(
    "writing through data() of a ReadOnly attachment",
    [T, "TypeError"],
    QtChild("SIGSEGV", READONLY_CHILD, "Qt maps PROT_READ and hands out a writable pointer"),
)
def _(impl, env):
    owner = env.shm("readonly")
    assert owner.create(64)
    reader = impl.QSharedMemory(owner.nativeIpcKey())
    assert reader.attach(impl.QSharedMemory.AccessMode.ReadOnly)
    result = raises(lambda: reader.data().__setitem__(0, 1))
    reader.detach()
    owner.detach()
    return result


@row("attach() while attached", [True, False, "NoError", ""])
def _(impl, env):
    sm = env.shm("attached")
    first = sm.create(64)
    result = [first, sm.attach(), sm.error().name, sm.errorString()]
    sm.detach()
    return result


@row(
    "create() while attached",
    [False, "AlreadyExists", "QSharedMemory::attach (shm_open): already exists", True],
)
def _(impl, env):
    sm = env.shm("recreate")
    assert sm.create(64)
    result = [*outcome(sm, sm.create(64)), sm.isAttached()]
    sm.detach()
    return result


@row("setKey() while locked: detaches and unlocks", [False, 0, True])
def _(impl, env):
    sm = env.shm("setkey")
    assert sm.create(64)
    assert sm.lock()
    sm.setNativeKey(env.key("setkey-other"))
    other = impl.QSharedMemory(env.key("setkey"))
    # the old segment is gone (POSIX: qsharedmem destroyed it; Qt leaves the file: re-create)
    relock = other.create(64) or other.attach()
    result = [sm.isAttached(), sm.size(), relock and other.lock()]
    other.unlock()
    other.detach()
    return result


# ------------------------------------------------------------------------------------------------
# lock(timeout): qsharedmem only


def _timeout_row(label: str, value: Any, expected: Observation) -> None:
    @row(f"lock(timeout={label})", expected, NoQt("PySide6's lock() takes no timeout"))
    def _(impl, env):
        sm = env.shm("timeout")
        assert sm.create(64)
        result = raises(lambda: sm.lock(value))
        sm.detach()
        return result


_timeout_row("-1", -1, [T, "ValueError"])
_timeout_row("nan", float("nan"), [T, "ValueError"])
_timeout_row("'1'", "1", [T, "TypeError"])
_timeout_row("True", True, [T, "TypeError"])
_timeout_row("1e300", 1e300, [T, "OverflowError"])
_timeout_row("[1]", [1], [T, "TypeError"])


# ------------------------------------------------------------------------------------------------
# The test


def test_the_table_has_at_least_60_inputs() -> None:
    assert len(ROWS) >= 60, len(ROWS)
    assert len({r.id for r in ROWS}) == len(ROWS)


@pytest.mark.parametrize("row", ROWS, ids=str)
def test_bad_input_gives_the_expected_outcome(row: Row, make_key: KeyRegistry) -> None:
    qsm = load_impl("qsharedmem")
    assert row.run(qsm, Env(qsm, make_key)) == row.expected


@pytest.mark.filterwarnings("ignore:libshiboken. Overflow:RuntimeWarning")
@pytest.mark.parametrize("row", [r for r in ROWS if not isinstance(r.qt, NoQt)], ids=str)
def test_pyside6_agrees_or_differs_as_documented(row: Row, make_key: KeyRegistry) -> None:
    if isinstance(row.qt, QtChild):
        assert run_qt_child(row.qt, make_key) == row.qt.outcome
        return
    qt = load_impl("pyside6")
    seen = row.run(qt, Env(qt, make_key))
    assert seen == (row.expected if row.qt is SAME else row.qt.observation)


def run_qt_child(spec: QtChild, make_key: KeyRegistry, timeout: float = 3.0) -> str:
    """Run a PySide6 snippet in a child: "hangs", the signal that killed it, or its output."""
    name = make_key("qtchild")
    with subprocess.Popen(
        [sys.executable, "-c", spec.code, name],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=child_env(),
        text=True,
    ) as child:
        try:
            out, _ = child.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            child.kill()
            child.communicate()
            return "hangs"
    if child.returncode < 0:
        import signal

        return signal.Signals(-child.returncode).name
    return json.dumps(out.strip().splitlines()[-1:])


def test_qt_aliases_keys_at_a_nul(make_key: KeyRegistry) -> None:
    """Why NUL is refused: in Qt, "/x\\0anything" is the same segment as "/x"."""
    qt = load_impl("pyside6")
    S, K = qt.QSharedMemory, qt.QNativeIpcKey
    name = make_key("nul")
    posix = qt.key_type("POSIX")
    make_key.record(K(f"/{name}", posix))  # the object Qt really makes
    first = S(K(f"/{name}\0one", posix))
    assert first.create(64), first.errorString()
    memoryview(first.data())[:5] = b"alias"
    second = S(K(f"/{name}\0two", posix))
    assert second.attach(), "a different key attached to the same segment"
    assert bytes(memoryview(second.constData())[:5]) == b"alias"
    first.detach()
    second.detach()

    qsm = load_impl("qsharedmem")
    mine = qsm.QSharedMemory(qsm.QNativeIpcKey(f"/{name}\0one", qsm.key_type("POSIX")))
    assert not mine.create(64)
    assert (mine.error().name, mine.errorString()) == ("KeyError", NUL_TEXT)
