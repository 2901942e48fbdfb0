"""The promises of wait/notify under load and under crashes (issue 18's "done when").

* **No notification is ever missed**: a producer and three consumers, 100,000 notifications.
  The protocol makes "exact" provable: the producer writes the counter ``k`` under the lock and
  notifies; every consumer must see every value ``1..N`` in order (it may not see ``k + 1``
  before ``k``, since the producer waits for three acknowledgements of ``k``, an atomic word it
  waits on, before it writes ``k + 1``) and counts them. A lost wake-up could still hide behind
  the 100 ms slices (the waiter would find the change at the end of its slice): so every
  process also reports ``_late_wakeups()``, the waits that found their word changed only when a
  slice ran out, and that must be 0.
* **An idle waiter costs nothing**: its CPU time (``/proc/<pid>/stat``) over 5 s of waiting.
* **A notifier that dies** between bumping the generation and waking (SIGKILL at the
  ``notify:bumped`` test point) still releases its waiter, at the end of the waiter's slice; one
  that dies holding the lock before it notified leaves the waiter to time out cleanly, and the
  lock to report the death.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from qsharedmem import QSharedMemory
from support import HELPERS_DIR
from support.agent import Agent, start_agent
from support.keys import KeyRegistry
from support.notify import cpu_seconds, qkey, sleep_in
from support.processes import child_env

ROUNDS = {"posix": 100_000, "sysv": 10_000}  # System V locks are system calls: fewer rounds
CONSUMERS = 3

PRODUCER = r"""
import struct, sys
from qsharedmem import QNativeIpcKey, QSharedMemory, _qsharedmem
shm = QSharedMemory(QNativeIpcKey.fromString(sys.argv[1]))
assert shm.attach(), shm.errorString()
rounds, consumers = int(sys.argv[2]), int(sys.argv[3])
acks = shm.atomic_u32(8)
print("READY", flush=True)
assert sys.stdin.readline() == "go\n"
for k in range(1, rounds + 1):
    acks.store(0)
    with shm.locked(timeout=60):
        struct.pack_into("<Q", shm.data(), 0, k)
    shm.notify_all()
    while (seen := acks.load()) < consumers:
        assert acks.wait(seen, 60), f"no acknowledgement of {k} within 60 s"
print("DONE", rounds, _qsharedmem._late_wakeups(), flush=True)
"""

CONSUMER = r"""
import struct, sys
from qsharedmem import QNativeIpcKey, QSharedMemory, _qsharedmem
shm = QSharedMemory(QNativeIpcKey.fromString(sys.argv[1]))
assert shm.attach(), shm.errorString()
rounds = int(sys.argv[2])
acks = shm.atomic_u32(8)
print("READY", flush=True)
seen = count = 0
while seen < rounds:
    g = shm.generation()
    with shm.locked(timeout=60):
        now = struct.unpack_from("<Q", shm.data(), 0)[0]
    if now == seen:
        assert shm.wait_changed(g, 60), f"no notification after {seen} within 60 s"
        continue
    assert now == seen + 1, f"skipped from {seen} to {now}"
    seen = now
    count += 1
    acks.add(1)
    acks.wake()
