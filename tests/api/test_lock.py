"""The cross-process lock (SPEC §5, issue 2): exclusion, crashed holders, GIL, timeouts, Ctrl-C.

Every test runs for each key type (POSIX: the robust mutex in the control page; SystemV-Q and
SystemV-T: Qt's SEM_UNDO semaphore with qsharedmem's consistent token) against qsharedmem. Peers
are real processes (``helpers/agent.py``); a crashed holder is a real SIGKILL. The handshake for
"a peer is now waiting" is the ``READY`` line the peer prints right before it calls ``lock()``;
timeouts are hang guards only, nothing asserts a duration.
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from typing import Any

import pytest
import qsharedmem
from support.agent import Agent, start_agent
from support.impls import Impl, qsharedmem_only
from support.ipc import segment_exists
from support.keys import KeyRegistry

TIMEOUT = 60.0


impl, key = qsharedmem_only("lock")


@pytest.fixture
def shm(impl: Impl, key: Any) -> Any:
    """This process's handle: the creator of a 4096-byte segment."""
    handle = impl.QSharedMemory(key)
    assert handle.create(4096), handle.errorString()
    yield handle
    handle.detach()


def attached_agent(procs: Any, key: Any) -> Agent:
    agent = start_agent(procs, key)
    assert agent("shm = QSharedMemory(key); shm.attach()") is True
    return agent


def wait_until_blocked(pid: int, timeout: float = TIMEOUT) -> None:
    """Wait until process ``pid``'s main thread sleeps in the kernel (e.g. in a lock wait).

    Called after the READY handshake: the process has nothing else to sleep on then, so state
    'S' means it is inside lock()'s wait. This is a poll of the OS, not a timed sleep.
    """
    stat = Path(f"/proc/{pid}/stat")
    event = threading.Event()
    for _ in range(int(timeout / 0.001)):
        state = stat.read_text().rpartition(")")[2].split()[0]
        if state == "S":
            return
        event.wait(0.001)
    pytest.fail(f"process {pid} never blocked")


def wait_until_thread_blocked(pid: int, only: int | None = None, timeout: float = TIMEOUT) -> None:
    """Wait until the threads of process ``pid`` other than its main thread (or just the thread
    ``only``) sleep in the kernel (the programs that use this have one other thread: the one
    waiting in lock())."""
    tasks = Path(f"/proc/{pid}/task")
    event = threading.Event()
    for _ in range(int(timeout / 0.001)):
        states = [
            (task / "stat").read_text().rpartition(")")[2].split()[0]
            for task in tasks.iterdir()
            if (task.name == str(only) if only is not None else task.name != str(pid))
        ]
        if states and all(state == "S" for state in states):
            return
        event.wait(0.001)
    pytest.fail(f"no thread of process {pid} blocked")


# ------------------------------------------------------------------------------------------------
# mutual exclusion

INCREMENTER = r"""
import os, sys
from qsharedmem import QNativeIpcKey, QSharedMemory

shm = QSharedMemory(QNativeIpcKey.fromString(sys.argv[1]))
assert shm.attach(), shm.errorString()
counter = shm.data().cast("Q")
print("READY", flush=True)
assert sys.stdin.readline() == "go\n"
for _ in range(int(sys.argv[2])):
    assert shm.lock(), shm.errorString()
    value = counter[0]
    os.sched_yield()  # a deliberate window between the read and the write
    counter[0] = value + 1
    assert shm.unlock(), shm.errorString()
counter.release()
assert shm.detach()
print("DONE", flush=True)
"""


def test_locked_increments_from_many_processes_add_up(
    shm: Any, procs: Any, key: Any, make_key: KeyRegistry
) -> None:
    processes, increments = 4, 2000
    workers = [
        procs.start_ready(procs.python("-c", INCREMENTER, key.toString(), str(increments)), "READY")
        for _ in range(processes)
    ]
    for worker in workers:  # all attached: start together
        worker.send("go\n")
    for worker in workers:
        result = worker.finish(timeout=TIMEOUT * 4)
        assert result.returncode == 0, result
        assert "DONE" in result.stdout
    assert shm.data().cast("Q")[0] == processes * increments


# ------------------------------------------------------------------------------------------------
# a holder that dies


