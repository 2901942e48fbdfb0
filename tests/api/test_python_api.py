"""The Pythonic side of QSharedMemory (SPEC §7, issue 2): context managers, pickling, repr,
enums, argument checking and subclassing.

qsharedmem only (PySide6 appears as the reference for enum texts); behaviours that touch a
segment run for each key type (POSIX, SystemV-Q, SystemV-T). Pickled handles travel to children
started with multiprocessing's ``spawn`` method, i.e. fresh interpreters that re-attach by key.
"""

from __future__ import annotations

import multiprocessing
import pickle
from typing import Any

import pytest
import qsharedmem
from helpers.mp_children import CHILD_OFFSET, CHILD_TEXT, LabelledMemory, report_pickled
from qsharedmem import QNativeIpcKey, QSharedMemory
from support.impls import qsharedmem_only
from support.ipc import segment_exists
from support.keys import KeyRegistry

TIMEOUT = 60.0
MARKER = b"PARENT!!"


impl, key = qsharedmem_only("api")


def marked_segment(key: Any) -> QSharedMemory:
    """A new 256-byte segment with MARKER at 0."""
    shm = QSharedMemory(key)
    assert shm.create(256)
    shm.data()[:8] = MARKER
    return shm


# ------------------------------------------------------------------------------------------------
# context managers


def test_with_detaches_on_exit(key: Any, make_key: KeyRegistry) -> None:
    shm = QSharedMemory(key)
    assert shm.create(64)
    with shm as entered:
        assert entered is shm
        assert shm.isAttached()
    assert not shm.isAttached()
    assert shm.data() is None
    assert make_key.leftovers() == []


def test_with_detaches_and_unlocks_on_exception(key: Any, make_key: KeyRegistry) -> None:
    shm = QSharedMemory(key)
    assert shm.create(64)
    other = QSharedMemory(key)
    assert other.attach()
    with pytest.raises(ZeroDivisionError), shm:
        assert shm.lock()
        _ = 1 / 0
    assert not shm.isAttached()
    # the lock went with the detach: another handle takes it without waiting
    assert other.lock(timeout=0)
    assert other.unlock()
    assert other.detach()
    assert make_key.leftovers() == []


def test_locked_holds_the_lock_for_the_block(key: Any) -> None:
    shm = QSharedMemory(key)
    assert shm.create(64)
    other = QSharedMemory(key)
    assert other.attach()
    with shm.locked() as locked:
        assert locked is shm
        shm.data()[:5] = b"block"
        assert other.lock(timeout=0) is False  # held (other is a second handle: LockError)
    assert other.lock(timeout=0) is True
    assert bytes(other.constData()[:5]) == b"block"
    assert other.unlock()

    with pytest.raises(KeyError), shm.locked(timeout=TIMEOUT):
        raise KeyError("inside")
    assert other.lock(timeout=0) is True  # released on the exception too
    assert other.unlock()
    assert other.detach()
    assert shm.detach()


# ------------------------------------------------------------------------------------------------
# pickling: the child re-attaches by key with the same mode


def spawn_with(shm: Any) -> dict[str, Any]:
    """Send ``shm`` (pickled) to a spawned child running ``report_pickled``; its report."""
    context = multiprocessing.get_context("spawn")
    parent_end, child_end = context.Pipe()
    child = context.Process(target=report_pickled, args=(shm, child_end))
    child.start()
    child_end.close()
    assert parent_end.poll(TIMEOUT), "spawned child did not report"
    report = parent_end.recv()
    child.join(TIMEOUT)
    assert child.exitcode == 0
    return report


def test_pickled_read_write_handle_attaches_read_write_in_a_spawned_child(key: Any) -> None:
    shm = marked_segment(key)
    report = spawn_with(shm)
    assert report == {
        "type": "QSharedMemory",
        "key": key.toString(),
        "attached": True,
        "readonly": False,
        "size": 256,
        "marker": MARKER,
        "detached": True,
        "extra": None,
    }
    # the child wrote into the same memory
    assert bytes(shm.constData()[CHILD_OFFSET : CHILD_OFFSET + len(CHILD_TEXT)]) == CHILD_TEXT
    assert shm.detach()


def test_pickled_read_only_handle_attaches_read_only_in_a_spawned_child(key: Any) -> None:
    creator = marked_segment(key)
    reader = QSharedMemory(key)
    assert reader.attach(QSharedMemory.ReadOnly)
    report = spawn_with(reader)
    assert report["attached"] is True
    assert report["readonly"] is True
    assert report["marker"] == MARKER
    assert report["write_error"] == "TypeError: cannot modify read-only memory"
    assert bytes(creator.constData()[CHILD_OFFSET:]) == bytes(256 - CHILD_OFFSET)
    assert reader.detach()
    assert creator.detach()


