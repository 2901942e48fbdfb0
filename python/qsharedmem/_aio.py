"""The asyncio side of qsharedmem: what ``alock()``, ``alocked()``, ``await_changed()``,
``Event.await_set()``, ``AtomicWord.await_changed()`` and ``QSystemSemaphore.aacquire()``
return.

No coroutine here ever blocks the event loop, and none costs a thread:

* **Words** (the notify generation, an event, an atomic word) are watched by one thread per
  process (``qsharedmem-watcher``, in the extension), which sleeps on every awaited word at once
  with ``futex_waitv``. Each event loop has a mailbox (``_WatchQueue``): an ``eventfd`` that the
  loop watches with ``add_reader``, readable when registrations completed. A thousand tasks
  waiting on one segment are a thousand futures and one registration each; no thread.
* **Locks and semaphores** (``alock()``, ``aacquire()``) cannot be slept on portably: the robust
  mutex, Qt's POSIX semaphore and System V semaphores keep their waiters in the C library or the
  kernel, out of reach of ``futex_waitv``. They are tried, without waiting, from the event loop:
  the waiters of one object queue up (first come, first served) and one timer tries for the
  first of them, every 0.5 ms at first, backing off to every 20 ms while the object stays busy.
  A thousand tasks waiting for one semaphore cost one try per tick, not a thousand.

Cancelling a waiting task never leaves anything taken: a lock or a token is taken only in a
synchronous try on the event loop, and handed to a task through its future; a task cancelled
after the hand-over but before it ran gives it back. A timeout is a cancellation that returns
False (``alock``, ``aacquire``, ``await_*``) or raises ``LockTimeoutError`` (``alocked``).
"""

from __future__ import annotations

import asyncio
import collections
import math
import weakref
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from ._errors import LockError

if TYPE_CHECKING:
    from ._qsharedmem import AtomicWord, Event, QSharedMemory, QSystemSemaphore, _WatchQueue

_Handle = TypeVar("_Handle", bound="QSharedMemory")

# The polling of locks and semaphores (see the module documentation).
_FIRST_DELAY = 0.0005
_MAX_DELAY = 0.02


def _check_timeout(timeout: float | None) -> float | None:
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise TypeError(
            f"timeout must be a number of seconds or None, not {type(timeout).__name__}"
        )
    if math.isnan(timeout) or timeout < 0:
        raise ValueError("timeout must be a non-negative number of seconds")
    return None if math.isinf(timeout) else float(timeout)


# -- words: the watcher's mailbox per event loop -----------------------------------------------