def test_holder_killed_mid_lock_does_not_block_the_others(shm: Any, procs: Any, key: Any) -> None:
    holder = attached_agent(procs, key)
    waiters = [attached_agent(procs, key) for _ in range(2)]
    assert holder("shm.lock()") is True
    holder("shm.data()[:4] = b'torn'")  # ... and never finishes the update

    take_and_release = (
        "ready()\n"
        "locked = shm.lock()\n"
        "died = shm.lockOwnerDied()\n"
        "(locked, died, shm.unlock(), bytes(shm.constData()[:4]))"
    )
    for waiter in waiters:
        waiter.send(take_and_release)
        waiter.wait_for_line()
        wait_until_blocked(waiter.pid)

    holder.kill()
    results = [waiter.result(timeout=TIMEOUT) for waiter in waiters]
    # both get the lock; exactly one of them is told that the previous holder died
    assert sorted(results) == [(True, False, True, b"torn"), (True, True, True, b"torn")]

    # the lock is consistent again: the next lock() reports no death, in every process
    for waiter in waiters:
        assert waiter("(shm.lock(), shm.lockOwnerDied(), shm.unlock())") == (True, False, True)
    assert shm.lock(timeout=TIMEOUT)
    assert not shm.lockOwnerDied()
    assert shm.unlock()


def test_lock_owner_died_is_reported_once(shm: Any, procs: Any, key: Any) -> None:
    holder = attached_agent(procs, key)
    assert holder("shm.lock()") is True
    holder.kill()

    assert shm.lock(timeout=TIMEOUT)  # returns: the dead holder does not block
    assert shm.lockOwnerDied()
    assert shm.lockOwnerDied()  # it describes the last lock(): asking again does not change it
    assert shm.unlock()
    assert shm.lock(timeout=TIMEOUT)
    assert not shm.lockOwnerDied()
    assert shm.unlock()


def test_detach_while_another_thread_waits_in_lock_does_not_deadlock(
    impl: Impl, key: Any, procs: Any
) -> None:
    """One thread waits in lock() while another detaches the same handle (which, for System
    V, locks internally). Neither may wait for the other forever."""
    shm = impl.QSharedMemory(key)
    assert shm.create(64)
    holder = attached_agent(procs, key)
    assert holder("shm.lock()") is True
    results: dict[str, Any] = {}

    def lock_then_unlock() -> None:
        results["lock"] = shm.lock(timeout=TIMEOUT)
        results["unlock"] = shm.unlock()

    locker = threading.Thread(target=lock_then_unlock)
    locker.start()
    wait_until_thread_blocked(os.getpid(), only=locker.native_id)
    detacher = threading.Thread(target=lambda: results.update(detach=shm.detach()))
    detacher.start()
    assert holder("shm.unlock()") is True
    locker.join(TIMEOUT)
    detacher.join(TIMEOUT)
    assert not locker.is_alive() and not detacher.is_alive(), "deadlock"
    assert results["detach"] is True
    # Either order is right: the lock first (then the detach waited for the unlock) or the
    # detach first (POSIX: no lock without the segment; System V: Qt's lock works on a
    # detached handle).
    assert results["unlock"] is results["lock"]
    assert holder("shm.detach()") is True


@pytest.mark.parametrize("bystander", ["attach+detach", "attach after the death"])
def test_lock_owner_died_survives_other_processes_attaching_and_detaching(
    impl: Impl, shm: Any, procs: Any, key: Any, bystander: str
) -> None:
    """System V attach()/detach() take the lock internally; taking it from a dead holder must
    leave the death for the next lock() to report, not swallow it."""
    holder = attached_agent(procs, key)
    assert holder("shm.lock()") is True
    holder.kill()
    other = attached_agent(procs, key)
    if bystander == "attach+detach":
        assert other("shm.detach()") is True
        assert shm.lock(timeout=TIMEOUT)
        assert shm.lockOwnerDied()
    else:
        # the process that attached after the death is the one to hear of it
        assert other(f"shm.lock(timeout={TIMEOUT})") is True
        assert other("shm.lockOwnerDied()") is True
        assert other("shm.unlock()") is True
        assert shm.lock(timeout=TIMEOUT)
        assert not shm.lockOwnerDied()
    assert shm.unlock()


# ------------------------------------------------------------------------------------------------
# waiting


