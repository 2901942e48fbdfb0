"""Timing, statistics, names, clean-up, forked children and the machine description."""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import itertools
import os
import platform
import resource
import select
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

DEV_SHM = Path("/dev/shm")


# --------------------------------------------------------------------------------------------
# Names: every OS object of a run carries RUN_TAG, so the final sweep finds all of them.


def _letters(number: int) -> str:
    """``number`` in base 26 with the digits a..z (Qt's legacy key files keep only letters)."""
    out = ""
    while True:
        number, digit = divmod(number, 26)
        out = chr(ord("a") + digit) + out
        if number == 0:
            return out


RUN_TAG = "qsmbench" + _letters(os.getpid())
_SEQUENCE = itertools.count()


def unique_name(what: str) -> str:
    """A name no other run and no other object of this run uses, containing ``RUN_TAG``."""
    return f"{RUN_TAG}_{next(_SEQUENCE)}_{what}"


# System V objects made through sysv_ipc have random keys and no key file: remembered here.
SYSV_IPC_OBJECTS: list[object] = []


def _temp_dirs() -> list[Path]:
    dirs = [Path(tempfile.gettempdir()), Path("/tmp")]
    tmpdir = os.environ.get("TMPDIR")
    if tmpdir:
        dirs.insert(0, Path(os.path.normpath(tmpdir)))
    return list(dict.fromkeys(dirs))


def leftovers() -> list[str]:
    """Everything of this run that still exists: /dev/shm entries and Qt's key files."""
    found = [str(p) for p in DEV_SHM.iterdir() if RUN_TAG in p.name]
    for directory in _temp_dirs():
        found += [str(p) for p in directory.glob(f"qipc_*{RUN_TAG}*")]
    return found


def sweep() -> list[str]:
    """Removes whatever this run left behind (PySide6 leaks its POSIX segments by design);
    returns what had to be removed."""
    import sysv_ipc

    removed = []
    for obj in SYSV_IPC_OBJECTS:
        with contextlib.suppress(sysv_ipc.ExistentialError):
            obj.remove()  # type: ignore[attr-defined]
            removed.append(f"sysv_ipc {type(obj).__name__} {obj.key}")  # type: ignore[attr-defined]
    SYSV_IPC_OBJECTS.clear()
    for path in map(Path, leftovers()):
        if path.parent != DEV_SHM:
            # A Qt key file: its System V segment and semaphore have ftok(file, 'Q').
            key = sysv_ipc.ftok(str(path), ord("Q"), silence_warning=True)
            for kind in (sysv_ipc.SharedMemory, sysv_ipc.Semaphore):
                with contextlib.suppress(sysv_ipc.ExistentialError):
                    kind(key).remove()
                    removed.append(f"{kind.__name__} of {path}")
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed.append(str(path))
    return removed


# --------------------------------------------------------------------------------------------
# Statistics and timing


@dataclasses.dataclass(frozen=True)
class Stats:
    """Median and spread of repeated samples."""

    median: float
    q1: float
    q3: float
    low: float
    high: float
    count: int

    @classmethod
    def of(cls, samples: list[float]) -> Stats:
        if len(samples) >= 2:
            q1, _, q3 = statistics.quantiles(samples, n=4, method="inclusive")
        else:
            q1 = q3 = samples[0]
        return cls(statistics.median(samples), q1, q3, min(samples), max(samples), len(samples))

    @property
    def spread_pct(self) -> float:
        """Half the interquartile range, in percent of the median."""
        return 0.0 if self.median == 0 else 50.0 * (self.q3 - self.q1) / abs(self.median)


def time_loop(loop: Callable[[int], object], count: int) -> float:
    """Seconds per iteration of ``loop(count)``, with the garbage collector off (as timeit)."""
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        start = time.perf_counter()
        loop(count)
        return (time.perf_counter() - start) / count
    finally:
        if gc_was_enabled:
            gc.enable()


def calibrate(loop: Callable[[int], object], target_seconds: float, max_count: int) -> int:
    """An iteration count for which ``loop`` runs about ``target_seconds`` (warms it up too)."""
    count = 1
    while True:
        per_iteration = time_loop(loop, count)
        elapsed = per_iteration * count
        if elapsed >= target_seconds / 8 or count >= max_count:
            return max(1, min(max_count, int(target_seconds / max(per_iteration, 1e-12))))
        count = min(max_count, count * 4)


def interleaved(
    loops: dict[str, Callable[[int], object]],
    repeats: int,
    target_seconds: float,
    max_count: int = 10_000_000,
) -> dict[str, list[float]]:
    """Seconds per iteration of every loop, ``repeats`` times, the loops taking turns in a
    rotating order, so that a change in machine load hits every implementation alike."""
    counts = {name: calibrate(loop, target_seconds, max_count) for name, loop in loops.items()}
    names = list(loops)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for round_number in range(repeats):
        shift = round_number % len(names)
        for name in names[shift:] + names[:shift]:
            samples[name].append(time_loop(loops[name], counts[name]))
    return samples


# --------------------------------------------------------------------------------------------
# Forked children with a line protocol over pipes (no sleeps for synchronisation)

_CHILDREN: list[Child] = []