def test_pickled_unattached_handle_stays_unattached_in_a_spawned_child(key: Any) -> None:
    shm = marked_segment(key)
    unattached = QSharedMemory(key)
    report = spawn_with(unattached)
    assert report == {
        "type": "QSharedMemory",
        "key": key.toString(),
        "attached": False,
        "data": None,
        "attach": True,
        "marker": MARKER,
        "detached": True,
        "extra": None,
    }
    assert shm.detach()


def test_unpickling_a_handle_whose_segment_is_gone_raises_not_found(
    key: Any, make_key: KeyRegistry
) -> None:
    shm = QSharedMemory(key)
    assert shm.create(64)
    pickled = pickle.dumps(shm)
    assert shm.detach()
    assert not segment_exists(key)
    with pytest.raises(qsharedmem.NotFoundError) as info:
        pickle.loads(pickled)
    assert isinstance(info.value, FileNotFoundError)
    assert info.value.qt_error == QSharedMemory.NotFound
    assert "doesn't exist" in str(info.value)
    assert make_key.leftovers() == []


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_pickle_round_trip_in_process(key: Any, protocol: int) -> None:
    shm = QSharedMemory(key)
    assert shm.create(64)
    clone = pickle.loads(pickle.dumps(shm, protocol))
    assert clone is not shm
    assert clone.isAttached()
    assert clone.nativeIpcKey() == key
    clone.data()[:4] = b"same"
    assert bytes(shm.constData()[:4]) == b"same"
    assert clone.detach()
    assert shm.detach()


# ------------------------------------------------------------------------------------------------
# repr, enums


def test_repr(key: Any) -> None:
    shm = QSharedMemory(key)
    assert repr(shm) == f'<QSharedMemory "{key.toString()}" not attached>'
    assert shm.create(100)
    assert repr(shm) == f'<QSharedMemory "{key.toString()}" attached, 100 bytes>'
    assert shm.detach()
    assert repr(QSharedMemory()) == '<QSharedMemory "posix:" not attached>'

    class Settings(QSharedMemory):
        pass

    assert repr(Settings()) == '<test_repr.<locals>.Settings "posix:" not attached>'


def test_enum_members_are_reachable_on_the_class() -> None:
    for enum_class in (QSharedMemory.AccessMode, QSharedMemory.SharedMemoryError):
        for member in enum_class:
            assert getattr(QSharedMemory, member.name) is member
    assert QSharedMemory.ReadOnly is QSharedMemory.AccessMode.ReadOnly
    assert QSharedMemory.NotFound is QSharedMemory.SharedMemoryError.NotFound
    assert QSharedMemory.ReadWrite == 1  # IntEnum: Qt's values, as in C++
    assert QSharedMemory.UnknownError == 8


def test_error_compares_with_the_class_aliases(key: Any) -> None:
    shm = QSharedMemory(key)
    assert shm.error() == QSharedMemory.NoError
    assert not shm.attach()
    assert shm.error() == QSharedMemory.NotFound
    assert shm.error() is QSharedMemory.SharedMemoryError.NotFound
    assert shm.error() == 5


def test_enum_texts_match_pyside6() -> None:
    from PySide6.QtCore import QSharedMemory as QtSharedMemory

    for ours, theirs in (
        (QSharedMemory.AccessMode, QtSharedMemory.AccessMode),
        (QSharedMemory.SharedMemoryError, QtSharedMemory.SharedMemoryError),
    ):
        assert [m.name for m in ours] == [m.name for m in theirs]
        for member in ours:
            qt_member = theirs[member.name]
            assert member.value == qt_member.value
            assert str(member) == str(qt_member)
            assert repr(member) == repr(qt_member)
            assert f"{member}" == f"{qt_member}"


