"""``qsharedmem.ShareableList`` against CPython's, and what it does that CPython's does not.

Cross-implementation: the same list is the same bytes in the segment (a fixed example and
Hypothesis-generated lists and updates), a list written by one class is read and changed by the
other in this process and across processes, in both directions. Only the first ``shm.size``
bytes that the list's own header accounts for are compared, so the tests hold whatever the file
in /dev/shm looks like around them.

Then our deviations, each with the CPython behaviour it replaces: indices out of range from
the end, unsupported item types, an int out of range, multi-byte strings, a closed list, a
segment that holds no list, generators; the extras ``locked()`` and ``with``; and the lifetime
(the last close frees the segment, no unlink needed).

CPython's classes run in this process too; whenever one attaches to a segment it did not
create, its resource tracker registration is undone at once, or the tracker would unlink the
segment and warn when the session ends.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import pickle
import struct
import unittest.mock
from collections.abc import Iterator
from multiprocessing import resource_tracker
from multiprocessing import shared_memory as cpython
from pathlib import Path
from typing import Any

import pytest
import qsharedmem
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from qsharedmem import ShareableList, SharedMemory

DEV_SHM = Path("/dev/shm")
TIMEOUT = 60.0
ITEMS = ["howdy", b"HoWdY", -273.154, 100, None, True, 42, "encodés", b"", "", 1 << 62]


def exists(name: str) -> bool:
    return (DEV_SHM / name).exists()


def list_bytes(shm: Any) -> bytes:
    """The bytes of the list in a segment: header, data, formats and codes (the layout says
    how many), whatever the size of the file around them."""
    buf = shm.buf
    (n,) = struct.unpack_from("q", buf, 0)
    (data_size,) = struct.unpack_from("q", buf, 8 + n * 8)
    return bytes(buf[: (n + 2) * 8 + data_size + n * 9])


@contextlib.contextmanager
def cpython_list(name: str) -> Iterator[cpython.ShareableList[Any]]:
    """CPython's ShareableList attached to a segment it did not create."""
    sl: cpython.ShareableList[Any] = cpython.ShareableList(name=name)
    resource_tracker.unregister(sl.shm._name, "shared_memory")  # type: ignore[attr-defined]
    try:
        yield sl
    finally:
        sl.shm.close()


@contextlib.contextmanager
def cpython_made(items: list[Any]) -> Iterator[cpython.ShareableList[Any]]:
    sl: cpython.ShareableList[Any] = cpython.ShareableList(items)
    try:
        yield sl
    finally:
        sl.shm.close()
        sl.shm.unlink()


def outcome(action: Any) -> tuple[str, Any]:
    """What calling ``action`` gives: ("value", v) or ("raises", exception type name)."""
    try:
        return ("value", action())
    except Exception as e:  # the type is what is compared
        return ("raises", type(e).__name__)


# ---------------------------------------------------------------------------------------------
# The same bytes


def test_the_same_list_is_the_same_bytes():
    ours = ShareableList(ITEMS)
    try:
        with cpython_made(ITEMS) as theirs:
            assert ours.format == theirs.format
            assert len(ours.shm.buf) >= theirs.shm.size
            assert list_bytes(ours.shm) == list_bytes(theirs.shm)
            # The same updates, type changes included, keep them identical.
            for index, value in [(0, 7), (1, "str"), (4, b"x"), (5, None), (3, False), (7, 1.5)]:
                ours[index] = value
                theirs[index] = value
                assert list_bytes(ours.shm) == list_bytes(theirs.shm), (index, value)
            assert list(ours) == list(theirs)
    finally:
        ours.shm.close()


def test_ours_writes_cpython_reads_and_writes_back():
    ours = ShareableList(ITEMS)
    try:
        with cpython_list(ours.shm.name) as theirs:
            assert list(theirs) == ITEMS
            assert theirs.format == ours.format
            theirs[0] = "cpython"
            theirs[2] = None
            ours[1] = 3.25
            assert ours[0] == "cpython" and ours[2] is None
            assert theirs[1] == 3.25
            assert list(theirs) == list(ours)
    finally:
        ours.shm.close()
    assert not exists(ours.shm.name), "our close was the last"


def test_cpython_writes_ours_reads_and_writes_back():
    with cpython_made(ITEMS) as theirs:
        ours = ShareableList(name=theirs.shm.name)
        assert list(ours) == ITEMS
        assert ours.format == theirs.format
        ours[0] = "qsm"
        ours[6] = b"bytes!"
        theirs[10] = -1
        assert theirs[0] == "qsm" and theirs[6] == b"bytes!"
        assert ours[10] == -1
        assert list(ours) == list(theirs)
        ours.shm.close()
        assert exists(theirs.shm.name), "our close never unlinks CPython's segment"