class ChildIO:
    """The child's end: ``send`` a line to the parent, ``receive`` one from it."""

    def __init__(self, to_parent: int, from_parent: int) -> None:
        self._out = to_parent
        self._in = os.fdopen(from_parent, "r", buffering=1)

    def send(self, *words: object) -> None:
        os.write(self._out, (" ".join(map(str, words)) + "\n").encode())

    def receive(self) -> str:
        line = self._in.readline()
        if not line:
            raise EOFError("the parent went away")
        return line.strip()


class Child:
    """A forked child process running one function; see :func:`fork_child`."""

    def __init__(self, pid: int, from_child: int, to_child: int) -> None:
        self.pid = pid
        self._in = from_child
        self._out = to_child
        self._buffer = b""
        self.status: int | None = None

    def expect(self, word: str, timeout: float = 120.0) -> str:
        """Waits for a line starting with ``word``; returns the rest of it."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._in], [], [], left)[0]:
                raise TimeoutError(f"child {self.pid}: no {word!r} within {timeout} s")
            chunk = os.read(self._in, 65536)
            if not chunk:
                raise RuntimeError(f"child {self.pid} exited before sending {word!r}")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        got, _, rest = line.decode().partition(" ")
        if got != word:
            raise RuntimeError(f"child {self.pid}: expected {word!r}, got {line!r}")
        return rest

    def send(self, *words: object) -> None:
        os.write(self._out, (" ".join(map(str, words)) + "\n").encode())

    def wait(self, timeout: float = 120.0) -> int:
        """Waits for the child to exit (its pipe reaches end-of-file); raises if it failed."""
        deadline = time.monotonic() + timeout
        while self.status is None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"child {self.pid} did not exit within {timeout} s")
            if select.select([self._in], [], [], left)[0]:
                chunk = os.read(self._in, 4096)
                if chunk:
                    self._buffer += chunk
                    continue
                self.status = os.waitstatus_to_exitcode(os.waitpid(self.pid, 0)[1])
                self._close()
        if self.status != 0:
            raise RuntimeError(f"child {self.pid} failed with status {self.status}")
        return self.status

    def kill(self) -> None:
        if self.status is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self.pid, 0)
            self.status = -signal.SIGKILL
            self._close()

    def _close(self) -> None:
        for fd in (self._in, self._out):
            with contextlib.suppress(OSError):
                os.close(fd)
        if self in _CHILDREN:
            _CHILDREN.remove(self)


def fork_child(body: Callable[[ChildIO], object]) -> Child:
    """Runs ``body(io)`` in a forked child, which exits with status 0 if it returns, 1 if it
    raises (the traceback goes to stderr). The child leaves through ``os._exit``: objects it
    inherited are left for the parent to clean up."""
    to_parent_r, to_parent_w = os.pipe()
    to_child_r, to_child_w = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        status = 1
        try:
            os.close(to_parent_r)
            os.close(to_child_w)
            for sibling in _CHILDREN:  # their pipes are not ours
                for fd in (sibling._in, sibling._out):
                    with contextlib.suppress(OSError):
                        os.close(fd)
            body(ChildIO(to_parent_w, to_child_r))
            status = 0
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stderr.flush()
            os._exit(status)
    os.close(to_parent_w)
    os.close(to_child_r)
    child = Child(pid, to_parent_r, to_child_w)
    _CHILDREN.append(child)
    return child


def kill_children() -> None:
    """SIGKILLs and reaps every child that is still running."""
    for child in list(_CHILDREN):
        child.kill()


@contextlib.contextmanager
def children() -> Iterator[list[Child]]:
    """A list to put children in; whatever is still running at the end is killed."""
    started: list[Child] = []
    try:
        yield started
    finally:
        for child in started:
            child.kill()


# --------------------------------------------------------------------------------------------
# The machine


def _command(*argv: str) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _read(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return "?"


def machine() -> dict[str, str]:
    """What the results depend on: CPU, kernel, Python, the peers' versions, the limits."""
    import numpy
    import posix_ipc
    import PySide6
    import qsharedmem
    import sysv_ipc

    lscpu = dict(line.split(":", 1) for line in _command("lscpu").splitlines() if ":" in line)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    repo = Path(__file__).resolve().parent.parent
    commit = _command("git", "-C", str(repo), "rev-parse", "--short", "HEAD")
    if commit and _command("git", "-C", str(repo), "status", "--porcelain", "--", "src", "python"):
        commit += " (+ uncommitted changes)"
    return {
        "CPU": f"{lscpu.get('Model name', '?').strip()}, "
        f"{lscpu.get('CPU(s)', '?').strip()} CPUs"
        + (f" ({lscpu['Hypervisor vendor'].strip()} VM)" if "Hypervisor vendor" in lscpu else ""),
        "kernel": f"Linux {platform.release()}",
        "Python": f"{platform.python_implementation()} {platform.python_version()}",
        "qsharedmem": f"{qsharedmem.__version__} (commit {commit or '?'})",
        "PySide6-Essentials": PySide6.__version__,
        "posix_ipc / sysv_ipc": f"{posix_ipc.VERSION} / {sysv_ipc.VERSION}",
        "numpy": numpy.__version__,
        "load average at start": load_average(),
        "RLIMIT_NOFILE (soft/hard)": f"{soft}/{hard}",
        "vm.max_map_count": _read("/proc/sys/vm/max_map_count"),
        "kernel.shmmni": _read("/proc/sys/kernel/shmmni"),
    }


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())
