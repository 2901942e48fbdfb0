"""data()/constData() cannot crash the interpreter (SPEC §4.4, §6; issue 2).

Each risky action runs in a child interpreter, so a crash fails the test instead of killing the
test run: the test asserts that the child exits 0 and prints the expected exception text. Every
action runs for each key type (POSIX, SystemV-Q, SystemV-T). The same scripts run under PySide6
for contrast: there, writing through a ReadOnly attachment and touching a view after detach()
kill the process with SIGSEGV — which is why qsharedmem exists.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest
from support.agent import Agent, start_agent
from support.impls import Impl, qsharedmem_only
from support.ipc import ftok_matches, is_posix, segment_exists, sysv_objects, sysv_remove
from support.keys import KeyRegistry

TIMEOUT = 60.0

# The children's common start: argv = [key.toString(), implementation].
PRELUDE = r"""
import ctypes, gc, struct, sys, threading
import numpy as np
if sys.argv[2] == "pyside6":
    from PySide6.QtCore import QNativeIpcKey, QSharedMemory
else:
    from qsharedmem import QNativeIpcKey, QSharedMemory
key = QNativeIpcKey.fromString(sys.argv[1])

def attempt(what, action):
    print("trying", what, flush=True)
    try:
        action()
    except Exception as exc:
        print(f"{what}: {type(exc).__name__}: {exc}", flush=True)
    else:
        print(f"{what}: no exception", flush=True)

def setitem(target, index, value):
    return lambda: target.__setitem__(index, value)
"""

WRITE_READ_ONLY = r"""
creator = QSharedMemory(key)
assert creator.create(64)
creator.data()[:8] = b"original"
reader = QSharedMemory(key)
assert reader.attach(QSharedMemory.AccessMode.ReadOnly)
view = reader.data()
print("readonly", view.readonly, flush=True)
attempt("item", setitem(view, 0, 1))
attempt("slice", setitem(view, slice(0, 3), b"abc"))
attempt("cast", setitem(view.cast("I"), 0, 1))
attempt("ctypes", lambda: (ctypes.c_char * 64).from_buffer(view))
print("unchanged", bytes(creator.constData()[:8]), flush=True)
"""

NUMPY_WRITE_READ_ONLY = r"""
creator = QSharedMemory(key)
assert creator.create(64)
reader = QSharedMemory(key)
assert reader.attach(QSharedMemory.AccessMode.ReadOnly)
array = np.frombuffer(reader.data(), dtype=np.uint8)
print("writeable", array.flags.writeable, flush=True)
attempt("setflags", lambda: array.setflags(write=True))
attempt("assign", setitem(array, 0, 1))
print("unchanged", bytes(creator.constData()[:1]), flush=True)
"""

READ_AFTER_DETACH = r"""
shm = QSharedMemory(key)
assert shm.create(4096)
view = shm.data()
view[:5] = b"alive"
print("detach", shm.detach(), shm.isAttached(), flush=True)
print("read", bytes(view[:5]), flush=True)
view[4096 - 4:] = b"tail"
print("write", bytes(view[-4:]), flush=True)
"""


def run_action(procs: Any, script: str, key: Any, implementation: str) -> Any:
    return procs.run_python(PRELUDE + script, key.toString(), implementation, timeout=TIMEOUT)


impl, key = qsharedmem_only("memsafe")


def outcome(result: Any) -> list[str]:
    assert result.returncode == 0, result
    return [line for line in result.stdout.splitlines() if not line.startswith("trying ")]


# ------------------------------------------------------------------------------------------------
# read-only memory


def test_writing_through_read_only_data_raises_type_error(procs: Any, key: Any) -> None:
    result = run_action(procs, WRITE_READ_ONLY, key, "qsharedmem")
    assert outcome(result) == [
        "readonly True",
        "item: TypeError: cannot modify read-only memory",
        "slice: TypeError: cannot modify read-only memory",
        "cast: TypeError: cannot modify read-only memory",
        "ctypes: TypeError: underlying buffer is not writable",
        "unchanged b'original'",
    ]


def test_numpy_cannot_write_through_read_only_data(procs: Any, key: Any) -> None:
    result = run_action(procs, NUMPY_WRITE_READ_ONLY, key, "qsharedmem")
    assert outcome(result) == [
        "writeable False",
        "setflags: ValueError: cannot set WRITEABLE flag to True of this array",
        "assign: ValueError: assignment destination is read-only",
        "unchanged b'\\x00'",
    ]


def test_read_only_created_segment_is_read_only(procs: Any, key: Any) -> None:
    script = r"""
