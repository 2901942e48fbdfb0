"""Crashes at every step: a real SIGKILL injected inside create, attach, detach, lock and unlock.

A victim process (``helpers/agent.py``) runs with ``QSHAREDMEM_TEST_STOP_AT=<step>``: when it
reaches that step, qsharedmem prints a marker and stops it (src/testpoint.rs), and the test
SIGKILLs it right there. Then, for every step of both backends:

* the survivors keep working: this process (still attached, same memory, the lock works, and
  its next lock() reports ``lockOwnerDied()`` exactly when the victim died holding the lock),
  and another live process that attaches, sees the data, locks and detaches;
* once everyone has detached, nothing is left (no file, segment, semaphore or key file);
* the next ``create()`` on the key succeeds.

Each step runs ``REPEATS`` times; there are 30 step scenarios, so 210 kills in all (the issue
asks for at least 200). ``test_lock_holder_killed_while_others_wait`` kills a lock holder while
three other processes are blocked in ``lock()``.
"""

from __future__ import annotations

import dataclasses
import os
import selectors

import pytest
import qsharedmem
from support.agent import Agent, start_agent
from support.keys import KeyRegistry, new_key
from support.processes import ChildProcesses, wait_until_blocked

S = qsharedmem.QSharedMemory
SIZE = 3 * 4096 + 100
REPEATS = 7
LOCK_WAIT = 10.0  # seconds: a bound, so that a bug fails the test instead of hanging it


@dataclasses.dataclass(frozen=True)
class Crash:
    backend: str  # "posix" or "sysv"
    scenario: str  # create | attach | detach-last | detach-shared | lock | unlock
    step: str
    # What the survivor's next lock() must report as lockOwnerDied(); None: either (the victim
    # died holding Qt's semaphore inside create/attach/detach, which is also a dead holder).
    owner_died: bool | None = None

    def __str__(self) -> str:
        return f"{self.backend}-{self.scenario}-{self.step}"


CRASHES = [
    *(Crash("posix", "create", s) for s in ("create:reserved", "create:initialised")),
    Crash("posix", "create", "create:published"),
    *(Crash("posix", "attach", s) for s in ("attach:opened", "attach:counted", "attach:mapped")),
    *(
        Crash("posix", "detach-last", s)
        for s in ("detach:begin", "detach:exclusive", "detach:unlinked")
    ),
    Crash("posix", "detach-shared", "detach:begin"),
    Crash("posix", "lock", "lock:owned", owner_died=True),
    Crash("posix", "lock", "lock:acquired", owner_died=True),
    Crash("posix", "unlock", "unlock:begin", owner_died=True),
    Crash("posix", "unlock", "unlock:semaphore-released", owner_died=True),
    Crash("posix", "unlock", "unlock:released", owner_died=False),
    *(Crash("sysv", "create", s) for s in ("create:locked", "create:segment", "create:attached")),
    *(Crash("sysv", "attach", s) for s in ("attach:locked", "attach:attached")),
    *(
        Crash("sysv", "detach-last", s)
        for s in ("detach:begin", "detach:locked", "detach:unmapped", "detach:removed")
    ),
    *(
        Crash("sysv", "detach-shared", s)
        for s in ("detach:begin", "detach:locked", "detach:unmapped")
    ),
    Crash("sysv", "lock", "lock:acquired", owner_died=True),
    Crash("sysv", "unlock", "unlock:begin", owner_died=True),
    Crash("sysv", "unlock", "unlock:released", owner_died=False),
]


def test_the_kills_add_up_to_at_least_200() -> None:
    assert len(CRASHES) * REPEATS >= 200
    assert {c.backend for c in CRASHES} == {"posix", "sysv"}


def pattern(round_: int, tag: int) -> bytes:
    return bytes([(round_ * 7 + tag + i) % 251 for i in range(16)])


def write(sm, data: bytes, offset: int = 0) -> None:
    sm.data()[offset : offset + len(data)] = data


def read(sm, length: int = 16, offset: int = 0) -> bytes:
    return bytes(sm.constData()[offset : offset + length])


