"""Helpers for the wait/notify tests (tests/notify/).

* :func:`qkey` makes a unique key of a backend (``"posix"`` or ``"sysv"``) with ``make_key``.
* :func:`wait_until_sleeping` polls ``/proc`` until a process's thread sleeps in the kernel
  (after a READY handshake: then it can only be the wait under test). A poll of the OS, not a
  timed sleep.
* :func:`sleep_in` has an agent run a command that signals READY and then waits, and returns
  once the agent sleeps in that wait.
* :func:`interrupt_wait` stops an agent's endless wait with Ctrl-C (SIGINT) once it sleeps in it.
* :func:`cpu_seconds` reads a process's utime + stime from ``/proc/<pid>/stat``.
* :func:`notify_block` is the ``/dev/shm`` file of a System V segment's notify block.
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from typing import Any

import pytest
import qsharedmem

from support.agent import Agent, AgentError
from support.impls import POSIX_TYPE, SYSV_TYPE
from support.ipc import DEV_SHM, sysv_segment
from support.keys import KeyRegistry

BACKENDS = {"posix": POSIX_TYPE, "sysv": SYSV_TYPE}
TIMEOUT = 60.0  # hang guard for every wait; nothing asserts a duration
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def qkey(make_key: KeyRegistry, backend: str, name: str = "notify") -> Any:
    """A unique ``QNativeIpcKey`` of ``backend`` ("posix" or "sysv")."""
    key_type = qsharedmem.QNativeIpcKey.Type(BACKENDS[backend])
    return qsharedmem.QSharedMemory.platformSafeKey(make_key(name), key_type)


def _states(pid: int) -> list[str]:
    tasks = Path(f"/proc/{pid}/task")
    return [(task / "stat").read_text().rpartition(")")[2].split()[0] for task in tasks.iterdir()]


def wait_until_sleeping(pid: int, timeout: float = TIMEOUT) -> None:
    """Wait until every thread of ``pid`` sleeps in the kernel (state S)."""
    event = threading.Event()
    for _ in range(int(timeout / 0.001)):
        if all(state == "S" for state in _states(pid)):
            return
        event.wait(0.001)
    pytest.fail(f"process {pid} never slept")


def sleep_in(agent: Agent, command: str) -> None:
    """Sends ``command`` (which calls ``ready()`` and then waits); returns once the agent sleeps
    in that wait (its result is for ``agent.result()``)."""
    agent.send(command)
    agent.wait_for_line()
    wait_until_sleeping(agent.pid)


def interrupt_wait(agent: Agent, command: str) -> None:
    """:func:`sleep_in`, then SIGINT: the command must end with ``KeyboardInterrupt``."""
    sleep_in(agent, command)
    os.kill(agent.pid, signal.SIGINT)
    with pytest.raises(AgentError) as raised:
        agent.result()
    assert raised.value.kind == "KeyboardInterrupt", raised.value


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` (all its threads), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    # After the command: state(0) ... utime is field 14 of stat(5), i.e. index 11 here.
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def notify_block(key: Any) -> Path | None:
    """The notify block of the System V segment of ``key``, if the segment exists."""
    segment = sysv_segment(key)
    return None if segment is None else DEV_SHM / f"qsm-sysv-{segment['shmid']}.qsm"