def test_other_python_threads_run_while_lock_waits(shm: Any, procs: Any, key: Any) -> None:
    holder = attached_agent(procs, key)
    assert holder("shm.lock()") is True

    rounds = 200
    progress: dict[str, Any] = {"iterations": 0, "released": False}
    main_is_locking = threading.Event()

    def other_thread() -> None:
        main_is_locking.wait(TIMEOUT)
        # Each iteration needs the GIL (and a round trip to the holder): if lock() kept the GIL
        # while waiting, this loop would stall and the holder would never be told to unlock.
        for _ in range(rounds):
            assert holder("1") == 1
            progress["iterations"] += 1
        progress["released"] = holder("shm.unlock()")

    thread = threading.Thread(target=other_thread)
    thread.start()
    try:
        main_is_locking.set()
        locked = shm.lock(timeout=TIMEOUT)
        iterations_when_locked = progress["iterations"]
    finally:
        thread.join(TIMEOUT)
    assert locked, shm.errorString()
    assert iterations_when_locked == rounds
    assert progress["released"] is True
    assert shm.unlock()


def test_lock_timeout_on_a_held_lock_returns_false_with_lock_error(
    impl: Impl, shm: Any, procs: Any, key: Any
) -> None:
    holder = attached_agent(procs, key)
    assert holder("shm.lock()") is True

    for timeout in (0.1, 0):
        assert shm.lock(timeout=timeout) is False
        assert shm.error() == impl.QSharedMemory.LockError
        assert "unable to lock" in shm.errorString()
    assert "timed out" in shm.errorString()

    assert holder("shm.unlock()") is True
    assert shm.lock(timeout=0.1) is True
    assert shm.unlock()


def test_locked_context_raises_lock_timeout_error_when_held_elsewhere(
    impl: Impl, shm: Any, procs: Any, key: Any
) -> None:
    holder = attached_agent(procs, key)
    assert holder("shm.lock()") is True

    entered = False
    with pytest.raises(qsharedmem.LockTimeoutError) as info, shm.locked(timeout=0.1):
        entered = True
    assert not entered
    assert isinstance(info.value, TimeoutError)
    assert isinstance(info.value, qsharedmem.LockError)
    assert info.value.qt_error == impl.QSharedMemory.LockError
    assert "timed out" in str(info.value)
    assert shm.error() == impl.QSharedMemory.LockError

    assert holder("shm.unlock()") is True
    with shm.locked(timeout=TIMEOUT):
        entered = True
    assert entered
    # the block released the lock: the other process can take it at once
    assert holder("(shm.lock(timeout=0), shm.unlock())") == (True, True)


SIGINT_CHILD = r"""
import sys
from qsharedmem import QNativeIpcKey, QSharedMemory

shm = QSharedMemory(QNativeIpcKey.fromString(sys.argv[1]))
assert shm.attach()
print("ATTACHED", flush=True)
assert sys.stdin.readline() == "go\n"
print("READY", flush=True)
try:
    shm.lock()
except KeyboardInterrupt:
    print("KeyboardInterrupt", flush=True)
else:
    print("locked?!", flush=True)
# consistent afterwards: this handle does not hold the lock...
print("unlock:", shm.unlock(), flush=True)
# ...and gets it normally once the holder lets go
assert sys.stdin.readline() == "released\n"
print("lock:", shm.lock(timeout=60), shm.lockOwnerDied(), flush=True)
print("unlock:", shm.unlock(), flush=True)
print("detach:", shm.detach(), flush=True)
"""


def test_ctrl_c_interrupts_a_waiting_lock(shm: Any, procs: Any, key: Any) -> None:
    # attach first: a System V attach() itself waits for the lock (as in Qt)
    child = procs.start_ready(procs.python("-c", SIGINT_CHILD, key.toString()), "ATTACHED")
    assert shm.lock()
    child.send("go\n")
    child.wait_for_line("READY", timeout=TIMEOUT)
    wait_until_blocked(child.pid)
    child.proc.send_signal(signal.SIGINT)
    assert child.wait_for_line(lambda line: line != "", timeout=TIMEOUT) == "KeyboardInterrupt"
    assert child.wait_for_line(timeout=TIMEOUT) == "unlock: False"
    # the lock is still ours and works normally
    assert shm.lock()
    assert shm.unlock()
    child.send("released\n")
    result = child.finish(timeout=TIMEOUT)
    assert result.returncode == 0, result
    assert result.stdout.splitlines()[-3:] == ["lock: True False", "unlock: True", "detach: True"]


# ------------------------------------------------------------------------------------------------
# misuse that would hang or corrupt in Qt


