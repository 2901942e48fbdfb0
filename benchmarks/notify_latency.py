"""Notify-to-wake latency across processes, and the CPU an idle waiter burns (issue 18).

One waiter process (pinned to CPU 1) and one notifier (this process, pinned to CPU 0), for each
way of waking another process that Python programs use, side by side in one run:

* ``qsharedmem wait_changed`` — ``shm.wait_changed(generation)`` / ``shm.notify()``;
* ``qsharedmem event`` — ``shm.event(0).wait()`` / ``.set()``;
* ``multiprocessing.Event`` — between parent and forked child (it cannot be shared otherwise);
* ``pipe`` — ``os.read`` of one byte / ``os.write``;
* ``posix_ipc.Semaphore`` — ``acquire()`` / ``release()``;
* ``busy-wait`` — a loop reading a word of shared memory until it changes (what vLLM's and
  sglang's queues do): spinning only, and it burns a whole core while idle.

Every round: the waiter announces the round in a shared word and starts waiting; the notifier
sees the announcement, then (``parked``) sleeps 1 ms so that the waiter is asleep in the
kernel, or (``spinning``) goes on at once while the waiter is still polling (qsharedmem: a
``spin`` longer than the round; the others: a loop of non-blocking tries); then it takes
``t0 = perf_counter_ns()``, stores it in shared memory and wakes the waiter, which takes ``t1``
as soon as its wait returns. The latency is ``t1 - t0`` (CLOCK_MONOTONIC, one clock for both
processes), so it includes the return to Python on the waiter's side, as a program sees it.

Idle CPU: the waiter waits (parked, no timeout) for ``IDLE_SECONDS`` while nothing happens; the
CPU time it used in that wait (``getrusage``), as a share of one core.

Run: ``python -m benchmarks.notify_latency [--quick] [--output DIR]`` (``make bench-notify``):
writes ``DIR/notify.md`` and ``DIR/notify.json`` (default: ``benchmarks/``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import mmap
import multiprocessing
import os
import platform
import resource
import statistics
import struct
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import posix_ipc
import qsharedmem

HERE = Path(__file__).resolve().parent

# The shared words of the protocol (an anonymous shared mapping, inherited by the fork).
T0, READY = 0, 8
PARK_DELAY = 0.001  # the notifier's pause before a parked round: the waiter is asleep by then
SPIN_FOR = 5.0  # qsharedmem's spin in the spinning rounds: longer than any round
IDLE_SECONDS = 3.0


@dataclass
class Rounds:
    parked: int
    spinning: int
    idle: float


FULL = Rounds(parked=2000, spinning=20000, idle=IDLE_SECONDS)
QUICK = Rounds(parked=20, spinning=200, idle=0.2)


def _word(board: mmap.mmap, at: int) -> int:
    return struct.unpack_from("q", board, at)[0]


def _set_word(board: mmap.mmap, at: int, value: int) -> None:
    struct.pack_into("q", board, at, value)


def _pin(cpu: int) -> None:
    with contextlib.suppress(OSError):
        os.sched_setaffinity(0, {cpu % (os.cpu_count() or 1)})


# --------------------------------------------------------------------------------------------
# The peers: how a waiter waits (parked or spinning) and how the notifier wakes it.


class Peer:
    """One way to wake a process. ``wait(spinning)`` returns when woken; ``wake()`` wakes."""

    name = ""
    can_park = True

    def prepare_child(self) -> None:
        """Runs in the waiter after the fork (attach by name, pin, ...)."""

    def arm(self) -> None:
        """Runs in the waiter before it announces a round (take a generation, ...)."""

    def wait(self, spinning: bool) -> None:
        raise NotImplementedError

    def wake(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Runs in the parent at the end: remove what the peer made."""


class WaitChanged(Peer):
    name = "qsharedmem wait_changed"

    def __init__(self, tag: str) -> None:
        self.key = f"bench-notify-{tag}"
        self.shm = qsharedmem.QSharedMemory(self.key)
        if not self.shm.create(64):
            raise RuntimeError(self.shm.errorString())
        self.generation = 0

    def prepare_child(self) -> None:
        self.shm = qsharedmem.QSharedMemory(self.key)
        if not self.shm.attach():
            raise RuntimeError(self.shm.errorString())

    def arm(self) -> None:
        self.generation = self.shm.generation()

    def wait(self, spinning: bool) -> None:
        if spinning:
            self.shm.wait_changed(self.generation, spin=SPIN_FOR)
        else:
            self.shm.wait_changed(self.generation)

    def wake(self) -> None:
        self.shm.notify()

    def close(self) -> None:
        self.shm.detach()


