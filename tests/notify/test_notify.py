"""Wait and notify, events and atomic words across processes (issue 18).

Every test runs for POSIX and System V keys: the notify words live in a POSIX segment's
control block, and in a System V segment's notify block (``/dev/shm/qsm-sysv-<shmid>.qsm``).
Peers are real processes (``helpers/agent.py``); a process is known to be asleep in a wait when
``/proc`` says so after its READY handshake. Nothing asserts a duration.
"""

from __future__ import annotations

import stat
import struct
import subprocess
import sys
from typing import Any

import pytest
import qsharedmem
from qsharedmem import QSharedMemory
from support import HELPERS_DIR
from support.agent import Agent, AgentError, start_agent
from support.ipc import DEV_SHM, sysv_segment
from support.keys import KeyRegistry
from support.notify import (
    TIMEOUT,
    interrupt_wait,
    notify_block,
    qkey,
    sleep_in,
    wait_until_sleeping,
)
from support.processes import child_env

BACKENDS = ["posix", "sysv"]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def key(make_key: KeyRegistry, backend: str) -> Any:
    return qkey(make_key, backend)


def attached_agent(procs: Any, key: Any, mode: str = "") -> Agent:
    agent = start_agent(procs, key)
    assert agent(f"shm = QSharedMemory(key); shm.attach({mode})") is True
    return agent


def segment_info(key: Any) -> dict[str, Any]:
    (info,) = qsharedmem._qsharedmem.find_segments(key.toString())
    return dict(info)


# ------------------------------------------------------------------------------------------------
# the generation


def test_generation_counts_notifications_and_a_stale_one_returns_at_once(shm: Any) -> None:
    g = shm.generation()
    assert shm.wait_changed(g, 0) is False
    assert shm.wait_changed(g, 0.01) is False  # times out cleanly
    assert shm.notify() == 0  # nobody asleep: no wake-up call
    assert shm.generation() == (g + 1) % 2**32
    assert shm.wait_changed(g) is True  # changed since g: at once, no timeout needed
    assert shm.notify_all() == 0
    assert shm.generation() == (g + 2) % 2**32
    with pytest.raises(OverflowError):
        shm.wait_changed(-1)
    with pytest.raises(ValueError, match="non-negative"):
        shm.wait_changed(g, -1)


def test_a_sleeping_waiter_in_another_process_is_woken(shm: Any, key: Any, procs: Any) -> None:
    agent = attached_agent(procs, key)
    sleep_in(agent, "g = shm.generation(); ready(); shm.wait_changed(g, 60)")
    assert segment_info(key)["notify_waiters"] == 1
    assert shm.notify() == 1
    assert agent.result() is True
    assert segment_info(key)["notify_waiters"] == 0
    assert agent("qsharedmem._qsharedmem._late_wakeups()") == 0


def test_notify_wakes_one_and_notify_all_wakes_the_others(shm: Any, key: Any, procs: Any) -> None:
    agents = [attached_agent(procs, key) for _ in range(3)]
    g = shm.generation()
    for agent in agents:
        # spin=0: straight to sleep, so that exactly three sleep
        agent.send(f"ready(); shm.wait_changed({g}, 60, spin=0)")
        agent.wait_for_line()
    for agent in agents:
        wait_until_sleeping(agent.pid)
    assert segment_info(key)["notify_waiters"] == 3
    assert shm.notify() == 1
    # the two still asleep, unless their slice ended in between and they saw the change
    woken = shm.notify_all()
    assert woken <= 2
    assert [agent.result() for agent in agents] == [True, True, True]


def test_ctrl_c_interrupts_a_wait(shm: Any, key: Any, procs: Any) -> None:
    agent = attached_agent(procs, key)
    interrupt_wait(agent, "g = shm.generation(); ready(); shm.wait_changed(g)")
    assert segment_info(key)["notify_waiters"] == 0, "the waiter counted itself out"
    # the handle works on
    assert agent("shm.wait_changed(shm.generation(), 0)") is False


def test_a_read_only_attachment_waits_and_notifies(shm: Any, key: Any, procs: Any) -> None:
    agent = attached_agent(procs, key, "QSharedMemory.ReadOnly")
    sleep_in(agent, "g = shm.generation(); ready(); shm.wait_changed(g, 60)")
    shm.notify_all()
    assert agent.result() is True
    g = shm.generation()
    assert agent("shm.notify_all()") == 0
    assert shm.wait_changed(g, 0) is True