def test_relock_through_a_second_handle_on_one_thread_fails_instead_of_hanging(
    impl: Impl, shm: Any, key: Any
) -> None:
    second = impl.QSharedMemory(key)
    assert second.attach()
    assert shm.lock()
    assert second.lock() is False  # Qt: waits for itself forever
    assert second.error() == impl.QSharedMemory.LockError
    assert "already holds the lock" in second.errorString()
    assert second.lock(timeout=0.1) is False
    assert shm.unlock()
    assert second.lock(timeout=TIMEOUT) is True
    assert second.unlock()
    assert second.detach()


def test_attach_and_detach_through_a_second_handle_while_this_thread_holds_the_lock(
    impl: Impl, shm: Any, key: Any, procs: Any
) -> None:
    # System V runs attach() and detach() under the lock (as Qt does); the thread already holds
    # it through the first handle, so they proceed instead of failing (or, in Qt, hanging).
    second = impl.QSharedMemory(key)
    assert shm.lock()
    assert second.attach(), second.errorString()
    second.data()[:6] = b"second"
    assert second.detach()
    assert not second.isAttached()
    assert segment_exists(key)  # the first handle is still attached
    assert bytes(shm.constData()[:6]) == b"second"
    assert shm.unlock()
    # the lock works normally afterwards, also for other processes
    peer = attached_agent(procs, key)
    assert peer("(shm.lock(timeout=0), shm.lockOwnerDied(), shm.unlock())") == (True, False, True)


def test_detach_while_locked_releases_the_lock(shm: Any, procs: Any, key: Any) -> None:
    peer = attached_agent(procs, key)
    assert shm.lock()
    assert shm.detach()
    assert not shm.isAttached()
    assert shm.unlock() is False  # nothing held any more
    assert peer("(shm.lock(timeout=0), shm.lockOwnerDied(), shm.unlock())") == (True, False, True)

    # the other way round: the peer locks and detaches, this process gets the lock
    assert shm.attach()
    assert peer("(shm.lock(), shm.detach())") == (True, True)
    assert shm.lock(timeout=0) is True
    assert not shm.lockOwnerDied()
    assert shm.unlock()


def test_unlock_from_another_thread_fails_with_lock_error(impl: Impl, shm: Any) -> None:
    assert shm.lock()
    outcome: list[Any] = []

    def other_thread() -> None:
        outcome.append((shm.unlock(), shm.error(), shm.errorString()))

    thread = threading.Thread(target=other_thread)
    thread.start()
    thread.join(TIMEOUT)
    unlocked, error, text = outcome[0]
    assert unlocked is False
    assert error == impl.QSharedMemory.LockError
    assert "another thread" in text
    # still held by this thread, which can unlock it
    assert shm.unlock() is True
    assert shm.unlock() is False


def test_locked_context_without_a_lock_raises_lock_error(impl: Impl, key: Any) -> None:
    shm = impl.QSharedMemory(key)  # never created nor attached: there is no lock to take
    entered = False
    with pytest.raises(qsharedmem.LockError) as info, shm.locked(timeout=TIMEOUT):
        entered = True
    assert not entered
    assert not isinstance(info.value, TimeoutError)
    assert info.value.qt_error == impl.QSharedMemory.LockError
    assert str(info.value) == "QSharedMemory::lock: unable to lock"


# A child program: the worker thread takes the lock of segment 1; the main thread detaches or
# drops that handle; then the worker locks segment 2 (glibc's robust list of the worker still
# links segment 1's mutex: if its page were unmapped, this lock would crash the process).
OTHER_THREAD_HOLDS = r"""
import gc, sys, threading
from qsharedmem import QNativeIpcKey, QSharedMemory
first, second = (QNativeIpcKey.fromString(text) for text in sys.argv[1:3])
how = sys.argv[3]
a = QSharedMemory(first); assert a.create(64)
b = QSharedMemory(second); assert b.create(64)
locked, went = threading.Event(), threading.Event()
def worker():
    assert a.lock()
    locked.set(); went.wait()
    assert b.lock() and b.unlock()
    print("worker locked and unlocked another segment", flush=True)
    if how == "detach":
        assert a.unlock() and a.detach()
t = threading.Thread(target=worker)
t.start(); locked.wait()
if how == "detach":
    print("detach", a.detach(), a.error().name, a.errorString(), flush=True)
else:
    del a; gc.collect()
    print("dropped", flush=True)
went.set(); t.join()
assert b.detach()
print("done", flush=True)
"""


