"""``python -m qsharedmem.demo``: a shared ledger survives a worker killed inside the lock.

What it shows, step by step (every line says when, which process and what):

1. A coordinator creates a segment holding a *ledger*: a total, one tally per worker and a
   checksum over them. The invariant ``total == sum(tallies)`` with a matching checksum holds
   only between updates, so every update is made under the segment's lock.
2. Worker processes (started with ``spawn``, so they share nothing but the key) attach to the
   segment by its key and make their updates concurrently.
3. One worker is SIGKILLed while it holds the lock, in the middle of an update: it has raised
   the total but not yet its tally. With Qt (POSIX keys) that lock would stay held forever.
4. The next worker to lock is told ``lockOwnerDied() == True``. It finds the record torn,
   undoes the unfinished update with the dead worker's log entry (a before-image written
   before the update began), and everyone carries on.
5. The final ledger is checked (totals exact) and printed, and after the last detach the
   segment is gone from the system (``/dev/shm``; for System V keys ``ipcs``).

Options: ``--key-type posix|systemv`` (default ``posix``), ``--workers N``, ``--updates N``,
``--key NAME``. The exit status is 0 when every check passes, 1 otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import multiprocessing
import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import QNativeIpcKey, QSharedMemory

__all__ = ["main"]

WAIT = 60.0  # longest wait for a lock or a worker's message; a hang guard, never reached

# ------------------------------------------------------------------------------------------------
# The ledger: 64-bit words in the shared memory
#
#   [0] magic   [1] workers   [2] total   [3] checksum   [4] repairs
#   [5 .. 5+W)  tally of each worker
#   then per worker a log entry of 4 words: state, seq, total before, tally before

MAGIC = int.from_bytes(b"QSHLEDGR", "little")
HEADER_WORDS = 5
LOG_WORDS = 4
IDLE, PENDING = 0, 1


def ledger_size(workers: int) -> int:
    return 8 * (HEADER_WORDS + workers + LOG_WORDS * workers)


@dataclass(frozen=True)
class LogEntry:
    """A worker's before-image of the update it is making (state PENDING until it finishes)."""

    worker: int
    state: int
    seq: int
    total_before: int
    tally_before: int


class Ledger:
    """The ledger in a segment's memory. Call its methods only while holding the lock."""

    def __init__(self, shm: QSharedMemory, *, writable: bool = True) -> None:
        view = shm.data() if writable else shm.constData()
        if view is None:
            raise RuntimeError("the handle is not attached")
        self.words = view.cast("Q")
        self.workers = self.words[1]

    def close(self) -> None:
        """Release the view (until then it keeps this process attached, even after detach)."""
        self.words.release()

    def initialise(self, workers: int) -> None:
        self.workers = workers
        self.words[1] = workers
        self.words[3] = self.checksum()
        self.words[0] = MAGIC

    @property
    def total(self) -> int:
        return self.words[2]

    @property
    def repairs(self) -> int:
        return self.words[4]

    def tallies(self) -> list[int]:
        return list(self.words[HEADER_WORDS : HEADER_WORDS + self.workers])

    def checksum(self) -> int:
        packed = struct.pack(f"<{1 + self.workers}Q", self.total, *self.tallies())
        return zlib.crc32(packed)

    def checksum_ok(self) -> bool:
        return self.words[3] == self.checksum()

    def consistent(self) -> bool:
        return self.total == sum(self.tallies()) and self.checksum_ok()

    def _log_at(self, worker: int) -> int:
        return HEADER_WORDS + self.workers + LOG_WORDS * worker

    def log(self, worker: int) -> LogEntry:
        at = self._log_at(worker)
        return LogEntry(worker, *self.words[at : at + LOG_WORDS])

    def pending(self) -> list[LogEntry]:
        return [e for e in map(self.log, range(self.workers)) if e.state == PENDING]

    # An update is several separate writes, deliberately: between them the record is torn.
    def begin_update(self, worker: int) -> int:
        """Log the before-image, then raise the total. Returns the update's sequence number."""
        at = self._log_at(worker)
        seq = self.total + 1
        self.words[at + 1] = seq
        self.words[at + 2] = self.total
        self.words[at + 3] = self.words[HEADER_WORDS + worker]
        self.words[at] = PENDING
        self.words[2] = seq
        return seq

    def finish_update(self, worker: int) -> None:
        """Raise the worker's tally, refresh the checksum, close the log entry."""
        self.words[HEADER_WORDS + worker] += 1
        self.words[3] = self.checksum()
        self.words[self._log_at(worker)] = IDLE

    def roll_back(self, entry: LogEntry) -> None:
        """Undo an unfinished update from its before-image."""
        self.words[2] = entry.total_before
        self.words[HEADER_WORDS + entry.worker] = entry.tally_before
        self.words[self._log_at(entry.worker)] = IDLE
        self.words[3] = self.checksum()
        self.words[4] += 1


