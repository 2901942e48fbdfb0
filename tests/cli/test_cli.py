"""End-to-end tests of the ``qsharedmem`` command line: ``ls``, ``info``, ``rm``, ``gc``, ``demo``.

Segments are made by real processes — qsharedmem, PySide6 (Qt's QSharedMemory) and
``multiprocessing.shared_memory`` children (agents, ``helpers/agent.py``) — and the CLI runs as
its own process (``python -m qsharedmem``), exactly as a user runs it. Crashes are real SIGKILLs.

The machine is shared: every command is scoped to the segments a test made (``--match`` with
their ids), and ``gc`` never runs unscoped here.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import qsharedmem
from qsharedmem import QNativeIpcKey, QSharedMemory, cli
from qsharedmem import _qsharedmem as inspection
from support.agent import Agent, start_agent
from support.impls import POSIX_TYPE
from support.ipc import DEV_SHM
from support.keys import KeyRegistry
from support.processes import ChildProcesses, Result

SYSV_T = QNativeIpcKey.Type(ord("T"))


# --------------------------------------------------------------------------------------------
# Helpers


def run_cli(procs: ChildProcesses, *args: str) -> Result:
    """``python -m qsharedmem ARGS`` in a process of its own."""
    return procs.run([sys.executable, "-m", "qsharedmem", *args])


def matching(*ids: str) -> list[str]:
    return [arg for segment_id in ids for arg in ("--match", segment_id)]


def ls_json(procs: ChildProcesses, *ids: str) -> dict[str, dict[str, Any]]:
    """``ls --json`` restricted to ``ids``: id → segment."""
    result = run_cli(procs, "ls", "--json", *matching(*ids))
    assert result.returncode == 0, result.stderr
    return {segment["id"]: segment for segment in json.loads(result.stdout)}


def hold(procs: ChildProcesses, impl: str, action: str, key: str, size: int = 0) -> Agent:
    """An agent holding a segment (handle ``h``): ``impl`` qsharedmem or pyside6 with a key spec
    (``legacy:<key>`` or a ``toString()`` form), or multiprocessing with the segment name (``-``
    for a generated one). ``.name`` is its native key."""
    holder = start_agent(procs, impl="qsharedmem" if impl == "multiprocessing" else impl)
    if impl == "multiprocessing":
        size_or_none = size if action == "create" else None
        name = holder.call("mp", "h", None if key == "-" else key, size_or_none)
        holder.name = name.r  # type: ignore[attr-defined]
        return holder
    assert holder.call("key", "h", key).r is True
    reply = holder.call(action, "h", *([size] if action == "create" else []))
    assert reply.r is True, f"{action}: {reply.e}"
    holder.name = holder.call("nativeKey", "h").r  # type: ignore[attr-defined]
    return holder


ANSWERS = {"lock": "LOCKED", "unlock": "UNLOCKED", "write": "WRITTEN", "detach": "DETACHED"}


def command(holder: Agent, text: str, answer: str | None = None) -> str:
    """``lock``, ``unlock``, ``detach``, ``write <text>`` (at offset 0): the holder's answer
    (``LOCKED``, ... or ``FAILED``), which must be ``answer`` if given; ``read <n>``: the hex of
    the first n bytes."""
    name, _, argument = text.partition(" ")
    if name == "read":
        return holder.call("read", "h", 0, int(argument)).r
    args = [0, argument.encode().hex()] if name == "write" else []
    reply = holder.call(name, "h", *args)
    said = ANSWERS[name] if reply.r is True else f"FAILED {name}: {reply.e}"
    assert answer is None or said == answer, said
    return said


def id_of(key: Any) -> str:
    """The id ``ls`` prints for a segment with this key: its string form without legacyKey."""
    return QNativeIpcKey(key.nativeKey(), key.type()).toString()


class Keys:
    """The three key families a segment can have, for one mangled name."""

    def __init__(self, family: str, name: str) -> None:
        self.family = family
        self.name = name
        if family == "posix":
            key = QSharedMemory.platformSafeKey(name)
            self.arg, self.kind = key.toString(), "qsharedmem"
        elif family == "systemv-legacy":
            key = QSharedMemory.legacyNativeKey(name)
            self.arg, self.kind = f"legacy:{name}", "systemv"
        else:  # systemv-T: platformSafeKey in the runtime directory, ftok id 'T'
            key = QSharedMemory.platformSafeKey(name, SYSV_T)
            self.arg, self.kind = key.toString(), "systemv"
        self.key = key
        self.id = id_of(key)


FAMILIES = ["posix", "systemv-legacy", "systemv-T"]


@pytest.fixture(params=FAMILIES)
def keys(request: pytest.FixtureRequest, make_key: KeyRegistry) -> Keys:
    keys = Keys(request.param, make_key("cli"))
    make_key.record(keys.key)
    return keys


def table_row(output: str, segment_id: str) -> list[str]:
    rows = [line.split() for line in output.splitlines()]
    assert rows and rows[0][:2] == ["ID", "TYPE"], output
    found = [row for row in rows if row[0] == segment_id]
    assert len(found) == 1, output
    return found[0]


# --------------------------------------------------------------------------------------------
# qsharedmem's own segments


def test_qsharedmem_segment_listed_with_size_attachments_and_lock(
    procs: ChildProcesses, make_key: KeyRegistry, keys: Keys
) -> None:
    creator = hold(procs, "qsharedmem", "create", keys.arg, 1000)
    attacher = hold(procs, "qsharedmem", "attach", keys.arg)

    segment = ls_json(procs, keys.id)[keys.id]
    assert segment["kind"] == keys.kind
    assert segment["origin"] == "qsharedmem"
    assert segment["size"] == 1000
    assert segment["attachments"] == 2
    assert sorted(segment["pids"]) == sorted([creator.pid, attacher.pid])
    assert segment["creator_pid"] == creator.pid
    assert segment["creator_alive"] is True
    assert (segment["usage"], segment["orphan"]) == ("in-use", False)
    assert segment["lock"]["state"] == "free"
    assert segment["native_key"] == keys.key.nativeKey()
    if keys.family == "posix":
        assert segment["qt_key"] == keys.name
        assert segment["file"] == f"/dev/shm/{keys.name}"
    else:
        assert segment["key_file"] == keys.key.nativeKey()
        assert segment["key_type"] == keys.key.type().value

    command(attacher, "lock", "LOCKED")
    lock = ls_json(procs, keys.id)[keys.id]["lock"]
    assert (lock["state"], lock["holder"]) == ("held", attacher.pid)

    table = run_cli(procs, "ls", *matching(keys.id))
    assert table.returncode == 0, table.stderr
    row = table_row(table.stdout, keys.id)
    pids = ",".join(map(str, sorted([creator.pid, attacher.pid])))
    assert row[1:7] == [keys.kind, "qsharedmem", "1000", "2", pids, f"held:{attacher.pid}"]
    assert row[-1] == "in-use"

    command(attacher, "unlock", "UNLOCKED")
    assert attacher.finish().returncode == 0
    assert creator.finish().returncode == 0
    # Looking took no lock and attached nothing: the last detach still cleaned up everything.
    assert make_key.leftovers(keys.name) == []


def test_sigkilled_creator_is_an_orphan_that_gc_removes(
    procs: ChildProcesses, make_key: KeyRegistry, keys: Keys
) -> None:
    creator = hold(procs, "qsharedmem", "create", keys.arg, 4096)
    command(creator, "write hello", "WRITTEN")
    command(creator, "lock", "LOCKED")
    creator.kill()

    segment = ls_json(procs, keys.id)[keys.id]
    assert (segment["usage"], segment["orphan"]) == ("orphan", True)
    assert segment["attachments"] == 0
    assert segment["pids"] == []
    assert (segment["creator_pid"], segment["creator_alive"]) == (creator.pid, False)
    # It died holding the lock: the next locker will be told (robust mutex / System V token).
    assert (segment["lock"]["state"], segment["lock"]["holder"]) == ("owner-died", creator.pid)

    orphans = run_cli(procs, "ls", "--orphans", *matching(keys.id))
    assert table_row(orphans.stdout, keys.id)[-1] == "orphan"

    info = run_cli(procs, "info", keys.id)
    assert info.returncode == 0, info.stderr
    assert "68 65 6c 6c 6f" in info.stdout  # "hello", in the hex preview
    assert "state:" in info.stdout and "orphan" in info.stdout

    dry = run_cli(procs, "gc", "--dry-run", *matching(keys.id))
    assert dry.returncode == 0, dry.stderr
    assert f"would remove {keys.id} " in dry.stdout
    assert keys.id in ls_json(procs, keys.id), "a dry run removed it"

    gc = run_cli(procs, "gc", *matching(keys.id))
    assert gc.returncode == 0, gc.stderr
    assert f"removed {keys.id}: " in gc.stdout
    assert ls_json(procs, keys.id) == {}
    # Everything that belonged to it went with it: key file, lock semaphore and its key file.
    assert make_key.leftovers(keys.name) == []


def test_gc_and_rm_leave_a_segment_alone_while_a_live_process_holds_it(
    procs: ChildProcesses, make_key: KeyRegistry, keys: Keys
) -> None:
    creator = hold(procs, "qsharedmem", "create", keys.arg, 512)
    survivor = hold(procs, "qsharedmem", "attach", keys.arg)
    command(survivor, "write alive", "WRITTEN")
    creator.kill()

    segment = ls_json(procs, keys.id)[keys.id]
    assert segment["creator_alive"] is False
    assert (segment["usage"], segment["attachments"], segment["pids"]) == (
        "in-use",
        1,
        [survivor.pid],
    )

    gc = run_cli(procs, "gc", *matching(keys.id))
    assert gc.returncode == 0, gc.stderr
    assert gc.stdout == ""
    assert "no orphans" in gc.stderr

    rm = run_cli(procs, "rm", keys.id)
    assert rm.returncode == cli.EXIT_IN_USE
    assert f"attached by pid {survivor.pid}" in rm.stderr
    assert "--force" in rm.stderr
    assert keys.id in ls_json(procs, keys.id)

    forced = run_cli(procs, "rm", "--force", keys.id)
    assert forced.returncode == 0, forced.stderr
    assert forced.stdout.startswith(f"removed {keys.id}: ")
    assert ls_json(procs, keys.id) == {}
    # The process that was attached keeps its memory.
    assert command(survivor, "read 5") == b"alive".hex()
    assert survivor.finish().returncode == 0
    assert make_key.leftovers(keys.name) == []


def test_unused_segment_is_not_an_orphan_while_its_creator_lives(
    procs: ChildProcesses, make_key: KeyRegistry
) -> None:
    # The creator detaches while another process holds the segment; then that one dies.
    keys = Keys("posix", make_key("unused"))
    creator = hold(procs, "qsharedmem", "create", keys.arg, 100)
    other = hold(procs, "qsharedmem", "attach", keys.arg)
    command(creator, "detach", "DETACHED")
    other.kill()

    segment = ls_json(procs, keys.id)[keys.id]
    assert (segment["usage"], segment["attachments"], segment["creator_alive"]) == (
        "unused",
        0,
        True,
    )
    gc = run_cli(procs, "gc", *matching(keys.id))
    assert (gc.returncode, gc.stdout) == (0, "")
    assert keys.id in ls_json(procs, keys.id)
    # rm only needs "nobody attached".
    rm = run_cli(procs, "rm", keys.id)
    assert rm.returncode == 0, rm.stderr
    # The data file and its control block (the sidecar that holds the lock and the count).
    assert rm.stdout == f"removed {keys.id}: /dev/shm/{keys.name}, /dev/shm/{keys.name}.qsm\n"
    # Qt's lock semaphore stays while the live creator holds it (as Qt's handle would); rm must
    # not pull it from under a process that may still lock. The creator's end removes it.
    assert make_key.leftovers(keys.name) == [f"/dev/shm/sem.{keys.name}"]
    assert creator.finish().returncode == 0
    assert make_key.leftovers(keys.name) == []


# --------------------------------------------------------------------------------------------
# Qt (PySide6) and multiprocessing segments


def test_pyside6_segments_listed_and_protected_while_in_use(
    procs: ChildProcesses, make_key: KeyRegistry
) -> None:
    posix_name, sysv_name, ours_name = make_key("qtposix"), make_key("qtsysv"), make_key("ours")
    posix_key = QSharedMemory.platformSafeKey(posix_name)
    sysv_key = QSharedMemory.legacyNativeKey(sysv_name)
    posix_id, sysv_id = id_of(posix_key), id_of(sysv_key)
    qt_posix = hold(procs, "pyside6", "create", posix_key.toString(), 3000)
    qt_sysv = hold(procs, "pyside6", "create", f"legacy:{sysv_name}", 5000)
    # A Qt process attached to a qsharedmem segment maps it without qsharedmem's flock: it
    # counts as an attachment all the same.
    ours_key = QSharedMemory.platformSafeKey(ours_name)
    ours = QSharedMemory(ours_key)
    assert ours.create(100), ours.errorString()
    qt_on_ours = hold(procs, "pyside6", "attach", ours_key.toString())

    found = ls_json(procs, posix_id, sysv_id, id_of(ours_key))
    qt = found[posix_id]
    assert (qt["kind"], qt["origin"], qt["size"]) == ("posix", "qt", 3000)
    assert (qt["attachments"], qt["pids"], qt["usage"]) == (1, [qt_posix.pid], "in-use")
    assert (qt["lock"]["state"], qt["lock"]["value"]) == ("free", 1)
    assert qt["qt_key"] == posix_name
    sysv = found[sysv_id]
    assert (sysv["kind"], sysv["origin"], sysv["size"]) == ("systemv", "qt", 5000)
    assert (sysv["attachments"], sysv["pids"]) == (1, [qt_sysv.pid])
    assert sysv["key_file"] == sysv_key.nativeKey()
    assert (sysv["creator_pid"], sysv["lock"]["state"]) == (qt_sysv.pid, "free")
    mixed = found[id_of(ours_key)]
    assert (mixed["kind"], mixed["attachments"]) == ("qsharedmem", 2)
    assert sorted(mixed["pids"]) == sorted([os.getpid(), qt_on_ours.pid])

    for segment_id in (posix_id, sysv_id):
        rm = run_cli(procs, "rm", segment_id)
        assert rm.returncode == cli.EXIT_IN_USE, rm.stderr
        assert "is in use" in rm.stderr
    gc = run_cli(procs, "gc", *matching(posix_id, sysv_id))
    assert (gc.returncode, gc.stdout) == (0, "")
    assert set(ls_json(procs, posix_id, sysv_id)) == {posix_id, sysv_id}

    assert qt_on_ours.finish().returncode == 0
    assert ours.detach()
    assert qt_sysv.finish().returncode == 0
    assert qt_posix.finish().returncode == 0
    # Qt removes its System V segment on the last detach, but never unlinks a POSIX segment:
    # that one is left behind by design, nobody uses it, and gc takes it away.
    after = ls_json(procs, posix_id, sysv_id)
    assert set(after) == {posix_id}
    assert (after[posix_id]["usage"], after[posix_id]["attachments"]) == ("orphan", 0)
    gc = run_cli(procs, "gc", *matching(posix_id))
    assert gc.returncode == 0, gc.stderr
    assert f"removed {posix_id}: /dev/shm/{posix_name}" in gc.stdout
    assert make_key.leftovers(posix_name, sysv_name, ours_name) == []


def test_sigkilled_pyside6_creators_leave_orphans_that_gc_removes_completely(
    procs: ChildProcesses, make_key: KeyRegistry
) -> None:
    posix_name, sysv_name = make_key("qtposix"), make_key("qtsysv")
    posix_key = QSharedMemory.platformSafeKey(posix_name)
    posix_id, sysv_id = id_of(posix_key), id_of(QSharedMemory.legacyNativeKey(sysv_name))
    qt_posix = hold(procs, "pyside6", "create", posix_key.toString(), 3000)
    command(qt_posix, "lock", "LOCKED")
    qt_sysv = hold(procs, "pyside6", "create", f"legacy:{sysv_name}", 5000)
    qt_posix.kill()
    qt_sysv.kill()

    found = ls_json(procs, posix_id, sysv_id)
    qt = found[posix_id]
    assert (qt["usage"], qt["attachments"]) == ("orphan", 0)
    # Qt's POSIX semaphore has no undo: it stays taken, and nobody has it open any more.
    assert (qt["lock"]["state"], qt["lock"]["value"]) == ("owner-died", 0)
    sysv = found[sysv_id]
    assert (sysv["usage"], sysv["attachments"], sysv["creator_alive"]) == ("orphan", 0, False)

    gc = run_cli(procs, "gc", *matching(posix_id, sysv_id))
    assert gc.returncode == 0, gc.stderr
    assert f"/dev/shm/sem.{posix_name}" in gc.stdout  # the stuck semaphore went too
    assert QSharedMemory.legacyNativeKey(sysv_name).nativeKey() in gc.stdout  # the key file
    assert ls_json(procs, posix_id, sysv_id) == {}
    assert make_key.leftovers(posix_name, sysv_name) == []


def test_multiprocessing_segment_listed_protected_and_collected(
    procs: ChildProcesses, make_key: KeyRegistry
) -> None:
    creator = hold(procs, "multiprocessing", "create", "-", 777)
    name = creator.name  # type: ignore[attr-defined]
    assert name.startswith("psm_")
    make_key.record_native(f"/{name}", POSIX_TYPE)
    other = hold(procs, "multiprocessing", "attach", name)
    segment_id = f"posix:/{name}"

    segment = ls_json(procs, segment_id)[segment_id]
    assert (segment["kind"], segment["origin"]) == ("posix", "multiprocessing")
    assert segment["size"] == 777
    assert segment["attachments"] == 2
    assert sorted(segment["pids"]) == sorted([creator.pid, other.pid])
    assert segment["lock"]["state"] == "none"
    assert segment["creator_pid"] is None

    rm = run_cli(procs, "rm", name)  # the bare multiprocessing name works as a key
    assert rm.returncode == cli.EXIT_IN_USE, rm.stderr

    creator.kill()
    segment = ls_json(procs, segment_id)[segment_id]
    assert (segment["usage"], segment["pids"]) == ("in-use", [other.pid])
    gc = run_cli(procs, "gc", *matching(segment_id))
    assert (gc.returncode, gc.stdout) == (0, "")

    other.kill()
    assert ls_json(procs, segment_id)[segment_id]["usage"] == "orphan"
    gc = run_cli(procs, "gc", *matching(segment_id))
    assert gc.returncode == 0, gc.stderr
    assert gc.stdout == f"removed {segment_id}: /dev/shm/{name}\n"
    assert not (DEV_SHM / name).exists()


# --------------------------------------------------------------------------------------------
# info, key forms, JSON


def test_info_accepts_every_key_form_and_previews_the_data(
    procs: ChildProcesses, make_key: KeyRegistry
) -> None:
    name = make_key("info")
    posix = QSharedMemory(QSharedMemory.platformSafeKey(name))
    assert posix.create(64), posix.errorString()
    posix.data()[:5] = b"hello"
    sysv = QSharedMemory(name)  # legacy: System V on Linux
    assert sysv.create(64), sysv.errorString()
    sysv.data()[:5] = b"world"
    posix_id = id_of(posix.nativeIpcKey())
    sysv_id = id_of(sysv.nativeIpcKey())

    # The plain key names both.
    ambiguous = run_cli(procs, "info", name)
    assert ambiguous.returncode == cli.EXIT_AMBIGUOUS
    assert posix_id in ambiguous.stderr and sysv_id in ambiguous.stderr
    assert run_cli(procs, "rm", name).returncode == cli.EXIT_AMBIGUOUS

    sysv_segment = ls_json(procs, sysv_id)[sysv_id]
    forms = {
        posix_id: [posix_id, f"/{name}", f"/dev/shm/{name}"],
        sysv_id: [
            sysv_id,
            sysv.nativeKey(),
            sysv.nativeIpcKey().toString(),  # with ?legacyKey=
            f"shmid:{sysv_segment['shmid']}",
            f"0x{sysv_segment['ipc_key']:08x}",
        ],
    }
    expected = {posix_id: b"hello", sysv_id: b"world"}
    for segment_id, queries in forms.items():
        for query in queries:
            result = run_cli(procs, "info", query, "--json", "--bytes", "5")
            assert result.returncode == 0, (query, result.stderr)
            info = json.loads(result.stdout)
            assert info["id"] == segment_id, query
            assert bytes.fromhex(info["preview"]) == expected[segment_id], query

    text = run_cli(procs, "info", sysv_id)
    assert text.returncode == 0, text.stderr
    fields = dict(line.split(":", 1) for line in text.stdout.splitlines() if ":  " in line)
    assert fields["key file"].strip() == sysv.nativeKey()
    assert fields["size"].strip() == "64 bytes"
    assert "77 6f 72 6c 64" in text.stdout  # "world"

    missing = run_cli(procs, "info", make_key("missing"))
    assert missing.returncode == cli.EXIT_NOT_FOUND
    assert "no shared memory segment matches" in missing.stderr
    assert missing.stdout == ""

    # Looking (including the System V preview, which attaches under the lock) left the
    # refcounts alone: the detaches still remove everything.
    assert posix.detach() and sysv.detach()
    assert make_key.leftovers(name) == []


def test_a_plain_key_names_its_legacy_system_v_segment_in_every_command(
    procs: ChildProcesses, make_key: KeyRegistry
) -> None:
    """``QSharedMemory("k1")``: its key file keeps only a hash of ``k1``, so a glob over the
    segment's names cannot find it; ``--match k1`` resolves the key as ``info k1`` does."""
    keys = Keys("systemv-legacy", make_key("k1"))
    make_key.record(keys.key)
    assert keys.name not in keys.key.nativeKey()  # only the hash is in the key file's name
    holder = hold(procs, "qsharedmem", "create", keys.arg, 64)

    info = run_cli(procs, "info", keys.name, "--json", "--bytes", "0")
    assert info.returncode == 0, info.stderr
    assert json.loads(info.stdout)["id"] == keys.id
    listed = run_cli(procs, "ls", "--json", "--match", keys.name)
    assert listed.returncode == 0, listed.stderr
    assert [s["id"] for s in json.loads(listed.stdout)] == [keys.id]
    table = run_cli(procs, "ls", "--match", keys.name)
    assert table_row(table.stdout, keys.id)[-1] == "in-use"
    rm = run_cli(procs, "rm", keys.name)  # found, and refused: the holder is attached
    assert rm.returncode == cli.EXIT_IN_USE, rm.stderr
    assert f"attached by pid {holder.pid}" in rm.stderr
    # A glob that is no key, next to the key, still matches by name as before.
    both = run_cli(procs, "ls", "--json", "--match", keys.name, "--match", "qipc_nothing*")
    assert [s["id"] for s in json.loads(both.stdout)] == [keys.id]

    holder.kill()
    orphan = ls_json(procs, keys.name)
    assert list(orphan) == [keys.id] and orphan[keys.id]["orphan"] is True
    dry = run_cli(procs, "gc", "--dry-run", "--match", keys.name)
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.startswith(f"would remove {keys.id} ("), dry.stdout
    assert len(dry.stdout.splitlines()) == 1
    gc = run_cli(procs, "gc", "--match", keys.name)
    assert gc.returncode == 0, gc.stderr
    assert gc.stdout.startswith(f"removed {keys.id}: "), gc.stdout
    assert run_cli(procs, "info", keys.name).returncode == cli.EXIT_NOT_FOUND
    assert make_key.leftovers(keys.name) == []


