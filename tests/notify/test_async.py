"""asyncio: ``alock``/``alocked``, ``await_changed``, ``Event.await_set``,
``AtomicWord.await_changed`` and ``QSystemSemaphore.aacquire`` (issue 18).

What is checked: the event loop is never blocked (a ticker keeps ticking while tasks wait);
1,000 tasks waiting at once cost no thread each (``/proc/self/task``); cancelling a waiting task
leaves no lock held and no token taken, also when it is cancelled right after the hand-over;
timeouts return False (or raise ``LockTimeoutError`` for ``alocked``). The other side of every
wait is a real process (``helpers/agent.py``). Nothing asserts a duration.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest
import qsharedmem
from qsharedmem import QSharedMemory, QSystemSemaphore, _aio
from support.agent import Agent, start_agent
from support.keys import KeyRegistry
from support.notify import TIMEOUT, cpu_seconds, qkey, wait_until_sleeping

T = TypeVar("T")
MANY = 1000


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coroutine, TIMEOUT))


def threads() -> int:
    return len(os.listdir("/proc/self/task"))


@pytest.fixture(params=["posix", "sysv"])
def key(request: pytest.FixtureRequest, make_key: KeyRegistry) -> Any:
    return qkey(make_key, request.param, "async")


@pytest.fixture
def peer(procs: Any, key: Any, shm: Any) -> Agent:
    agent = start_agent(procs, key)
    assert agent("shm = QSharedMemory(key); shm.attach()") is True
    return agent


async def ticking(until: asyncio.Future[Any]) -> int:
    """Counts loop iterations until ``until`` is done: a blocked loop would count none."""
    ticks = 0
    while not until.done():
        await asyncio.sleep(0.001)
        ticks += 1
    return ticks


# ------------------------------------------------------------------------------------------------
# words: through the watcher thread


def test_a_thousand_tasks_await_one_generation_without_a_thread_each(shm: Any, peer: Agent) -> None:
    async def main() -> tuple[list[bool], int, int]:
        g = shm.generation()
        before = threads()
        waits = asyncio.gather(*(shm.await_changed(g) for _ in range(MANY)))
        ticker = asyncio.ensure_future(ticking(waits))
        while qsharedmem._qsharedmem._WatchQueue.waiting() < MANY:
            await asyncio.sleep(0.001)
        during = threads()
        assert during <= before + 1, "one watcher thread at most"
        await asyncio.to_thread(peer, "shm.notify_all()")
        results = await waits
        return results, await ticker, during - before

    results, ticks, _ = run(main())
    assert results == [True] * MANY
    assert ticks > 0, "the loop kept running"
    assert qsharedmem._qsharedmem._WatchQueue.waiting() == 0, "registrations are gone"


def test_events_and_atomic_words_are_awaited(shm: Any, peer: Agent) -> None:
    event = shm.event("go")
    word = shm.atomic_u64(8)

    async def main() -> list[bool]:
        waits = asyncio.gather(
            *(event.await_set() for _ in range(MANY // 2)),
            *(word.await_changed(0) for _ in range(MANY // 2)),
        )
        while qsharedmem._qsharedmem._WatchQueue.waiting() < MANY:
            await asyncio.sleep(0.001)
        await asyncio.to_thread(peer, "shm.event('go').set()")
        # only the high half changes: the low half, which the kernel sleeps on, stays 0
        await asyncio.to_thread(peer, "w = shm.atomic_u64(8); w.add(2**40); w.wake(2**31)")
        return await waits

    assert run(main()) == [True] * MANY


def test_word_awaits_time_out_and_are_cancelled(shm: Any) -> None:
    event = shm.event("never")

    async def main() -> None:
        assert await shm.await_changed(shm.generation(), 0.05) is False
        assert await event.await_set(0.05) is False
        assert await shm.atomic_u32(0).await_changed(0, 0) is False
        assert await shm.atomic_u32(0).await_changed(1, 0) is True, "differs already"
        task = asyncio.ensure_future(shm.await_changed(shm.generation()))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        with pytest.raises(ValueError):
            await shm.await_changed(0, -1)

    run(main())
    assert qsharedmem._qsharedmem._WatchQueue.waiting() == 0


IDLE_WAITERS = r"""
import asyncio, sys
from qsharedmem import QNativeIpcKey, QSharedMemory
shm = QSharedMemory(QNativeIpcKey.fromString(sys.argv[1]))
assert shm.attach()
async def main():
    g = shm.generation()
    waits = asyncio.gather(*(shm.await_changed(g, 120) for _ in range(1000)))
    await asyncio.sleep(0.2)
    print("WAITING", flush=True)
    print("DONE", all(await waits), flush=True)
