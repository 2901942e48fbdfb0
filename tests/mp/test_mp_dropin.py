"""``qsharedmem.SharedMemory`` as a drop-in in multiprocessing programs.

Real programs, real processes, real SIGKILL: a ``multiprocessing.Pool`` whose workers attach by
name while one of them is killed (the whole program's stderr must stay empty and /dev/shm
clean); handles pickled to children under fork, spawn and forkserver; ProcessPoolExecutor;
manager-style ownership; fork children that inherit a handle; interoperability in both
directions with ``multiprocessing.shared_memory``; numpy producers and consumers in other
processes; the extras (lock, context manager, read-only, views that outlive ``close()``); the
examples in docs/multiprocessing.md.

Children that run our test functions import this module, so it imports nothing from conftest.
"""

from __future__ import annotations

import concurrent.futures
import gc
import inspect
import multiprocessing
import multiprocessing.managers
import multiprocessing.shared_memory as cpython_shared_memory
import os
import pickle
import re
import signal
import stat
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import qsharedmem
from qsharedmem import SharedMemory, shared_memory
from support import HELPERS_DIR

START_METHODS = ["fork", "spawn", "forkserver"]
DEV_SHM = Path("/dev/shm")
DOCS = Path(__file__).resolve().parents[2] / "docs" / "multiprocessing.md"
TIMEOUT = 60.0  # hang guards only; nothing asserts a duration


def clean_output(result: Any) -> list[str]:
    """The stdout lines of a child that exited with status 0 and wrote nothing on stderr."""
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", "no warnings, no tracebacks, from any process"
    return result.stdout.splitlines()


def exists(name: str) -> bool:
    return (DEV_SHM / name).exists()


# ---------------------------------------------------------------------------------------------
# A Pool whose workers attach by name, one of them SIGKILLed


POOL_PROGRAM = r"""
import multiprocessing as mp
import os
import select
import signal
import sys

from qsharedmem import SharedMemory

pids = None

def init(queue):
    global pids
    pids = queue

def fill(name, slot):
    shm = SharedMemory(name)
    try:
        shm.buf[slot] = slot
        return bytes(shm.buf[:8])
    finally:
        shm.close()

def attach_and_die(name):
    shm = SharedMemory(name)          # attached, and never closed: killed while attached
    shm.buf[7] = 77
    pids.put(os.getpid())
    os.kill(os.getpid(), signal.SIGKILL)

if __name__ == "__main__":
    method, name = sys.argv[1], sys.argv[2]
    ctx = mp.get_context(method)
    shm = SharedMemory(name, create=True, size=64)
    queue = ctx.SimpleQueue()
    with ctx.Pool(3, initializer=init, initargs=(queue,)) as pool:
        pool.starmap(fill, [(name, 1), (name, 2)], chunksize=1)
        print("before", bytes(shm.buf[:8]).hex(), flush=True)
        doomed = pool.apply_async(attach_and_die, (name,))
        victim = queue.get()
        try:
            pidfd = os.pidfd_open(victim)
        except ProcessLookupError:
            pass                            # dead and reaped by the pool already
        else:
            select.select([pidfd], [], [])  # until the worker is dead
            os.close(pidfd)
        print("killed exists", os.path.exists("/dev/shm/" + name), flush=True)
        # Replacement and surviving workers attach by name to the very same segment.
        pool.starmap(fill, [(name, 3), (name, 4), (name, 5)], chunksize=1)
        print("after", bytes(shm.buf[:8]).hex(), "lost task", not doomed.ready(), flush=True)
    shm.close()
    print("closed exists", os.path.exists("/dev/shm/" + name), flush=True)
"""


@pytest.mark.parametrize("start_method", START_METHODS)
def test_pool_workers_attach_by_name_and_survive_a_sigkilled_worker(
    start_method, procs, make_key, tmp_path
):
    name = make_key("pool")
    # A script file, not `-c`: spawn and forkserver children import the main module.
    program = tmp_path / "pool_program.py"
    program.write_text(POOL_PROGRAM)
    before = set(os.listdir(DEV_SHM))
    result = procs.run_script(program, start_method, name, timeout=TIMEOUT)
    # Nothing at all on stderr: no tracker warnings, no tracebacks, from any process.
    assert clean_output(result) == [
        "before 0001020000000000",
        "killed exists True",
        # Slot 7 was written by the killed worker before it died, 1 to 5 by the others.
        "after 000102030405004d lost task True",
        "closed exists False",
    ]
    assert set(os.listdir(DEV_SHM)) - before == set(), "nothing is left in /dev/shm"


# ---------------------------------------------------------------------------------------------
# Handles pickled to children, under every start method


def child_writes_and_closes(shm: SharedMemory, data: bytes) -> None:
    shm.buf[: len(data)] = data
    shm.close()