def test_a_corrupt_creation_time_is_shown_as_such_by_every_command(
    procs: ChildProcesses, make_key: KeyRegistry
) -> None:
    """A foreign POSIX segment's creation time is its file's mtime: set it to year 33658."""
    name = make_key("badtime")
    path = DEV_SHM / name
    path.write_bytes(b"x" * 100)
    absurd = 10**12  # seconds since 1970: beyond any date Python can show
    os.utime(path, ns=(absurd * 10**9, absurd * 10**9))
    segment_id = f"posix:/{name}"
    try:
        segment = ls_json(procs, segment_id)[segment_id]
        assert segment["created"] == absurd

        info = run_cli(procs, "info", segment_id)
        assert info.returncode == 0, info.stderr
        assert "Traceback" not in info.stderr
        fields = dict(line.split(":", 1) for line in info.stdout.splitlines() if ":  " in line)
        assert fields["created"].strip() == f"corrupt ({absurd} seconds since 1970 is no date)"
        assert fields["size"].strip() == "100 bytes"  # the lines after it are there too
        assert "78 78 78" in info.stdout  # and the preview

        table = run_cli(procs, "ls", "--match", segment_id)
        assert table.returncode == 0, table.stderr
        assert table_row(table.stdout, segment_id)[-2] == "corrupt"  # AGE

        dry = run_cli(procs, "gc", "--dry-run", "--match", segment_id)
        assert dry.returncode == 0, dry.stderr
        assert f"would remove {segment_id} (" in dry.stdout
        assert "age corrupt" in dry.stdout

        rm = run_cli(procs, "rm", segment_id)
        assert rm.returncode == 0, rm.stderr
        assert not path.exists()
    finally:
        path.unlink(missing_ok=True)