class SegmentEvent(WaitChanged):
    name = "qsharedmem event"

    def __init__(self, tag: str) -> None:
        super().__init__(tag)
        self.event = self.shm.event(0)

    def prepare_child(self) -> None:
        super().prepare_child()
        self.event = self.shm.event(0)

    def arm(self) -> None:
        self.event.clear()

    def wait(self, spinning: bool) -> None:
        if spinning:
            self.event.wait(spin=SPIN_FOR)
        else:
            self.event.wait()

    def wake(self) -> None:
        self.event.set()


class MpEvent(Peer):
    name = "multiprocessing.Event"

    def __init__(self, tag: str) -> None:
        self.event = multiprocessing.get_context("fork").Event()

    def arm(self) -> None:
        self.event.clear()

    def wait(self, spinning: bool) -> None:
        if spinning:
            while not self.event.is_set():
                pass
        else:
            self.event.wait()

    def wake(self) -> None:
        self.event.set()


class Pipe(Peer):
    name = "pipe"

    def __init__(self, tag: str) -> None:
        self.reader, self.writer = os.pipe()

    def wait(self, spinning: bool) -> None:
        if not spinning:
            os.read(self.reader, 1)
            return
        os.set_blocking(self.reader, False)
        try:
            while True:
                try:
                    os.read(self.reader, 1)
                    return
                except BlockingIOError:
                    pass
        finally:
            os.set_blocking(self.reader, True)

    def wake(self) -> None:
        os.write(self.writer, b"!")

    def close(self) -> None:
        os.close(self.reader)
        os.close(self.writer)


class PosixSemaphore(Peer):
    name = "posix_ipc.Semaphore"

    def __init__(self, tag: str) -> None:
        self.semaphore = posix_ipc.Semaphore(f"/bench-notify-{tag}", posix_ipc.O_CREX, 0o600, 0)

    def wait(self, spinning: bool) -> None:
        if not spinning:
            self.semaphore.acquire()
            return
        while True:
            try:
                self.semaphore.acquire(0)
                return
            except posix_ipc.BusyError:
                pass

    def wake(self) -> None:
        self.semaphore.release()

    def close(self) -> None:
        self.semaphore.unlink()
        self.semaphore.close()


class BusyWait(Peer):
    name = "busy-wait"
    can_park = False

    def __init__(self, tag: str) -> None:
        self.word = mmap.mmap(-1, mmap.PAGESIZE)  # shared with the forked waiter
        self.seen = 0

    def arm(self) -> None:
        self.seen = _word(self.word, 0)

    def wait(self, spinning: bool) -> None:
        while _word(self.word, 0) == self.seen:
            pass

    def wake(self) -> None:
        _set_word(self.word, 0, _word(self.word, 0) + 1)

    def close(self) -> None:
        self.word.close()


PEERS: list[Callable[[str], Peer]] = [
    WaitChanged,
    SegmentEvent,
    MpEvent,
    Pipe,
    PosixSemaphore,
    BusyWait,
]


# --------------------------------------------------------------------------------------------
# The runner


def _waiter(peer: Peer, board: mmap.mmap, rounds: int, spinning: bool, results: Any) -> None:
    _pin(1)
    peer.prepare_child()
    latencies = []
    for round_number in range(1, rounds + 1):
        peer.arm()
        _set_word(board, READY, round_number)
        peer.wait(spinning)
        t1 = time.perf_counter_ns()
        latencies.append(t1 - _word(board, T0))
    results.send(latencies)


def _idle_waiter(peer: Peer, board: mmap.mmap, results: Any) -> None:
    _pin(1)
    peer.prepare_child()
    peer.arm()
    before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.monotonic()
    _set_word(board, READY, -1)
    peer.wait(spinning=not peer.can_park)
    wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    results.send({"cpu_seconds": cpu, "wall_seconds": wall})


def _await_word(board: mmap.mmap, value: int, child: Any) -> None:
    deadline = time.monotonic() + 30
    while _word(board, READY) != value:
        if time.monotonic() > deadline or not child.is_alive():
            raise RuntimeError(f"the waiter never announced {value} (exit code {child.exitcode})")