def child_keeps_using(shm: SharedMemory, conn) -> None:
    """Holds the handle while the parent closes its own, then writes and reports."""
    conn.send(("attached", shm.size))
    assert conn.recv() == "parent closed"
    shm.buf[:4] = b"kept"
    again = SharedMemory(shm.name)  # the name still exists: this child is a user
    conn.send(("still there", bytes(again.buf[:4])))
    again.close()
    shm.close()
    conn.send("closed")


@pytest.mark.parametrize("start_method", START_METHODS)
def test_pickled_handle_in_a_child_does_not_own_the_segment(start_method):
    ctx = multiprocessing.get_context(start_method)
    shm = SharedMemory(create=True, size=32)
    try:
        p = ctx.Process(target=child_writes_and_closes, args=(shm, b"child"))
        p.start()
        p.join(TIMEOUT)
        assert p.exitcode == 0
        # The child's close() (and its exit) left the segment alone: we still use it.
        assert exists(shm.name)
        assert bytes(shm.buf[:5]) == b"child"
        assert bytes(SharedMemory(shm.name).buf[:5]) == b"child"
    finally:
        shm.close()
    assert not exists(shm.name), "our close was the last"


@pytest.mark.parametrize("start_method", START_METHODS)
def test_a_child_keeps_a_segment_alive_after_the_parent_closed(start_method):
    ctx = multiprocessing.get_context(start_method)
    shm = SharedMemory(create=True, size=32)
    name = shm.name
    parent_end, child_end = ctx.Pipe()
    p = ctx.Process(target=child_keeps_using, args=(shm, child_end))
    p.start()
    try:
        assert parent_end.poll(TIMEOUT)
        assert parent_end.recv() == ("attached", 32)
        view = shm.buf[:4]  # a view of our own, valid after close()
        shm.close()
        assert exists(name), "the child still uses it"
        parent_end.send("parent closed")
        assert parent_end.poll(TIMEOUT)
        assert parent_end.recv() == ("still there", b"kept")
        assert bytes(view) == b"kept"
        view.release()
        assert parent_end.poll(TIMEOUT)
        assert parent_end.recv() == "closed"
    finally:
        p.join(TIMEOUT)
    assert p.exitcode == 0
    assert not exists(name), "the child's close was the last: the segment is gone"


def executor_task(shm: SharedMemory, slot: int) -> tuple[int, int]:
    shm.buf[slot] = slot + 100
    size = shm.size
    shm.close()
    return os.getpid(), size


@pytest.mark.parametrize("start_method", START_METHODS)
def test_process_pool_executor(start_method):
    ctx = multiprocessing.get_context(start_method)
    shm = SharedMemory(create=True, size=16)
    try:
        with concurrent.futures.ProcessPoolExecutor(2, mp_context=ctx) as pool:
            results = list(pool.map(executor_task, [shm] * 8, range(8)))
        assert {size for _, size in results} == {16}
        assert list(shm.buf[:8]) == [slot + 100 for slot in range(8)]
        assert exists(shm.name), "the workers' exits left it alone"
    finally:
        shm.close()
    assert not exists(shm.name)


# ---------------------------------------------------------------------------------------------
# Manager-style ownership: a server process creates segments and hands them out


class SegmentKeeper:
    """Lives in the manager's server process; returns handles by value (pickled)."""

    def __init__(self) -> None:
        self.segments: list[SharedMemory] = []

    def create(self, size: int) -> SharedMemory:
        shm = SharedMemory(create=True, size=size)
        shm.buf[:6] = b"server"
        self.segments.append(shm)
        return shm

    def unlink_all(self) -> list[str]:
        names = []
        for shm in self.segments:
            shm.unlink()
            names.append(shm.name)
        return names


class KeeperManager(multiprocessing.managers.BaseManager):
    pass


KeeperManager.register("SegmentKeeper", SegmentKeeper)


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
@pytest.mark.parametrize("unlink_at_shutdown", [False, True])
def test_manager_style_ownership(start_method, unlink_at_shutdown):
    manager = KeeperManager(ctx=multiprocessing.get_context(start_method))
    manager.start()
    try:
        keeper = manager.SegmentKeeper()
        shm = keeper.create(64)  # pickled by the server, attached by name here
        other = keeper.create(8)
        assert isinstance(shm, SharedMemory) and shm.size == 64
        assert bytes(shm.buf[:6]) == b"server"
        other.close()
        assert exists(other.name), "the server still holds it"
        if unlink_at_shutdown:
            # SharedMemoryManager's way: the server unlinks what it made at shutdown.
            assert keeper.unlink_all() == [shm.name, other.name]
            assert not exists(shm.name)
    finally:
        manager.shutdown()
    # The server is gone; the segment we hold is not, and it still works.
    assert exists(shm.name) != unlink_at_shutdown
    assert not exists(other.name), "nobody holds it any more"
    shm.buf[:6] = b"client"
    assert bytes(shm.buf[:6]) == b"client"
    shm.close()
    assert not exists(shm.name)


