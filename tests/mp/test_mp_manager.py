"""``qsharedmem.SharedMemoryManager``: what "released at shutdown" means on a lifetime that
counts handles, with real manager processes under fork, spawn and forkserver.

The server holds a handle on every segment made through the manager, so a segment stays
attachable by name until shutdown even after the process that made it closed it or exited
(CPython's segments live until unlinked, and programs rely on that); shutdown unlinks and closes
them, handles elsewhere keep working, and the last close frees the memory. Also: Pool workers
that connect to the manager by address, a server terminated with SIGTERM, the server's
``track_segment``/``release_segment``/``list_segments`` calls, and bad input.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.managers
import os
import signal
from pathlib import Path
from typing import Any

import pytest
import qsharedmem
from qsharedmem import ShareableList, SharedMemory
from qsharedmem.managers import SharedMemoryManager, SharedMemoryServer

START_METHODS = ["fork", "spawn", "forkserver"]
DEV_SHM = Path("/dev/shm")
TIMEOUT = 60.0


def exists(name: str) -> bool:
    return (DEV_SHM / name).exists()


def ask_server(smm: SharedMemoryManager, method: str, *args: Any) -> Any:
    """Calls one of the server's own methods, as the manager does internally."""
    conn: Any = smm._Client(smm._address, authkey=smm._authkey)  # type: ignore[attr-defined]
    with conn:
        return multiprocessing.managers.dispatch(conn, None, method, args)  # type: ignore[attr-defined]


@pytest.fixture(params=START_METHODS)
def ctx(request: pytest.FixtureRequest) -> multiprocessing.context.BaseContext:
    return multiprocessing.get_context(request.param)


def test_the_server_keeps_segments_until_shutdown(ctx):
    with SharedMemoryManager(ctx=ctx) as smm:
        shm = smm.SharedMemory(32)
        sl = smm.ShareableList(["kept", 1])
        assert isinstance(shm, SharedMemory) and isinstance(sl, ShareableList)
        assert ask_server(smm, "list_segments") == [shm.name, sl.shm.name]
        shm.buf[:4] = b"data"
        names = [shm.name, sl.shm.name]
        shm.close()
        sl.shm.close()
        # Without the server's handles, these closes were the last and the segments gone.
        for name in names:
            assert exists(name)
        again = SharedMemory(names[0])
        assert bytes(again.buf[:4]) == b"data"
        assert list(ShareableList(name=names[1])) == ["kept", 1]
    # Shutdown unlinked them: no new attachments; the handle we kept still works.
    for name in names:
        with pytest.raises(FileNotFoundError):
            SharedMemory(name)
    again.buf[0] = ord("D")
    assert bytes(again.buf[:4]) == b"Data"
    again.close()
    for name in names:
        assert not exists(name)


def make_segment_through_the_manager(address: Any, slot: int) -> str:
    """A Pool worker that connects to the parent's manager (workers inherit its authkey)."""
    smm = SharedMemoryManager(address=address)
    smm.connect()
    shm = smm.SharedMemory(8)
    shm.buf[0] = slot
    sl = smm.ShareableList([f"worker {slot}"])
    # The worker exits without closing: the server's handle keeps both.
    return f"{shm.name} {sl.shm.name}"


def test_pool_workers_make_segments_that_outlive_them(ctx):
    with SharedMemoryManager(ctx=ctx) as smm:
        with ctx.Pool(2) as pool:
            made = pool.starmap(
                make_segment_through_the_manager, [(smm.address, slot) for slot in range(4)]
            )
        pairs = [line.split() for line in made]
        assert sorted(ask_server(smm, "list_segments")) == sorted(n for p in pairs for n in p)
        for slot, (shm_name, list_name) in enumerate(pairs):
            with SharedMemory(shm_name) as shm:
                assert shm.buf[0] == slot
            with ShareableList(name=list_name) as sl:
                assert sl[0] == f"worker {slot}"
    for shm_name, list_name in pairs:
        assert not exists(shm_name) and not exists(list_name)


def test_a_client_that_unlinked_first_does_not_break_shutdown(ctx):
    smm = SharedMemoryManager(ctx=ctx)
    smm.start()
    shm = smm.SharedMemory(8)
    shm.unlink()  # the CPython idiom, before shutdown
    shm.close()
    smm.shutdown()
    assert smm._process.exitcode == 0  # type: ignore[attr-defined]
    assert not exists(shm.name)


def test_release_segment_unlinks_one_segment(ctx):
    with SharedMemoryManager(ctx=ctx) as smm:
        first = smm.SharedMemory(8)
        second = smm.SharedMemory(8)
        first.close()
        ask_server(smm, "release_segment", first.name)
        assert not exists(first.name), "released, and our handle was closed: gone"
        assert ask_server(smm, "list_segments") == [second.name]
        with pytest.raises(multiprocessing.managers.RemoteError, match="is not tracked"):
            ask_server(smm, "release_segment", first.name)
        second.close()
    assert not exists(second.name)


def test_a_server_terminated_with_sigterm_releases_its_segments(ctx):
    smm = SharedMemoryManager(ctx=ctx)
    smm.start()
    shm = smm.SharedMemory(8)
    name = shm.name
    shm.close()
    process = smm._process  # type: ignore[attr-defined]
    os.kill(process.pid, signal.SIGTERM)  # what the manager's finalizer does to a stuck server
    process.join(TIMEOUT)
    assert process.exitcode == 0, "SIGTERM ends the server through its own exit path"
    assert not exists(name), "no orphan: the server unlinked and closed on its way out"
    smm.shutdown()


def test_bad_input_and_states(ctx, make_key):
    smm = SharedMemoryManager(ctx=ctx)
    with pytest.raises(ValueError):
        smm.SharedMemory(8)  # not started (CPython's message comes from connection.Client)
    with pytest.raises(ValueError):
        smm.ShareableList([1])
    smm.start()
    try:
        with pytest.raises(multiprocessing.ProcessError, match="Already started"):
            smm.get_server()
        before = set(os.listdir(DEV_SHM))
        with pytest.raises(ValueError):
            smm.SharedMemory(0)
        with pytest.raises(TypeError):
            smm.ShareableList([[1]])
        assert set(os.listdir(DEV_SHM)) == before, "refused before anything was made"
        assert ask_server(smm, "list_segments") == []
        with pytest.raises(
            multiprocessing.managers.RemoteError, match=r"NotFoundError: .*doesn.t exist"
        ):
            ask_server(smm, "track_segment", make_key("never-made"))
    finally:
        smm.shutdown()
    with pytest.raises(multiprocessing.ProcessError, match="has shut down"):
        smm.get_server()


def test_the_names():
    assert qsharedmem.SharedMemoryManager is SharedMemoryManager
    assert "SharedMemoryManager" in qsharedmem.__all__
    assert SharedMemoryManager._Server is SharedMemoryServer
    assert issubclass(SharedMemoryManager, multiprocessing.managers.BaseManager)
    assert qsharedmem.managers.__all__ == ["SharedMemoryManager", "SharedMemoryServer"]
