"""``multiprocessing.managers.SharedMemoryManager`` for :class:`qsharedmem.SharedMemory`.

``SharedMemoryManager`` is a ``multiprocessing.managers.BaseManager`` whose server process
keeps the segments made through it: ``smm.SharedMemory(size)`` and ``smm.ShareableList(seq)``
create a segment in the calling process and register it with the server, and
``smm.shutdown()`` (or the end of ``with SharedMemoryManager() as smm:``) releases them all.

Released means what CPython's manager does, on a lifetime that counts handles: the server
holds a handle on every segment it was given, so a segment stays available by name until
shutdown even after every other process closed it (as in CPython, where nothing but
``unlink()`` removes a segment). At shutdown the server unlinks each name, so nobody can attach
to it any more, and closes its handle. Handles that other processes still have keep working;
the last ``close()`` frees the memory.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterable
from multiprocessing import ProcessError, current_process, util
from multiprocessing import managers as _mp_managers
from multiprocessing.managers import BaseManager, Server
from types import FrameType
from typing import Any, NoReturn

from .shareable_list import _SLT, ShareableList
from .shared_memory import SharedMemory

__all__ = ["SharedMemoryManager", "SharedMemoryServer"]

# Parts of multiprocessing.managers that CPython's own SharedMemoryManager uses and typeshed
# leaves out (they are not documented): the manager's state and the request call.
_mp_private: Any = _mp_managers
_State = _mp_private.State
_dispatch = _mp_private.dispatch


class SharedMemoryServer(Server):
    """The server of a :class:`SharedMemoryManager`: holds a handle on each segment it tracks
    and unlinks and closes them all at shutdown."""

    public = [  # noqa: RUF012 (Server declares it as an attribute, not a ClassVar)
        *Server.public,
        "track_segment",
        "release_segment",
        "list_segments",
    ]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Requests arrive on one thread per connection.
        self._segments_lock = threading.Lock()
        self._segments: list[SharedMemory] = []

    def track_segment(self, c: Any, segment_name: str) -> None:
        """Attaches to the segment ``segment_name`` and keeps it until shutdown (or until
        ``release_segment``). The caller holds the segment open during the call."""
        segment = SharedMemory(segment_name)
        with self._segments_lock:
            self._segments.append(segment)
        util.debug(f"SharedMemoryServer tracks {segment_name!r}")

    def release_segment(self, c: Any, segment_name: str) -> None:
        """Unlinks the segment ``segment_name`` and closes the server's handle on it."""
        with self._segments_lock:
            for position, segment in enumerate(self._segments):
                if segment.name == segment_name:
                    del self._segments[position]
                    break
            else:
                raise ValueError(f"{segment_name!r} is not tracked by this SharedMemoryManager")
        _release(segment)

    def list_segments(self, c: Any) -> list[str]:
        """The names of the segments the server tracks, in the order they were made."""
        with self._segments_lock:
            return [segment.name for segment in self._segments if segment.name is not None]

    def release_all(self) -> None:
        with self._segments_lock:
            segments, self._segments = self._segments, []
        for segment in segments:
            _release(segment)

    def shutdown(self, c: Any) -> None:
        """Releases every tracked segment, then stops the server."""
        self.release_all()
        super().shutdown(c)


def _release(segment: SharedMemory) -> None:
    util.debug(f"SharedMemoryServer releases {segment.name!r}")
    # FileNotFoundError: somebody unlinked it already (the client's shm.unlink(), say), which
    # is what the server was going to do.
    with contextlib.suppress(FileNotFoundError):
        segment.unlink()
    segment.close()


class SharedMemoryManager(BaseManager):
    """``multiprocessing.managers.SharedMemoryManager`` for qsharedmem's segments.

    The constructor is ``BaseManager``'s (``address``, ``authkey``, ``serializer``, ``ctx``,
    ``shutdown_timeout``). ``start()`` or ``with SharedMemoryManager() as smm:`` starts the
    server process; ``SharedMemory(size)`` and ``ShareableList(sequence)`` return new
    :class:`qsharedmem.SharedMemory` / :class:`qsharedmem.ShareableList` objects that the
    server keeps until ``shutdown()``, which unlinks them. Unlike CPython's, it starts no
    resource tracker: there is none.
    """

    _Server = SharedMemoryServer

    # BaseManager.__init__ as it is; CPython's manager starts the resource tracker there.

    @classmethod
    def _run_server(cls, *args: Any, **kwargs: Any) -> None:
        # Runs in the server process. A manager whose shutdown message went unanswered is
        # terminated with SIGTERM (BaseManager's finalizer); without a handler the server
        # would die holding its names, and a segment nobody else held would stay in /dev/shm
        # as an orphan. SystemExit ends serve_forever(), and the at-exit release follows.
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
        super()._run_server(*args, **kwargs)  # type: ignore[misc]  # typeshed omits it

    def get_server(self) -> SharedMemoryServer:
        """A server to run in this process (``get_server().serve_forever()``)."""
        manager = self._base()
        state = manager._state.value
        if state != _State.INITIAL:
            if state == _State.STARTED:
                raise ProcessError("Already started SharedMemoryServer")
            if state == _State.SHUTDOWN:
                raise ProcessError("SharedMemoryManager has shut down")
            raise ProcessError(f"Unknown state {state!r}")
        return self._Server(
            manager._registry, manager._address, manager._authkey, manager._serializer
        )

    def _base(self) -> Any:
        """This manager with BaseManager's undocumented attributes (``_state``, ``_address``,
        ``_authkey``, ``_Client``...), which typeshed does not declare."""
        return self

    def _connect(self) -> Any:
        manager = self._base()
        return manager._Client(manager._address, authkey=manager._authkey)

    def SharedMemory(self, size: int) -> SharedMemory:
        """A new :class:`qsharedmem.SharedMemory` of ``size`` bytes, kept by the server until
        shutdown. ``ValueError`` if the manager was never started."""
        with self._connect() as conn:
            segment = SharedMemory(None, create=True, size=size)
            try:
                _dispatch(conn, None, "track_segment", (segment.name,))
            except BaseException:
                # Our handle is the only one: closing it destroys the segment.
                segment.close()
                raise
        return segment

    def ShareableList(self, sequence: Iterable[_SLT] | None) -> ShareableList[_SLT]:
        """A new :class:`qsharedmem.ShareableList` holding ``sequence``, kept by the server
        until shutdown. ``ValueError`` if the manager was never started."""
        with self._connect() as conn:
            shareable: ShareableList[_SLT] = ShareableList(sequence)
            try:
                _dispatch(conn, None, "track_segment", (shareable.shm.name,))
            except BaseException:
                shareable.shm.close()
                raise
        return shareable


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> NoReturn:
    # serve_forever() registers the server as the process's _manager_server.
    server = getattr(current_process(), "_manager_server", None)
    if isinstance(server, SharedMemoryServer):
        server.release_all()
    sys.exit(0)