# ---------------------------------------------------------------------------------------------
# fork children that inherit a handle


def test_fork_child_close_does_not_destroy_the_parents_segment():
    shm = SharedMemory(create=True, size=16)
    try:
        shm.buf[0] = 1
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            try:
                shm.buf[1] = 2
                shm.close()
                os.write(write_end, b"closed")
            finally:
                os._exit(0)
        os.close(write_end)
        assert os.read(read_end, 16) == b"closed"
        os.close(read_end)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert exists(shm.name), "neither the child's close() nor its exit destroyed it"
        assert bytes(shm.buf[:2]) == b"\x01\x02"
        assert bytes(SharedMemory(shm.name).buf[:2]) == b"\x01\x02"
    finally:
        shm.close()
    assert not exists(shm.name)


def fork_child_outlives_parent_handle(shm: SharedMemory, conn) -> None:
    assert conn.recv() == "parent closed"
    conn.send(("by name", bytes(SharedMemory(shm.name).buf[:3])))
    shm.close()
    conn.send("closed")


def test_an_inherited_handle_counts_from_the_moment_of_the_fork():
    # The parent closes right after starting the child, without waiting for anything: the
    # child's inherited handle must already count, so the segment stays.
    ctx = multiprocessing.get_context("fork")
    shm = SharedMemory(create=True, size=16)
    name = shm.name
    shm.buf[:3] = b"inh"
    parent_end, child_end = ctx.Pipe()
    p = ctx.Process(target=fork_child_outlives_parent_handle, args=(shm, child_end))
    p.start()
    shm.close()
    try:
        assert exists(name)
        parent_end.send("parent closed")
        assert parent_end.poll(TIMEOUT)
        assert parent_end.recv() == ("by name", b"inh")
        assert parent_end.poll(TIMEOUT)
        assert parent_end.recv() == "closed"
    finally:
        p.join(TIMEOUT)
    assert p.exitcode == 0
    assert not exists(name), "the child was the last user"


def fork_child_exits_holding(conn) -> None:
    assert conn.recv() == "parent closed"
    conn.send("exiting")
    # Leaves through os._exit (multiprocessing's fork children do) without closing.


def test_a_fork_child_that_exits_last_without_closing_leaves_nothing():
    ctx = multiprocessing.get_context("fork")
    shm = SharedMemory(create=True, size=16)
    name = shm.name
    parent_end, child_end = ctx.Pipe()
    p = ctx.Process(target=fork_child_exits_holding, args=(child_end,))
    p.start()
    shm.close()
    assert exists(name)
    parent_end.send("parent closed")
    assert parent_end.poll(TIMEOUT)
    assert parent_end.recv() == "exiting"
    p.join(TIMEOUT)
    assert p.exitcode == 0
    assert not exists(name), "the child's exit released the last reference"


# ---------------------------------------------------------------------------------------------
# Interoperability with multiprocessing.shared_memory


MP_CREATES = r"""
import sys
from multiprocessing import shared_memory, resource_tracker
from qsharedmem import SharedMemory

name = sys.argv[1]
theirs = shared_memory.SharedMemory(name, create=True, size=100)
theirs.buf[:4] = b"mp!!"
ours = SharedMemory(name)
print("ours size", ours.size, bytes(ours.buf[:4]))
ours.buf[4:8] = b"qsm!"
print("theirs sees", bytes(theirs.buf[:8]))
ours.close()
print("after our close, exists", SharedMemory(name).size)
with SharedMemory(name, readonly=True) as ro:
    print("read-only", bytes(ro.buf[:8]), ro.buf.readonly)
ours.unlink()
print("unlinked")
try:
    shared_memory.SharedMemory(name)
except FileNotFoundError:
    print("gone for multiprocessing too")
print("theirs still maps it", bytes(theirs.buf[:8]))
theirs.close()
resource_tracker.unregister(theirs._name, "shared_memory")  # we unlinked it for them
"""


def test_we_open_segments_made_by_multiprocessing(procs, make_key):
    name = make_key("mp-made")
    result = procs.run_python(MP_CREATES, name, timeout=TIMEOUT)
    assert clean_output(result) == [
        # A foreign segment's size is its file size: exactly what multiprocessing made.
        "ours size 100 b'mp!!'",
        "theirs sees b'mp!!qsm!'",
        # close() never unlinks a foreign segment.
        "after our close, exists 100",
        "read-only b'mp!!qsm!' True",
        "unlinked",
        "gone for multiprocessing too",
        "theirs still maps it b'mp!!qsm!'",
    ]
    assert not exists(name)
    assert not exists("sem." + name), "Qt's lock semaphore for the key went with our handles"