@pytest.mark.parametrize("how", ["detach", "drop"])
def test_detach_or_drop_while_another_thread_holds_the_lock(
    impl: Impl, key_type: Any, make_key: KeyRegistry, procs: Any, how: str
) -> None:
    """detach() from another thread than the holder is refused (as unlock() is); destroying the
    handle there leaves the memory mapped for the holder, so the process survives and, once it
    exits, nothing is left."""
    first = impl.QSharedMemory.platformSafeKey(make_key("held1"), key_type)
    second = impl.QSharedMemory.platformSafeKey(make_key("held2"), key_type)
    result = procs.run_python(
        OTHER_THREAD_HOLDS, first.toString(), second.toString(), how, timeout=TIMEOUT
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    if how == "detach":
        assert lines[0] == (
            "detach False LockError "
            "QSharedMemory::detach: unable to detach (locked by another thread)"
        )
    else:
        assert lines[0] == "dropped"
    assert lines[1:] == ["worker locked and unlocked another segment", "done"]
    assert not segment_exists(first)
    assert not segment_exists(second)


FORK_WHILE_A_THREAD_WAITS = r"""
import os, sys, threading
from qsharedmem import QNativeIpcKey, QSharedMemory
key = QNativeIpcKey.fromString(sys.argv[1])
holder = QSharedMemory(key); assert holder.create(64)
assert holder.lock()
shm = QSharedMemory(key); assert shm.attach()
waiting = threading.Thread(target=lambda: (shm.lock(), shm.unlock()))
waiting.start()
print("WAITING", flush=True)
sys.stdin.readline()  # the test sends a line once the thread sleeps in lock()
pid = os.fork()
if pid == 0:
    # The thread that waits does not exist here; the handle must still work.
    print("child", shm.size(), shm.lock(timeout=0), shm.errorString() != "", flush=True)
    os._exit(0)
_, status = os.waitpid(pid, 0)
holder.unlock(); waiting.join()
assert shm.detach() and holder.detach()
print("parent", os.waitstatus_to_exitcode(status), flush=True)
"""


def test_fork_while_another_thread_waits_in_lock(
    impl: Impl, key_type: Any, make_key: KeyRegistry, procs: Any
) -> None:
    """A thread waiting in lock() does not hold the handle: a child forked meanwhile can use it
    (it used to hang on the handle's mutex, locked forever by a thread the child lacks)."""
    key = impl.QSharedMemory.platformSafeKey(make_key("forkwait"), key_type)
    argv = procs.python("-c", FORK_WHILE_A_THREAD_WAITS, key.toString())
    child = procs.start_ready(argv, "WAITING")
    wait_until_thread_blocked(child.pid)
    child.send("go\n")
    assert child.wait_for_line() == "child 64 False True"
    assert child.wait_for_line() == "parent 0"
    assert child.finish(TIMEOUT).returncode == 0
    assert not segment_exists(key)


@pytest.mark.parametrize("lock_first", [False, True], ids=["create-then-lock", "lock-then-create"])
def test_a_handle_that_outlives_its_segment_locks_the_new_one_after_a_dead_holder(
    procs: Any, make_key: KeyRegistry, lock_first: bool
) -> None:
    """A POSIX segment's last detacher unlinks Qt's semaphore with it. A holder killed with the
    lock left that semaphore at 0; the handle that detached last and creates the key again
    must lock the semaphore that now has the name, not the unlinked one it kept (found by the
    stateful test: lock(0) failed on a brand-new segment)."""
    S = qsharedmem.QSharedMemory
    key = S.platformSafeKey(make_key("outlived"))
    shm = S(key)
    assert shm.create(16), shm.errorString()
    holder = start_agent(procs, key)
    assert holder("shm = QSharedMemory(key); shm.attach(QSharedMemory.AccessMode.ReadOnly)")
    assert holder("shm.lock(5)") is True
    holder.kill()
    assert shm.detach()
    assert make_key.leftovers() == []  # the segment, its sidecar and the semaphore went
    if lock_first:
        assert shm.lock(timeout=0), shm.errorString()
        assert shm.create(16), shm.errorString()
    else:
        assert shm.create(16), shm.errorString()
        assert shm.lock(timeout=0), shm.errorString()
    assert not shm.lockOwnerDied()  # a new segment: the old death is not its news
    peer = S(key)
    assert peer.attach(), peer.errorString()
    assert not peer.lock(timeout=0)  # the lock is really held: the peer is shut out
    assert shm.unlock()
    assert peer.lock(timeout=0), peer.errorString()
    assert peer.unlock()
    assert peer.detach()
    assert shm.detach()
    del shm, peer
    assert make_key.leftovers() == []