def _in_child(target: Callable[..., None], *args: Any) -> tuple[Any, Any]:
    context = multiprocessing.get_context("fork")
    receiver, sender = context.Pipe(duplex=False)
    child = context.Process(target=target, args=(*args, sender), daemon=True)
    child.start()
    sender.close()
    return child, receiver


def measure(peer: Peer, board: mmap.mmap, rounds: int, spinning: bool) -> list[int]:
    _set_word(board, READY, 0)
    child, receiver = _in_child(_waiter, peer, board, rounds, spinning)
    for round_number in range(1, rounds + 1):
        _await_word(board, round_number, child)
        if not spinning:
            time.sleep(PARK_DELAY)
        _set_word(board, T0, time.perf_counter_ns())
        peer.wake()
    latencies: list[int] = receiver.recv()
    child.join(30)
    return latencies


def idle_cpu(peer: Peer, board: mmap.mmap, seconds: float) -> dict[str, float]:
    _set_word(board, READY, 0)
    child, receiver = _in_child(_idle_waiter, peer, board)
    _await_word(board, -1, child)
    time.sleep(seconds)
    peer.wake()
    report: dict[str, float] = receiver.recv()
    child.join(30)
    return report


def percentile(values: list[int], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] / 1000.0


def summary(latencies: list[int]) -> dict[str, float]:
    # The first rounds warm up both processes (page faults, code paths): left out.
    kept = latencies[len(latencies) // 20 :] or latencies
    return {
        "rounds": len(kept),
        "p50_us": percentile(kept, 0.50),
        "p99_us": percentile(kept, 0.99),
        "mean_us": statistics.fmean(kept) / 1000.0,
    }


@contextlib.contextmanager
def made(factory: Callable[[str], Peer]) -> Iterator[Peer]:
    peer = factory(uuid.uuid4().hex[:12])
    try:
        yield peer
    finally:
        peer.close()


def run(rounds: Rounds) -> dict[str, Any]:
    _pin(0)
    board = mmap.mmap(-1, mmap.PAGESIZE)
    results: dict[str, Any] = {}
    for factory in PEERS:
        with made(factory) as peer:
            row: dict[str, Any] = {}
            if peer.can_park:
                row["parked"] = summary(measure(peer, board, rounds.parked, spinning=False))
            row["spinning"] = summary(measure(peer, board, rounds.spinning, spinning=True))
            idle = idle_cpu(peer, board, rounds.idle)
            row["idle_cpu_percent"] = 100.0 * idle["cpu_seconds"] / max(idle["wall_seconds"], 1e-9)
            results[peer.name] = row
            print(f"{peer.name:26} {json.dumps(row)}", file=sys.stderr, flush=True)
    return results


def _cell(row: dict[str, Any], mode: str, field: str) -> str:
    return f"{row[mode][field]:.1f}" if mode in row else "—"


def report(results: dict[str, Any], quick: bool) -> str:
    load = os.getloadavg()[0]
    lines = [
        "# Notify-to-wake latency and idle CPU",
        "",
        "Written by `python -m benchmarks.notify_latency` (`make bench-notify`)"
        + (" in its quick mode: **too few rounds to mean anything**." if quick else "."),
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, Linux {platform.release()}, "
        f"CPython {platform.python_version()}, load average {load:.2f} at the end. "
        "Waiter on CPU 1, notifier on CPU 0. The method is in the module's docstring.",
        "",
        "| waker | parked p50 µs | parked p99 µs | spinning p50 µs | spinning p99 µs | idle CPU |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, row in results.items():
        lines.append(
            f"| {name} | {_cell(row, 'parked', 'p50_us')} | {_cell(row, 'parked', 'p99_us')} "
            f"| {_cell(row, 'spinning', 'p50_us')} | {_cell(row, 'spinning', 'p99_us')} "
            f"| {row['idle_cpu_percent']:.2f} % |"
        )
    lines += [
        "",
        "Targets (issue 18): qsharedmem p50 ≤ 10 µs parked and ≤ 1 µs spinning, idle CPU ≈ 0.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few rounds: checks the runner")
    parser.add_argument("--output", type=Path, default=HERE, help="where notify.{md,json} go")
    args = parser.parse_args(argv)
    results = run(QUICK if args.quick else FULL)
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "notify.json").write_text(
        json.dumps({"quick": args.quick, "results": results}, indent=1) + "\n"
    )
    (args.output / "notify.md").write_text(report(results, args.quick))
    print(report(results, args.quick))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