MP_OPENS_OURS = r"""
import mmap
import sys
from multiprocessing import shared_memory, resource_tracker

name = sys.argv[1]
theirs = shared_memory.SharedMemory(name)
# CPython 3.11/3.12 register every attachment with the resource tracker, which would unlink
# the segment when this process exits (gh-82300); 3.13 has track=False for this.
resource_tracker.unregister(theirs._name, "shared_memory")
print(theirs.size, theirs.size % mmap.PAGESIZE, bytes(theirs.buf[:5]), flush=True)
theirs.buf[5:10] = b"there"
theirs.close()
"""


def test_multiprocessing_opens_our_segments(procs, make_key):
    name = make_key("ours")
    with SharedMemory(name, create=True, size=100) as ours:
        ours.buf[:5] = b"hello"
        result = procs.run_python(MP_OPENS_OURS, name, timeout=TIMEOUT)
        clean_output(result)
        size, _, data = result.stdout.split(maxsplit=2)
        # multiprocessing sees exactly our size: the data file holds the data and nothing
        # else (our control block is a file of its own).
        assert int(size) == 100
        assert data.strip() == "b'hello'"
        assert bytes(ours.buf[:10]) == b"hellothere"
        assert ours.size == 100
        assert exists(name), "multiprocessing's close() does not touch our refcount"
    assert not exists(name), "our last close destroyed it"


# ---------------------------------------------------------------------------------------------
# numpy: producer here, consumers in other processes, no copies


CONSUMER = r"""
import sys
import numpy as np
from qsharedmem import SharedMemory

name, readonly = sys.argv[1], sys.argv[2] == "ro"
shm = SharedMemory(name, readonly=readonly)
a = shm.ndarray((4, 4), np.float64)
print("READY", a.flags.writeable, float(a.sum()), flush=True)
for line in sys.stdin:
    if line.strip() == "LOOK":
        print("SEES", " ".join(str(int(x)) for x in a.ravel()), flush=True)
    elif line.strip() == "WRITE":
        try:
            a[0, 0] = -1
            print("WROTE", flush=True)
        except ValueError as e:
            print("REFUSED", e, flush=True)
shm.close()
print("SEES AFTER CLOSE", int(a[3, 3]), flush=True)
"""


def test_numpy_consumers_in_other_processes_see_the_producers_array(procs, make_key):
    name = make_key("numpy")
    producer = SharedMemory(name, create=True, size=4 * 4 * 8)
    try:
        a = producer.ndarray((4, 4), np.float64)
        a[:] = 1.0
        rw = procs.start_python(CONSUMER, name, "rw")
        ro = procs.start_python(CONSUMER, name, "ro")
        assert rw.wait_for_line(lambda s: s.startswith("READY")) == "READY True 16.0"
        assert ro.wait_for_line(lambda s: s.startswith("READY")) == "READY False 16.0"

        # Written after the consumers built their arrays: they see it, so nothing was copied.
        a[:] = np.arange(16).reshape(4, 4)
        expected = "SEES " + " ".join(str(x) for x in range(16))
        for consumer in (rw, ro):
            consumer.send("LOOK\n")
            assert consumer.wait_for_line(lambda s: s.startswith("SEES")) == expected

        rw.send("WRITE\n")
        assert rw.wait_for_line(lambda s: s.startswith(("WROTE", "REFUSED"))) == "WROTE"
        assert a[0, 0] == -1, "the consumer wrote into the producer's array"
        ro.send("WRITE\n")
        refused = ro.wait_for_line(lambda s: s.startswith(("WROTE", "REFUSED")))
        assert refused.startswith("REFUSED"), "a read-only attach gives a non-writeable array"
        assert a[0, 0] == -1

        for consumer in (rw, ro):
            result = consumer.finish(TIMEOUT)
            clean_output(result)
            # The array outlived close().
            assert result.stdout.splitlines()[-1] == "SEES AFTER CLOSE 15"
    finally:
        producer.close()
    assert a[3, 3] == 15, "our own array outlives close() too"
    del a
    assert not exists(name)


# ---------------------------------------------------------------------------------------------
# The extras and the semantics that differ from CPython


def test_close_never_raises_buffer_error_and_views_outlive_it():
    shm = SharedMemory(create=True, size=64)
    name = shm.name
    # CPython's close() raises BufferError for both of these.
    from_buf = np.frombuffer(shm.buf, dtype=np.uint8)
    sliced = shm.buf[8:16]
    from_buf[:] = 5
    shm.close()
    assert shm.buf is None
    assert exists(name), "the views keep this process attached"
    assert bytes(sliced) == b"\x05" * 8
    assert from_buf.sum() == 5 * 64
    shm.close()  # idempotent
    sliced.release()
    del from_buf
    assert not exists(name), "the last view was the last reference"