def test_a_detached_handle_refuses_with_not_found(key: Any) -> None:
    shm = QSharedMemory(key)
    with pytest.raises(qsharedmem.NotFoundError, match="not attached"):
        shm.generation()
    with pytest.raises(qsharedmem.NotFoundError):
        shm.event("x")
    with pytest.raises(qsharedmem.NotFoundError):
        shm.atomic_u32(0)


# ------------------------------------------------------------------------------------------------
# events


def test_events_by_name_and_by_index(shm: Any, key: Any, procs: Any) -> None:
    ready = shm.event("ready")
    assert (ready.index, ready.name, ready.is_set()) == (0, "ready", False)
    agent = attached_agent(procs, key)
    assert agent("e = shm.event('ready'); (e.index, e.name)") == (0, "ready")
    numbered = shm.event(5)
    assert (numbered.index, numbered.name) == (5, None)
    assert shm.event("done").index == 1
    assert ready.set() is True
    assert ready.set() is False
    assert agent("e.is_set()") is True
    assert agent("e.clear()") is True
    assert ready.is_set() is False
    assert repr(ready) == '<qsharedmem.Event "ready" clear>'
    assert shm.event(0).name == "ready", "an index is the slot, whatever its name"
    assert shm.event("é" * 24).index == 2  # 48 bytes of UTF-8
    for bad in ("", "x" * 49, "é" * 25):
        with pytest.raises(ValueError, match="1 to 48 bytes"):
            shm.event(bad)
    for bad_index in (-1, 32):
        with pytest.raises(ValueError, match="out of range"):
            shm.event(bad_index)
    for wrong in (True, 1.5, None, b"ready"):
        with pytest.raises(TypeError):
            shm.event(wrong)


def test_the_event_table_fills_up(shm: Any) -> None:
    for i in range(32):
        assert shm.event(f"e{i}").index == i
    assert shm.event("e7").index == 7
    with pytest.raises(qsharedmem.OutOfResourcesError, match="all 32 events"):
        shm.event("one too many")


def test_an_event_wakes_waiters_in_other_processes(shm: Any, key: Any, procs: Any) -> None:
    agents = [attached_agent(procs, key) for _ in range(2)]
    event = shm.event("go")
    for agent in agents:
        agent.send("e = shm.event('go'); ready(); e.wait(60)")
        agent.wait_for_line()
    for agent in agents:
        wait_until_sleeping(agent.pid)
    assert event.waiters == 2
    # set and clear at once: the waiters that slept before the set still see it
    assert event.set() is True
    assert event.clear() is True
    assert [agent.result() for agent in agents] == [True, True]
    assert event.waiters == 0
    assert agents[0]("e.wait(0)") is False  # clear now
    event.set()
    assert agents[0]("e.wait(0)") is True
    assert agents[0]("e.wait(0.01)") is True


def test_naming_the_same_events_from_many_processes_at_once(shm: Any, key: Any, procs: Any):
    names = [f"name-{i}" for i in range(12)]
    agents = [attached_agent(procs, key) for _ in range(4)]
    for n, agent in enumerate(agents):
        order = names[n:] + names[:n]  # every agent names them in another order
        agent.send(
            "ready(); ready(sys.stdin.readline().strip())\n"
            f"indexes = {{name: shm.event(name).index for name in {order!r}}}\n"
            "sorted(indexes.items())"
        )
        agent.wait_for_line()
    for agent in agents:  # as close to "at once" as four processes get
        agent.child.send("go\n")
    results = [agent.result() for agent in agents]
    assert all(result == results[0] for result in results)
    assert sorted(index for _, index in results[0]) == list(range(12)), "one slot per name"
    assert {shm.event(name).index for name in names} == set(range(12))


def test_a_namer_killed_while_naming_blocks_nobody(shm: Any, key: Any, procs: Any) -> None:
    env = child_env(QSHAREDMEM_TEST_STOP_AT="event:naming")
    stopped = Agent(procs.start(procs.python(_agent_script(), key.toString()), env=env))
    assert stopped("shm = QSharedMemory(key); shm.attach()") is True
    stopped.send("shm.event('half-made')")
    line = stopped.child.wait_for_line(lambda text: text.startswith("qsharedmem-test-stop "))
    assert line.split()[1] == "event:naming"
    stopped.kill()  # SIGKILL while it holds the namer word
    # the next namer sees that the holder is dead and takes over
    assert shm.event("after the crash").index == 0
    assert shm.event("half-made").index == 1