class _Mailbox:
    """One event loop's mailbox of the watcher thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        from ._qsharedmem import _WatchQueue

        self._queue: _WatchQueue = _WatchQueue()
        self._futures: dict[int, asyncio.Future[None]] = {}
        self._loop = loop
        loop.add_reader(self._queue.fileno(), self._drain)

    @property
    def queue(self) -> _WatchQueue:
        return self._queue

    def _drain(self) -> None:
        for registration in self._queue.take():
            future = self._futures.pop(registration, None)
            if future is not None and not future.done():
                future.set_result(None)

    def future(self, registration: int) -> asyncio.Future[None]:
        future: asyncio.Future[None] = self._loop.create_future()
        self._futures[registration] = future
        return future

    def forget(self, registration: int) -> None:
        self._queue.cancel(registration)
        self._futures.pop(registration, None)


_mailboxes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Mailbox] = (
    weakref.WeakKeyDictionary()
)


def _mailbox() -> _Mailbox:
    loop = asyncio.get_running_loop()
    mailbox = _mailboxes.get(loop)
    if mailbox is None or mailbox._loop.is_closed():
        mailbox = _mailboxes[loop] = _Mailbox(loop)
    return mailbox


async def _await_word(
    done: Callable[[], bool], register: Callable[[_WatchQueue], int], timeout: float | None
) -> bool:
    """Waits until ``done()``: registers with the watcher, awaits its word, looks again."""
    timeout = _check_timeout(timeout)
    if done():
        return True
    if timeout == 0:
        return False
    mailbox = _mailbox()
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    while True:
        registration = register(mailbox.queue)
        future = mailbox.future(registration)
        try:
            async with asyncio.timeout_at(deadline):
                await future
        except TimeoutError:
            return done()
        finally:
            mailbox.forget(registration)
        if done():
            return True


async def await_changed(shm: QSharedMemory, generation: int, timeout: float | None) -> bool:
    """``QSharedMemory.await_changed()``."""
    if not 0 <= generation < 2**32:
        raise OverflowError("generation must be an int from 0 to 2**32 - 1")
    return await _await_word(
        lambda: shm.generation() != generation,
        lambda queue: queue.watch_generation(shm, generation),
        timeout,
    )


async def await_set(event: Event, timeout: float | None) -> bool:
    """``Event.await_set()``."""
    token = event._token()
    return await _await_word(
        lambda: event._set_since(token),
        lambda queue: queue.watch_event(event, token),
        timeout,
    )


async def await_word(word: AtomicWord, expected: int, timeout: float | None) -> bool:
    """``AtomicWord.await_changed()``."""
    return await _await_word(
        lambda: word.load() != expected,
        lambda queue: queue.watch_word(word, expected),
        timeout,
    )


# -- locks and semaphores: polled for the first waiter ------------------------------------------


class _Turns:
    """The waiters for one object in one event loop, first come first served; one timer tries
    ``attempt(obj)`` for the first of them."""

    def __init__(self, loop: asyncio.AbstractEventLoop, obj: object) -> None:
        self._loop = loop
        self._obj = weakref.ref(obj)
        self._waiting: collections.deque[tuple[asyncio.Future[bool], Callable[[], bool]]] = (
            collections.deque()
        )
        self._timer: asyncio.Handle | None = None
        self._delay = _FIRST_DELAY

    def wait(self, attempt: Callable[[], bool]) -> asyncio.Future[bool]:
        future: asyncio.Future[bool] = self._loop.create_future()
        self._waiting.append((future, attempt))
        if self._timer is None:
            self._delay = _FIRST_DELAY
            self._timer = self._loop.call_later(_FIRST_DELAY, self._tick)
        return future

    def _tick(self) -> None:
        self._timer = None
        while self._waiting:
            future, attempt = self._waiting[0]
            if future.done():  # cancelled, or timed out
                self._waiting.popleft()
                continue
            try:
                taken = attempt()
            except BaseException as error:  # an unusable lock: that waiter gets the error
                self._waiting.popleft()
                future.set_exception(error)
                continue
            if not taken:
                break
            self._waiting.popleft()
            future.set_result(True)
            self._delay = _FIRST_DELAY
        if self._waiting:
            self._timer = self._loop.call_later(self._delay, self._tick)
            self._delay = min(self._delay * 2, _MAX_DELAY)


_turns: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, weakref.WeakKeyDictionary[object, _Turns]
] = weakref.WeakKeyDictionary()


def _turns_of(obj: object) -> _Turns:
    loop = asyncio.get_running_loop()
    by_object = _turns.get(loop)
    if by_object is None:
        by_object = _turns[loop] = weakref.WeakKeyDictionary()
    turns = by_object.get(obj)
    if turns is None:
        turns = by_object[obj] = _Turns(loop, obj)
    return turns


async def _take_in_turn(
    obj: object,
    attempt: Callable[[], bool],
    give_back: Callable[[], object],
    timeout: float | None,
) -> bool:
    """Waits for the turn of this task to take ``obj`` (``attempt`` takes it without waiting);
    True once taken, False on timeout. Cancelled, it leaves nothing taken."""
    future = _turns_of(obj).wait(attempt)
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    try:
        async with asyncio.timeout_at(deadline):
            return await future
    except TimeoutError:
        if future.done() and not future.cancelled() and future.exception() is None:
            return True  # taken at the very moment the time ran out: keep it
        future.cancel()
        return False
    except BaseException:
        if future.done() and not future.cancelled() and future.exception() is None:
            give_back()  # handed over, but this task was cancelled before it could run
        future.cancel()
        raise


def _lock_attempt(shm: QSharedMemory, record_busy: bool = False) -> bool:
    taken = shm._try_lock(record_busy)
    if taken is None:
        raise shm._exception() or LockError(None, "QSharedMemory::lock: unable to lock")
    return taken


async def alock(shm: QSharedMemory, timeout: float | None) -> bool:
    """``QSharedMemory.alock()``: ``lock()`` for asyncio. False (and ``error()``) on timeout or
    if the lock cannot be taken, like ``lock()``."""
    timeout = _check_timeout(timeout)
    try:
        if _lock_attempt(shm, record_busy=timeout == 0):
            return True
        if timeout == 0:
            return False
        if await _take_in_turn(shm, lambda: _lock_attempt(shm), shm.unlock, timeout):
            return True
        # Timed out: one last try, which records lock()'s time-out error if still busy.
        return _lock_attempt(shm, record_busy=True)
    except LockError:
        return False


class _ALocked:
    """``async with shm.alocked(timeout=None):`` (see ``QSharedMemory.alocked``)."""

    __slots__ = ("_shm", "_timeout")

    def __init__(self, shm: QSharedMemory, timeout: float | None) -> None:
        self._shm = shm
        self._timeout = _check_timeout(timeout)

    async def __aenter__(self) -> Any:
        shm = self._shm
        if not await alock(shm, self._timeout):
            raise shm._exception() or LockError(None, "QSharedMemory::lock: unable to lock")
        return shm

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._shm.unlock()


def alocked(shm: QSharedMemory, timeout: float | None) -> _ALocked:
    """``QSharedMemory.alocked()``."""
    return _ALocked(shm, timeout)


async def aacquire(sem: QSystemSemaphore, timeout: float | None) -> bool:
    """``QSystemSemaphore.aacquire()``: ``acquire()`` for asyncio. True once a token is taken,
    False on timeout (``NoError``) or if the semaphore is unusable (``error()`` says why)."""
    timeout = _check_timeout(timeout)

    def attempt() -> bool:
        return sem._try_acquire()

    if attempt():
        return True
    if timeout == 0 or sem.error() != 0:
        return False
    return await _take_in_turn(sem, attempt, lambda: sem.release(1), timeout)