def test_unlink_removes_the_name_and_attachments_keep_working():
    creator = SharedMemory(create=True, size=16)
    other = SharedMemory(creator.name)
    creator.unlink()
    assert not exists(creator.name)
    with pytest.raises(FileNotFoundError):
        SharedMemory(creator.name)
    creator.buf[0] = 9
    assert other.buf[0] == 9
    # The name is free: a new segment with it is another segment.
    successor = SharedMemory(creator.name, create=True, size=16)
    assert successor.buf[0] == 0
    creator.close()
    other.close()
    with pytest.raises(FileNotFoundError):
        other.unlink()  # its segment's name was unlinked already: as in CPython
    assert exists(successor.name), "old handles never touch the successor"
    successor.close()
    assert not exists(successor.name)


def test_errors_are_cpythons_types_and_qsharedmem_errors(make_key):
    name = make_key("errors")
    with pytest.raises(FileNotFoundError) as missing:
        SharedMemory(name)
    assert isinstance(missing.value, qsharedmem.NotFoundError)
    assert missing.value.errno == 2
    assert missing.value.filename == "/" + name
    assert missing.value.qt_error == qsharedmem.QSharedMemory.SharedMemoryError.NotFound
    with SharedMemory(name, create=True, size=8):
        with pytest.raises(FileExistsError) as taken:
            SharedMemory(name, create=True, size=8)
        assert isinstance(taken.value, qsharedmem.AlreadyExistsError)
        assert taken.value.errno == 17
    with pytest.raises(ValueError):
        SharedMemory(name, create=True, size=-1)
    with pytest.raises(ValueError, match="embedded null"):
        SharedMemory(name + "\0")
    with pytest.raises(OSError) as bad:
        SharedMemory("a/b")
    assert bad.value.errno == 22
    with pytest.raises(TypeError):
        SharedMemory(7, create=True, size=8)


def test_track_is_accepted_and_changes_nothing():
    with SharedMemory(create=True, size=8, track=False) as shm:
        assert shm._track is False
        with SharedMemory(shm.name, track=True) as again:
            assert again.size == 8
    assert not exists(shm.name)


def test_context_manager_closes():
    with SharedMemory(create=True, size=8) as shm:
        shm.buf[0] = 1
        assert exists(shm.name)
    assert shm.buf is None
    assert not exists(shm.name), "the with block's close was the last"
    shm.unlink()  # close(); unlink() is fine: nothing left to remove


def test_read_only_attach():
    with SharedMemory(create=True, size=8) as shm:
        shm.buf[0] = 3
        with SharedMemory(shm.name, readonly=True) as ro:
            assert ro.readonly and ro.buf.readonly
            assert ro.buf[0] == 3
            with pytest.raises(TypeError):
                ro.buf[0] = 4
            array = ro.ndarray((8,), np.uint8)
            assert not array.flags.writeable
            with pytest.raises(ValueError):
                array[0] = 4
            again = pickle.loads(pickle.dumps(ro))  # stays read-only
            assert again.readonly and again.buf.readonly
            again.close()
        assert shm.buf[0] == 3


def test_ndarray_bounds_and_offset():
    with SharedMemory(create=True, size=64) as shm:
        whole = shm.ndarray((8,), np.int64)
        tail = shm.ndarray((2,), np.int64, offset=48)
        whole[6:] = [6, 7]
        assert list(tail) == [6, 7]
        with pytest.raises(TypeError):
            shm.ndarray((9,), np.int64)  # numpy: buffer is too small
        # numpy does not check a negative offset: it would read before the segment
        for offset in (-8, -(1 << 40)):
            with pytest.raises(ValueError, match="negative"):
                shm.ndarray((1,), np.uint8, offset=offset)
        with pytest.raises(TypeError):
            shm.ndarray((1,), np.uint8, offset=1.5)
    with pytest.raises(ValueError):
        shm.ndarray((1,), np.int64)  # closed


def locker(shm: SharedMemory, conn) -> None:
    with shm.locked():
        conn.send("locked")
        assert conn.recv() == "release"
    conn.send("released")
    shm.close()


def test_lock_excludes_other_processes_and_times_out():
    ctx = multiprocessing.get_context("spawn")
    shm = SharedMemory(create=True, size=8)
    parent_end, child_end = ctx.Pipe()
    p = ctx.Process(target=locker, args=(shm, child_end))
    p.start()
    try:
        assert parent_end.poll(TIMEOUT)
        assert parent_end.recv() == "locked"
        with pytest.raises(TimeoutError) as timed_out:
            shm.lock(timeout=0.05)
        assert isinstance(timed_out.value, qsharedmem.LockTimeoutError)
        with pytest.raises(qsharedmem.LockError):
            shm.unlock()  # not ours
        parent_end.send("release")
        assert parent_end.poll(TIMEOUT)
        assert parent_end.recv() == "released"
        with shm.locked(timeout=TIMEOUT) as same:
            assert same is shm
            assert not shm.lock_owner_died
        shm.lock()
        shm.unlock()
    finally:
        p.join(TIMEOUT)
        shm.close()
    assert p.exitcode == 0
    with pytest.raises(ValueError):
        shm.lock()  # closed


