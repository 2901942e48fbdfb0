"""Port of CPython's ShareableList and SharedMemoryManager tests, run against CPython's classes
and ours in the same run.

Source: ``_TestSharedMemory`` in CPython 3.13's ``Lib/test/_test_multiprocessing.py`` (the same
in 3.11 and 3.12): ``test_shared_memory_ShareableList_basics``, ``..._ShareableList_pickling``,
``..._ShareableList_pickling_dead_object``, ``..._SharedMemoryServer_ignores_sigint``,
``..._SharedMemoryManager_reuses_resource_tracker`` and ``..._SharedMemoryManager_basics``; and
the ``ShareableList`` row of ``test_genericalias.test_subscriptable``. The SharedMemory tests of
``_TestSharedMemory`` are ported in ``test_mp_shared_memory_cpython.py``.

Every test runs twice: with ``mp.shared_memory`` / ``mp.managers`` being CPython's
``multiprocessing.shared_memory`` / ``multiprocessing.managers`` (the oracle), and being
``qsharedmem.shared_memory`` / ``qsharedmem.managers``. The test bodies follow CPython's line by
line; where the two implementations differ, the assertion says so in a comment starting with
"Difference:". CPython runs the module once per start method (``set_start_method``); here the
manager tests are parametrized over fork, spawn and forkserver and pass the context as ``ctx``.
Names CPython makes unique with the pid come from ``make_key`` (unique, and cleaned up).
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import multiprocessing.managers
import multiprocessing.shared_memory
import os
import pickle
import signal
import subprocess
import sys
import types
import warnings
from collections.abc import Callable, Iterator

import pytest
import qsharedmem.managers
import qsharedmem.shared_memory

START_METHODS = ["fork", "spawn", "forkserver"]


@dataclasses.dataclass(frozen=True)
class MpImpl:
    """One implementation of the two modules: CPython's or ours."""

    name: str
    shared_memory: types.ModuleType
    managers: types.ModuleType
    import_managers: str  # the import line of a program that uses it

    @property
    def is_ours(self) -> bool:
        return self.name == "qsharedmem"


IMPLS = {
    "cpython": MpImpl(
        "cpython",
        multiprocessing.shared_memory,
        multiprocessing.managers,
        "from multiprocessing.managers import SharedMemoryManager",
    ),
    "qsharedmem": MpImpl(
        "qsharedmem",
        qsharedmem.shared_memory,
        qsharedmem.managers,
        "from qsharedmem.managers import SharedMemoryManager",
    ),
}


@pytest.fixture(params=list(IMPLS))
def mp(request: pytest.FixtureRequest) -> MpImpl:
    return IMPLS[request.param]


@pytest.fixture
def add_cleanup() -> Iterator[Callable[[Callable[[], object]], None]]:
    """unittest's addCleanup: the callbacks run in reverse order at teardown."""
    cleanups: list[Callable[[], object]] = []
    yield cleanups.append
    for cleanup in reversed(cleanups):
        cleanup()


def test_shared_memory_SharedMemoryServer_ignores_sigint(mp, start_method_ctx):
    # bpo-36368: protect SharedMemoryManager server process from
    # KeyboardInterrupt signals.
    smm = mp.managers.SharedMemoryManager(ctx=start_method_ctx)
    smm.start()

    # make sure the manager works properly at the beginning
    sl = smm.ShareableList(range(10))

    # the manager's server should ignore KeyboardInterrupt signals, and
    # maintain its connection with the current process, and success when
    # asked to deliver memory segments.
    os.kill(smm._process.pid, signal.SIGINT)

    sl2 = smm.ShareableList(range(10))

    # test that the custom signal handler registered in the Manager does
    # not affect signal handling in the parent process.
    with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)

    smm.shutdown()
    # Not in CPython's test: the server survived the SIGINT and released both at shutdown.
    for shareable in (sl, sl2):
        with pytest.raises(FileNotFoundError):
            mp.shared_memory.SharedMemory(shareable.shm.name)
        shareable.shm.close()