def kill_victim(procs: ChildProcesses, crash: Crash, key_text: str, before: list[list]) -> None:
    """Start a victim, run ``before`` normally, then the operation that stops at the step."""
    victim = start_agent(procs, stop_at=crash.step)
    assert victim.call("key", "h", key_text).r is True
    for command in before:
        reply = victim.call(*command)
        assert reply.r is True, (command, reply)
    operation = {
        "create": ["create", "h", SIZE],
        "attach": ["attach", "h"],
        "detach-last": ["detach", "h"],
        "detach-shared": ["detach", "h"],
        "lock": ["lock", "h", LOCK_WAIT],
        "unlock": ["unlock", "h"],
    }[crash.scenario]
    victim.send_op(*operation)
    victim.wait_stopped(crash.step)
    victim.kill()


def one_round(
    crash: Crash,
    round_: int,
    key,
    make_key: KeyRegistry,
    name: str,
    procs: ChildProcesses,
    peer: Agent,
) -> None:
    key_text = key.toString()
    survivor = S(key)
    if crash.scenario == "create":
        kill_victim(procs, crash, key_text, [])
        # The victim died inside create(): the next create() on the key succeeds.
        assert survivor.create(SIZE), survivor.errorString()
    else:
        assert survivor.create(SIZE), survivor.errorString()
        write(survivor, pattern(round_, 0))
        before = {
            "attach": [],
            "detach-last": [["attach", "h"]],
            "detach-shared": [["attach", "h"]],
            "lock": [["attach", "h"]],
            "unlock": [["attach", "h"], ["lock", "h", LOCK_WAIT]],
        }[crash.scenario]
        if crash.scenario == "detach-last":
            # The victim must be the last one attached.
            victim = start_agent(procs, stop_at=crash.step)
            assert victim.call("key", "h", key_text).r is True
            assert victim.call("attach", "h").r is True
            assert survivor.detach()
            victim.send_op("detach", "h")
            victim.wait_stopped(crash.step)
            victim.kill()
            # Whatever the victim left (an orphan, or nothing): the next create() succeeds.
            assert survivor.create(SIZE), survivor.errorString()
        else:
            kill_victim(procs, crash, key_text, before)
            assert survivor.isAttached()
            assert read(survivor) == pattern(round_, 0), "the survivor lost its memory"

    # The survivor keeps working: same memory, a working lock that reports the dead holder.
    assert survivor.lock(LOCK_WAIT), survivor.errorString()
    if crash.owner_died is not None:
        assert survivor.lockOwnerDied() is crash.owner_died
    write(survivor, pattern(round_, 1))
    assert survivor.unlock()
    assert survivor.lock(LOCK_WAIT), survivor.errorString()
    assert survivor.lockOwnerDied() is False, "owner death must be reported once"
    assert survivor.unlock()

    # Another live process attaches, sees the survivor's memory, locks, and detaches.
    assert peer.call("key", "h", key_text).r is True
    assert peer.call("attach", "h").r is True
    assert peer.call("read", "h", 0, 16).r == pattern(round_, 1).hex()
    assert peer.call("lock", "h", LOCK_WAIT).r is True
    assert peer.call("write", "h", 16, "ab").r is True
    assert peer.call("unlock", "h").r is True
    assert peer.call("detach", "h").r is True
    assert read(survivor, 1, 16) == b"\xab"
    assert peer.call("drop", "h").r is True

    assert survivor.detach()
    del survivor
    assert make_key.leftovers(name) == [], f"round {round_}: left behind"

    # And the key can be created again from scratch.
    again = S(key)
    assert again.create(SIZE), again.errorString()
    assert read(again) == bytes(16), "a new segment starts zeroed"
    assert again.detach()
    assert make_key.leftovers(name) == []


@pytest.mark.parametrize("crash", CRASHES, ids=str)
def test_kill_at_step(crash: Crash, make_key: KeyRegistry, procs: ChildProcesses) -> None:
    name = f"crash-{crash.scenario}"
    key = new_key(qsharedmem, make_key, name, crash.backend)
    peer = start_agent(procs)
    for round_ in range(REPEATS):
        one_round(crash, round_, key, make_key, name, procs, peer)


# ------------------------------------------------------------------------------------------------
# The lock holder killed while others wait in lock()