# ------------------------------------------------------------------------------------------------
# bad arguments: Qt's error state or a Python exception, never a crash


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda: QSharedMemory(42), id="QSharedMemory(int)"),
        pytest.param(lambda: QSharedMemory(b"key"), id="QSharedMemory(bytes)"),
        pytest.param(lambda: QSharedMemory().create("10"), id="create(str)"),
        pytest.param(lambda: QSharedMemory().create(10, "ReadOnly"), id="create(mode=str)"),
        pytest.param(
            lambda: QSharedMemory().create(10, QNativeIpcKey.Type.SystemV), id="create(mode=Type)"
        ),
        pytest.param(lambda: QSharedMemory().attach("ReadOnly"), id="attach(str)"),
        pytest.param(lambda: QSharedMemory().attach(1.0), id="attach(float)"),
        pytest.param(lambda: QSharedMemory().setKey(5), id="setKey(int)"),
        pytest.param(lambda: QSharedMemory().setNativeKey(5), id="setNativeKey(int)"),
        pytest.param(
            lambda: QSharedMemory().setNativeKey("k", "posix"), id="setNativeKey(type=str)"
        ),
        pytest.param(lambda: QSharedMemory().lock(timeout="x"), id="lock(timeout=str)"),
        pytest.param(lambda: QSharedMemory().lock(timeout=True), id="lock(timeout=bool)"),
        pytest.param(lambda: QSharedMemory.platformSafeKey(5), id="platformSafeKey(int)"),
        pytest.param(
            lambda: QSharedMemory.isKeyTypeSupported("posix"), id="isKeyTypeSupported(str)"
        ),
        pytest.param(lambda: QSharedMemory().locked(timeout=[]), id="locked(timeout=list)"),
    ],
)
def test_wrong_argument_types_raise_type_error(call: Any) -> None:
    with pytest.raises(TypeError):
        call()


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda: QSharedMemory().create(10, 2), id="create(mode=2)"),
        pytest.param(lambda: QSharedMemory().create(10, -1), id="create(mode=-1)"),
        pytest.param(lambda: QSharedMemory().attach(5), id="attach(5)"),
        pytest.param(lambda: QSharedMemory().lock(timeout=-1), id="lock(timeout=-1)"),
        pytest.param(lambda: QSharedMemory().lock(timeout=float("nan")), id="lock(timeout=nan)"),
        pytest.param(lambda: QSharedMemory().locked(timeout=-0.5), id="locked(timeout=-0.5)"),
    ],
)
def test_out_of_range_arguments_raise_value_error(call: Any) -> None:
    with pytest.raises(ValueError):
        call()


@pytest.mark.parametrize("size", [0, -1, -(2**40)])
def test_create_with_a_size_below_one_is_invalid_size(key: Any, size: int) -> None:
    shm = QSharedMemory(key)
    assert shm.create(size) is False
    assert shm.error() == QSharedMemory.InvalidSize
    assert shm.errorString() == "QSharedMemory::create: create size is less then 0"
    assert not shm.isAttached()


@pytest.mark.parametrize("size", [2**63, 2**64, -(2**70)])
def test_create_with_a_size_beyond_the_address_space_raises_overflow_error(
    key: Any, size: int
) -> None:
    shm = QSharedMemory(key)
    with pytest.raises(OverflowError):
        shm.create(size)
    assert not shm.isAttached()


# ------------------------------------------------------------------------------------------------
# subclassing


def test_subclass_in_python(key: Any, make_key: KeyRegistry) -> None:
    shm = LabelledMemory(key, label="ledger")
    assert isinstance(shm, QSharedMemory)
    assert shm.label == "ledger"
    assert shm.nativeIpcKey() == key
    assert shm.create_filled(32, b"z")
    assert bytes(shm.constData()) == b"z" * 32
    assert repr(shm).startswith("<LabelledMemory ")  # a subclass shows its own name
    with shm.locked():
        shm.data()[:2] = b"ok"
    with shm:
        assert shm.isAttached()
    assert not shm.isAttached()
    assert make_key.leftovers() == []


def test_subclass_pickles_with_its_type_and_attributes(key: Any) -> None:
    shm = LabelledMemory(key, label="ledger")
    assert shm.create_filled(32, b"z")
    shm.extra = "travels along"
    clone = pickle.loads(pickle.dumps(shm))
    assert type(clone) is LabelledMemory
    assert clone.label == "ledger"
    assert clone.extra == "travels along"
    assert bytes(clone.constData()) == b"z" * 32
    assert clone.detach()

    report = spawn_with(shm)
    assert report["type"] == "LabelledMemory"
    assert report["extra"] == "travels along"
    assert report["marker"] == b"z" * 8
    assert shm.detach()


# ------------------------------------------------------------------------------------------------
# remove() from a detached handle

NOT_FOUND = QSharedMemory.SharedMemoryError.NotFound


def test_a_second_remove_from_a_detached_handle_is_not_found(
    key: Any, make_key: KeyRegistry
) -> None:
    creator = QSharedMemory(key)
    assert creator.create(64)
    other = QSharedMemory(key)
    assert other.attach()
    assert other.detach()  # not the last: the creator is still attached
    assert creator.remove(), creator.errorString()
    # This process removed the segment's name already.
    assert other.remove() is False
    assert other.error() == NOT_FOUND
    assert other.errorString() == "QSharedMemory::remove: doesn't exist"
    assert creator.remove() is False
    assert creator.error() == NOT_FOUND
    assert creator.detach()
    assert make_key.leftovers() == []
    assert creator.remove() is False


def test_remove_after_a_last_detach_destroyed_the_segment_succeeds_once(
    key: Any, make_key: KeyRegistry
) -> None:
    """multiprocessing's close(); unlink() in either order of the closes: the segment and its
    name went with the last detach, which is what unlink() asks for."""
    first = QSharedMemory(key)
    assert first.create(64)
    last = QSharedMemory(key)
    assert last.attach()
    assert first.detach()
    assert last.detach()  # the last one out: destroys the segment
    assert make_key.leftovers() == []
    assert first.remove(), first.errorString()
    assert first.remove() is False
    assert first.error() == NOT_FOUND
