"""Exhaustion and stress.

* ``/dev/shm`` full, for real: a child runs in a private mount namespace (``unshare -m``) with a
  1 MiB tmpfs over ``/dev/shm``. ``create(8 MiB)`` returns False with ``OutOfResources`` and a
  message with the bytes needed and free, the process lives on (no SIGBUS), and no name is left.
  A segment that nearly fills the file system is created and every byte written: no SIGBUS,
  because ``posix_fallocate`` reserved every page at create(). (Needs root, which the test
  machines have; the child fails loudly otherwise.)
* 8 processes x 20,000 locked increments on each backend give the exact total.
* 2,000 create/attach/detach cycles per backend while other processes attach and detach the
  same key as fast as they can: afterwards no file, segment, semaphore or key file is left, and
  this process's descriptors and mappings are back to their count at the start, its RSS within
  a small tolerance (see ``RSS_TOLERANCE_KIB``).
* Descriptors run out in the middle of ``create()`` (a child with a tight ``RLIMIT_NOFILE``, for
  every budget from none to enough): a create() that fails leaves no name behind that another
  handle could attach, and never touches a segment that another handle holds.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from pathlib import Path

import pytest
import qsharedmem
from support.agent import start_agent
from support.keys import KeyRegistry, new_key
from support.processes import ChildProcesses, fd_count, rss_kib

S = qsharedmem.QSharedMemory
MIB = 1 << 20
PAGE = os.sysconf("SC_PAGE_SIZE")


def in_private_shm(procs: ChildProcesses, script: str, *args: str, size: str = "1m"):
    """Run ``script`` in a child whose /dev/shm is a fresh tmpfs of ``size`` (unshare -m)."""
    assert os.geteuid() == 0, "the /dev/shm exhaustion test mounts a tmpfs: it needs root"
    unshare = shutil.which("unshare")
    assert unshare, "util-linux unshare is needed"
    shell = 'mount -t tmpfs -o "size=$1,mode=1777" tmpfs /dev/shm && shift && exec "$@"'
    argv = [unshare, "-m", "sh", "-c", shell, "sh", size, sys.executable, "-c", script, *args]
    result = procs.run(argv)
    assert result.returncode == 0, result
    return json.loads(result.stdout.strip().splitlines()[-1])


FULL_SCRIPT = r"""
import json, os, sys
import qsharedmem
S, K = qsharedmem.QSharedMemory, qsharedmem.QNativeIpcKey
vfs = os.statvfs("/dev/shm")
out = {"total": vfs.f_blocks * vfs.f_frsize, "free_before": vfs.f_bavail * vfs.f_frsize}
big = S(S.platformSafeKey("big"))
out["create_8mib"] = [big.create(8 << 20), big.error().name, big.errorString(), big.isAttached()]
out["names_after_failure"] = sorted(os.listdir("/dev/shm"))
del big  # its Qt semaphore goes with it
out["names_after_handle"] = sorted(os.listdir("/dev/shm"))
page = os.sysconf("SC_PAGE_SIZE")
nearly = S(S.platformSafeKey("nearly"))
# Its Qt semaphore, its control block and its data take all but one page; "more"'s semaphore
# takes that one, and its data finds no room.
size = out["total"] - 3 * page - 7
out["create_nearly_full"] = [nearly.create(size), nearly.errorString(), nearly.size()]
view = nearly.data()
view[:] = b"\xa5" * len(view)              # every byte: no SIGBUS
out["sum"] = sum(bytes(nearly.constData())) == 0xa5 * size
more = S(S.platformSafeKey("more"))
out["create_more"] = [more.create(4 * page), more.error().name, more.errorString()]
view[:] = b"\x5a" * len(view)              # still every byte
del view
out["detach"] = nearly.detach()
del nearly, more  # and their semaphores
out["names_at_end"] = sorted(os.listdir("/dev/shm"))
print(json.dumps(out), flush=True)
"""


def test_dev_shm_full_for_real(procs: ChildProcesses) -> None:
    out = in_private_shm(procs, FULL_SCRIPT)
    assert out["total"] == MIB
    ok, error, text, attached = out["create_8mib"]
    assert (ok, error, attached) == (False, "OutOfResources", False)
    needed = 8 * MIB + PAGE  # the data and the control block
    match = re.fullmatch(
        r"QSharedMemory::create \(posix_fallocate\): out of resources "
        r"\(needed (\d+) bytes, (\d+) bytes free in /dev/shm\)",
        text,
    )
    assert match, text
    assert int(match.group(1)) == needed
    # Qt's semaphore for the key (a page of tmpfs) was made first, as Qt's create() does.
    assert int(match.group(2)) == out["free_before"] - PAGE
    assert out["names_after_failure"] == ["sem.big"], "a failed create() leaves no segment"
    assert out["names_after_handle"] == []

    ok, text, size = out["create_nearly_full"]
    assert ok, text
    assert size == MIB - 3 * PAGE - 7
    assert out["sum"] is True
    ok, error, text = out["create_more"]
    assert (ok, error) == (False, "OutOfResources")
    assert "needed 20480 bytes" in text
    assert out["detach"] is True
    assert out["names_at_end"] == []


# ------------------------------------------------------------------------------------------------
# Locked increments

PROCESSES = 8
INCREMENTS = 20_000


@pytest.mark.parametrize("backend", ["posix", "sysv"])
def test_locked_increments_add_up(
    backend: str, make_key: KeyRegistry, procs: ChildProcesses
) -> None:
    key = new_key(qsharedmem, make_key, "counter", backend)
    owner = S(key)
    assert owner.create(64), owner.errorString()
    agents = [start_agent(procs) for _ in range(PROCESSES)]
    for agent in agents:
        assert agent.call("key", "h", key.toString()).r is True
        assert agent.call("attach", "h").r is True
    for agent in agents:
        agent.send_op("incr", "h", 8, INCREMENTS)
    for agent in agents:
        reply = agent.result(timeout=600)
        assert reply.r == 0, reply  # no lock reported a dead owner
    assert owner.lock(10)
    total = int.from_bytes(owner.constData()[8:16], "little")
    assert owner.unlock()
    assert total == PROCESSES * INCREMENTS
    for agent in agents:
        assert agent.call("detach", "h").r is True
        assert agent.exit() == 0
    assert owner.detach()
    del owner
    assert make_key.leftovers(make_key("counter")) == []


# ------------------------------------------------------------------------------------------------
# Create/attach/detach cycles with concurrent attachers

CYCLES = 2_000
WARMUP = 100
CHURNERS = 2
SEGMENT = 64 * 1024  # touched in full every cycle: a leaked mapping would show in RSS
# RSS may grow a little without any leak: CPython's allocator keeps freed arenas, glibc keeps
# freed heap, and code paths run for the first time fault in pages of the interpreter and the
# extension. 4 MiB is far below what one leaked, touched segment per cycle would cost
# (2,000 x 64 KiB = 125 MiB), and below even one leaked 4 KiB object per cycle (8 MiB).
RSS_TOLERANCE_KIB = 4 * 1024


def shared_mapping_lines() -> list[str]:
    """This process's shared memory mappings (/dev/shm files and System V segments), except
    those of other tests' keys (a handle that an earlier test left to the garbage collector
    keeps its own semaphore mapped until it goes: not this test's business)."""
    maps = Path("/proc/self/maps").read_text().splitlines()
    mine = [line for line in maps if "/dev/shm/" in line or "SYSV" in line]
    return [line for line in mine if "tstshm_" not in line or "_cycles" in line]