shm = QSharedMemory(key)
assert shm.create(64, QSharedMemory.AccessMode.ReadOnly)
print("readonly", shm.data().readonly, shm.constData().readonly, flush=True)
attempt("item", setitem(shm.data(), 0, 1))
print("zero", bytes(shm.constData()) == bytes(64), flush=True)
"""
    assert outcome(run_action(procs, script, key, "qsharedmem")) == [
        "readonly True True",
        "item: TypeError: cannot modify read-only memory",
        "zero True",
    ]


def test_const_data_is_read_only(procs: Any, key: Any) -> None:
    script = r"""
shm = QSharedMemory(key)
assert shm.create(64)
const = shm.constData()
print("readonly", shm.data().readonly, const.readonly, flush=True)
attempt("item", setitem(const, 0, 1))
attempt("numpy", setitem(np.frombuffer(const, dtype=np.uint8), 0, 1))
shm.data()[:4] = b"same"
print("same memory", bytes(const[:4]), flush=True)
"""
    assert outcome(run_action(procs, script, key, "qsharedmem")) == [
        "readonly False True",
        "item: TypeError: cannot modify read-only memory",
        "numpy: ValueError: assignment destination is read-only",
        "same memory b'same'",
    ]


# ------------------------------------------------------------------------------------------------
# views and detach()


def test_data_is_none_when_not_attached(procs: Any, key: Any) -> None:
    script = r"""
shm = QSharedMemory(key)
print("before", shm.data(), shm.constData(), flush=True)
assert shm.create(64)
print("attached", type(shm.data()).__name__, type(shm.constData()).__name__, flush=True)
assert shm.detach()
print("after", shm.data(), shm.constData(), flush=True)
"""
    assert outcome(run_action(procs, script, key, "qsharedmem")) == [
        "before None None",
        "attached memoryview memoryview",
        "after None None",
    ]


def test_view_works_after_detach(procs: Any, key: Any) -> None:
    assert outcome(run_action(procs, READ_AFTER_DETACH, key, "qsharedmem")) == [
        "detach True False",
        "read b'alive'",
        "write b'tail'",
    ]


def keeper(procs: Any, key: Any) -> Agent:
    """An agent holding the only attachment, through a view, after its handle detached."""
    agent = start_agent(procs, key)
    assert agent("shm = QSharedMemory(key); shm.create(4096)") is True
    assert agent("view = shm.data(); shm.detach()") is True
    assert agent("(shm.isAttached(), shm.data())") == (False, None)
    return agent


def test_other_processes_share_a_view_after_detach(
    impl: Impl, procs: Any, key: Any, make_key: KeyRegistry
) -> None:
    agent = keeper(procs, key)
    # the view is the agent's attachment: the segment is still there, shared
    other = impl.QSharedMemory(key)
    assert other.attach(), other.errorString()
    agent("view[:5] = b'hello'")
    assert bytes(other.constData()[:5]) == b"hello"
    other.data()[5:10] = b"world"
    assert agent("bytes(view[:10])") == b"helloworld"

    agent("view.release()")
    assert agent.finish(timeout=TIMEOUT).returncode == 0
    assert other.detach()
    assert make_key.leftovers() == []


@pytest.mark.parametrize(
    "hold",
    [
        pytest.param("view = shm.data()", id="memoryview"),
        pytest.param("view = shm.constData()[100:200]", id="slice"),
        pytest.param("import numpy; view = numpy.frombuffer(shm.data(), 'u1')", id="numpy"),
    ],
)
def test_views_keep_the_segment_alive_until_released(
    procs: Any, key: Any, make_key: KeyRegistry, hold: str
) -> None:
    agent = start_agent(procs, key)
    assert agent("shm = QSharedMemory(key); shm.create(4096)") is True
    agent(hold)
    assert agent("shm.detach()") is True
    assert segment_exists(key), "the segment went while a view of it was alive"
    if agent("view.readonly if isinstance(view, memoryview) else not view.flags.writeable"):
        assert agent("int(view[0])") == 0
    else:
        assert agent("view[0] = 7; int(view[0])") == 7
    # releasing the last view is the real detach: the last one destroys the segment
    agent("del view; import gc; gc.collect()")
    assert not segment_exists(key)
    assert make_key.leftovers() == []
    assert agent.finish(timeout=TIMEOUT).returncode == 0


def test_slicing_and_casting_views(procs: Any, key: Any) -> None:
    script = r"""
