"""The six workloads of issue 5. Each one measures every implementation in the same run and
records its samples with :meth:`Run.add`; none of them asserts anything about a time.

1. ``lock``: an uncontended ``lock()``+``unlock()`` pair, per backend.
2. ``contention``: two processes handing the lock back and forth (round trips per second), and
   four processes incrementing one counter under the lock (increments per second).
3. ``lifecycle``: ``attach()``+``detach()`` of an existing 4 KiB segment; ``create()``+
   ``detach()`` of a new one.
4. ``data``: the cost of a ``data()`` call; copying into and out of ``data()`` against the same
   copy between two ``bytearray`` objects.
5. ``big``: ``create(1 GiB)`` plus touching every page.
6. ``scale``: up to 64 processes attached to one segment (how each cost grows with them), and
   10,000 segments open in one process (and, in a full run, where the limit is).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import resource
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

from ._harness import Child, ChildIO, children, fork_child, interleaved
from .peers import POSIX, SYSTEM_V, Handle, Peer, PeerError

PAGE = os.sysconf("SC_PAGESIZE")
KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB


def size_text(size: int) -> str:
    return f"{size // GIB} GiB" if size % GIB == 0 else f"{size // MIB} MiB"


@dataclasses.dataclass(frozen=True)
class Config:
    """Sizes and repetitions; ``quick()`` keeps every workload but makes it small."""

    quick: bool = False
    repeats: int = 25  # samples of each micro-benchmark
    sample_seconds: float = 0.02  # the length of one sample
    process_repeats: int = 5  # runs of each multi-process workload
    contention_seconds: float = 1.0  # the length of one run
    counter_processes: int = 4
    copy_bytes: int = 256 * MIB
    copy_repeats: int = 9
    big_bytes: int = 1 * GIB
    big_repeats: int = 5
    scale_levels: tuple[int, ...] = (1, 4, 16, 64)
    many_segments: int = 10_000
    probe_limits: bool = True  # keep creating segments until the OS refuses (full run only)
    probe_cap: int = 100_000

    @classmethod
    def full(cls) -> Config:
        return cls()

    @classmethod
    def quick_mode(cls) -> Config:
        return cls(
            quick=True,
            repeats=3,
            sample_seconds=0.005,
            process_repeats=1,
            contention_seconds=0.05,
            copy_bytes=16 * MIB,
            copy_repeats=3,
            big_bytes=32 * MIB,
            big_repeats=1,
            scale_levels=(1, 4),
            many_segments=300,
            probe_limits=False,
        )


@dataclasses.dataclass
class Measurement:
    workload: str
    case: str
    impl: str
    unit: str
    samples: list[float]
    higher_is_better: bool = False


class Run:
    """What one run measured."""

    def __init__(self, config: Config, peers: dict[str, Peer], log: Callable[[str], None]):
        self.config = config
        self.peers = peers
        self.log = log
        self.measurements: list[Measurement] = []
        self.facts: dict[str, Any] = {}  # non-timing findings (limits hit, counts)

    def add(
        self,
        workload: str,
        case: str,
        impl: str,
        unit: str,
        samples: list[float],
        higher_is_better: bool = False,
    ) -> None:
        self.measurements.append(
            Measurement(workload, case, impl, unit, list(samples), higher_is_better)
        )

    def select(self, *labels: str) -> dict[str, Peer]:
        return {label: self.peers[label] for label in labels}


def pair_loop(first: Callable[[], object], second: Callable[[], object]) -> Callable[[int], None]:
    def loop(count: int) -> None:
        for _ in range(count):
            first()
            second()

    return loop


def call_loop(call: Callable[[], object]) -> Callable[[int], None]:
    def loop(count: int) -> None:
        for _ in range(count):
            call()

    return loop


@contextlib.contextmanager
def created(peers: dict[str, Peer], size: int) -> Iterator[dict[str, Handle]]:
    """One new segment per peer, destroyed at the end."""
    handles: dict[str, Handle] = {}
    try:
        for label, peer in peers.items():
            handles[label] = peer.create(size)
        yield handles
    finally:
        for label, handle in handles.items():
            peers[label].destroy(handle)


QSM_POSIX = "qsharedmem POSIX"
QSM_SYSV = "qsharedmem System V"
QT_POSIX = "PySide6 POSIX"
QT_SYSV = "PySide6 System V"
MP = "multiprocessing"
POSIX_IPC = "posix_ipc"
SYSV_IPC = "sysv_ipc"
QSM_ON_QT = "qsharedmem on a PySide6 POSIX segment"
THREADING_LOCK = "threading.Lock (reference)"
CALL_FLOOR = "2 calls of qsharedmem isAttached() (reference)"

# Which qsharedmem row a row is compared with.
BACKEND_OF = {
    QSM_POSIX: POSIX,
    QSM_SYSV: SYSTEM_V,
    QT_POSIX: POSIX,
    QT_SYSV: SYSTEM_V,
    MP: POSIX,
    POSIX_IPC: POSIX,
    SYSV_IPC: SYSTEM_V,
}


# --------------------------------------------------------------------------------------------
# 1. Uncontended lock()+unlock()


def lock_unlock(run: Run) -> None:
    config = run.config
    with created(run.peers, 4 * KIB) as handles:
        loops = {label: pair_loop(h.lock, h.unlock) for label, h in handles.items()}
        # qsharedmem attached to Qt's own POSIX segment locks Qt's named semaphore.
        foreign = run.peers[QSM_POSIX].attach(handles[QT_POSIX].spec)
        try:
            loops[QSM_ON_QT] = pair_loop(foreign.lock, foreign.unlock)
            plain = threading.Lock()
            loops[THREADING_LOCK] = pair_loop(plain.acquire, plain.release)
            # The cheapest qsharedmem method, twice: what two PyO3 calls cost on their own.
            is_attached = handles[QSM_POSIX].native.isAttached
            loops[CALL_FLOOR] = pair_loop(is_attached, is_attached)
            samples = interleaved(loops, config.repeats, config.sample_seconds)
        finally:
            foreign.detach()
    for label, seconds in samples.items():
        run.add("lock", "lock()+unlock()", label, "ns", [s * 1e9 for s in seconds])


# --------------------------------------------------------------------------------------------
# 2. Contention between processes

CONTENTION_PEERS = (QSM_POSIX, QSM_SYSV, QT_POSIX, QT_SYSV, MP, POSIX_IPC, SYSV_IPC)


def _pin(index: int) -> None:
    """Runs this process on CPU ``index`` (modulo the CPUs it may use), so that the scheduler
    cannot put two players on one CPU in one run and on two in the next: with one CPU, an
    unfair lock hands over only when the holder's time slice ends."""
    cpus = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpus[index % len(cpus)]})


