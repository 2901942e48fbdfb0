"""The parent side of the one child-agent protocol (the child is ``helpers/agent.py``, which
documents the protocol).

An agent is a peer process that plays any role a multi-process test needs: a qsharedmem or a
PySide6 process (``impl=``), holding handles the test names, a ``multiprocessing`` segment, a
victim stopped at a test point (``stop_at=``). Two ways to drive it, freely mixed:

* Python source: ``agent("shm = QSharedMemory(key); shm.attach()")`` returns the value of the last
  expression (``ast.literal_eval`` of its repr, or the repr as text) or raises
  :class:`AgentError`;
* named operations on handles: ``agent.call("attach", "h")`` returns a :class:`Reply`
  (``.r`` the result, ``.e`` ``[error().name, errorString()]`` of the handle afterwards).

A command that blocks: ``send(code)`` / ``send_op(...)``, then the handshake — ``wait_for_line()``
(the ``READY`` that ``ready()`` prints), ``wait_started("lock")`` (printed before every operation)
or ``wait_stopped(step)`` (the test point's stop marker) — act, and collect with ``result()``.
Replies are matched to commands in order; a reply that arrives while waiting for a line is kept
for ``result()``. ``finish()`` closes stdin (a normal exit), ``exit(code)`` destroys the handles
and leaves with ``os._exit``, ``kill()`` is a SIGKILL; every agent is also killed and reaped by
the ``procs`` fixture at teardown.
"""

from __future__ import annotations

import ast
import collections
import dataclasses
import json
import time
from collections.abc import Callable
from typing import Any

import pytest

from support import HELPERS_DIR
from support.processes import DEFAULT_TIMEOUT, Child, ChildProcesses, Result, child_env

AGENT = HELPERS_DIR / "agent.py"
REPLY = "@@agent@@ "
READY = "READY"
STOP_MARK = "qsharedmem-test-stop "