def shared_mappings() -> int:
    return len(shared_mapping_lines())


def one_cycle(key, round_: int) -> str:
    first = S(key)
    for _ in range(100):
        if first.create(SEGMENT):
            how = "created"
            break
        # A concurrent attacher kept the previous segment alive: attach to it instead; if it
        # left (and so destroyed the segment) in between, create again.
        assert first.error() == S.SharedMemoryError.AlreadyExists, first.errorString()
        if first.attach():
            how = "attached"
            break
        assert first.error() == S.SharedMemoryError.NotFound, first.errorString()
    else:
        pytest.fail("neither create() nor attach() succeeded 100 times in a row")
    second = S(key)
    assert second.attach(), second.errorString()
    assert first.size() == second.size() == SEGMENT
    stamp = round_.to_bytes(4, "little")
    assert first.lock(10), first.errorString()
    view = first.data()
    view[:] = stamp * (SEGMENT // 4)
    del view
    assert first.unlock()
    assert bytes(second.constData()[-4:]) == stamp
    assert second.detach()
    assert first.detach()
    return how


@pytest.mark.parametrize("backend", ["posix", "sysv"])
def test_cycles_with_concurrent_attachers_leave_nothing(
    backend: str, make_key: KeyRegistry, procs: ChildProcesses, tmp_path: Path
) -> None:
    name = "cycles"
    key = new_key(qsharedmem, make_key, name, backend)
    stop = tmp_path / "stop"
    churners = [start_agent(procs) for _ in range(CHURNERS)]
    for churner in churners:
        assert churner.call("key", "h", key.toString()).r is True
        churner.send_op("churn", "h", str(stop))
        churner.wait_started("churn")

    counts = {"created": 0, "attached": 0}
    for round_ in range(WARMUP):
        counts[one_cycle(key, round_)] += 1
    fds, mappings, rss = fd_count(), shared_mappings(), rss_kib()
    for round_ in range(WARMUP, WARMUP + CYCLES):
        counts[one_cycle(key, round_)] += 1
    fds_after, mappings_after, rss_after = fd_count(), shared_mappings(), rss_kib()

    stop.touch()
    seen: dict[str, int] = {}
    for churner in churners:
        for outcome, n in churner.result(timeout=120).r.items():
            seen[outcome] = seen.get(outcome, 0) + n
        assert churner.exit() == 0
    print(f"{backend}: cycles {counts}, other processes {seen}, RSS {rss} -> {rss_after} KiB")

    assert counts["created"] + counts["attached"] == WARMUP + CYCLES
    assert counts["created"] > 0
    assert seen.get("attached", 0) > 0, "the other processes never overlapped a cycle"
    assert set(seen) <= {"attached", "NotFound"}, seen
    assert fds_after == fds, "descriptors leaked"
    assert mappings_after == mappings == 0, f"mappings leaked: {shared_mapping_lines()}"
    assert rss_after - rss <= RSS_TOLERANCE_KIB, (rss, rss_after)
    assert make_key.leftovers(make_key(name)) == []


# ------------------------------------------------------------------------------------------------
# Descriptors running out during create()

NOFILE_SCRIPT = r"""
import json, os, resource, sys
import qsharedmem
S, K = qsharedmem.QSharedMemory, qsharedmem.QNativeIpcKey
key = K(sys.argv[1], K.Type.PosixRealtime)
path = "/dev/shm/" + sys.argv[1].lstrip("/")
MODES = {"ReadWrite": S.AccessMode.ReadWrite, "ReadOnly": S.AccessMode.ReadOnly}
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)


def create_with(budget, shm, mode):
    # create() with room for exactly `budget` more descriptors.
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))
    fill = []
    try:
        while True:
            fill.append(os.open("/dev/null", os.O_RDONLY))
    except OSError:
        pass
    for _ in range(budget):
        os.close(fill.pop())
    ok = shm.create(4096, mode)
    for fd in fill:
        os.close(fd)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return ok


warm = S(key)  # first use: whatever the library sets up once is set up now
assert warm.create(4096) and warm.detach()
out = {"alone": {}, "taken": {}}
for name, mode in MODES.items():
    for budget in range(6):
        shm = S(key)
        ok = create_with(budget, shm, mode)
        error = shm.error().name
        exists = os.path.exists(path)
        other = S(key)
        other_ok = other.attach()
        out["alone"][f"{name} {budget}"] = [ok, error, shm.isAttached(), exists, other_ok]
        other.detach()
        shm.detach()
        assert not os.path.exists(path), (name, budget)
# A segment another handle holds: a failing create() must leave it alone.
holder = S(key)
assert holder.create(4096)
inode = os.stat(path).st_ino
for name, mode in MODES.items():
    for budget in range(6):
        shm = S(key)
        ok = create_with(budget, shm, mode)
        other = S(key)
        intact = os.path.exists(path) and os.stat(path).st_ino == inode and other.attach()
        out["taken"][f"{name} {budget}"] = [ok, shm.error().name, intact]
        other.detach()
holder.detach()
out["left"] = os.path.exists(path)
print(json.dumps(out), flush=True)
"""


def test_create_out_of_descriptors_leaves_nothing(
    make_key: KeyRegistry, procs: ChildProcesses
) -> None:
    name = make_key("nofile")
    key = new_key(qsharedmem, make_key, "nofile", "posix")
    result = procs.run(procs.python("-c", NOFILE_SCRIPT, key.nativeKey()))
    assert result.returncode == 0, result
    out = json.loads(result.stdout.strip().splitlines()[-1])
    failed = set()
    for what, (ok, error, attached, exists, other_attached) in out["alone"].items():
        if ok:
            assert (error, attached, exists, other_attached) == ("NoError", True, True, True), what
        else:
            # Nothing published: nobody can attach to a segment that nobody holds.
            assert (error, attached, exists, other_attached) == (
                "OutOfResources",
                False,
                False,
                False,
            ), what
            failed.add(what.split()[0])
    # Both modes ran out at some budget and succeeded with enough descriptors.
    assert failed == {"ReadWrite", "ReadOnly"}, out["alone"]
    assert out["alone"]["ReadWrite 5"][0] and out["alone"]["ReadOnly 5"][0], out["alone"]
    for what, (ok, error, intact) in out["taken"].items():
        assert not ok, what
        assert error in {"AlreadyExists", "OutOfResources"}, what
        assert intact, f"{what}: the holder's segment was removed or replaced"
    assert out["left"] is False
    assert make_key.leftovers(name) == []