# ------------------------------------------------------------------------------------------------
# Output


class Reporter:
    """Prints ``[+seconds] pid  who  what`` lines; the clock starts in the coordinator.

    ``time.monotonic()`` is one system-wide clock on Linux, so every process measures from the
    same start.
    """

    def __init__(self, who: str, start: float) -> None:
        self.who = who
        self.start = start

    def say(self, text: str) -> None:
        elapsed = time.monotonic() - self.start
        line = f"[{elapsed:+8.3f}s] pid {os.getpid():<7} {self.who:<12} {text}\n"
        sys.stdout.write(line)  # one write per line: lines of different processes do not mix
        sys.stdout.flush()

    @staticmethod
    def heading(text: str) -> None:
        sys.stdout.write(f"\n== {text} ==\n")
        sys.stdout.flush()

    @staticmethod
    def line(text: str = "") -> None:
        sys.stdout.write(f"  {text}\n" if text else "\n")
        sys.stdout.flush()


def describe(ledger: Ledger) -> str:
    tallies = ledger.tallies()
    return (
        f"total {ledger.total}, tallies {tallies} (sum {sum(tallies)}), "
        f"checksum {'ok' if ledger.checksum_ok() else 'MISMATCH'}"
    )


# ------------------------------------------------------------------------------------------------
# A worker process


class Worker:
    """One worker: attached by key, it makes locked updates on the coordinator's command."""

    def __init__(self, index: int, key: str, start: float, conn: Any) -> None:
        self.index = index
        self.conn = conn
        self.out = Reporter(f"worker {index}", start)
        self.shm = QSharedMemory(QNativeIpcKey.fromString(key))
        self.ledger: Ledger | None = None
        self.updates = 0
        self.owner_deaths_seen = 0
        self.repaired: list[int] = []

    def run(self) -> None:
        if not self.shm.attach():
            self.conn.send(("error", f"attach failed: {self.shm.errorString()}"))
            return
        self.ledger = Ledger(self.shm)
        self.out.say(f"attached to the segment ({self.shm.size()} bytes)")
        self.conn.send(("attached", os.getpid()))
        while True:
            command, *args = self.conn.recv()
            if command == "update":
                self.update_many(*args)
            elif command == "crash":
                self.update_and_get_killed()
            elif command == "exit":
                self.ledger.close()
                self.shm.detach()
                self.out.say("detached")
                self.conn.send(("detached", self.updates))
                return

    @contextlib.contextmanager
    def locked(self) -> Iterator[Ledger]:
        assert self.ledger is not None
        with self.shm.locked(timeout=WAIT):
            if self.shm.lockOwnerDied():
                self.recover(self.ledger)
            yield self.ledger

    def update_many(self, count: int, announce: bool) -> None:
        if announce:
            self.out.say("wants the lock for its next update (waits while it is held)")
            self.conn.send(("waiting",))
        for _ in range(count):
            with self.locked() as ledger:
                ledger.begin_update(self.index)
                os.sched_yield()  # the record is torn here; only the lock keeps others out
                ledger.finish_update(self.index)
            self.updates += 1
        self.out.say(f"made {count} updates")
        self.conn.send(("updated", self.updates, self.owner_deaths_seen, self.repaired))

    def update_and_get_killed(self) -> None:
        with self.locked() as ledger:
            seq = ledger.begin_update(self.index)
            self.out.say(
                f"holds the lock; update #{seq} is half done (total raised, tally not yet)"
            )
            self.conn.send(("torn", seq))
            self.conn.recv()  # the coordinator kills this process while it waits here
        raise RuntimeError("not killed")

    def recover(self, ledger: Ledger) -> None:
        self.owner_deaths_seen += 1
        self.out.say("lock() -> True, lockOwnerDied() -> True: the last holder died holding it")
        self.out.say(f"  the record as it left it: {describe(ledger)}")
        for entry in ledger.pending():
            self.out.say(
                f"  worker {entry.worker}'s log: update #{entry.seq} unfinished; before it, "
                f"total was {entry.total_before} and its tally {entry.tally_before}"
            )
            ledger.roll_back(entry)
            self.repaired.append(entry.seq)
            self.out.say(
                f"  rolled update #{entry.seq} back from that before-image (written before "
                "the update began; nothing else changed since, as the dead worker held the lock)"
            )
        state = "consistent again" if ledger.consistent() else "STILL INCONSISTENT"
        self.out.say(f"  repaired: {describe(ledger)}: {state}")