@pytest.mark.parametrize("backend", ["posix", "sysv"])
def test_lock_holder_killed_while_others_wait(
    backend: str, make_key: KeyRegistry, procs: ChildProcesses
) -> None:
    key = new_key(qsharedmem, make_key, "waiters", backend)
    owner = S(key)
    assert owner.create(64), owner.errorString()
    holder = start_agent(procs)
    waiters = [start_agent(procs) for _ in range(3)]
    for agent in [holder, *waiters]:
        assert agent.call("key", "h", key.toString()).r is True
        assert agent.call("attach", "h").r is True
    assert holder.call("lock", "h").r is True
    for waiter in waiters:
        waiter.send_op("lock", "h", 60)
        waiter.wait_started("lock")
        wait_until_blocked(waiter.pid)
    holder.kill()

    # Exactly one waiter gets the lock with lockOwnerDied() True; after it unlocks, the others
    # get it in turn with False.
    reports: list[bool] = []
    pending = {w.child.proc.stdout.fileno(): w for w in waiters}
    with selectors.DefaultSelector() as selector:
        for fd, waiter in pending.items():
            selector.register(fd, selectors.EVENT_READ, waiter)
        while pending:
            events = selector.select(timeout=30)
            assert events, "no waiter got the lock after its holder was killed"
            waiter = events[0][0].data
            assert waiter.result().r is True
            reports.append(waiter.call("died", "h").r)
            assert waiter.call("unlock", "h").r is True
            selector.unregister(waiter.child.proc.stdout.fileno())
            del pending[waiter.child.proc.stdout.fileno()]
    assert reports.count(True) == 1 and reports[0] is True, reports
    assert owner.lock(LOCK_WAIT) and owner.lockOwnerDied() is False
    assert owner.unlock()
    for waiter in waiters:
        assert waiter.call("detach", "h").r is True
        assert waiter.exit() == 0
    assert owner.detach()
    assert make_key.leftovers(make_key("waiters")) == []


def test_stop_hook_is_inert_when_unset(procs: ChildProcesses, make_key: KeyRegistry) -> None:
    """Without the variable an agent passes every step (this is the default for all tests)."""
    assert "QSHAREDMEM_TEST_STOP_AT" not in os.environ
    key = new_key(qsharedmem, make_key, "inert", "posix")
    agent = start_agent(procs)
    assert agent.call("key", "h", key.toString()).r is True
    for command in (["create", "h", 10], ["lock", "h"], ["unlock", "h"], ["detach", "h"]):
        assert agent.call(*command).r is True
    assert agent.exit() == 0


# ------------------------------------------------------------------------------------------------
# A System V last-detacher check handed to the background thread, in a forked child

REAPER_IN_A_CHILD = r"""
import os, subprocess, sys, time
from qsharedmem import QNativeIpcKey, QSharedMemory
from qsharedmem._qsharedmem import find_segments

HOLD = '''
import sys
from qsharedmem import QNativeIpcKey, QSharedMemory
shm = QSharedMemory(QNativeIpcKey.fromString(sys.argv[1]))
assert shm.attach() and shm.lock()
print("LOCKED", flush=True)
sys.stdin.readline()
'''

def detach_while_another_process_holds_the_lock(key):
    shm = QSharedMemory(key)
    assert shm.create(64)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, key.toString()],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    assert holder.stdout.readline() == "LOCKED\n"
    # Destroyed while the lock is busy: the destructor never blocks, so after a short wait the
    # last-detacher check goes to the background thread.
    del shm
    holder.kill()  # its lock comes back (SEM_UNDO) and its attachment goes
    holder.wait()
    for _ in range(300):
        if not find_segments(key.toString()):
            return "removed"
        time.sleep(0.1)
    return "left behind"

# The parent's background thread first, then a forked child's (which must have its own).
first, second = (QNativeIpcKey.fromString(text) for text in sys.argv[1:3])
print("parent", detach_while_another_process_holds_the_lock(first), flush=True)
pid = os.fork()
if pid == 0:
    print("child", detach_while_another_process_holds_the_lock(second), flush=True)
    os._exit(0)
os.waitpid(pid, 0)
"""


@pytest.mark.parametrize("sysv_type", [0x51, 0x54], ids=["sysv-Q", "sysv-T"])
def test_a_forked_child_finishes_a_deferred_sysv_cleanup(
    procs: ChildProcesses, make_key: KeyRegistry, sysv_type: int
) -> None:
    """A detach that finds the System V lock busy leaves the "was I the last?" check to a
    background thread. A forked child must get a thread of its own (the parent's does not exist
    there), or the segment, its key file and its semaphore stay behind."""
    keys = [
        qsharedmem.QSharedMemory.platformSafeKey(make_key(tag), sysv_type)
        for tag in ("reap1", "reap2")
    ]
    result = procs.run_python(REAPER_IN_A_CHILD, *(key.toString() for key in keys), timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["parent removed", "child removed"]