def die_holding_the_lock(shm: SharedMemory) -> None:
    shm.lock()
    os.kill(os.getpid(), signal.SIGKILL)


def test_a_lock_holder_that_dies_does_not_block_everyone():
    ctx = multiprocessing.get_context("fork")
    with SharedMemory(create=True, size=8) as shm:
        p = ctx.Process(target=die_holding_the_lock, args=(shm,))
        p.start()
        p.join(TIMEOUT)
        assert p.exitcode == -signal.SIGKILL
        with shm.locked(timeout=TIMEOUT):
            assert shm.lock_owner_died


def create_write_and_die(name: str) -> None:
    shm = SharedMemory(name, create=True, size=64)
    shm.buf[:6] = b"saved!"
    os.kill(os.getpid(), signal.SIGKILL)


def test_an_orphan_left_by_a_crash_can_be_read_and_its_close_destroys_it(make_key):
    """The last user SIGKILLed: the file stays, an attach by name recovers what it wrote, and
    that handle's close() is the last detach, so it removes the file."""
    name = make_key("orphan")
    p = multiprocessing.get_context("fork").Process(target=create_write_and_die, args=(name,))
    p.start()
    p.join(TIMEOUT)
    assert p.exitcode == -signal.SIGKILL
    assert exists(name), "the crash removed the segment"
    shm = SharedMemory(name)
    assert shm.size == 64
    assert bytes(shm.buf[:6]) == b"saved!"
    shm.close()
    assert not exists(name)
    # and a new segment can be made under the name
    with SharedMemory(name, create=True, size=8) as again:
        assert bytes(again.buf) == bytes(8)


def test_a_second_unlink_raises_as_in_cpython():
    creator = SharedMemory(create=True, size=16)
    other = SharedMemory(creator.name)
    other.close()  # not the last close: the creator is still open
    creator.unlink()
    assert not exists(creator.name)
    with pytest.raises(FileNotFoundError) as gone:
        other.unlink()
    assert gone.value.errno == 2
    with pytest.raises(FileNotFoundError):
        creator.unlink()
    creator.close()
    with pytest.raises(FileNotFoundError):
        creator.unlink()


def test_unlink_after_the_last_close_succeeds_as_in_cpython():
    """In CPython close() never destroys, and unlink() after everyone closed succeeds; here
    the last close destroyed the segment already, which is what unlink() was for."""
    first = SharedMemory(create=True, size=16)
    last = SharedMemory(first.name)
    first.close()
    last.close()
    assert not exists(first.name)
    first.unlink()
    with pytest.raises(FileNotFoundError):
        first.unlink()


def test_repr_and_attributes_match_cpython():
    with SharedMemory(create=True, size=10) as shm:
        assert repr(shm) == f"SharedMemory({shm.name!r}, size=10)"
        assert shm._name == "/" + shm.name
        assert shm.__reduce__() == (SharedMemory, (shm.name, False, 10))
    assert qsharedmem.SharedMemory is SharedMemory
    assert "SharedMemory" in qsharedmem.__all__


# ---------------------------------------------------------------------------------------------
# docs/multiprocessing.md: every example runs


def doc_examples() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOCS.read_text(), flags=re.S)


def test_the_docs_have_examples():
    assert len(doc_examples()) >= 3


@pytest.mark.parametrize("index", range(len(doc_examples())))
def test_docs_example_runs(index, procs, tmp_path):
    code = doc_examples()[index]
    script = tmp_path / f"example_{index}.py"
    script.write_text(code)
    before = set(os.listdir(DEV_SHM))
    result = procs.run_script(script, timeout=TIMEOUT, cwd=str(tmp_path))
    clean_output(result)
    assert set(os.listdir(DEV_SHM)) - before == set()


# ---------------------------------------------------------------------------------------------
# Exceptions and enums cross process boundaries


def attach_missing(name: str) -> None:
    SharedMemory(name)


def test_an_error_raised_in_a_pool_worker_arrives_in_the_parent(make_key):
    # multiprocessing pickles a worker's exception; before our errors could be pickled, the
    # parent got a MaybeEncodingError instead of the FileNotFoundError.
    name = make_key("missing")
    with (
        multiprocessing.get_context("spawn").Pool(1) as pool,
        pytest.raises(FileNotFoundError) as missing,
    ):
        pool.apply(attach_missing, (name,))
    assert isinstance(missing.value, qsharedmem.NotFoundError)
    assert missing.value.errno == 2
    assert missing.value.filename == "/" + name
    assert missing.value.qt_error == qsharedmem.QSharedMemory.SharedMemoryError.NotFound
    assert str(missing.value) == "QSharedMemory::attach (shm_open): doesn't exist"