def _ping_pong_child(peer: Peer, spec: Any, me: int, seconds: float, io: ChildIO) -> None:
    """Player 0 hands the turn (byte 0) to player 1 and waits for it to come back, for
    ``seconds``, then writes 2 (stop) and reports the round trips. Every look at the byte
    happens under the lock, so the lock changes hands at least twice per round trip while
    the other player is waiting for it."""
    _pin(me)
    handle = peer.attach(spec)
    view = handle.view()
    lock, unlock, clock = handle.lock, handle.unlock, time.perf_counter
    io.send("READY")
    io.receive()
    trips = -1
    start = clock()
    if me == 0:
        deadline = start + seconds
        while True:
            lock()
            if view[0] == 0:
                trips += 1
                done = clock() >= deadline
                view[0] = 2 if done else 1
                if done:
                    unlock()
                    break
            unlock()
    else:
        turn = 1
        while turn != 2:
            lock()
            turn = view[0]
            if turn == 1:
                view[0] = 0
            unlock()
    io.send("DONE", trips, clock() - start)
    view.release()
    handle.detach()


def _counter_child(peer: Peer, spec: Any, index: int, seconds: float, io: ChildIO) -> None:
    """Increments the counter (bytes 0..7) under the lock for ``seconds``; reports how often."""
    _pin(index)
    handle = peer.attach(spec)
    view = handle.view()
    counter = view[:8].cast("q")
    lock, unlock, clock = handle.lock, handle.unlock, time.perf_counter
    io.send("READY")
    io.receive()
    start = clock()
    deadline = start + seconds
    increments = 0
    while clock() < deadline:
        for _ in range(64):
            lock()
            counter[0] += 1
            unlock()
        increments += 64
    io.send("DONE", increments, clock() - start)
    counter.release()
    view.release()
    handle.detach()