shm = QSharedMemory(key)
assert shm.create(64)
view = shm.data()
words = view.cast("I")
part = view[16:32]
words[0] = 0xDEADBEEF
part[:] = b"x" * 16
print("cast", bytes(view[:4]) == struct.pack("I", 0xDEADBEEF), flush=True)
print("slice", bytes(shm.constData()[16:32]), flush=True)
print("slice cast", part.cast("Q")[0] == struct.unpack("Q", b"x" * 8)[0], flush=True)
print("read-only cast", shm.constData().cast("I").readonly, flush=True)
attempt("write", setitem(shm.constData().cast("I"), 0, 1))
assert shm.detach()
view.release()  # the slice and the cast still hold the memory
part[:4] = b"yyyy"
words[7] = 42  # bytes 28..32: the end of the slice
print("after detach", bytes(part[:4]), words[7], struct.unpack_from("I", part, 12)[0], flush=True)
"""
    assert outcome(run_action(procs, script, key, "qsharedmem")) == [
        "cast True",
        "slice b'xxxxxxxxxxxxxxxx'",
        "slice cast True",
        "read-only cast True",
        "write: TypeError: cannot modify read-only memory",
        "after detach b'yyyy' 42 42",
    ]


def test_views_released_in_other_threads(procs: Any, key: Any, make_key: KeyRegistry) -> None:
    agent = start_agent(procs, key)
    assert agent("shm = QSharedMemory(key); shm.create(4096)") is True
    agent("views = [shm.data()[i * 8 : i * 8 + 8] for i in range(16)]")
    assert agent("shm.detach()") is True
    assert segment_exists(key)
    # every thread writes through its own view, then releases it; the last release (in
    # whichever thread) is the real detach
    agent(
        "def use_and_release(view, i):\n"
        "    view[:] = bytes([i]) * 8\n"
        "    view.release()\n"
        "threads = [threading.Thread(target=use_and_release, args=(v, i))"
        " for i, v in enumerate(views)]\n"
        "del views\n"
        "for t in threads: t.start()\n"
        "for t in threads: t.join()\n"
        "del threads"
    )
    assert not segment_exists(key)
    assert make_key.leftovers() == []
    assert agent.finish(timeout=TIMEOUT).returncode == 0


# ------------------------------------------------------------------------------------------------
# for contrast: PySide6 dies


@pytest.mark.parametrize(
    ("script", "last_line"),
    [
        pytest.param(WRITE_READ_ONLY, "trying item", id="write-read-only"),
        pytest.param(NUMPY_WRITE_READ_ONLY, "trying assign", id="numpy-write-read-only"),
        pytest.param(READ_AFTER_DETACH, "detach True False", id="read-after-detach"),
    ],
)
def test_pyside6_crashes_where_qsharedmem_raises(
    procs: Any, key_type: Any, make_key: KeyRegistry, script: str, last_line: str
) -> None:
    from PySide6.QtCore import QNativeIpcKey, QSharedMemory

    qt_key = QSharedMemory.platformSafeKey(make_key("memsafe"), QNativeIpcKey.Type(int(key_type)))
    key_file = None
    if not is_posix(qt_key):
        # Qt's detach() removes the key file but a crashed process never removes its semaphore,
        # whose ftok key then names a file that is gone: make the file here (Qt's create()
        # accepts an existing one) to know that key, and remove what the crash leaves.
        key_file = Path(qt_key.nativeKey())
        key_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        key_file.touch(mode=0o640, exist_ok=False)
        stat = key_file.stat()
    try:
        result = run_action(procs, script, qt_key, "pyside6")
    finally:
        if key_file is not None:
            for obj in sysv_objects():
                if ftok_matches(obj.key, stat):
                    sysv_remove(obj)
    assert result.returncode == -signal.SIGSEGV, result
    assert result.stdout.splitlines()[-1] == last_line