def test_errors_and_enums_pickle(make_key):
    with (
        pytest.raises(FileExistsError) as taken,
        SharedMemory(make_key("taken"), create=True, size=8) as shm,
    ):
        SharedMemory(shm.name, create=True, size=8)
    taken.value.note = "kept"
    for proto in range(pickle.HIGHEST_PROTOCOL + 1):
        again = pickle.loads(pickle.dumps(taken.value, protocol=proto))
        assert type(again) is qsharedmem.AlreadyExistsError
        assert (again.errno, again.strerror, again.filename, again.qt_error, again.note) == (
            taken.value.errno,
            taken.value.strerror,
            taken.value.filename,
            qsharedmem.QSharedMemory.SharedMemoryError.AlreadyExists,
            "kept",
        )
    timeout = qsharedmem.LockTimeoutError(110, "timed out", 6)
    assert type(pickle.loads(pickle.dumps(timeout))) is qsharedmem.LockTimeoutError
    for member in (
        qsharedmem.QSharedMemory.SharedMemoryError.NotFound,
        qsharedmem.QSharedMemory.AccessMode.ReadOnly,
        qsharedmem.QNativeIpcKey.Type(84),
        qsharedmem.QSystemSemaphore.SystemSemaphoreError.KeyError,
    ):
        assert pickle.loads(pickle.dumps(member)) is member


# ---------------------------------------------------------------------------------------------
# The rest of CPython 3.13's module surface, next to CPython's class where it can run here


def cpython_cleanup(shm: Any) -> None:
    shm.close()
    shm.unlink()


def test_bools_and_ints_as_cpython_takes_them(make_key):
    # bool is an int: size=True is one byte, create=1 creates.
    theirs = cpython_shared_memory.SharedMemory(make_key("cpy-true"), create=True, size=True)
    try:
        ours = SharedMemory(make_key("ours-true"), create=1, size=True)
        assert ours.size == theirs.size == 1
        ours.buf[0] = 255
        assert SharedMemory(ours.name, create=0, size=False).buf[0] == 255
        ours.close()
    finally:
        cpython_cleanup(theirs)
    name = make_key("float-size")
    with pytest.raises(TypeError):
        SharedMemory(name, create=True, size=1.5)
    assert not exists(name), "refused before anything was made (CPython leaves the file)"


def test_flags_as_cpythons(make_key):
    name = make_key("flags")
    with SharedMemory(name, create=True, size=8) as created:
        assert created._flags == os.O_CREAT | os.O_EXCL | os.O_RDWR
        with SharedMemory(name) as attached, SharedMemory(name, readonly=True) as ro:
            assert attached._flags == os.O_RDWR
            assert ro._flags == os.O_RDONLY
    assert SharedMemory._flags == cpython_shared_memory.SharedMemory._flags == os.O_RDWR


@pytest.mark.parametrize("implementation", ["cpython", "qsharedmem"])
def test_a_subclass_with_o_creat_attaches_or_fails_as_in_cpython(implementation, make_key):
    base = cpython_shared_memory.SharedMemory if implementation == "cpython" else SharedMemory

    class OptionalAttach(base):  # type: ignore[misc, valid-type]
        _flags = os.O_CREAT | os.O_RDWR

    name = make_key("optional")
    with pytest.raises(ValueError):
        OptionalAttach(name)  # nothing there, and no size to make it with
    if implementation == "cpython":
        # CPython's shm_open made an empty file, mmap refused it with a ValueError, and its
        # cleanup catches only OSError: the file stays.
        assert exists(name)
        (DEV_SHM / name).unlink()
    else:
        assert not exists(name), "attached or failed: nothing is made"
    made = base(name, create=True, size=16)
    try:
        again = OptionalAttach(name)
        assert again.size == made.size
        again.close()
    finally:
        made.close()
        made.unlink()


@pytest.mark.parametrize("implementation", ["cpython", "qsharedmem"])
def test_a_subclass_without_the_leading_slash(implementation, make_key):
    base = cpython_shared_memory.SharedMemory if implementation == "cpython" else SharedMemory

    class AsGiven(base):  # type: ignore[misc, valid-type]
        _prepend_leading_slash = False

    bare = make_key("bare")
    slashed = make_key("slashed")
    first = AsGiven(bare, create=True, size=8)
    second = AsGiven("/" + slashed, create=True, size=8)
    try:
        # glibc's shm_open takes both; `name` reports what was given.
        assert (first.name, first._name) == (bare, bare)
        assert (second.name, second._name) == ("/" + slashed, "/" + slashed)
        assert exists(bare) and exists(slashed)
        assert repr(second) == f"AsGiven({'/' + slashed!r}, size={second.size})"
        assert second.__reduce__() == (AsGiven, ("/" + slashed, False, second.size))
        random = AsGiven(create=True, size=8)
        assert random.name.startswith("/psm_")
        random.close()
        random.unlink()
    finally:
        for shm in (first, second):
            shm.close()
            shm.unlink()


