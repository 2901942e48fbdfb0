"""``attach(mode, timeout=…)`` and ``SharedMemory(name, timeout=…)``: waiting for a segment
that does not exist yet (issue 18), so that programs can start in any order.

POSIX waits on ``inotify`` in ``/dev/shm``, System V polls with a backoff; both look at least
once per 100 ms slice, run signal handlers in between, and leave nothing behind when the segment
never comes (a System V attach that polled must not leave key files or lock sets). Without a
timeout, ``attach()`` is what it always was. The System V attach's wait for the key's lock gets
the same bound.
"""

from __future__ import annotations

import struct
from typing import Any

import pytest
import qsharedmem
from qsharedmem import QSharedMemory, SharedMemory
from support.agent import start_agent
from support.keys import KeyRegistry
from support.notify import interrupt_wait, qkey, wait_until_sleeping

BACKENDS = ["posix", "sysv"]


@pytest.fixture(params=BACKENDS)
def key(request: pytest.FixtureRequest, make_key: KeyRegistry) -> Any:
    return qkey(make_key, request.param, "appear")


def test_an_attach_waits_for_a_creator_that_comes_later(
    key: Any, procs: Any, make_key: KeyRegistry
) -> None:
    agent = start_agent(procs, key)
    agent.send(
        "shm = QSharedMemory(key); ready()\n"
        "(shm.attach(timeout=60), struct.unpack_from('<I', shm.constData(), 0)[0], shm.size())"
    )
    agent.wait_for_line()
    wait_until_sleeping(agent.pid)  # asleep: nothing there yet
    creator = QSharedMemory(key)
    assert creator.create(4096)
    with creator.locked():
        struct.pack_into("<I", creator.data(), 0, 1234)
    assert agent.result() == (True, 1234, 4096)
    assert agent("shm.detach()") is True
    assert creator.detach()
    assert make_key.leftovers() == []


def test_an_attach_that_waits_in_vain_fails_and_leaves_nothing(
    key: Any, make_key: KeyRegistry
) -> None:
    shm = QSharedMemory(key)
    assert shm.attach(timeout=0.3) is False
    assert shm.error() == QSharedMemory.NotFound
    assert shm.attach(timeout=0) is False
    assert shm.error() == QSharedMemory.NotFound
    assert shm.attach() is False, "no timeout: today's attach"
    del shm
    assert make_key.leftovers() == []


def test_an_endless_wait_is_interrupted_by_ctrl_c(key: Any, procs: Any) -> None:
    agent = start_agent(procs, key)
    interrupt_wait(agent, "shm = QSharedMemory(key); ready(); shm.attach(timeout=float('inf'))")
    assert agent("shm.isAttached()") is False


def test_a_bad_timeout_is_refused(key: Any) -> None:
    shm = QSharedMemory(key)
    with pytest.raises(ValueError):
        shm.attach(timeout=-1)
    with pytest.raises(TypeError):
        shm.attach(timeout="soon")


def test_the_system_v_attach_waits_for_the_lock_only_as_long_as_told(
    make_key: KeyRegistry, procs: Any
) -> None:
    key = qkey(make_key, "sysv", "locked")
    holder = start_agent(procs, key)
    assert holder("shm = QSharedMemory(key); shm.create(64) and shm.lock()") is True
    shm = QSharedMemory(key)
    # Qt's attach() takes the key's lock, so with the lock held it waits: bounded now
    assert shm.attach(timeout=0.3) is False
    assert shm.error() == QSharedMemory.LockError
    assert "timed out" in shm.errorString()
    assert holder("shm.unlock()") is True
    assert shm.attach(timeout=30) is True
    assert shm.detach()
    assert holder("shm.detach()") is True
    assert make_key.leftovers() == []


def test_multiprocessing_style_shared_memory_waits_too(make_key: KeyRegistry, procs: Any) -> None:
    name = make_key("mp-appear")
    make_key.record(qsharedmem.QNativeIpcKey("/" + name))
    with pytest.raises(FileNotFoundError):
        SharedMemory(name, timeout=0.2)
    agent = start_agent(procs)
    agent.send(
        f"from qsharedmem import SharedMemory; ready(); m = SharedMemory({name!r}, timeout=60)\n"
        "(m.size, bytes(m.buf[:5]))"
    )
    agent.wait_for_line()
    wait_until_sleeping(agent.pid)
    with SharedMemory(name, create=True, size=64) as created:
        created.buf[:5] = b"hello"
        assert agent.result() == (64, b"hello")
        agent("m.close()")
    assert make_key.leftovers() == []
