"""Child processes: started in fresh interpreters, read line by line, always killed and reaped.

``procs`` — a :class:`ChildProcesses` for children in fresh interpreters (``sys.executable``,
``QT_QPA_PLATFORM=offscreen``, ``tests/`` on ``PYTHONPATH``, no core dumps):
``run_python(code, *args, timeout=)`` / ``run_script(path, *args)`` →
``Result(returncode, stdout, stderr)`` (a signal death is a negative returncode);
``start(argv)`` / ``start_python`` / ``start_script`` → :class:`Child` with
``wait_for_line(expected, timeout)`` (the handshake — no sleeps), ``readline``, ``send``,
``finish`` (close stdin, wait, collect), ``kill`` (SIGKILL + reap); ``start_ready(argv, "READY")``
starts and waits for the line. Every child is SIGKILLed and reaped at teardown, before
``make_key`` cleans up.

Also: the helper programs (:data:`PRODUCER_CONSUMER`, :data:`ACQUIRE_RELEASE`: ports of Qt's
test helpers, Qt's protocol), and observations of a process from outside —
:func:`wait_until_blocked`, :func:`fd_count`, :func:`rss_kib`.
"""

from __future__ import annotations

import contextlib
import os
import resource
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from support import HELPERS_DIR, TESTS_DIR
from support.keys import KeyRegistry

PRODUCER_CONSUMER = HELPERS_DIR / "producerconsumer.py"
ACQUIRE_RELEASE = HELPERS_DIR / "acquirerelease.py"
DEFAULT_TIMEOUT = 60.0


class Result(NamedTuple):
    returncode: int
    stdout: str
    stderr: str


def child_env(**extra: str) -> dict[str, str]:
    """The environment for child interpreters: offscreen Qt, tests/ on the path."""
    env = dict(os.environ)
    env["QT_QPA_PLATFORM"] = "offscreen"
    paths = [str(TESTS_DIR)]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env.update(extra)
    return env


def _no_core_dumps() -> None:
    # Children that are expected to crash (SIGSEGV) must not write core files.
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