def _agent_script() -> str:
    return str(HELPERS_DIR / "agent.py")


# ------------------------------------------------------------------------------------------------
# atomic words


def test_atomic_words_are_checked_and_atomic(shm: Any) -> None:
    word = shm.atomic_u32(8)
    assert (word.bits, word.offset, word.readonly, word.load()) == (32, 8, False, 0)
    word.store(2**32 - 1)
    assert word.add(1) == 2**32 - 1, "wraps around"
    assert word.load() == 0
    assert word.add(-1) == 0
    assert word.load() == 2**32 - 1
    assert word.compare_exchange(5, 6) == (False, 2**32 - 1)
    assert word.compare_exchange(2**32 - 1, 7) == (True, 2**32 - 1)
    assert struct.unpack_from("<I", shm.constData(), 8)[0] == 7
    wide = shm.atomic_u64(16)
    wide.store(2**40 + 3)
    assert struct.unpack_from("<Q", shm.constData(), 16)[0] == 2**40 + 3
    assert wide.add(2**64 - 1) == 2**40 + 3
    assert wide.load() == 2**40 + 2
    assert repr(wide) == f"<qsharedmem.AtomicWord u64 at offset 16: {2**40 + 2}>"
    for bad in (2, 4094, 4096):
        with pytest.raises(ValueError, match=r"aligned|does not fit"):
            shm.atomic_u32(bad)
    with pytest.raises(ValueError, match="aligned"):
        shm.atomic_u64(12)
    with pytest.raises(ValueError, match="does not fit"):
        shm.atomic_u64(4096)
    with pytest.raises(ValueError, match="negative"):
        shm.atomic_u32(-4)
    with pytest.raises(OverflowError):
        word.store(2**32)
    with pytest.raises(OverflowError):
        word.store(-1)
    with pytest.raises(OverflowError):
        word.add(2**32)
    with pytest.raises(ValueError):
        word.wake(0)


def test_a_read_only_attachment_reads_waits_and_refuses_writes(
    shm: Any, key: Any, procs: Any
) -> None:
    shm.atomic_u32(0).store(41)
    agent = attached_agent(procs, key, "QSharedMemory.ReadOnly")
    assert agent("w = shm.atomic_u32(0); (w.readonly, w.load())") == (True, 41)
    for write in ("w.store(1)", "w.add(1)", "w.compare_exchange(41, 1)"):
        with pytest.raises(AgentError) as raised:
            agent(write)
        assert raised.value.kind == "TypeError"
        assert "ReadOnly" in raised.value.message
    sleep_in(agent, "ready(); w.wait(41, 60)")
    writer = shm.atomic_u32(0)
    writer.store(42)
    assert writer.wake() == 1
    assert agent.result() is True


def test_a_64_bit_wait_sees_a_change_of_the_high_half(shm: Any, key: Any, procs: Any) -> None:
    word = shm.atomic_u64(64)
    word.store(5)
    agent = attached_agent(procs, key)
    sleep_in(agent, "w = shm.atomic_u64(64); ready(); w.wait(5, 60)")
    word.add(2**32)  # the low half, which the kernel sleeps on, stays 5
    assert word.wake() == 1
    assert agent.result() is True
    assert agent("w.load()") == 2**32 + 5


# ------------------------------------------------------------------------------------------------
# lifetime


def test_events_and_words_keep_the_segment_until_they_go(
    key: Any, make_key: KeyRegistry, backend: str
) -> None:
    shm = QSharedMemory(key)
    assert shm.create(64)
    event, word = shm.event("kept"), shm.atomic_u32(0)
    notifier_generation = shm.generation()
    assert shm.detach()
    assert make_key.leftovers() != [], "still attached through the event and the word"
    event.set()
    word.store(9)
    assert (event.is_set(), word.load(), notifier_generation) == (True, 9, 0)
    other = QSharedMemory(key)
    assert other.attach()
    assert other.event("kept").is_set() and other.atomic_u32(0).load() == 9
    assert other.detach()
    del event, word
    assert make_key.leftovers() == []