def test_shared_memory_SharedMemoryManager_reuses_resource_tracker(mp):
    # bpo-36867: test that a SharedMemoryManager uses the
    # same resource_tracker process as its parent.
    # Difference: qsharedmem has no resource tracker at all; the test's point, nothing on
    # stderr after a manager released a ShareableList, holds for both.
    cmd = f"""if 1:
        {mp.import_managers}


        smm = SharedMemoryManager()
        smm.start()
        sl = smm.ShareableList(range(10))
        smm.shutdown()
    """
    result = subprocess.run([sys.executable, "-c", cmd], capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr

    # Before bpo-36867 was fixed, a SharedMemoryManager not using the same
    # resource_tracker process as its parent would make the parent's
    # tracker complain about sl being leaked even though smm.shutdown()
    # properly released sl.
    assert not result.stderr


def test_shared_memory_SharedMemoryManager_basics(mp, start_method_ctx):
    smm1 = mp.managers.SharedMemoryManager(ctx=start_method_ctx)
    with pytest.raises(ValueError):
        smm1.SharedMemory(size=9)  # Fails if SharedMemoryServer not started
    smm1.start()
    lol = [smm1.ShareableList(range(i)) for i in range(5, 10)]
    lom = [smm1.SharedMemory(size=j) for j in range(32, 128, 16)]
    doppleganger_list0 = mp.shared_memory.ShareableList(name=lol[0].shm.name)
    assert len(doppleganger_list0) == 5
    doppleganger_shm0 = mp.shared_memory.SharedMemory(name=lom[0].name)
    assert len(doppleganger_shm0.buf) >= 32
    held_name = lom[0].name
    smm1.shutdown()
    if sys.platform != "win32":
        # Calls to unlink() have no effect on Windows platform; shared
        # memory will only be released once final process exits.
        with pytest.raises(FileNotFoundError):
            # No longer there to be attached to again.
            absent_shm = mp.shared_memory.SharedMemory(name=held_name)  # noqa: F841

    with mp.managers.SharedMemoryManager(ctx=start_method_ctx) as smm2:
        sl = smm2.ShareableList("howdy")
        shm = smm2.SharedMemory(size=128)  # noqa: F841
        held_name = sl.shm.name
    if sys.platform != "win32":
        with pytest.raises(FileNotFoundError):
            # No longer there to be attached to again.
            absent_sl = mp.shared_memory.ShareableList(name=held_name)  # noqa: F841


@pytest.fixture(params=START_METHODS)
def start_method_ctx(request: pytest.FixtureRequest) -> multiprocessing.context.BaseContext:
    return multiprocessing.get_context(request.param)


def test_shared_memory_ShareableList_basics(mp, make_key, add_cleanup):
    shared_memory = mp.shared_memory
    sl = shared_memory.ShareableList(["howdy", b"HoWdY", -273.154, 100, None, True, 42])
    add_cleanup(sl.shm.unlink)

    # Verify __repr__
    assert sl.shm.name in str(sl)
    assert str(list(sl)) in str(sl)

    # Index Out of Range (get)
    with pytest.raises(IndexError):
        sl[7]

    # Index Out of Range (set)
    with pytest.raises(IndexError):
        sl[7] = 2

    # Assign value without format change (str -> str)
    current_format = sl._get_packing_format(0)
    sl[0] = "howdy"
    assert current_format == sl._get_packing_format(0)

    # Verify attributes are readable.
    assert sl.format == "8s8sdqxxxxxx?xxxxxxxx?q"

    # Exercise len().
    assert len(sl) == 7

    # Exercise index().
    with warnings.catch_warnings():
        # Suppress BytesWarning when comparing against b'HoWdY'.
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError):
            sl.index("100")
        assert sl.index(100) == 3

    # Exercise retrieving individual values.
    assert sl[0] == "howdy"
    assert sl[-2] is True

    # Exercise iterability.
    assert tuple(sl) == ("howdy", b"HoWdY", -273.154, 100, None, True, 42)

    # Exercise modifying individual values.
    sl[3] = 42
    assert sl[3] == 42
    sl[4] = "some"  # Change type at a given position.
    assert sl[4] == "some"
    assert sl.format == "8s8sdq8sxxxxxxx?q"
    with pytest.raises(ValueError, match="exceeds available storage"):
        sl[4] = "far too many"
    assert sl[4] == "some"
    sl[0] = "encodés"  # Exactly 8 bytes of UTF-8 data
    assert sl[0] == "encodés"
    assert sl[1] == b"HoWdY"  # no spillage
    with pytest.raises(ValueError, match="exceeds available storage"):
        sl[0] = "encodées"  # Exactly 9 bytes of UTF-8 data
    assert sl[1] == b"HoWdY"
    with pytest.raises(ValueError, match="exceeds available storage"):
        sl[1] = b"123456789"
    assert sl[1] == b"HoWdY"

    # Exercise count().
    with warnings.catch_warnings():
        # Suppress BytesWarning when comparing against b'HoWdY'.
        warnings.simplefilter("ignore")
        assert sl.count(42) == 2
        assert sl.count(b"HoWdY") == 1
        assert sl.count(b"adios") == 0

    # Exercise creating a duplicate.
    name_duplicate = make_key("test03_duplicate")
    sl_copy = shared_memory.ShareableList(sl, name=name_duplicate)
    try:
        assert sl.shm.name != sl_copy.shm.name
        assert name_duplicate == sl_copy.shm.name
        assert list(sl) == list(sl_copy)
        assert sl.format == sl_copy.format
        sl_copy[-1] = 77
        assert sl_copy[-1] == 77
        assert sl[-1] != 77
        sl_copy.shm.close()
    finally:
        # Difference: for qsharedmem the close() above was the last one and destroyed the
        # segment already; this unlink() then has nothing to do and succeeds, as in CPython.
        sl_copy.shm.unlink()

    # Obtain a second handle on the same ShareableList.
    sl_tethered = shared_memory.ShareableList(name=sl.shm.name)
    assert sl.shm.name == sl_tethered.shm.name
    sl_tethered[-1] = 880
    assert sl[-1] == 880
    sl_tethered.shm.close()

    sl.shm.close()

    # Exercise creating an empty ShareableList.
    empty_sl = shared_memory.ShareableList()
    try:
        assert len(empty_sl) == 0
        assert empty_sl.format == ""
        assert empty_sl.count("any") == 0
        with pytest.raises(ValueError):
            empty_sl.index(None)
        empty_sl.shm.close()
    finally:
        empty_sl.shm.unlink()