asyncio.run(main())
"""


def test_a_thousand_idle_tasks_use_no_cpu(shm: Any, key: Any, procs: Any) -> None:
    child = procs.start_ready(procs.python("-c", IDLE_WAITERS, key.toString()), "WAITING")
    wait_until_sleeping(child.pid)
    before, start = cpu_seconds(child.pid), time.monotonic()
    time.sleep(5.0)  # the measurement window, not a synchronisation
    used, elapsed = cpu_seconds(child.pid) - before, time.monotonic() - start
    shm.notify_all()
    assert child.wait_for_line(lambda line: line.startswith("DONE")) == "DONE True"
    assert used < 0.01 * elapsed, f"{used:.3f} s of CPU in {elapsed:.1f} s"


# ------------------------------------------------------------------------------------------------
# locks: tried from the loop


def test_alock_waits_for_another_process_without_blocking_the_loop(shm: Any, peer: Agent) -> None:
    assert peer("shm.lock()") is True

    async def main() -> int:
        task = asyncio.ensure_future(shm.alock())
        ticks = asyncio.ensure_future(ticking(task))
        await asyncio.sleep(0.05)
        assert not task.done()
        await asyncio.to_thread(peer, "shm.unlock()")
        assert await task is True
        return await ticks

    assert run(main()) > 0
    assert peer("shm.lock(timeout=0)") is False, "held by us now"
    assert shm.unlock()
    assert peer("shm.lock(timeout=0), shm.unlock()") == (True, True)


def test_tasks_sharing_a_handle_take_turns(shm: Any) -> None:
    inside: list[int] = []
    overlaps: list[int] = []

    async def worker(n: int) -> None:
        for _ in range(5):
            async with shm.alocked(timeout=TIMEOUT):
                if inside:
                    overlaps.append(n)
                inside.append(n)
                await asyncio.sleep(0.001)  # other tasks run meanwhile
                inside.remove(n)

    async def main() -> None:
        await asyncio.gather(*(worker(n) for n in range(10)))

    run(main())
    assert overlaps == [], "one task at a time, although they share the handle"
    assert shm._try_lock() is True and shm.unlock(), "free at the end"


def test_a_cancelled_alock_leaves_the_lock_free(shm: Any, peer: Agent) -> None:
    assert peer("shm.lock()") is True

    async def main() -> None:
        task = asyncio.ensure_future(shm.alock())
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.to_thread(peer, "shm.unlock()")
        await asyncio.sleep(0.05)  # would the cancelled waiter's timer still take it?

    run(main())
    assert peer("shm.lock(timeout=0), shm.unlock()") == (True, True)


def test_alock_times_out_like_lock(shm: Any, peer: Agent) -> None:
    assert peer("shm.lock()") is True

    async def main() -> None:
        assert await shm.alock(timeout=0.05) is False
        assert shm.error() == QSharedMemory.LockError
        assert "timed out" in shm.errorString()
        assert await shm.alock(timeout=0) is False
        with pytest.raises(qsharedmem.LockTimeoutError):
            async with shm.alocked(timeout=0.05):
                pytest.fail("entered without the lock")

    run(main())
    assert peer("shm.unlock()") is True


class _Taken:
    """Something to take, for the hand-over race (weakly referenceable, like a handle)."""


def test_a_task_cancelled_right_after_the_hand_over_gives_it_back() -> None:
    given_back: list[int] = []

    async def main() -> None:
        obj = _Taken()
        task = asyncio.ensure_future(
            _aio._take_in_turn(obj, lambda: True, lambda: given_back.append(1), None)
        )
        await asyncio.sleep(0)  # the task queued up and waits for its future
        _aio._turns_of(obj)._tick()  # taken for it: its future has the result...
        task.cancel()  # ...but it is cancelled before it could run
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert given_back == [1]


# ------------------------------------------------------------------------------------------------
# semaphores


@pytest.fixture
def semaphore(make_key: KeyRegistry, key: Any) -> Any:
    key_type = key.type()
    skey = QSystemSemaphore.platformSafeKey(make_key("asem"), key_type)
    make_key.record(skey)
    sem = QSystemSemaphore(skey, 0, QSystemSemaphore.Create)
    assert sem.error() == QSystemSemaphore.NoError, sem.errorString()
    return sem


def test_a_thousand_tasks_await_a_semaphore(semaphore: Any, procs: Any) -> None:
    other = start_agent(procs)
    other(
        "sem = qsharedmem.QSystemSemaphore(qsharedmem.QNativeIpcKey.fromString("
        f"{semaphore.nativeIpcKey().toString()!r}))"
    )

    async def main() -> list[bool]:
        before = threads()
        waits = asyncio.gather(*(semaphore.aacquire() for _ in range(MANY)))
        await asyncio.sleep(0.05)
        assert threads() == before, "no thread for semaphore waiters"
        await asyncio.to_thread(other, f"sem.release({MANY})")
        return await waits

    assert run(main()) == [True] * MANY
    assert semaphore.acquire(0) is False, "every token went to a task"


def test_a_cancelled_aacquire_takes_no_token(semaphore: Any) -> None:
    async def main() -> None:
        task = asyncio.ensure_future(semaphore.aacquire())
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        semaphore.release(1)
        await asyncio.sleep(0.05)
        assert await semaphore.aacquire(timeout=0.05) is True, "the token is still there"
        assert await semaphore.aacquire(timeout=0.05) is False, "timed out"

    run(main())
    assert semaphore.error() == QSystemSemaphore.NoError


def test_watch_queues_belong_to_their_event_loop(shm: Any) -> None:
    # one loop after another (asyncio.run makes a new one each time): each gets a mailbox
    for _ in range(3):
        g = shm.generation()

        async def main(g: int = g) -> bool:
            asyncio.get_running_loop().call_later(0.01, shm.notify_all)
            return await shm.await_changed(g)

        assert run(main()) is True
    assert Path("/proc/self/fd").is_dir()