def test_a_system_v_notify_block_lives_as_long_as_its_segment(
    make_key: KeyRegistry, procs: Any
) -> None:
    key = qkey(make_key, "sysv")
    shm = QSharedMemory(key)
    assert shm.create(64, permissions=0o640)
    block = notify_block(key)
    assert block is not None and not block.exists(), "made on first use only"
    agent = attached_agent(procs, key)
    assert agent("shm.event('x').set()") is True
    assert block.exists()
    assert stat.S_IMODE(block.stat().st_mode) == 0o640, "the segment's permissions"
    assert shm.event("x").is_set(), "one block for every process"
    info = segment_info(key)
    assert info["control_file"] == str(block)
    assert info["events"] == [{"name": "x", "set": True, "waiters": 0}]
    assert agent("shm.detach()") is True
    assert block.exists()
    assert shm.detach()
    assert not block.exists(), "removed by the last detacher, with the segment"
    assert make_key.leftovers() == []


def test_a_crashed_system_v_segment_and_its_block_are_reclaimed(
    make_key: KeyRegistry, procs: Any
) -> None:
    key = qkey(make_key, "sysv")
    agent = start_agent(procs, key)
    assert agent("shm = QSharedMemory(key); shm.create(64) and shm.notify_all() == 0") is True
    block = notify_block(key)
    assert block is not None and block.exists()
    agent.kill()
    assert block.exists(), "an orphan now, with the segment"
    shm = QSharedMemory(key)
    assert shm.create(64), shm.errorString()  # reclaims the orphan...
    assert not block.exists(), "...and its notify block"
    assert shm.generation() == 0, "a new segment starts from scratch"
    assert shm.detach()
    assert make_key.leftovers() == []


def test_gc_removes_a_notify_block_whose_segment_is_gone(make_key: KeyRegistry, procs: Any) -> None:
    import sysv_ipc

    key = qkey(make_key, "sysv")
    agent = start_agent(procs, key)
    assert agent("shm = QSharedMemory(key); shm.create(64) and shm.notify() == 0") is True
    block = notify_block(key)
    segment = sysv_segment(key)
    assert block is not None and block.exists() and segment is not None
    agent.kill()
    sysv_ipc.remove_shared_memory(segment["shmid"])  # ipcrm: the block is left on its own
    listed = [s for s in qsharedmem._qsharedmem.list_segments() if s["control_file"] == str(block)]
    assert len(listed) == 1 and listed[0]["orphan"], listed
    assert "no longer exists" in (listed[0]["note"] or "")
    gc = subprocess.run(
        [sys.executable, "-m", "qsharedmem", "gc"],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=TIMEOUT,
        check=True,
    )
    assert str(block) in gc.stdout + gc.stderr
    assert not block.exists()


def test_a_foreign_segment_whose_control_block_cannot_be_used(make_key: KeyRegistry) -> None:
    name = make_key("foreign")
    data, sidecar = DEV_SHM / name, DEV_SHM / (name + ".qsm")
    data.write_bytes(b"\0" * 4096)  # someone else's segment (Qt's, say)...
    sidecar.write_bytes(b"not a control block")  # ...and a file where ours would go
    try:
        shm = QSharedMemory(qsharedmem.QNativeIpcKey("/" + name))
        assert shm.attach(), shm.errorString()
        with pytest.raises(qsharedmem.PermissionDeniedError, match="control block"):
            shm.generation()
        word = shm.atomic_u32(0)  # in the data: works on any segment
        word.store(3)
        assert data.read_bytes()[:4] == struct.pack("<I", 3)
        del word
        assert shm.detach()
    finally:
        data.unlink()
        sidecar.unlink()


def test_qsharedmem_info_shows_the_notify_state(shm: Any, key: Any, procs: Any) -> None:
    shm.event("ready").set()
    shm.event("done")
    shm.notify()
    agent = attached_agent(procs, key)
    sleep_in(agent, "e = shm.event('done'); ready(); e.wait(60)")
    info = subprocess.run(
        [sys.executable, "-m", "qsharedmem", "info", key.toString()],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=TIMEOUT,
        check=True,
    ).stdout
    lines = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
    assert lines["notify"].strip() == "generation 1, 0 waiting"
    assert lines["events"].strip() == "ready set, done clear (1 waiting)"
    shm.event("done").set()
    assert agent.result() is True