@pytest.mark.parametrize("proto", range(pickle.HIGHEST_PROTOCOL + 1))
def test_shared_memory_ShareableList_pickling(mp, proto, add_cleanup):
    shared_memory = mp.shared_memory
    sl = shared_memory.ShareableList(range(10))
    add_cleanup(sl.shm.unlink)

    serialized_sl = pickle.dumps(sl, protocol=proto)
    deserialized_sl = pickle.loads(serialized_sl)
    assert isinstance(deserialized_sl, shared_memory.ShareableList)
    assert deserialized_sl[-1] == 9
    assert sl is not deserialized_sl

    deserialized_sl[4] = "changed"
    assert sl[4] == "changed"
    sl[3] = "newvalue"
    assert deserialized_sl[3] == "newvalue"

    larger_sl = shared_memory.ShareableList(range(400))
    add_cleanup(larger_sl.shm.unlink)
    serialized_larger_sl = pickle.dumps(larger_sl, protocol=proto)
    assert len(serialized_sl) == len(serialized_larger_sl)
    larger_sl.shm.close()

    deserialized_sl.shm.close()
    sl.shm.close()


@pytest.mark.parametrize("proto", range(pickle.HIGHEST_PROTOCOL + 1))
def test_shared_memory_ShareableList_pickling_dead_object(mp, proto):
    shared_memory = mp.shared_memory
    sl = shared_memory.ShareableList(range(10))
    serialized_sl = pickle.dumps(sl, protocol=proto)

    # Now, we are going to kill the original object.
    # So, unpickled one won't be able to attach to it.
    sl.shm.close()
    sl.shm.unlink()

    with pytest.raises(FileNotFoundError):
        pickle.loads(serialized_sl)


def test_genericalias_subscriptable(mp):
    # test_genericalias.BaseTest.test_subscriptable, the ShareableList row.
    t = mp.shared_memory.ShareableList
    alias = t[int]
    assert alias.__origin__ is t
    assert alias.__args__ == (int,)
    assert alias.__parameters__ == ()
    assert type(alias) is types.GenericAlias