print("DONE", count, _qsharedmem._late_wakeups(), flush=True)
"""


@pytest.mark.parametrize("backend", ["posix", "sysv"])
def test_no_notification_is_missed(make_key: KeyRegistry, procs: Any, backend: str) -> None:
    key = qkey(make_key, backend)
    rounds = ROUNDS[backend]
    shm = QSharedMemory(key)
    assert shm.create(64), shm.errorString()
    args = (key.toString(), str(rounds))
    consumers = [
        procs.start_ready(procs.python("-c", CONSUMER, *args), "READY") for _ in range(CONSUMERS)
    ]
    producer = procs.start_ready(procs.python("-c", PRODUCER, *args, str(CONSUMERS)), "READY")
    producer.send("go\n")
    # The hang guard: generous for a loaded 2-CPU machine; nothing else is timed.
    results = [child.finish(timeout=600) for child in [producer, *consumers]]
    for result in results:
        assert result.returncode == 0, result.stderr
    for result in results:
        done = result.stdout.split()
        assert done[-3:] == ["DONE", str(rounds), "0"], result.stdout[-200:]
    assert shm.detach()
    assert make_key.leftovers() == []


IDLE = 5.0


def test_an_idle_waiter_uses_no_cpu(make_key: KeyRegistry, procs: Any) -> None:
    key = qkey(make_key, "posix")
    shm = QSharedMemory(key)
    assert shm.create(64)
    waiter = start_agent(procs, key)
    assert waiter("shm = QSharedMemory(key); shm.attach()") is True
    sleep_in(waiter, "g = shm.generation(); ready(); shm.wait_changed(g, 120)")
    before, start = cpu_seconds(waiter.pid), time.monotonic()
    time.sleep(IDLE)  # the measurement window, not a synchronisation
    used, elapsed = cpu_seconds(waiter.pid) - before, time.monotonic() - start
    shm.notify()
    assert waiter.result() is True
    # < 1% of a core (the 100 ms slices cost a few microseconds each)
    assert used < 0.01 * elapsed, f"{used:.3f} s of CPU in {elapsed:.1f} s"
    assert shm.detach()


@pytest.mark.parametrize("backend", ["posix", "sysv"])
def test_a_notifier_killed_before_its_wake_up_still_releases_the_waiter(
    make_key: KeyRegistry, procs: Any, backend: str
) -> None:
    key = qkey(make_key, backend)
    shm = QSharedMemory(key)
    assert shm.create(64)
    waiter = start_agent(procs, key)
    assert waiter("shm = QSharedMemory(key); shm.attach()") is True
    env = child_env(QSHAREDMEM_TEST_STOP_AT="notify:bumped")
    notifier = Agent(procs.start(procs.python(_agent_script(), key.toString()), env=env))
    assert notifier("shm = QSharedMemory(key); shm.attach()") is True
    sleep_in(waiter, "g = shm.generation(); ready(); shm.wait_changed(g, 60, spin=0)")
    notifier.send("shm.notify_all()")
    line = notifier.child.wait_for_line(lambda text: text.startswith("qsharedmem-test-stop "))
    assert line.split()[1] == "notify:bumped"
    notifier.kill()  # the generation is bumped, the sleeper was never woken
    assert waiter.result() is True, "the waiter saw the change at the end of its slice"
    assert waiter("qsharedmem._qsharedmem._late_wakeups()") == 1
    assert waiter("shm.detach()") is True
    assert shm.detach()


@pytest.mark.parametrize("backend", ["posix", "sysv"])
def test_a_notifier_killed_holding_the_lock_leaves_waiters_to_time_out(
    make_key: KeyRegistry, procs: Any, backend: str
) -> None:
    key = qkey(make_key, backend)
    shm = QSharedMemory(key)
    assert shm.create(64)
    waiters = [start_agent(procs, key) for _ in range(2)]
    for waiter in waiters:
        assert waiter("shm = QSharedMemory(key); shm.attach()") is True
    notifier = start_agent(procs, key)
    assert notifier("shm = QSharedMemory(key); shm.attach()") is True
    # mid-protocol: half of the update written under the lock, no notify yet
    assert notifier("shm.lock() and struct.pack_into('<I', shm.data(), 0, 1) is None") is True
    for waiter in waiters:
        waiter.send("g = shm.generation(); ready(); shm.wait_changed(g, 1.0)")
        waiter.wait_for_line()
    notifier.kill()
    assert [waiter.result() for waiter in waiters] == [False, False], "timed out, cleanly"
    for waiter in waiters:
        assert waiter("shm.lock(timeout=30), shm.lockOwnerDied(), shm.unlock()")[0] is True
    assert waiters[0]("shm.lock(timeout=30), shm.lockOwnerDied(), shm.unlock()") == (
        True,
        False,
        True,
    )
    assert shm.lock(timeout=30)
    assert shm.unlock()
    for waiter in waiters:
        assert waiter("shm.detach()") is True
    assert shm.detach()
    assert make_key.leftovers() == []


def _agent_script() -> str:
    return str(HELPERS_DIR / "agent.py")