class AgentError(Exception):
    """A command raised in the agent: ``kind`` is the exception's class name."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.message = message


@dataclasses.dataclass
class Reply:
    """What a named operation returned: the result and ``[error().name, errorString()]``."""

    r: Any
    e: list[str] | None

    @property
    def error(self) -> str | None:
        return self.e[0] if self.e else None


def _literal(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # a repr that is not a literal: compare it as text


class Agent:
    """The parent's handle on an agent process (wraps a :class:`~support.processes.Child`)."""

    def __init__(self, child: Child) -> None:
        self.child = child
        self.pid: int = child.pid
        # What each outstanding reply answers, oldest first: the start handshake, then commands.
        self._pending: collections.deque[str] = collections.deque(["start"])
        self._replies: collections.deque[dict[str, Any]] = collections.deque()
        # Set when waiting for a reply was interrupted (a timeout): replies and commands can no
        # longer be matched, so every later use fails at once instead of misreading a reply.
        self._out_of_step: str | None = None

    # -- sending
    def _check_in_step(self) -> None:
        if self._out_of_step is not None:
            pytest.fail(f"agent {self.pid} is out of step: {self._out_of_step}")

    def _send(self, message: dict[str, Any], kind: str) -> None:
        self._check_in_step()
        self.child.send(json.dumps(message) + "\n")
        self._pending.append(kind)

    def send(self, code: str) -> None:
        """Start running Python source without waiting for its reply (see :meth:`result`)."""
        self._send({"run": code}, "run")

    def send_op(self, name: str, handle: str | None = None, *args: Any) -> None:
        """Start a named operation without waiting for its reply (see :meth:`result`)."""
        self._send({"op": name, "handle": handle, "args": list(args)}, "op")

    # -- reading
    def _line(self, timeout: float) -> str:
        line = self.child.readline(timeout)
        if line is None:
            rc = self.child.proc.wait()
            pytest.fail(f"agent {self.pid} exited ({rc}); stderr:\n{self.child.stderr()}")
        return line

    def _reply(self, timeout: float) -> dict[str, Any]:
        """The next reply line (skipping output); fails if the agent stopped at a test point."""
        if self._replies:
            return self._replies.popleft()
        deadline = time.monotonic() + timeout
        while True:
            line = self._line(max(0.0, deadline - time.monotonic()))
            assert not line.startswith(STOP_MARK), f"agent {self.pid} stopped unexpectedly: {line}"
            if line.startswith(REPLY):
                return json.loads(line[len(REPLY) :])

    def result(self, timeout: float = DEFAULT_TIMEOUT) -> Any:
        """The reply of the oldest command in flight: the value of source, the :class:`Reply`
        of an operation; :class:`AgentError` if it raised."""
        self._check_in_step()
        while True:
            assert self._pending, f"agent {self.pid}: no command in flight"
            kind = self._pending[0]
            try:
                reply = self._reply(timeout)
            except BaseException as exc:
                self._out_of_step = f"no reply to its {kind} command: {type(exc).__name__}: {exc}"
                raise
            self._pending.popleft()
            if kind == "start":  # the agent's first line: its pid, after its imports
                assert _literal(reply.get("value", "")) == self.pid, reply
                continue
            if "error" in reply:
                raise AgentError(reply["error"], reply["message"])
            value = _literal(reply["value"])
            return Reply(value, reply["e"]) if kind == "op" else value

    def wait_for_line(
        self, expected: str | Callable[[str], bool] = READY, timeout: float = DEFAULT_TIMEOUT
    ) -> str:
        """Wait for a line that the command in flight prints (the handshake); replies that come
        first are kept for :meth:`result`."""
        deadline = time.monotonic() + timeout
        while True:
            line = self._line(max(0.0, deadline - time.monotonic()))
            if line.startswith(REPLY):
                self._replies.append(json.loads(line[len(REPLY) :]))
                continue
            if line == expected if isinstance(expected, str) else expected(line):
                return line

    def wait_started(self, name: str, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Wait until the agent is inside the operation ``name`` (it prints ``> name`` first)."""
        self.wait_for_line(f"> {name}", timeout)

    def wait_stopped(self, step: str, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Wait until the test hook stopped the agent at ``step`` (not at another step, and not
        after the command finished: a reply first fails)."""
        deadline = time.monotonic() + timeout
        while True:
            line = self._line(max(0.0, deadline - time.monotonic()))
            if line.startswith((STOP_MARK, REPLY)):
                break
        assert line == f"{STOP_MARK}{step} {self.pid}", f"expected a stop at {step}, got {line!r}"

    # -- commands
    def __call__(self, code: str, timeout: float = DEFAULT_TIMEOUT) -> Any:
        """Run Python source and return its value (AgentError if it raised)."""
        self.send(code)
        return self.result(timeout)

    def call(
        self, name: str, handle: str | None = None, *args: Any, timeout: float = DEFAULT_TIMEOUT
    ) -> Reply:
        """Run a named operation and return its :class:`Reply` (AgentError if it raised)."""
        self.send_op(name, handle, *args)
        return self.result(timeout)

    # -- termination
    def kill(self) -> int:
        """SIGKILL the agent and reap it."""
        return self.child.kill()

    def finish(self, timeout: float = DEFAULT_TIMEOUT) -> Result:
        """Close stdin (the agent destroys its handles and exits normally) and collect
        Result(returncode, stdout, stderr)."""
        return self.child.finish(timeout)

    def exit(self, code: int = 0, timeout: float = DEFAULT_TIMEOUT) -> int:
        """The ``exit`` operation: destroy the handles, then ``os._exit(code)``; the exit status."""
        self.send_op("exit", None, code)
        return self.child.wait(timeout)


def start_agent(
    procs: ChildProcesses,
    key: Any = None,
    *,
    impl: str = "qsharedmem",
    stop_at: str | None = None,
) -> Agent:
    """Start an agent (via the ``procs`` fixture) of ``impl`` with ``key`` (a QNativeIpcKey of
    either implementation) preloaded as ``key``; with ``stop_at``, qsharedmem stops the agent at
    that test point (``QSHAREDMEM_TEST_STOP_AT``). Returns at once: the start handshake is
    collected with the first reply."""
    args = ["--impl", impl] + ([] if key is None else [key.toString()])
    env = child_env(QSHAREDMEM_TEST_STOP_AT=stop_at) if stop_at else None
    return Agent(procs.start(procs.python(AGENT, *args), env=env))