def test_json_and_table_agree(procs: ChildProcesses, make_key: KeyRegistry) -> None:
    handles = []
    ids = []
    for size, family in zip((10, 20000, 300), FAMILIES, strict=True):
        keys = Keys(family, make_key(f"agree{size}"))
        make_key.record(keys.key)
        shm = QSharedMemory(keys.key) if family != "systemv-legacy" else QSharedMemory(keys.name)
        assert shm.create(size), shm.errorString()
        handles.append(shm)
        ids.append(keys.id)

    as_json = json.loads(run_cli(procs, "ls", "--json", *matching(*ids)).stdout)
    table = run_cli(procs, "ls", *matching(*ids)).stdout
    assert sorted(s["id"] for s in as_json) == sorted(ids)
    for segment in as_json:
        row = table_row(table, segment["id"])
        assert row[1:5] == [
            segment["kind"],
            segment["origin"],
            str(segment["size"]),
            str(segment["attachments"]),
        ]
        assert row[-1] == segment["usage"]
    assert {s["id"]: s["size"] for s in as_json} == dict(zip(ids, (10, 20000, 300), strict=True))
    # The in-process API returns the same dicts.
    direct = {s["id"]: s for s in inspection.list_segments() if s["id"] in ids}
    assert {k: v["size"] for k, v in direct.items()} == {s["id"]: s["size"] for s in as_json}
    for shm in handles:
        assert shm.detach()