def _race(kids: list[Child]) -> list[tuple[float, float]]:
    """Starts the ready children at once; returns what each reports when done."""
    for kid in kids:
        kid.expect("READY")
    for kid in kids:
        kid.send("GO")
    reports = []
    for kid in kids:
        count, seconds = kid.expect("DONE", timeout=600).split()
        reports.append((float(count), float(seconds)))
    for kid in kids:
        kid.wait()
    return reports


def _set_counter(handle: Handle, value: int) -> int:
    view = handle.view()
    counter = view[:8].cast("q")
    try:
        old = counter[0]
        counter[0] = value
        return old
    finally:
        counter.release()
        view.release()


def contention(run: Run) -> None:
    config = run.config
    peers = run.select(*CONTENTION_PEERS)
    ping_pong: dict[str, list[float]] = {label: [] for label in peers}
    counting: dict[str, list[float]] = {label: [] for label in peers}
    with created(peers, 4 * KIB) as handles:
        for _ in range(config.process_repeats):
            for label, peer in peers.items():  # the implementations take turns
                spec = handles[label].spec
                _set_counter(handles[label], 0)
                with children() as kids:
                    for me in (0, 1):
                        body = partial(_ping_pong_child, peer, spec, me, config.contention_seconds)
                        kids.append(fork_child(body))
                    trips, seconds = _race(kids)[0]
                ping_pong[label].append(trips / seconds)

                _set_counter(handles[label], 0)
                with children() as kids:
                    for index in range(config.counter_processes):
                        body = partial(_counter_child, peer, spec, index, config.contention_seconds)
                        kids.append(fork_child(body))
                    reports = _race(kids)
                total = sum(count for count, _ in reports)
                final = _set_counter(handles[label], 0)
                if final != total:
                    raise PeerError(f"{label}: the lock let increments race ({final} != {total})")
                counting[label].append(total / max(seconds for _, seconds in reports))
    for label in peers:
        run.add(
            "contention",
            "2-process ping-pong",
            label,
            "round trips/s",
            ping_pong[label],
            higher_is_better=True,
        )
        run.add(
            "contention",
            f"{config.counter_processes} processes incrementing a counter",
            label,
            "increments/s",
            counting[label],
            higher_is_better=True,
        )


# --------------------------------------------------------------------------------------------
# 3. attach+detach, create+detach


def lifecycle(run: Run) -> None:
    with created(run.peers, 4 * KIB) as owners:
        loops = {
            label: peer.attach_detach_loop(owners[label].spec) for label, peer in run.peers.items()
        }
        add_lifecycle(run, "attach()+detach() of an existing 4 KiB segment", loops)
    loops = {label: peer.create_detach_loop(4 * KIB) for label, peer in run.peers.items()}
    add_lifecycle(run, "create()+detach() of a new 4 KiB segment", loops)


def add_lifecycle(run: Run, case: str, loops: dict[str, Any]) -> None:
    """Runs every peer's loop, interleaved, and records the microseconds per iteration."""
    config = run.config
    samples = interleaved(loops, config.repeats, config.sample_seconds * 2, 100_000)
    for label, seconds in samples.items():
        run.add("lifecycle", case, label, "µs", [s * 1e6 for s in seconds])


# --------------------------------------------------------------------------------------------
# 4. data(): the call, and copying through it


