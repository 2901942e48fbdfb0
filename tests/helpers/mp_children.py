"""Targets for ``multiprocessing`` children (fork and spawn), importable without pytest, and a
QSharedMemory subclass that spawned children can unpickle.

Each target reports over a ``Connection`` and waits for the parent's go-ahead where the test
needs to act in between (handshakes, no sleeps). Segments are laid out as in the tests: the
first 8 bytes are the parent's marker, byte 8 onwards is where children write.
"""

from __future__ import annotations

from typing import Any

from qsharedmem import QSharedMemory

CHILD_TEXT = b"written by the child"
CHILD_OFFSET = 8


def use_inherited_then_detach(shm: Any, conn: Any) -> None:
    """(fork) Read the inherited attachment, write to it, detach; report what happened."""
    marker = bytes(shm.constData()[:8])
    shm.data()[CHILD_OFFSET : CHILD_OFFSET + len(CHILD_TEXT)] = CHILD_TEXT
    conn.send({"marker": marker, "detached": shm.detach(), "attached": shm.isAttached()})
    conn.close()


def outlive_parent_detach(shm: Any, conn: Any) -> None:
    """(fork) Report in, wait until the parent has detached, then use the memory and detach."""
    conn.send("attached")
    assert conn.recv() == "parent detached"
    marker = bytes(shm.constData()[:8])
    shm.data()[CHILD_OFFSET : CHILD_OFFSET + len(CHILD_TEXT)] = CHILD_TEXT
    written = bytes(shm.constData()[CHILD_OFFSET : CHILD_OFFSET + len(CHILD_TEXT)])
    conn.send({"marker": marker, "written": written, "detached": shm.detach()})
    conn.close()


def attach_by_key(key_string: str, conn: Any) -> None:
    """(spawn) Attach by key in a fresh interpreter, read the marker, write, detach."""
    from qsharedmem import QNativeIpcKey

    shm = QSharedMemory(QNativeIpcKey.fromString(key_string))
    attached = shm.attach()
    report: dict[str, Any] = {"attached": attached, "error": shm.errorString()}
    if attached:
        report["size"] = shm.size()
        with shm.locked():
            report["marker"] = bytes(shm.constData()[:8])
            shm.data()[CHILD_OFFSET : CHILD_OFFSET + len(CHILD_TEXT)] = CHILD_TEXT
        report["detached"] = shm.detach()
    conn.send(report)
    conn.close()


def report_pickled(shm: Any, conn: Any) -> None:
    """(spawn) Receive a pickled QSharedMemory as an argument; describe it; write if allowed."""
    report: dict[str, Any] = {
        "type": type(shm).__name__,
        "key": shm.nativeIpcKey().toString(),
        "attached": shm.isAttached(),
    }
    if shm.isAttached():
        view = shm.data()
        report["readonly"] = view.readonly
        report["size"] = shm.size()
        report["marker"] = bytes(shm.constData()[:8])
        if not view.readonly:
            view[CHILD_OFFSET : CHILD_OFFSET + len(CHILD_TEXT)] = CHILD_TEXT
        else:
            try:
                view[CHILD_OFFSET] = 1
            except TypeError as exc:
                report["write_error"] = f"TypeError: {exc}"
        view.release()
        report["detached"] = shm.detach()
    else:
        report["data"] = shm.data()
        # not attached when pickled: the child can still attach by the key it received
        report["attach"] = shm.attach()
        if report["attach"]:
            report["marker"] = bytes(shm.constData()[:8])
            report["detached"] = shm.detach()
    report["extra"] = getattr(shm, "extra", None)
    conn.send(report)
    conn.close()


class LabelledMemory(QSharedMemory):
    """A QSharedMemory subclass, written the way PySide6 code subclasses QSharedMemory."""

    def __init__(self, key: Any, label: str = "") -> None:
        super().__init__(key)
        self.label = label

    def create_filled(self, size: int, fill: bytes) -> bool:
        if not self.create(size):
            return False
        with self.locked():
            self.data()[:] = fill * size
        return True