def test_looking_never_keeps_a_last_detacher_from_cleaning_up(
    procs: ChildProcesses, make_key: KeyRegistry
) -> None:
    """Inspect over and over while a child creates and destroys segments as fast as it can.

    An inspector that probed with flock would now and then make the child's detach believe
    somebody else is attached, and a segment would be left behind; one that attached to System
    V segments outside their lock would do the same through shm_nattch.
    """
    posix_name, sysv_name = make_key("churnp"), make_key("churns")
    code = (
        "import os, sys, threading\n"
        "from qsharedmem import QSharedMemory\n"
        "keys = [QSharedMemory.platformSafeKey(sys.argv[1]), sys.argv[2]]\n"
        "stop = threading.Event()\n"
        "threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()\n"
        "cycles = left = 0\n"
        "print('STARTED', flush=True)\n"
        "while not stop.is_set():\n"
        "    for key in keys:\n"
        "        a = QSharedMemory(key); b = QSharedMemory(key)\n"
        "        assert a.create(4096), a.errorString()\n"
        "        assert b.attach(), b.errorString()\n"
        "        a.detach(); b.detach()\n"
        "        # The last detach removes the file / the key file, unless someone disturbed it\n"
        "        # (the next create() would quietly reclaim the orphan, so look now).\n"
        "        native = a.nativeKey()\n"
        "        posix = native.count('/') == 1\n"
        "        left += os.path.exists('/dev/shm' + native if posix else native)\n"
        "    cycles += 1\n"
        "print('CYCLES', cycles, 'LEFT', left, flush=True)\n"
    )
    child = procs.start_python(code, posix_name, sysv_name)
    child.wait_for_line("STARTED")
    natives = {
        QSharedMemory.platformSafeKey(posix_name).nativeKey(): "qsharedmem",
        QSharedMemory.legacyNativeKey(sysv_name).nativeKey(): "systemv",
    }
    seen = dict.fromkeys(natives.values(), 0)
    tried = 0
    # An amount of looking, not a duration: at least 300 listings, and on until they overlapped
    # the child's segments (a loaded machine may not run the child during the first 300). A
    # listing opens and reads every segment that exists while it runs, but reports only those
    # still there when it is done: the child's POSIX segments rarely live that long, its System
    # V ones (listed from one kernel table) often do.
    for listing in range(20_000):
        if listing >= 300 and seen["systemv"] > 0 and tried > 0:
            break
        for segment in inspection.list_segments():
            if segment["native_key"] not in natives:
                continue
            seen[natives[segment["native_key"]]] += 1
            if tried >= 40:
                continue
            tried += 1
            try:
                inspection.read_segment(segment["id"], 16)
            except OSError as e:  # destroyed meanwhile, or its lock busy
                assert isinstance(e, qsharedmem.NotFoundError) or e.errno == errno.EBUSY
    result = child.finish()
    assert result.returncode == 0, result.stderr
    # (Previews mostly find the segment gone already: they resolve the key again. The
    # deterministic check that a System V preview leaves the refcount alone is in
    # test_info_accepts_every_key_form_and_previews_the_data.)
    assert seen["systemv"] > 0 and tried > 0, f"the inspector overlapped nothing: {seen}"
    cycles, left = map(int, result.stdout.split()[2::2])
    assert cycles > 0
    assert left == 0, f"{left} of {2 * cycles} segments outlived their last detach"
    # Every create() succeeded (an orphan left behind would make the next one fail or be
    # reclaimed), and nothing is left now.
    assert make_key.leftovers(posix_name, sysv_name) == []


