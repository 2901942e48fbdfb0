"""Segments shared by several processes: data, lifetime, crashes, fork and spawn (issue 2).

Every test runs for each key type (POSIX, SystemV-Q, SystemV-T) against qsharedmem. The peers
are real processes: agents (``helpers/agent.py``, one command at a time over a pipe) or
``multiprocessing`` children (fork and spawn); crashes are real SIGKILLs. Whether a segment
exists is read from the OS (``/dev/shm``, ``/proc/sysvipc/shm``) without attaching to it, and
"nothing left" is ``make_key.leftovers()`` (segment, key files, semaphores) — the automatic leak
check then re-checks the whole machine.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import struct
from typing import Any

import pytest
from helpers.mp_children import (
    CHILD_OFFSET,
    CHILD_TEXT,
    attach_by_key,
    outlive_parent_detach,
    use_inherited_then_detach,
)
from support.agent import Agent, start_agent
from support.impls import Impl, qsharedmem_only
from support.ipc import is_posix, segment_exists, sysv_segment
from support.keys import KeyRegistry

TIMEOUT = 60.0  # hang guard for every wait; nothing asserts a duration
MARKER = b"PARENT!!"


impl, key = qsharedmem_only("mp")


def agents(procs: Any, key: Any, count: int, size: int) -> list[Agent]:
    """``count`` agents with a handle ``shm`` each: the first created the segment (``size``
    bytes), the others attached to it."""
    peers = [start_agent(procs, key) for _ in range(count)]
    assert peers[0](f"shm = QSharedMemory(key); shm.create({size})") is True
    for peer in peers[1:]:
        assert peer("shm = QSharedMemory(key); shm.attach()") is True
    return peers


# ------------------------------------------------------------------------------------------------
# sharing data


def test_five_processes_share_data(procs: Any, key: Any, make_key: KeyRegistry) -> None:
    slot = struct.Struct("<QQ")  # (pid, index + 1) per process
    write_slot = "struct.pack_into('<QQ', shm.data(), {offset}, os.getpid(), {value})"
    peers = agents(procs, key, 5, 5 * slot.size)

    # each writes its own slot under the lock...
    for index, peer in enumerate(peers):
        peer(
            "with shm.locked(timeout=30):\n    "
            + write_slot.format(offset=index * slot.size, value=index + 1)
        )
    # ...and every one of them reads everybody's
    expected = [(peer.pid, index + 1) for index, peer in enumerate(peers)]
    for peer in peers:
        seen = peer(
            "with shm.locked(timeout=30):\n"
            "    seen = [struct.unpack_from('<QQ', shm.constData(), i * 16) for i in range(5)]"
            "\nseen"
        )
        assert seen == expected

    for peer in peers:
        assert peer("shm.detach()") is True
    assert make_key.leftovers() == []


def test_segment_lives_while_any_process_is_attached(
    procs: Any, key: Any, make_key: KeyRegistry
) -> None:
    peers = agents(procs, key, 4, 4096)
    peers[1]("shm.data()[:8] = b'survives'")

    # the creator leaves first; then the others, one by one
    for leaving, peer in enumerate(peers[:-1]):
        assert peer("shm.detach()") is True
        assert segment_exists(key), f"gone after {leaving + 1} of {len(peers)} detached"
        assert peers[-1]("bytes(shm.constData()[:8])") == b"survives"

    assert peers[-1]("shm.detach()") is True
    assert not segment_exists(key)
    assert make_key.leftovers() == []


def test_segment_survives_killed_attachers_and_goes_with_the_last_survivor(
    procs: Any, key: Any, make_key: KeyRegistry
) -> None:
    peers = agents(procs, key, 4, 4096)
    survivor = peers[-1]
    survivor("shm.data()[:8] = b'survives'")

    # SIGKILL the creator and the other attachers: nothing of theirs runs any more
    for peer in peers[:-1]:
        assert peer.kill() == -signal.SIGKILL
        assert segment_exists(key)
        assert survivor("bytes(shm.constData()[:8])") == b"survives"
    if not is_posix(key):
        # System V: the kernel detached the dead (nattch); only the survivor is left
        assert sysv_segment(key)["nattch"] == 1

    # the last survivor detaches normally: everything is removed, the dead cannot hold it
    assert survivor("shm.detach()") is True
    assert make_key.leftovers() == []


@pytest.mark.parametrize("attachers", [0, 2], ids=["creator alone", "creator and 2 attachers"])
def test_crashed_creators_orphan_is_reclaimed_by_the_next_create(
    impl: Impl, procs: Any, key: Any, make_key: KeyRegistry, attachers: int
) -> None:
    creator, *others = agents(procs, key, 1 + attachers, 3000)
    creator("shm.data()[:] = b'\\xab' * 3000")
    # every process attached to it crashes: the segment is an orphan nobody will detach
    for peer in (creator, *others):
        assert peer.kill() == -signal.SIGKILL
    assert segment_exists(key)
    if not is_posix(key):
        assert sysv_segment(key)["nattch"] == 0

    # the next create() reclaims it and makes a fresh segment: new size, zeroed
    shm = impl.QSharedMemory(key)
    assert shm.create(1000), shm.errorString()
    assert shm.size() == 1000
    assert bytes(shm.constData()) == bytes(1000)
    if not is_posix(key):
        assert sysv_segment(key)["size"] == 1000
    # and it is a working segment: another process attaches and sees the same memory
    shm.data()[:5] = b"fresh"
    peer = start_agent(procs, key)
    assert peer("shm = QSharedMemory(key); shm.attach()") is True
    assert peer("(shm.size(), bytes(shm.constData()[:5]))") == (1000, b"fresh")
    assert peer("shm.lock(timeout=30) and shm.unlock()") is True
    assert peer("shm.detach()") is True
    assert shm.detach()
    assert make_key.leftovers() == []


# ------------------------------------------------------------------------------------------------
# fork: a child's handle is its own


def fork_child(body: Any) -> int:
    """Run ``body()`` in a forked child that always leaves with os._exit; returns its pid."""
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 1
        try:
            body()
            code = 0
        finally:
            os._exit(code)
    return pid


def wait_child(pid: int) -> int:
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def test_os_fork_childs_detach_keeps_the_parents_segment(
    impl: Impl, key: Any, make_key: KeyRegistry
) -> None:
    shm = impl.QSharedMemory(key)
    assert shm.create(256)
    shm.data()[:8] = MARKER
    read_end, write_end = os.pipe()

    def child() -> None:
        os.close(read_end)
        ok = shm.constData()[:8] == MARKER
        shm.data()[CHILD_OFFSET : CHILD_OFFSET + len(CHILD_TEXT)] = CHILD_TEXT
        ok = shm.detach() and ok and not shm.isAttached()
        os.write(write_end, b"ok" if ok else b"failed")

    pid = fork_child(child)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        assert pipe.read() == b"ok"
    assert wait_child(pid) == 0

    # the child detached (and exited): the parent's segment is untouched and still shared
    assert shm.isAttached()
    assert segment_exists(key)
    assert bytes(shm.constData()[: CHILD_OFFSET + len(CHILD_TEXT)]) == MARKER + CHILD_TEXT
    other = impl.QSharedMemory(key)
    assert other.attach(), other.errorString()
    assert other.lock(timeout=30) and other.unlock()
    assert other.detach()
    assert shm.detach()
    assert make_key.leftovers() == []


def test_os_fork_parents_detach_keeps_the_childs_segment(
    impl: Impl, key: Any, make_key: KeyRegistry
) -> None:
    shm = impl.QSharedMemory(key)
    assert shm.create(256)
    shm.data()[:8] = MARKER
    to_child_r, to_child_w = os.pipe()
    to_parent_r, to_parent_w = os.pipe()

    def child() -> None:
        os.close(to_child_w)
        os.close(to_parent_r)
        os.write(to_parent_w, b"attached\n")
        assert os.read(to_child_r, 64) == b"parent detached"
        # the parent has detached: this (inherited) attachment must still be a live segment
        ok = shm.constData()[:8] == MARKER
        shm.data()[CHILD_OFFSET : CHILD_OFFSET + len(CHILD_TEXT)] = CHILD_TEXT
        ok = ok and shm.lock(timeout=30) and shm.unlock()
        ok = ok and shm.detach()
        os.write(to_parent_w, b"ok" if ok else b"failed")

    pid = fork_child(child)
    os.close(to_child_r)
    os.close(to_parent_w)
    with os.fdopen(to_parent_r, "rb") as from_child:
        assert from_child.readline() == b"attached\n"
        assert shm.detach()
        assert segment_exists(key), "the parent's detach destroyed the child's segment"
        os.write(to_child_w, b"parent detached")
        os.close(to_child_w)
        assert from_child.read() == b"ok"
    assert wait_child(pid) == 0
    # the child was the last one attached: its detach destroyed the segment
    assert make_key.leftovers() == []


def fork_child_with(impl: Impl, key: Any, target: Any) -> tuple[Any, Any, Any]:
    """A new 256-byte segment with MARKER at 0, and a ``multiprocessing`` fork child running
    ``target(shm, pipe end)``: (segment, the parent's pipe end, child)."""
    context = multiprocessing.get_context("fork")
    shm = impl.QSharedMemory(key)
    assert shm.create(256)
    shm.data()[:8] = MARKER
    parent_end, child_end = context.Pipe()
    child = context.Process(target=target, args=(shm, child_end))
    child.start()
    child_end.close()
    return shm, parent_end, child


def child_report(parent_end: Any, child: Any) -> Any:
    """The child's next message, once the child has exited with status 0."""
    assert parent_end.poll(TIMEOUT)
    report = parent_end.recv()
    child.join(TIMEOUT)
    assert child.exitcode == 0
    return report


def test_multiprocessing_fork_childs_detach_keeps_the_parents_segment(
    impl: Impl, key: Any, make_key: KeyRegistry
) -> None:
    shm, parent_end, child = fork_child_with(impl, key, use_inherited_then_detach)
    report = child_report(parent_end, child)
    assert report == {"marker": MARKER, "detached": True, "attached": False}

    assert shm.isAttached()
    assert segment_exists(key)
    assert bytes(shm.constData()[CHILD_OFFSET : CHILD_OFFSET + len(CHILD_TEXT)]) == CHILD_TEXT
    assert shm.detach()
    assert make_key.leftovers() == []


def test_multiprocessing_fork_parents_detach_keeps_the_childs_segment(
    impl: Impl, key: Any, make_key: KeyRegistry
) -> None:
    shm, parent_end, child = fork_child_with(impl, key, outlive_parent_detach)
    assert parent_end.poll(TIMEOUT)
    assert parent_end.recv() == "attached"
    assert shm.detach()
    assert segment_exists(key), "the parent's detach destroyed the child's segment"
    parent_end.send("parent detached")
    report = child_report(parent_end, child)
    assert report == {"marker": MARKER, "written": CHILD_TEXT, "detached": True}
    assert make_key.leftovers() == []


def test_multiprocessing_spawn_children_attach_by_key(
    impl: Impl, key: Any, make_key: KeyRegistry
) -> None:
    context = multiprocessing.get_context("spawn")
    shm = impl.QSharedMemory(key)
    assert shm.create(256)
    with shm.locked():
        shm.data()[:8] = MARKER
    children = []
    for _ in range(3):
        parent_end, child_end = context.Pipe()
        child = context.Process(target=attach_by_key, args=(key.toString(), child_end))
        child.start()
        child_end.close()
        children.append((child, parent_end))
    for child, parent_end in children:
        assert parent_end.poll(TIMEOUT), "spawned child did not report"
        report = parent_end.recv()
        child.join(TIMEOUT)
        assert child.exitcode == 0
        assert report == {
            "attached": True,
            "error": "",
            "size": 256,
            "marker": MARKER,
            "detached": True,
        }
    # every child detached; the parent's attachment kept the segment, and sees their writes
    assert segment_exists(key)
    assert bytes(shm.constData()[CHILD_OFFSET : CHILD_OFFSET + len(CHILD_TEXT)]) == CHILD_TEXT
    assert shm.detach()
    assert make_key.leftovers() == []