class Child:
    """A running child process whose stdout is read line by line with timeouts."""

    def __init__(self, argv: list[str], *, env: dict[str, str] | None, cwd: str | None):
        self.argv = argv
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 (closed by kill_all)
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env=child_env() if env is None else env,
            cwd=cwd,
            preexec_fn=_no_core_dumps,
        )
        self.pid = self.proc.pid
        self._buffer = b""
        self._eof = False
        self.lines: list[str] = []  # every stdout line read so far

    # -- stdout
    def _fill(self, deadline: float) -> bool:
        """Read what is available before the deadline; False on timeout."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            remaining = deadline - _monotonic()
            if remaining <= 0 or not sel.select(remaining):
                return False
        chunk = os.read(fd, 65536)
        if not chunk:
            self._eof = True
        self._buffer += chunk
        return True

    def readline(self, timeout: float = DEFAULT_TIMEOUT) -> str | None:
        """The next stdout line (without the newline); None at EOF. Fails on timeout."""
        deadline = _monotonic() + timeout
        while b"\n" not in self._buffer and not self._eof:
            if not self._fill(deadline):
                pytest.fail(f"timeout waiting for a line from {self.describe()}: {self.state()}")
        if b"\n" not in self._buffer:
            if not self._buffer:
                return None
            line, self._buffer = self._buffer, b""
        else:
            line, _, self._buffer = self._buffer.partition(b"\n")
        text = line.decode(errors="replace")
        self.lines.append(text)
        return text

    def wait_for_line(
        self, expected: str | Callable[[str], bool] | None = None, timeout: float = DEFAULT_TIMEOUT
    ) -> str:
        """Handshake: wait for a stdout line equal to ``expected`` (or any line if None)."""
        deadline = _monotonic() + timeout
        while True:
            line = self.readline(max(0.0, deadline - _monotonic()))
            if line is None:
                rc = self.proc.wait()
                pytest.fail(
                    f"{self.describe()} exited ({rc}) before printing {expected!r}; "
                    f"stderr:\n{self.stderr()}"
                )
            if expected is None or (
                line == expected if isinstance(expected, str) else expected(line)
            ):
                return line

    def silent_for(self, seconds: float) -> bool:
        """True if no complete line arrives within ``seconds``.

        An observation window, not a synchronisation: used to show that a process blocked in
        ``lock()`` stays blocked while another holds the lock (a lock that does not exclude
        answers within milliseconds).
        """
        deadline = _monotonic() + seconds
        while b"\n" not in self._buffer and not self._eof:
            if not self._fill(deadline):
                return True
        return False

    # -- stdin
    def send(self, data: bytes | str) -> None:
        assert self.proc.stdin is not None
        if isinstance(data, str):
            data = data.encode()
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def close_stdin(self) -> None:
        if self.proc.stdin and not self.proc.stdin.closed:
            with contextlib.suppress(BrokenPipeError):
                self.proc.stdin.close()

    # -- termination
    def wait(self, timeout: float = DEFAULT_TIMEOUT) -> int:
        """Wait for exit; fails (after killing it) on timeout."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"timeout waiting for {self.describe()} to exit")

    def finish(self, timeout: float = DEFAULT_TIMEOUT) -> Result:
        """Close stdin, wait, and collect everything: Result(returncode, stdout, stderr)."""
        self.close_stdin()
        rc = self.wait(timeout)
        while not self._eof:
            if not self._fill(_monotonic() + timeout):
                break
        rest = self._buffer.decode(errors="replace")
        self._buffer = b""
        out = "".join(line + "\n" for line in self.lines) + rest
        return Result(rc, out, self.stderr())

    def kill(self) -> int:
        """SIGKILL (if still running) and reap. Returns the exit status."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGKILL)
        rc = self.proc.wait()
        self.close_stdin()
        if self.proc.stdout:
            self.proc.stdout.close()
        return rc

    def stderr(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")

    def describe(self) -> str:
        return f"child {self.pid} {self.argv[1:]!r}"

    def state(self) -> str:
        """Where a silent child is: its command line (still the parent's if it hangs between
        fork and exec), scheduler state and kernel wait channel of each thread."""
        proc = Path(f"/proc/{self.pid}")
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            threads = [
                f"{task.name}: {(task / 'stat').read_text().rpartition(')')[2].split()[0]} "
                f"{(task / 'wchan').read_text() or '-'}"
                for task in sorted((proc / "task").iterdir())
            ]
        except OSError as exc:
            return f"gone ({exc})"
        return f"cmdline {cmdline.strip()!r}, threads {threads}"


def _monotonic() -> float:
    return time.monotonic()


class ChildProcesses:
    """Starts children in fresh interpreters and guarantees they are killed and reaped."""

    def __init__(self) -> None:
        self.children: list[Child] = []

    @staticmethod
    def python(*args: str | os.PathLike[str]) -> list[str]:
        return [sys.executable, *map(str, args)]

    def start(
        self,
        argv: list[str],
        *,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
    ) -> Child:
        child = Child(argv, env=env, cwd=cwd)
        self.children.append(child)
        return child

    def start_python(self, code: str, *args: str, **kw: Any) -> Child:
        return self.start(self.python("-c", code, *args), **kw)

    def start_script(self, script: str | os.PathLike[str], *args: str, **kw: Any) -> Child:
        return self.start(self.python(script, *args), **kw)

    def start_ready(
        self, argv: list[str], ready: str | None = None, timeout: float = DEFAULT_TIMEOUT, **kw
    ) -> Child:
        """Start a child and wait until it prints ``ready`` (any line if None)."""
        child = self.start(argv, **kw)
        child.wait_for_line(ready, timeout)
        return child

    def run(
        self,
        argv: list[str],
        *,
        input: bytes | str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        **kw: Any,
    ) -> Result:
        child = self.start(argv, **kw)
        if input is not None:
            with contextlib.suppress(BrokenPipeError):
                child.send(input)
        return child.finish(timeout)

    def run_python(self, code: str, *args: str, **kw: Any) -> Result:
        return self.run(self.python("-c", code, *args), **kw)

    def run_script(self, script: str | os.PathLike[str], *args: str, **kw: Any) -> Result:
        return self.run(self.python(script, *args), **kw)

    def kill_all(self) -> None:
        for child in self.children:
            child.kill()
            child._stderr.close()
        self.children.clear()


@pytest.fixture
def procs(make_key: KeyRegistry) -> Iterator[ChildProcesses]:
    # Depends on make_key so that children are killed before the keys are cleaned up.
    manager = ChildProcesses()
    try:
        yield manager
    finally:
        manager.kill_all()


# --------------------------------------------------------------------------------------------
# A process seen from outside


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


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS in /proc/self/status")