@pytest.mark.parametrize("impl", ["cpython", "qsharedmem"])
def test_a_subclass_with_other_permissions_gets_them_less_the_umask(make_key, impl):
    base = cpython_shared_memory.SharedMemory if impl == "cpython" else SharedMemory

    class Shared(base):  # type: ignore[misc, valid-type]
        _mode = 0o666

    name = make_key("mode")
    old = os.umask(0o027)
    try:
        made = Shared(name, create=True, size=8)
    finally:
        os.umask(old)
    try:
        assert stat.S_IMODE(os.stat(f"/dev/shm/{name}").st_mode) == 0o640
    finally:
        made.close()
        made.unlink()
    assert not exists(name)
    assert SharedMemory._mode == cpython_shared_memory.SharedMemory._mode == 0o600


def test_fd_and_mmap_are_refused_with_what_to_use_instead():
    shm = SharedMemory(create=True, size=8)
    try:
        with pytest.raises(AttributeError, match=r"SharedMemory has no _fd: .* use buf"):
            _ = shm._fd
        with pytest.raises(AttributeError, match=r"has no _mmap: use buf, a memoryview"):
            _ = shm._mmap
        with pytest.raises(AttributeError, match="has no _fd"):
            _ = SharedMemory._fd
        assert getattr(shm, "_mmap", "absent") == "absent"
        assert not hasattr(shm, "_fd")
        # What code that disarms CPython's __del__ after a BufferError assigns: accepted.
        shm._buf = None
        shm._mmap = None
        shm._fd = -1
        with pytest.raises(AttributeError, match="has no _fd"):
            shm._fd = 3
        with pytest.raises(AttributeError, match="has no _mmap"):
            shm._mmap = object()
    finally:
        shm.close()
    assert not exists(shm.name)


def test_a_subclass_may_call_cpythons_del():
    class Logged(SharedMemory):
        deleted = 0

        def __del__(self) -> None:
            type(self).deleted += 1
            super().__del__()

    shm = Logged(create=True, size=8)
    name = shm.name
    del shm
    gc.collect()
    assert Logged.deleted == 1
    assert not exists(name), "collected: the handle detached"


def test_module_constants_as_cpythons():
    for constant in ("_USE_POSIX", "_SHM_SAFE_NAME_LENGTH", "_SHM_NAME_PREFIX"):
        assert getattr(shared_memory, constant) == getattr(cpython_shared_memory, constant)
    assert shared_memory._make_filename().startswith("/psm_")
    assert inspect.signature(SharedMemory.__init__).parameters["track"].kind is (
        inspect.Parameter.KEYWORD_ONLY
    )


# ---------------------------------------------------------------------------------------------
# Done when: a program that uses all three names works after changing only its imports


PROGRAM = HELPERS_DIR / "mp_dropin_program.py"
STDLIB_IMPORTS = {
    "from multiprocessing.managers import SharedMemoryManager": (
        "from qsharedmem.managers import SharedMemoryManager"
    ),
    "from multiprocessing.shared_memory import ShareableList, SharedMemory": (
        "from qsharedmem.shared_memory import ShareableList, SharedMemory"
    ),
}
PROGRAM_OUTPUT = [
    "squares [0, 1, 4, 9, 16, 25, 36, 49]",
    "tags ['a-0', 'b-1', 'c-2'] [0, 0, 0]",
    "managed [0, 1, 2, 3] [100, 101, 102, 103] [2, 4, 6, 8]",
    "released True",
    "released False",
]


def program_on_qsharedmem() -> str:
    lines = PROGRAM.read_text().splitlines(keepends=True)
    changed = [STDLIB_IMPORTS.get(line.rstrip("\n"), line.rstrip("\n")) + "\n" for line in lines]
    assert sum(a != b for a, b in zip(lines, changed, strict=True)) == len(STDLIB_IMPORTS)
    return "".join(changed)


@pytest.mark.parametrize("start_method", START_METHODS)
@pytest.mark.parametrize("implementation", ["multiprocessing", "qsharedmem"])
def test_a_program_using_all_three_names_needs_only_new_imports(
    implementation, start_method, procs, tmp_path
):
    # The standard library's run is the oracle: the same output, and it is a correct program
    # there too (it unlinks what it makes), so its stderr is empty as well.
    script = tmp_path / "program.py"
    if implementation == "multiprocessing":
        script.write_text(PROGRAM.read_text())
    else:
        script.write_text(program_on_qsharedmem())
    before = set(os.listdir(DEV_SHM))
    result = procs.run_script(script, start_method, timeout=TIMEOUT, cwd=str(tmp_path))
    assert clean_output(result) == PROGRAM_OUTPUT
    assert set(os.listdir(DEV_SHM)) - before == set(), "nothing is left in /dev/shm"
