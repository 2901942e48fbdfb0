"""A child interpreter that the test drives one command at a time: the multi-process tests' peer.

Run as ``python agent.py [key.toString()]``. The parent writes one command per line: Python
source, JSON-encoded (so it may span several lines). The agent runs it in one namespace that
lives as long as the process and answers with exactly one reply line::

    @@agent@@ {"value": "<repr>"}    the last statement's value (None unless an expression)
    @@agent@@ {"error": "KeyboardInterrupt", "message": ""}    the command raised

Anything the command prints comes before its reply, so ``ready()`` (prints ``READY``) is the
handshake for a command that goes on to block: the parent waits for ``READY``, acts (kills a
lock holder, sends SIGINT, ...) and then collects the reply. The namespace starts with ``os``,
``sys``, ``signal``, ``struct``, ``threading``, ``qsharedmem``, ``QSharedMemory``,
``QNativeIpcKey``, ``ready`` and ``key`` (the ``QNativeIpcKey`` given on the command line).

The parent side is :class:`Agent` (``start_agent(procs, key)``), which turns a reply back into a
value (``ast.literal_eval`` of the repr) or raises :class:`AgentError`.
"""

from __future__ import annotations

import ast
import json
import sys
from typing import Any

REPLY = "@@agent@@ "
READY = "READY"


class AgentError(Exception):
    """A command raised in the agent: ``kind`` is the exception's class name."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.message = message


class Agent:
    """The parent's handle on an agent process (wraps a conftest ``Child``)."""

    def __init__(self, child: Any) -> None:
        self.child = child
        self.pid: int = child.pid

    def send(self, code: str) -> None:
        """Start a command without waiting for its reply (collect it with :meth:`result`)."""
        self.child.send(json.dumps(code) + "\n")

    def wait_for_line(self, expected: str = READY, timeout: float = 60.0) -> str:
        """Wait for a line the running command prints (the handshake)."""
        return self.child.wait_for_line(expected, timeout)

    def result(self, timeout: float = 60.0) -> Any:
        """The reply of the command in flight: its value, or AgentError if it raised."""
        line = self.child.wait_for_line(lambda text: text.startswith(REPLY), timeout)
        reply = json.loads(line[len(REPLY) :])
        if "error" in reply:
            raise AgentError(reply["error"], reply["message"])
        text = reply["value"]
        try:
            return ast.literal_eval(text)
        except (ValueError, SyntaxError):
            return text  # a repr that is not a literal: compare it as text

    def __call__(self, code: str, timeout: float = 60.0) -> Any:
        """Run a command and return its value (AgentError if it raised)."""
        self.send(code)
        return self.result(timeout)

    def kill(self) -> int:
        """SIGKILL the agent and reap it."""
        return self.child.kill()

    def finish(self, timeout: float = 60.0) -> Any:
        """Close stdin (the agent exits normally) and collect Result(returncode, out, err)."""
        return self.child.finish(timeout)


def start_agent(procs: Any, key: Any = None) -> Agent:
    """Start an agent (via the ``procs`` fixture) with ``key`` (a QNativeIpcKey) preloaded."""
    args = [] if key is None else [key.toString()]
    return Agent(procs.start(procs.python(__file__, *args)))


# ------------------------------------------------------------------------------------------------
# The agent process


def _ready(text: str = READY) -> None:
    print(text, flush=True)


def _run(code: str, namespace: dict[str, Any]) -> Any:
    """Execute ``code``; its value is the value of its last statement if that is an expression."""
    tree = ast.parse(code, "<agent>")
    last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
    exec(compile(tree, "<agent>", "exec"), namespace)
    if last is None:
        return None
    return eval(compile(ast.Expression(last.value), "<agent>", "eval"), namespace)


def main(argv: list[str]) -> int:
    import os
    import signal
    import struct
    import threading

    import qsharedmem
    from qsharedmem import QNativeIpcKey, QSharedMemory

    namespace: dict[str, Any] = {
        "__name__": "__agent__",
        "os": os,
        "sys": sys,
        "signal": signal,
        "struct": struct,
        "threading": threading,
        "qsharedmem": qsharedmem,
        "QSharedMemory": QSharedMemory,
        "QNativeIpcKey": QNativeIpcKey,
        "ready": _ready,
        "key": QNativeIpcKey.fromString(argv[1]) if len(argv) > 1 else None,
    }
    for line in sys.stdin:
        code = json.loads(line)
        try:
            reply = {"value": repr(_run(code, namespace))}
        except BaseException as exc:  # KeyboardInterrupt is a result the tests look for
            if isinstance(exc, SystemExit):
                raise
            reply = {"error": type(exc).__name__, "message": str(exc)}
        print(REPLY + json.dumps(reply), flush=True)
    # stdin closed: leave the way a program does (handles are released by their destructors)
    namespace.clear()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
