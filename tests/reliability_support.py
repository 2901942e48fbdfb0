"""Helpers shared by the reliability tests (tests/test_reliability_*.py).

* :class:`Agent` drives a ``helpers/shm_agent.py`` child: ``agent.call("attach", "h")`` sends a
  command and returns its :class:`Reply`; ``agent.send(...)`` + ``agent.wait_started("lock")``
  for calls that block; ``agent.wait_stopped(step)`` for the test hook's stop marker.
* :func:`new_key` makes a unique key of a backend (``"posix"`` or ``"sysv"``) with ``make_key``.
* :func:`fd_count` / :func:`rss_kib` read ``/proc/self``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
from support import HELPERS_DIR
from support.impls import POSIX_TYPE, SYSV_TYPE
from support.keys import KeyRegistry
from support.processes import ChildProcesses, child_env

AGENT = HELPERS_DIR / "shm_agent.py"
STOP_MARK = "qsharedmem-test-stop "
BACKENDS = {"posix": POSIX_TYPE, "sysv": SYSV_TYPE}


@dataclasses.dataclass
class Reply:
    """What an agent command returned: the result and ``[error().name, errorString()]``."""

    r: Any
    e: list[str] | None

    @property
    def error(self) -> str | None:
        return self.e[0] if self.e else None


class Agent:
    """A ``shm_agent.py`` child process."""

    def __init__(self, child: Any) -> None:
        self.child = child
        self.pid = child.pid

    def send(self, *command: Any) -> None:
        self.child.send(json.dumps(list(command)) + "\n")

    def call(self, *command: Any, timeout: float = 60) -> Reply:
        self.send(*command)
        return self.result(timeout)

    def result(self, timeout: float = 60) -> Reply:
        line = self.child.wait_for_line(
            lambda text: text.startswith(("= ", STOP_MARK)), timeout=timeout
        )
        assert not line.startswith(STOP_MARK), f"agent {self.pid} stopped unexpectedly: {line}"
        reply = json.loads(line[2:])
        return Reply(reply["r"], reply["e"])

    def wait_started(self, command: str, timeout: float = 60) -> None:
        self.child.wait_for_line(f"> {command}", timeout=timeout)

    def wait_stopped(self, step: str, timeout: float = 60) -> None:
        """Wait until the test hook stopped the agent at ``step``."""
        line = self.child.wait_for_line(
            lambda text: text.startswith((STOP_MARK, "= ")), timeout=timeout
        )
        assert line == f"{STOP_MARK}{step} {self.pid}", f"expected a stop at {step}, got {line!r}"

    def kill(self) -> int:
        return self.child.kill()

    def finish(self) -> int:
        self.send("exit", 0)
        return self.child.wait()


def start_agent(procs: ChildProcesses, impl: str = "qsharedmem", stop_at: str | None = None):
    env = child_env(QSHAREDMEM_TEST_STOP_AT=stop_at) if stop_at else None
    agent = Agent(procs.start(procs.python(AGENT, impl), env=env))
    agent.child.wait_for_line("READY")
    return agent


def new_key(qsm: Any, make_key: KeyRegistry, name: str, backend: str) -> Any:
    """A unique qsharedmem QNativeIpcKey for ``backend`` ("posix" or "sysv")."""
    S, K = qsm.QSharedMemory, qsm.QNativeIpcKey
    return S.platformSafeKey(make_key(name), K.Type(BACKENDS[backend]))


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS in /proc/self/status")


def wait_until_blocked(pid: int, timeout: float = 30.0) -> None:
    """Wait until ``pid`` sleeps in the kernel on a futex or a System V semaphore.

    A condition on the waiter's state (``/proc/<pid>/task/*/wchan``), checked until it holds,
    not a pause: the waiter has announced that it calls lock(), this confirms it is inside.
    """
    deadline = time.monotonic() + timeout
    tasks = Path(f"/proc/{pid}/task")
    while time.monotonic() < deadline:
        for task in tasks.iterdir():
            try:
                wchan = (task / "wchan").read_text()
            except OSError:
                continue
            if "futex" in wchan or "sem" in wchan:
                return
        time.sleep(0.001)
    pytest.fail(f"process {pid} did not block in lock()")