def data_access(run: Run) -> None:
    import mmap

    config = run.config
    peers = run.select(QSM_POSIX, QSM_SYSV, QT_POSIX, QT_SYSV)
    with created(peers, 4 * KIB) as handles:
        loops: dict[tuple[str, str], Callable[[int], None]] = {}
        for label, handle in handles.items():
            loops[(label, "data()")] = call_loop(handle.native.data)
            loops[(label, "constData()")] = call_loop(handle.native.constData)
        anonymous = mmap.mmap(-1, 4 * KIB)
        loops[("memoryview(mmap) (reference)", "data()")] = call_loop(
            partial(memoryview, anonymous)
        )
        samples = interleaved(loops, config.repeats, config.sample_seconds)
        anonymous.close()
    for (impl, call), seconds in samples.items():
        run.add("data", f"{call} call", impl, "ns", [s * 1e9 for s in seconds])

    # Every copy is a memoryview slice assignment (one memcpy). `bytearray[:] = view` would
    # not do: CPython first copies any value that is not a bytearray into a new bytearray.
    size = config.copy_bytes
    copy_peers = run.select(QSM_POSIX, QT_POSIX)
    source = bytearray(b"\x5a") * size
    target = bytearray(size)
    with created(copy_peers, size) as handles:
        views = {label: handle.view() for label, handle in handles.items()}
        source_view, target_view = memoryview(source), memoryview(target)
        try:
            copies: dict[tuple[str, str], Callable[[], None]] = {}
            for label, view in views.items():
                copies[("into data()", label)] = partial(view.__setitem__, slice(None), source)
                copies[("out of data()", label)] = partial(
                    target_view.__setitem__, slice(None), view
                )
            copies[("bytearray → bytearray", "bytearray (reference)")] = partial(
                target_view.__setitem__, slice(None), source_view
            )
            for copy in copies.values():  # every page touched once before timing
                copy()
            seconds = interleaved(
                {key: lambda _count, copy=copy: copy() for key, copy in copies.items()},
                config.copy_repeats,
                0.0,
                max_count=1,
            )
        finally:
            source_view.release()
            target_view.release()
            for view in views.values():
                view.release()
    run.facts["copy size"] = size_text(size)
    for (direction, impl), times in seconds.items():
        rates = [size / t / 1e9 for t in times]
        run.add("data", f"copy {direction}", impl, "GB/s", rates, higher_is_better=True)
    del source, target


# --------------------------------------------------------------------------------------------
# 5. create(1 GiB) + touch every page

BIG_PEERS = (QSM_POSIX, QT_POSIX, QSM_SYSV, QT_SYSV, MP)


def big_segment(run: Run) -> None:
    import numpy

    config = run.config
    size = config.big_bytes
    peers = run.select(*BIG_PEERS)
    create_only: dict[str, list[float]] = {label: [] for label in peers}
    with_touch: dict[str, list[float]] = {label: [] for label in peers}
    destroy: dict[str, list[float]] = {label: [] for label in peers}
    for _ in range(config.big_repeats):
        for label, peer in peers.items():
            start = time.perf_counter()
            handle = peer.create(size)
            created_at = time.perf_counter()
            view = handle.view()
            pages = numpy.frombuffer(view, dtype=numpy.uint8)
            pages[::PAGE] = 1
            touched_at = time.perf_counter()
            del pages
            view.release()
            gone_from = time.perf_counter()
            peer.destroy(handle)
            gone_at = time.perf_counter()
            create_only[label].append(created_at - start)
            with_touch[label].append(touched_at - start)
            destroy[label].append(gone_at - gone_from)
    run.facts["big segment size"] = size_text(size)
    for label in peers:
        run.add("big", "create()", label, "ms", [s * 1e3 for s in create_only[label]])
        run.add(
            "big", "create() + touch every page", label, "ms", [s * 1e3 for s in with_touch[label]]
        )
        run.add("big", "detach() (+ remove)", label, "ms", [s * 1e3 for s in destroy[label]])


# --------------------------------------------------------------------------------------------
# 6. Scale

SCALE_PEERS = (QSM_POSIX, QSM_SYSV, QT_POSIX, QT_SYSV, MP)


def _attached_child(peer: Peer, spec: Any, io: ChildIO) -> None:
    start = time.perf_counter()
    handle = peer.attach(spec)
    io.send("READY", (time.perf_counter() - start) * 1e6)
    io.receive()  # STOP
    start = time.perf_counter()
    handle.detach()
    io.send("DETACHED", (time.perf_counter() - start) * 1e6)


def attached_processes(run: Run) -> None:
    """Keeps 1, 4, 16, 64 processes attached to one segment and measures, at each level, what
    an extra process pays: lock()+unlock(), attach()+detach(), and a child's own attach."""
    import statistics

    config = run.config
    peers = run.select(*SCALE_PEERS)
    for label, peer in peers.items():
        owner = peer.create(4 * KIB)
        try:
            with children() as kids:
                for level in config.scale_levels:
                    attach_times = []
                    while len(kids) < level:
                        kids.append(fork_child(partial(_attached_child, peer, owner.spec)))
                        attach_times.append(float(kids[-1].expect("READY")))
                    loops = {
                        "lock": pair_loop(owner.lock, owner.unlock),
                        "attach": peer.attach_detach_loop(owner.spec),
                    }
                    samples = interleaved(loops, config.repeats, config.sample_seconds, 100_000)
                    case = f"{level} processes attached"
                    run.add("scale-lock", case, label, "ns", [s * 1e9 for s in samples["lock"]])
                    run.add("scale-attach", case, label, "µs", [s * 1e6 for s in samples["attach"]])
                    run.add("scale-child-attach", case, label, "µs", attach_times)
                detach_times = []
                for kid in kids:
                    kid.send("STOP")
                    detach_times.append(float(kid.expect("DETACHED")))
                    kid.wait()
                run.facts.setdefault("child detach µs (median)", {})[label] = round(
                    statistics.median(detach_times), 1
                )
        finally:
            peer.destroy(owner)