# Items as CPython's struct packing takes them (q is a signed 64-bit int).
ITEM = st.one_of(
    st.integers(-(1 << 63), (1 << 63) - 1),
    st.floats(allow_nan=False),
    st.booleans(),
    st.none(),
    st.text(max_size=20),
    st.binary(max_size=20),
)


def fits_cpythons_slot(item: object) -> bool:
    """Whether CPython's class stores the item whole (it sizes a str by its characters)."""
    if not isinstance(item, str):
        return True
    return len(item.encode()) <= 8 * (len(item) // 8 + 1)


def as_read_back(item: object) -> object:
    """What any ShareableList gives back: trailing NULs are padding to the reader."""
    if isinstance(item, str):
        return item.rstrip("\0")
    if isinstance(item, bytes):
        return item.rstrip(b"\0")
    return item


HYPOTHESIS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@HYPOTHESIS
@given(
    items=st.lists(ITEM, max_size=12),
    updates=st.lists(st.tuples(st.integers(-14, 13), ITEM), max_size=12),
)
def test_generated_lists_and_updates_are_the_same_bytes(items, updates):
    items = [item for item in items if fits_cpythons_slot(item)]
    ours = ShareableList(items)
    try:
        with cpython_made(items) as theirs:
            assert list_bytes(ours.shm) == list_bytes(theirs.shm)
            for index, value in updates:
                if not -len(items) <= index < len(items):
                    # Out of range: IndexError from both (CPython reads past the data area for
                    # some negative ones, see test_an_index_before_the_start_is_an_index_error).
                    index = len(items)
                ours_did = outcome(lambda i=index, v=value: ours.__setitem__(i, v))
                theirs_did = outcome(lambda i=index, v=value: theirs.__setitem__(i, v))
                assert ours_did == theirs_did
                assert list_bytes(ours.shm) == list_bytes(theirs.shm)
    finally:
        ours.shm.close()


@HYPOTHESIS
@given(items=st.lists(ITEM, max_size=12))
def test_generated_lists_cross_read(items):
    expected = [as_read_back(item) for item in items]
    ours = ShareableList(items)
    try:
        assert list(ours) == expected
        with cpython_list(ours.shm.name) as theirs:
            assert list(theirs) == expected, "CPython reads every list of ours whole"
    finally:
        ours.shm.close()
    with cpython_made(items) as theirs:
        ours = ShareableList(name=theirs.shm.name)
        try:
            # Items CPython cut on the way in read back the same way, or fail the same way.
            for index in range(len(items)):
                assert outcome(lambda i=index: ours[i]) == outcome(lambda i=index: theirs[i])
        finally:
            ours.shm.close()


# ---------------------------------------------------------------------------------------------
# Across processes


CPYTHON_WRITER = r"""
import sys
from multiprocessing.shared_memory import ShareableList

sl = ShareableList(["from cpython", 1, 2.5, None, True, b"raw"], name=sys.argv[1])
print("READY", flush=True)
sys.stdin.readline()
print(list(sl), flush=True)
sl.shm.close()
sl.shm.unlink()
"""

CPYTHON_READER = r"""
import sys
from multiprocessing import resource_tracker
from multiprocessing.shared_memory import ShareableList

sl = ShareableList(name=sys.argv[1])
resource_tracker.unregister(sl.shm._name, "shared_memory")  # not CPython's to unlink
print(list(sl), sl.format, flush=True)
sl[0] = "from cpython"
sl[2] = 99
sl.shm.close()
"""


def test_a_cpython_process_writes_we_read_and_change_it(procs, make_key):
    name = make_key("cpython-writes")
    child = procs.start_ready(procs.python("-c", CPYTHON_WRITER, name), "READY")
    ours = ShareableList(name=name)
    assert list(ours) == ["from cpython", 1, 2.5, None, True, b"raw"]
    ours[0] = "from qsm"
    ours[1] = "one"
    ours[5] = False
    ours.shm.close()
    child.send("\n")
    result = child.finish(TIMEOUT)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout.splitlines()[-1] == "['from qsm', 'one', 2.5, None, True, False]"
    assert not exists(name)


def test_a_cpython_process_reads_and_changes_our_list(procs):
    ours = ShareableList(["from qsm", b"raw", 7, None])
    try:
        result = procs.run_python(CPYTHON_READER, ours.shm.name, timeout=TIMEOUT)
        assert result.returncode == 0, result.stderr
        assert result.stderr == "", "no resource tracker warning: the child unregistered"
        assert result.stdout.splitlines() == ["['from qsm', b'raw', 7, None] 16s8sqxxxxxx?x"]
        assert list(ours) == ["from cpython", b"raw", 99, None]
        assert exists(ours.shm.name), "CPython's close() left our segment alone"
    finally:
        ours.shm.close()
    assert not exists(ours.shm.name)


def double_every_item(sl: ShareableList[int]) -> None:
    for index in range(len(sl)):
        sl[index] = sl[index] * 2
    sl.shm.close()


@pytest.mark.parametrize("start_method", ["fork", "spawn", "forkserver"])
def test_a_pickled_list_in_a_child_and_no_unlink_needed(start_method):
    ctx = multiprocessing.get_context(start_method)
    sl = ShareableList(range(5))
    name = sl.shm.name
    p = ctx.Process(target=double_every_item, args=(sl,))
    p.start()
    p.join(TIMEOUT)
    assert p.exitcode == 0
    assert list(sl) == [0, 2, 4, 6, 8]
    assert exists(name), "the child's close and exit left it alone"
    sl.shm.close()
    assert not exists(name), "the last close freed it; nobody called unlink()"


# ---------------------------------------------------------------------------------------------
# Deviations from CPython, each with the CPython behaviour it replaces


def test_an_index_before_the_start_is_an_index_error():
    with cpython_made([1, 2, 3]) as theirs:
        # CPython: sl[-4] on a list of 3 reads the end of the data area (where the formats
        # start) with the last item's format: the item it returns is the format "q" itself.
        assert theirs[-4] == struct.unpack("q", b"q" + bytes(7))[0]
        ours = ShareableList(name=theirs.shm.name)
        before = list_bytes(ours.shm)
        with pytest.raises(IndexError, match="index out of range"):
            ours[-4]
        with pytest.raises(IndexError, match="assignment index out of range"):
            ours[-4] = 5
        assert list_bytes(ours.shm) == before
        assert ours[-3] == 1
        with pytest.raises(IndexError):
            ours._get_packing_format(-4)
        with pytest.raises(TypeError, match="integers, not slice"):
            ours[0:2]
        with pytest.raises(TypeError, match="integers, not str"):
            ours["0"] = 1
        assert ours[True] == 2, "an index is anything with __index__, as for list"
        ours.shm.close()


def test_an_unsupported_item_is_a_type_error_and_cpythons_key_error():
    for bad in ([1, [2]], [1.5, {}], [qsharedmem.QSharedMemory.AccessMode.ReadOnly]):
        with pytest.raises(KeyError):
            cpython.ShareableList(bad)  # CPython: a bare KeyError, before creating anything
        with pytest.raises(TypeError, match=r"cannot hold '\w+' items") as refused:
            ShareableList(bad)
        assert isinstance(refused.value, KeyError)
        assert "only int, float, bool, str, bytes and None" in str(refused.value)
    with ShareableList([1, 2]) as sl:
        with pytest.raises(TypeError, match="cannot hold 'bytearray' items"):
            sl[0] = bytearray(b"x")
        assert list(sl) == [1, 2]


def test_an_int_out_of_range_leaves_nothing_behind(make_key):
    name = make_key("too-big")
    with pytest.raises(struct.error):
        ShareableList([1, 1 << 63], name=name)
    assert not exists(name), "the half-made segment went with its only handle"
    with ShareableList(["text", 2]) as sl, cpython_list(sl.shm.name) as theirs:
        before = list_bytes(sl.shm)
        with pytest.raises(struct.error):
            sl[0] = 1 << 63
        assert list_bytes(sl.shm) == before, "the item is as it was"
        assert sl[0] == "text"
        # CPython writes the new format before the value fails: the item is then garbage.
        with pytest.raises(struct.error):
            theirs[0] = 1 << 63
        assert theirs._get_packing_format(0) == "q"
        assert theirs[0] != "text"


def test_a_multibyte_string_keeps_all_its_bytes():
    word = "ééééé"  # 5 characters, 10 bytes of UTF-8
    with cpython_made([word, "abc"]) as theirs:
        assert theirs[0] == "éééé", "CPython sizes it by characters and cuts it"
    with ShareableList([word, "abc", "naïve"]) as ours:
        assert list(ours) == [word, "abc", "naïve"]
        assert ours.format == "16s8s8s", "CPython's size where the item fits, more where not"
        with cpython_list(ours.shm.name) as theirs:
            assert theirs[0] == word, "CPython reads it whole"


def test_trailing_nuls_are_lost_as_in_cpython():
    # The layout has no length: trailing NULs are padding to every reader (gh-106939).
    items = [b"a\0\0", "b\0", b"\0c"]
    with ShareableList(items) as ours, cpython_made(items) as theirs:
        assert list(ours) == list(theirs) == [b"a", "b", b"\0c"]


def test_a_closed_list_says_so():
    sl = ShareableList([1, 2])
    sl.shm.close()
    for action in (lambda: sl[0], lambda: len(sl), lambda: sl.format, lambda: list(sl)):
        with pytest.raises(ValueError, match="shared memory is closed") as closed:
            action()
        assert isinstance(closed.value, TypeError), "what CPython raises here"
    with pytest.raises(ValueError, match="closed"):
        sl[0] = 3


@pytest.mark.parametrize(
    "content",
    [
        struct.pack("q", 1 << 60),  # claims more items than the segment could hold
        struct.pack("q", -1),
        struct.pack("qqq", 1, 0, 1 << 40),  # one item, its data past the end
        struct.pack("qqqq", 2, 0, 16, 8),  # offsets out of order
    ],
)
def test_a_segment_that_holds_no_list_is_refused(content):
    with SharedMemory(create=True, size=64) as shm:
        shm.buf[: len(content)] = content
        with pytest.raises(ValueError, match="does not hold a ShareableList"):
            ShareableList(name=shm.name)
    with (
        SharedMemory(create=True, size=8) as small,
        pytest.raises(ValueError, match="too small"),
    ):
        ShareableList(name=small.name)
    # The refused attachments were closed: the segments went with the creators' handles.
    assert not exists(shm.name) and not exists(small.name)


def test_a_generator_is_read_once():
    # CPython's class walks the sequence twice; a generator is empty the second time and
    # struct refuses to pack, after the segment was made.
    made: list[cpython.SharedMemory] = []

    def recording(*args: Any, **kwargs: Any) -> cpython.SharedMemory:
        made.append(cpython_shared_memory_class(*args, **kwargs))
        return made[-1]

    cpython_shared_memory_class = cpython.SharedMemory
    with (
        unittest.mock.patch.object(cpython, "SharedMemory", recording),
        pytest.raises(struct.error),
    ):
        cpython.ShareableList(x for x in range(3))
    assert len(made) == 1
    assert exists(made[0].name), "CPython left it for its resource tracker"
    made[0].close()
    made[0].unlink()
    with ShareableList(x * x for x in range(3)) as sl:
        assert list(sl) == [0, 1, 4]


def test_pickle_and_repr_match_cpythons():
    with ShareableList([1, "a"]) as sl:
        assert repr(sl) == f"ShareableList([1, 'a'], name={sl.shm.name!r})"
        reduced = sl.__reduce__()
        assert reduced[0].func is ShareableList and reduced[0].keywords == {"name": sl.shm.name}
        again = pickle.loads(pickle.dumps(sl))
        assert isinstance(again.shm, SharedMemory)
        assert list(again) == [1, "a"]
        again.shm.close()
    assert qsharedmem.ShareableList is qsharedmem.shared_memory.ShareableList is ShareableList
    assert qsharedmem.shared_memory.__all__ == ["ShareableList", "SharedMemory"]


# ---------------------------------------------------------------------------------------------
# The extras


def hold_the_lock(sl: ShareableList[int], conn: Any) -> None:
    with sl.locked(timeout=TIMEOUT):
        sl[0] = 1
        conn.send("locked")
        assert conn.recv() == "release"
        sl[1] = 2
    conn.send("released")
    sl.shm.close()


def test_locked_excludes_other_processes():
    ctx = multiprocessing.get_context("spawn")
    with ShareableList([0, 0]) as sl:
        parent_end, child_end = ctx.Pipe()
        p = ctx.Process(target=hold_the_lock, args=(sl, child_end))
        p.start()
        try:
            assert parent_end.poll(TIMEOUT)
            assert parent_end.recv() == "locked"
            with pytest.raises(TimeoutError), sl.locked(timeout=0.05):
                pass
            parent_end.send("release")
            assert parent_end.poll(TIMEOUT)
            assert parent_end.recv() == "released"
            with sl.locked(timeout=TIMEOUT) as shm:
                assert shm is sl.shm
                assert list(sl) == [1, 2]
        finally:
            p.join(TIMEOUT)
        assert p.exitcode == 0


def test_with_closes_the_list():
    with ShareableList([1]) as sl:
        name = sl.shm.name
        assert exists(name)
    assert sl.shm.buf is None
    assert not exists(name)


def test_cpythons_cleanup_idiom_still_works():
    # The CPython idiom still works: close() and unlink(), in that order, or the reverse.
    first = ShareableList([1])
    first.shm.close()
    first.shm.unlink()
    second = ShareableList([2])
    second.shm.unlink()
    assert not exists(second.shm.name)
    assert second[0] == 2, "attached handles keep working after unlink()"
    second.shm.close()
    assert not exists(first.shm.name)