def test_looking_takes_no_lock(procs: ChildProcesses, make_key: KeyRegistry) -> None:
    """While some process holds a segment's exclusive flock (as a last detacher or a create()
    reclaiming an orphan does, for a moment), ls and info complete and report that holder: they
    read /proc/locks instead of locking."""
    keys = Keys("posix", make_key("nolock"))
    creator = hold(procs, "qsharedmem", "create", keys.arg, 100)
    creator.kill()
    fd = os.open(DEV_SHM / keys.name, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        segment = ls_json(procs, keys.id)[keys.id]
        assert (segment["attachments"], segment["pids"]) == (1, [os.getpid()])
        info = procs.run([sys.executable, "-m", "qsharedmem", "info", keys.id], timeout=30)
        assert info.returncode == 0, info.stderr
        rm = run_cli(procs, "rm", keys.id)
        assert rm.returncode == cli.EXIT_IN_USE, rm.stderr
    finally:
        os.close(fd)
    assert run_cli(procs, "rm", keys.id).returncode == 0
    assert make_key.leftovers(keys.name) == []


# --------------------------------------------------------------------------------------------
# Help, exit codes, demo, entry points


@pytest.mark.parametrize("name", ["ls", "info", "rm", "gc"])
def test_every_command_has_help_with_examples(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main([name, "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert f"usage: qsharedmem {name}" in out
    assert "examples:\n  qsharedmem " + name in out
    assert "exit codes:" in out


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in ([], ["nosuchcommand"], ["info"], ["info", "x", "--bytes", "-1"]):
        with pytest.raises(SystemExit) as exited:
            cli.main(argv)
        assert exited.value.code == cli.EXIT_USAGE, argv
    assert "usage: qsharedmem" in capsys.readouterr().err


def test_demo_runs_the_demonstration_with_all_its_arguments(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[list[str]] = []
    fake = types.ModuleType("qsharedmem.demo")

    def demo_main(argv: list[str] | None = None, prog: str = "") -> int:
        seen.append([prog, *(argv or [])])
        return 7

    fake.main = demo_main  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "qsharedmem.demo", fake)
    assert cli.main(["demo", "--help", "--rounds", "3"]) == 7
    assert seen == [["qsharedmem demo", "--help", "--rounds", "3"]]


def test_demo_without_the_demonstration_says_so(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "qsharedmem.demo", None)  # import fails: not installed
    assert cli.main(["demo"]) == cli.EXIT_FAILURE
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "qsharedmem demo: " in captured.err
    assert "qsharedmem.demo is missing" in captured.err


def test_console_script_and_module_entry_points(procs: ChildProcesses) -> None:
    script = Path(sys.executable).with_name("qsharedmem")
    assert script.exists(), "the console script is not installed (make develop)"
    for argv in ([str(script), "--version"], [sys.executable, "-m", "qsharedmem", "--version"]):
        result = procs.run(argv)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == f"qsharedmem {qsharedmem.__version__}"