def _worker_main(index: int, key: str, start: float, conn: Any) -> None:
    Worker(index, key, start, conn).run()


# ------------------------------------------------------------------------------------------------
# What the system holds for the key


def ftok(path: str, project_id: int) -> int | None:
    """glibc's ftok()."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return ((project_id & 0xFF) << 24) | ((st.st_dev & 0xFF) << 16) | (st.st_ino & 0xFFFF)


@dataclass
class SystemView:
    """The OS objects behind one key, listed the way an administrator would look."""

    key: QNativeIpcKey
    sysv_key: int | None = field(default=None)

    @property
    def posix(self) -> bool:
        return self.key.type() == QNativeIpcKey.Type.PosixRealtime

    def remember_sysv_key(self) -> None:
        """Compute the System V key while the key file exists (the last detach removes it)."""
        if not self.posix:
            self.sysv_key = ftok(self.key.nativeKey(), int(self.key.type()))

    def objects(self) -> list[str]:
        """One line per object that exists now."""
        if self.posix:
            path = Path("/dev/shm") / self.key.nativeKey().lstrip("/")
            with contextlib.suppress(OSError):
                size = path.stat().st_size
                return [f"{path}  ({size} bytes: the data, then qsharedmem's control page)"]
            return []
        found = []
        if os.path.exists(self.key.nativeKey()):
            found.append(f"key file {self.key.nativeKey()}")
        if self.sysv_key is not None:
            hex_key = f"0x{self.sysv_key:08x}"
            for option, kind, columns in (
                ("-m", "segment", ("key", "shmid", "owner", "perms", "bytes", "nattch")),
                ("-s", "semaphore set", ("key", "semid", "owner", "perms", "nsems")),
            ):
                for row in ipcs(option, hex_key):
                    labelled = ", ".join(f"{c} {v}" for c, v in zip(columns, row, strict=False))
                    found.append(f"ipcs {option}: {kind}: {labelled}")
        return found

    def show(self, out: Reporter, when: str) -> list[str]:
        found = self.objects()
        where = "/dev/shm" if self.posix else "ipcs and the key file"
        if found:
            out.say(f"{when}, in {where}:")
            for line in found:
                Reporter.line(f"    {line}")
        else:
            out.say(f"{when}: nothing left for this key in {where}")
        return found


def ipcs(option: str, hex_key: str) -> list[list[str]]:
    """The ``ipcs`` rows (key, id, owner, perms, ...) with this key (from /proc if no ipcs)."""
    try:
        listing = subprocess.run(
            ["ipcs", option], capture_output=True, text=True, check=True, timeout=WAIT
        ).stdout
        return [row.split() for row in listing.splitlines() if row.startswith(hex_key)]
    except (OSError, subprocess.SubprocessError):
        # /proc/sysvipc/shm: key shmid perms size cpid lpid nattch uid ...
        # /proc/sysvipc/sem: key semid perms nsems uid ...      (reordered like ipcs)
        table = Path("/proc/sysvipc/shm" if option == "-m" else "/proc/sysvipc/sem")
        rows = [r.split() for r in table.read_text().splitlines()[1:]] if table.exists() else []
        wanted = int(hex_key, 16)
        return [
            [hex_key, r[1], r[7], r[2], r[3], r[6]]
            if option == "-m"
            else [hex_key, *r[1:2], r[4], *r[2:4]]
            for r in rows
            if int(r[0]) & 0xFFFFFFFF == wanted
        ]


# ------------------------------------------------------------------------------------------------
# The coordinator


class DemoFailure(Exception):
    """Something did not happen as the demo expects (a broken promise, not a usage error)."""


@dataclass
class WorkerHandle:
    index: int
    process: Any
    conn: Any
    pid: int = 0
    updates: int = 0
    owner_deaths_seen: int = 0
    repaired: list[int] = field(default_factory=list)

    def expect(self, *kinds: str) -> tuple[Any, ...]:
        if not self.conn.poll(WAIT):
            raise DemoFailure(f"worker {self.index} sent nothing for {WAIT:.0f} s")
        try:
            message: tuple[Any, ...] = self.conn.recv()
        except EOFError:
            self.process.join(WAIT)
            raise DemoFailure(
                f"worker {self.index} exited (status {self.process.exitcode}) "
                f"instead of sending {kinds}"
            ) from None
        if message[0] not in kinds:
            raise DemoFailure(f"worker {self.index}: expected {kinds}, got {message!r}")
        return message


class Demo:
    def __init__(self, key: QNativeIpcKey, workers: int, updates: int) -> None:
        self.key = key
        self.workers = workers
        self.updates = updates
        self.start = time.monotonic()
        self.out = Reporter("coordinator", self.start)
        self.shm = QSharedMemory(key)
        self.system = SystemView(key)
        self.handles: list[WorkerHandle] = []
        self.checks: list[tuple[str, bool]] = []

    def check(self, what: str, ok: bool) -> bool:
        self.checks.append((what, ok))
        Reporter.line(f"[{'ok' if ok else 'FAILED'}] {what}")
        return ok

    @property
    def victim(self) -> WorkerHandle:
        return self.handles[-1]

    @property
    def survivors(self) -> list[WorkerHandle]:
        return self.handles[:-1]

    def run(self) -> bool:
        backend = (
            "POSIX shared memory in /dev/shm; lock: a robust process-shared mutex"
            if self.system.posix
            else "System V shared memory; lock: Qt's SEM_UNDO semaphore + a consistency token"
        )
        print("qsharedmem demo: a shared ledger, a worker killed inside the lock, the recovery")
        Reporter.line(f"key     {self.key.toString()}")
        Reporter.line(f"backend {backend}")
        Reporter.line(
            "ledger  a total, one tally per worker, a checksum: consistent (total = sum of "
            "tallies) only between updates"
        )
        try:
            self.create()
            self.phase_normal_work()
            self.phase_crash()
            self.phase_recovery()
            self.phase_final_check()
        except DemoFailure as failure:
            self.check(f"stopped early: {failure}", False)
        finally:
            self.stop_workers()
        if self.shm.isAttached() or self.handles:
            self.phase_last_detach()
        passed = all(ok for _, ok in self.checks)
        failed = [what for what, ok in self.checks if not ok]
        print()
        if passed:
            print(f"RESULT: all {len(self.checks)} checks passed")
        else:
            print(f"RESULT: FAILED: {'; '.join(failed)}")
        return passed

    # -- the steps
    def create(self) -> None:
        Reporter.heading("1. The coordinator creates the segment")
        if not self.shm.create(ledger_size(self.workers)):
            raise DemoFailure(f"create failed: {self.shm.errorString()}")
        self.system.remember_sysv_key()
        with self.shm.locked(timeout=WAIT):
            ledger = Ledger(self.shm)
            ledger.initialise(self.workers)
            ledger.close()
        self.out.say(f"created {self.shm.size()} bytes: an empty ledger for {self.workers} workers")
        self.system.show(self.out, "while attached")

    def phase_normal_work(self) -> None:
        Reporter.heading(
            f"2. {self.workers} workers (spawned processes) attach by key and update under the lock"
        )
        context = multiprocessing.get_context("spawn")
        # by module name, so that it unpickles in the children however this module was started
        target = importlib.import_module("qsharedmem.demo")._worker_main
        for index in range(self.workers):
            parent_end, child_end = context.Pipe()
            process = context.Process(
                target=target,
                args=(index, self.key.toString(), self.start, child_end),
                name=f"qsharedmem-demo-worker-{index}",
            )
            process.start()
            child_end.close()
            self.handles.append(WorkerHandle(index, process, parent_end))
        for handle in self.handles:
            handle.pid = handle.expect("attached")[1]
        self.out.say(f"all {self.workers} attached; each makes {self.updates} updates")
        for handle in self.handles:
            handle.conn.send(("update", self.updates, False))
        for handle in self.handles:
            self.note_updates(handle)
        with self.shm.locked(timeout=WAIT):
            ledger = Ledger(self.shm, writable=False)
            self.out.say(f"ledger: {describe(ledger)}")
            self.check(
                f"after concurrent updates the ledger is consistent with "
                f"{self.workers} x {self.updates} = {self.workers * self.updates} updates",
                ledger.consistent() and ledger.total == self.workers * self.updates,
            )
            ledger.close()

    def note_updates(self, handle: WorkerHandle) -> None:
        _, handle.updates, handle.owner_deaths_seen, handle.repaired = handle.expect("updated")

    def phase_crash(self) -> None:
        victim = self.victim
        Reporter.heading(f"3. Worker {victim.index} is SIGKILLed while it holds the lock")
        victim.conn.send(("crash",))
        seq = victim.expect("torn")[1]
        # Reading without the lock is fine here: the holder is frozen, and we only look.
        ledger = Ledger(self.shm, writable=False)
        self.out.say(f"the record now (torn): {describe(ledger)}")
        ledger.close()
        for handle in self.survivors:
            handle.conn.send(("update", self.updates, True))
        for handle in self.survivors:
            handle.expect("waiting")
        self.out.say(f"SIGKILL -> pid {victim.pid} (worker {victim.index}), inside update #{seq}")
        os.kill(victim.pid, signal.SIGKILL)
        victim.process.join(WAIT)
        status = victim.process.exitcode
        self.out.say(f"worker {victim.index} is gone (exit status {status})")
        self.check(
            f"worker {victim.index} died by SIGKILL holding the lock",
            status == -signal.SIGKILL,
        )
        self.check("the segment outlived the killed worker", bool(self.system.objects()))

    def phase_recovery(self) -> None:
        Reporter.heading("4. The survivors recover and carry on")
        for handle in self.survivors:
            self.note_updates(handle)
        deaths = [h.index for h in self.survivors for _ in range(h.owner_deaths_seen)]
        repaired = [seq for h in self.survivors for seq in h.repaired]
        self.out.say(
            f"lockOwnerDied() was True for worker(s) {deaths}; updates rolled back: {repaired}"
        )
        self.check("exactly one survivor was told the lock's owner died", len(deaths) == 1)
        self.check("it rolled back exactly the killed worker's update", len(repaired) == 1)

    def phase_final_check(self) -> None:
        Reporter.heading("5. Final check")
        for handle in self.survivors:
            handle.conn.send(("exit",))
        for handle in self.survivors:
            handle.updates = handle.expect("detached")[1]
            handle.process.join(WAIT)
        with self.shm.locked(timeout=WAIT):
            ledger = Ledger(self.shm, writable=False)
            tallies = ledger.tallies()
            expected = [2 * self.updates] * len(self.survivors) + [self.updates]
            Reporter.line(f"{'worker':<8}{'pid':<9}{'updates made':<24}tally in the ledger")
            for handle, tally in zip(self.handles, tallies, strict=True):
                made = f"{handle.updates}"
                if handle is self.victim:
                    made += " + 1 killed midway"
                Reporter.line(f"{handle.index:<8}{handle.pid:<9}{made:<24}{tally}")
            Reporter.line(
                f"total {ledger.total}, sum of tallies {sum(tallies)}, checksum "
                f"{'ok' if ledger.checksum_ok() else 'MISMATCH'}, repairs {ledger.repairs}, "
                f"unfinished log entries {len(ledger.pending())}"
            )
            self.check(
                "the ledger is consistent (total = sum of tallies, checksum ok)",
                ledger.consistent(),
            )
            self.check(
                f"totals are exact after the repair: tallies {expected}, total {sum(expected)}",
                tallies == expected and ledger.total == sum(expected),
            )
            self.check(
                "one repair recorded, no unfinished update left",
                ledger.repairs == 1 and not ledger.pending(),
            )
            ledger.close()

    def phase_last_detach(self) -> None:
        Reporter.heading("6. The last detach removes the segment")
        if not self.shm.isAttached():
            return
        before = self.system.show(self.out, "before")
        self.shm.detach()
        self.out.say("detached: that was the last attachment in any process")
        after = self.system.show(self.out, "after")
        self.check(
            "the segment existed while attached and is gone after the last detach",
            bool(before) and not after,
        )

    def stop_workers(self) -> None:
        """Whatever happened: no worker outlives the demo."""
        for handle in self.handles:
            if handle.process.is_alive():
                handle.process.kill()
            handle.process.join(WAIT)
            handle.conn.close()


# ------------------------------------------------------------------------------------------------
# Command line


def parse_args(
    argv: list[str] | None, prog: str = "python -m qsharedmem.demo"
) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Several processes update a shared ledger under the lock; one is killed "
        "holding it; the others recover. Exit status 0 if every check passes.",
    )
    parser.add_argument(
        "--key-type",
        choices=("posix", "systemv"),
        default="posix",
        help="POSIX (default) or System V shared memory",
    )
    parser.add_argument(
        "--key", default=None, help="the key (default: qsharedmem-demo-<pid>, unique per run)"
    )
    parser.add_argument("--workers", type=int, default=4, help="worker processes (default 4)")
    parser.add_argument(
        "--updates", type=int, default=500, help="updates per worker and round (default 500)"
    )
    args = parser.parse_args(argv)
    if args.workers < 2:
        parser.error("--workers must be at least 2 (one is killed)")
    if args.updates < 1:
        parser.error("--updates must be at least 1")
    return args


def main(argv: list[str] | None = None, prog: str = "python -m qsharedmem.demo") -> int:
    """Runs the demonstration; ``prog`` is the command name its ``--help`` shows."""
    args = parse_args(argv, prog)
    key_type = {
        "posix": QNativeIpcKey.Type.PosixRealtime,
        "systemv": QNativeIpcKey.Type.SystemV,
    }[args.key_type]
    name = args.key or f"qsharedmem-demo-{os.getpid()}"
    key = QSharedMemory.platformSafeKey(name, key_type)
    return 0 if Demo(key, args.workers, args.updates).run() else 1


if __name__ == "__main__":
    raise SystemExit(main())