MANY_PEERS = (QSM_POSIX, QT_POSIX, MP, POSIX_IPC)


def _open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


def _mappings() -> int:
    with open("/proc/self/maps") as maps:
        return sum(1 for _ in maps)


def _many_segments_child(peer: Peer, count: int, stop_at_limit: bool, io: ChildIO) -> None:
    """Creates ``count`` segments of 4 KiB (or, probing, as many as the OS allows), reports
    what they cost and what they use, and destroys them."""
    fds, maps = _open_descriptors(), _mappings()
    handles: list[Handle] = []
    batch = max(1, count // 10)
    batch_costs: list[float] = []
    error = ""
    start = time.perf_counter()
    batch_start = start
    while len(handles) < count:
        try:
            handles.append(peer.create(4 * KIB))
        except (PeerError, OSError) as exc:
            error = str(exc)
            break
        if len(handles) % batch == 0:
            now = time.perf_counter()
            batch_costs.append((now - batch_start) / batch * 1e6)
            batch_start = now
    report: dict[str, Any] = {"created": len(handles), "error": error}
    if error and handles:
        # At the descriptor limit even /proc/self/fd cannot be opened: make room.
        peer.destroy(handles.pop())
    report["descriptors per segment"] = round((_open_descriptors() - fds) / len(handles), 2)
    report["mappings per segment"] = round((_mappings() - maps) / len(handles), 2)
    if not stop_at_limit and handles:
        report["create µs, first 10%"] = round(batch_costs[0], 1) if batch_costs else None
        report["create µs, last 10%"] = round(batch_costs[-1], 1) if batch_costs else None
        lock, unlock = handles[0].lock, handles[0].unlock
        timing_start = time.perf_counter()
        for _ in range(10_000):
            lock()
            unlock()
        report["lock()+unlock() ns with all open"] = round(
            (time.perf_counter() - timing_start) / 10_000 * 1e9, 1
        )
    destroy_start = time.perf_counter()
    for handle in handles:
        peer.destroy(handle)
    if handles:
        report["destroy µs each"] = round(
            (time.perf_counter() - destroy_start) / len(handles) * 1e6, 1
        )
    # The child leaves through os._exit: drop the handles now, so that their destructors run
    # (PySide6 removes its lock semaphores there).
    handles.clear()
    io.send("RESULT", json.dumps(report))


def many_segments(run: Run) -> None:
    config = run.config
    results: dict[str, Any] = {}
    plans = [(label, config.many_segments, False) for label in MANY_PEERS]
    if config.probe_limits:
        plans += [(QSM_POSIX, config.probe_cap, True), (QT_POSIX, config.probe_cap, True)]
    for label, count, probing in plans:
        peer = run.peers[label]
        with children() as kids:
            kids.append(fork_child(partial(_many_segments_child, peer, count, probing)))
            payload = kids[0].expect("RESULT", timeout=900)
            kids[0].wait(timeout=900)
        key = f"{label}, until the OS refuses" if probing else f"{label}, {count} segments"
        results[key] = json.loads(payload)
        run.log(f"    {key}: {results[key]}")
    run.facts["segments in one process"] = results
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    run.facts["limits"] = {
        "RLIMIT_NOFILE (soft/hard)": f"{soft}/{hard}",
        "vm.max_map_count": Path("/proc/sys/vm/max_map_count").read_text().strip(),
        "kernel.shmmni (System V segments, system-wide)": Path("/proc/sys/kernel/shmmni")
        .read_text()
        .strip(),
    }


def scale(run: Run) -> None:
    attached_processes(run)
    many_segments(run)


WORKLOADS: dict[str, Callable[[Run], None]] = {
    "lock": lock_unlock,
    "contention": contention,
    "lifecycle": lifecycle,
    "data": data_access,
    "big": big_segment,
    "scale": scale,
}
