"""``multiprocessing.shared_memory.SharedMemory``, as a drop-in, minus its bugs.

Replace ``from multiprocessing.shared_memory import SharedMemory`` with
``from qsharedmem import SharedMemory`` and a program keeps working: same constructor
(CPython 3.13's, ``track`` included), same ``name``/``buf``/``size``, ``close()``, ``unlink()``,
pickling and ``repr``, same names in ``/dev/shm`` (a user name gets a leading ``/``, random names
are ``psm_`` + 8 hex digits), same exception types. What changes is the lifetime:

* there is no resource tracker: a process that exits never destroys a segment others still use,
  and nothing is ever printed about "leaked shared_memory objects";
* the segment is destroyed when the last handle in any process closes (also when processes
  crash), so forgetting ``unlink()`` leaks nothing;
* ``close()`` never raises ``BufferError``: views taken from ``buf`` (slices, numpy arrays) stay
  valid until they are released;
* ``unlink()`` removes the name now; handles attached to the segment keep working.

Plus what multiprocessing lacks: a cross-process lock (``lock()``/``unlock()``,
``with shm.locked(timeout=...):``), ``with SharedMemory(...) as shm:``, read-only attachments
(``readonly=True``) and zero-copy numpy views (``ndarray()``).

It is built on :class:`qsharedmem.QSharedMemory` with POSIX keys: ``SharedMemory("frame")`` is
``QSharedMemory(QNativeIpcKey("/frame", QNativeIpcKey.Type.PosixRealtime))``. Like
``multiprocessing.shared_memory``, this module also has ``ShareableList`` (written in
``shareable_list.py``). See ``docs/multiprocessing.md`` for the migration guide and every
difference from CPython.
"""

from __future__ import annotations

import contextlib
import operator
import os
import secrets
from types import TracebackType
from typing import TYPE_CHECKING, Any, NoReturn

from ._errors import LockError, SharedMemoryError
from ._qsharedmem import QNativeIpcKey, QSharedMemory

if TYPE_CHECKING:
    import numpy

    from ._qsharedmem import AtomicWord, Event

__all__ = ["ShareableList", "SharedMemory"]

# CPython's rule for random names (Lib/multiprocessing/shared_memory.py): a 14-character limit
# (FreeBSD's) for "/psm_" + hex digits.
_SHM_SAFE_NAME_LENGTH = 14
_SHM_NAME_PREFIX = "/psm_"
# CPython's platform switch; programs and CPython's tests read it. Our segments are POSIX ones.
_USE_POSIX = True

_POSIX = QNativeIpcKey.Type.PosixRealtime
_READ_ONLY = QSharedMemory.AccessMode.ReadOnly
_READ_WRITE = QSharedMemory.AccessMode.ReadWrite
_ALREADY_EXISTS = QSharedMemory.SharedMemoryError.AlreadyExists
_NOT_FOUND = QSharedMemory.SharedMemoryError.NotFound
_O_CREX = os.O_CREAT | os.O_EXCL
# The permissions our core gives a new segment (Qt's), CPython's default `_mode` too.
_CREATE_MODE = 0o600


def _umask() -> int:
    """The process's umask, read without changing it (os.umask() sets it to read it, which
    another thread creating a file at that moment would see)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


def _make_filename() -> str:
    """A random native name, as multiprocessing makes them: ``/psm_`` + 8 hex digits."""
    nbytes = (_SHM_SAFE_NAME_LENGTH - len(_SHM_NAME_PREFIX)) // 2
    return _SHM_NAME_PREFIX + secrets.token_hex(nbytes)


class _NotProvided:
    """A CPython attribute this class cannot have.

    Reading it raises ``AttributeError`` with what to use instead (so ``getattr(shm, "_fd",
    None)`` and ``hasattr`` work). Assigning ``disarmed``, the value CPython's ``close()``
    leaves, is accepted and does nothing: code that disarms CPython's ``__del__`` after a
    ``BufferError`` (``shm._mmap = None``) keeps running."""

    def __init__(self, disarmed: object, advice: str) -> None:
        self._disarmed = disarmed
        self._advice = advice
        self._attribute = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self._attribute = name

    def _error(self, owner: type) -> AttributeError:
        return AttributeError(
            f"{owner.__module__}.{owner.__qualname__} has no {self._attribute}: {self._advice}"
        )

    def __get__(self, instance: object, owner: type | None = None) -> NoReturn:
        raise self._error(owner if owner is not None else type(instance))

    def __set__(self, instance: object, value: object) -> None:
        if value != self._disarmed:
            raise self._error(type(instance))


def _failure(shm: QSharedMemory, fallback: str, native_name: str | None) -> SharedMemoryError:
    """The exception for the error ``shm`` recorded (errno, Qt's text and code), with the
    native name as ``filename``, as CPython's exceptions have it."""
    exception = shm._exception()
    if exception is None:
        exception = SharedMemoryError(None, fallback)
    exception.filename = native_name
    return exception


class SharedMemory:
    """A shared memory block, created or attached by name.

    ``SharedMemory(name=None, create=False, size=0, *, track=True, readonly=False)``:
    ``create=True`` makes a new block of ``size`` bytes (a random name if ``name`` is None),
    ``create=False`` attaches to an existing one (``size`` is ignored). ``readonly=True``
    attaches read-only: ``buf`` is a read-only ``memoryview``, ``ndarray()`` non-writeable.
    ``track`` is accepted for compatibility with CPython 3.13 and has no effect: there is no
    resource tracker, cleanup is by reference count on the last ``close()``.

    Beyond CPython: ``timeout`` (seconds, ``math.inf``: as long as it takes) makes an attach wait
    for the block to be created (programs can start in any order); ``permissions`` and ``group``
    (a name or a gid) are who may use a block this call creates (default 0600, as CPython's,
    less the umask; given bits are exact), so that another account can attach to it.

    Raises ``FileExistsError`` (``qsharedmem.AlreadyExistsError``) when creating a name that
    exists, ``FileNotFoundError`` (``qsharedmem.NotFoundError``) when attaching to one that
    does not, ``ValueError`` for a bad size or name; all of them are also
    ``qsharedmem.SharedMemoryError`` (an ``OSError`` with ``errno`` and ``qt_error``).
    """

    # Defaults, so that close(), unlink() and repr() work on a half-constructed object.
    _name: str | None = None
    _shm: QSharedMemory | None = None
    _buf: memoryview | None = None
    _size = 0
    _track = True
    _readonly = False

    # CPython's class attributes that programs read or subclasses set, with CPython's values.
    # `_flags`: a subclass with O_CREAT (and no O_EXCL) attaches to a name that exists, as
    # CPython's own test does; an instance reports its flags (O_CREAT|O_EXCL|O_RDWR if it
    # created, O_RDONLY if read-only). `_mode`: the permissions of a new segment (less the
    # umask, as shm_open() applies it). `_prepend_leading_slash`: a
    # subclass with False passes names as they are, and `name` reports them so.
    _flags = os.O_RDWR
    _mode = _CREATE_MODE
    _prepend_leading_slash = True
    _fd = _NotProvided(
        -1,
        "the segment's descriptors belong to its reference count, which a flock(), mmap or "
        "close() on them would break; use buf for the memory, size for its size, lock() or "
        "locked() for a cross-process lock, ndarray() for numpy",
    )
    _mmap = _NotProvided(
        None,
        "use buf, a memoryview of the same memory (len(buf) is its size, buf.readonly tells a "
        "read-only attachment), or ndarray() for numpy; close() never raises BufferError, so "
        "nothing needs disarming",
    )

    def __init__(
        self,
        name: str | None = None,
        create: bool = False,
        size: int = 0,
        *,
        track: bool = True,
        readonly: bool = False,
        timeout: float | None = None,
        permissions: int | None = None,
        group: int | str | None = None,
    ) -> None:
        # CPython's checks, in CPython's order, with CPython's messages. `create` is
        # anything with a truth value and `size` anything like an int, `True` too (1 byte).
        attach_or_fail = not create and bool(self._flags & os.O_CREAT)
        if not size >= 0:
            raise ValueError("'size' must be a positive integer")
        if create:
            self._flags = _O_CREX | os.O_RDWR
            if size == 0:
                raise ValueError("'size' must be a positive number different from zero")
            # Before anything exists (CPython's ftruncate() refuses a float after shm_open()
            # made the file, and leaves it behind).
            size = operator.index(size)
        elif readonly:
            self._flags = os.O_RDONLY
        if name is None and not create:
            raise ValueError("'name' can only be None if create=True")
        # CPython passes `_mode` to shm_open(), which applies the umask; `permissions` are
        # exact (as for QSharedMemory.create).
        if permissions is None and self._mode != _CREATE_MODE:
            permissions = self._mode & ~_umask()
        self._track = track
        self._readonly = bool(readonly)
        mode = _READ_ONLY if readonly else _READ_WRITE
        if name is None:
            while True:
                native = _make_filename()
                shm = QSharedMemory(QNativeIpcKey(native, _POSIX))
                if shm.create(size, mode, permissions=permissions, group=group):
                    break
                if shm.error() != _ALREADY_EXISTS:
                    raise _failure(shm, "SharedMemory: cannot create", native)
        else:
            # As shm_open() in glibc: one leading slash or none names the same object.
            given = "/" + name if self._prepend_leading_slash else name
            native = given if given.startswith("/") else "/" + given
            if "\0" in native:
                # CPython 3.13's check (3.11 silently cut the name at the NUL).
                raise ValueError("embedded null character")
            shm = QSharedMemory(QNativeIpcKey(native, _POSIX))
            done = (
                shm.create(size, mode, permissions=permissions, group=group)
                if create
                else shm.attach(mode, timeout=timeout)
            )
            if not done:
                if attach_or_fail and shm.error() == _NOT_FOUND:
                    # CPython makes an empty file here, fails to map it and removes it again.
                    raise ValueError(
                        f"{name!r} does not exist, and _flags with O_CREAT cannot create it "
                        "without a size; pass create=True and a size"
                    )
                raise _failure(shm, "SharedMemory: cannot create or attach", native)
            native = given
        self._name = native
        self._shm = shm
        self._size = shm.size()
        self._buf = shm.data()

    # -- multiprocessing's API --------------------------------------------------------------

    @property
    def buf(self) -> memoryview | None:
        """A memoryview of the block's contents (read-only for ``readonly=True``); None after
        ``close()``."""
        return self._buf

    @property
    def name(self) -> str | None:
        """The block's name, without the leading ``/`` (as multiprocessing reports it)."""
        name = self._name
        if name is not None and self._prepend_leading_slash and name.startswith("/"):
            return name[1:]
        return name

    @property
    def size(self) -> int:
        """Size in bytes: the size the creator asked for (a block made by multiprocessing or
        Qt: its file size)."""
        return self._size

    def close(self) -> None:
        """Detaches this handle (idempotent). Views taken from ``buf`` stay valid until they
        are released; the block is destroyed when the last handle in any process closes."""
        buf = self._buf
        self._buf = None
        if buf is not None:
            # BufferError: something (a numpy array, a ctypes object...) holds a buffer export
            # of this very memoryview. It keeps the memory mapped, and the attachment counted,
            # until it is released. CPython raises here; we just let go of our reference.
            with contextlib.suppress(BufferError):
                buf.release()
        shm = self._shm
        if shm is not None and shm.isAttached():
            shm.detach()

    def unlink(self) -> None:
        """Removes the block's name now: nobody can attach to it any more, and the name is free
        for a new block. Handles attached to it keep working; the memory is freed when the last
        of them closes.

        ``close(); unlink()`` after the last close is fine (the close destroyed the block and
        its name). Unlinking a block that was unlinked already raises ``FileNotFoundError``, as
        in CPython. A name that meanwhile belongs to a new block is never removed."""
        shm = self._shm
        if shm is not None and not shm.remove():
            raise _failure(shm, "SharedMemory.unlink: cannot remove", self._name)

    def __del__(self) -> None:
        """Nothing to do: the handle detaches when it is collected. Here for subclasses whose
        own ``__del__`` calls CPython's (``super().__del__()``)."""

    def __reduce__(self) -> tuple[Any, ...]:
        if self._readonly:
            return (_attach_readonly, (self.__class__, self.name))
        return (self.__class__, (self.name, False, self.size))

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.name!r}, size={self.size})"

    # -- extras -----------------------------------------------------------------------------

    @property
    def readonly(self) -> bool:
        """Whether this handle attached read-only."""
        return self._readonly

    def __enter__(self) -> SharedMemory:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _attached(self, operation: str) -> QSharedMemory:
        shm = self._shm
        if self._buf is None or shm is None:
            raise ValueError(f"{operation}: the SharedMemory is closed")
        return shm

    def lock(self, timeout: float | None = None) -> None:
        """Takes the block's cross-process lock, waiting at most ``timeout`` seconds (None:
        as long as it takes; the GIL is released and Ctrl-C works meanwhile).

        Raises ``qsharedmem.LockTimeoutError`` (a ``TimeoutError``) when the time is up,
        ``qsharedmem.LockError`` if the lock cannot be taken. The lock belongs to this handle
        and this thread; a holder that dies releases it (see ``lock_owner_died``)."""
        shm = self._attached("lock()")
        if not shm.lock(timeout):
            raise _failure(shm, "QSharedMemory::lock: unable to lock", self._name)

    def unlock(self) -> None:
        """Releases the lock; ``qsharedmem.LockError`` if this thread does not hold it through
        this handle."""
        shm = self._attached("unlock()")
        if not shm.unlock():
            raise LockError(None, "SharedMemory.unlock: not locked by this thread and handle")

    def locked(self, timeout: float | None = None) -> _Locked:
        """``with shm.locked(timeout=None):`` holds the lock for the block (see ``lock()``)."""
        return _Locked(self, timeout)

    # Wait and notify, events, atomic words: QSharedMemory's (see docs/notify.md).

    def generation(self) -> int:
        """The block's notify generation (see ``wait_changed``)."""
        return self._attached("generation()").generation()

    def wait_changed(
        self, generation: int, timeout: float | None = None, *, spin: float | None = None
    ) -> bool:
        """Waits until another process called ``notify()``/``notify_all()`` since
        ``generation`` (True), at most ``timeout`` seconds (False); the GIL is released."""
        return self._attached("wait_changed()").wait_changed(generation, timeout, spin=spin)

    def notify(self) -> int:
        """Bumps the generation and wakes one waiter; returns how many it woke."""
        return self._attached("notify()").notify()

    def notify_all(self) -> int:
        """Bumps the generation and wakes every waiter; returns how many it woke."""
        return self._attached("notify_all()").notify_all()

    def event(self, name_or_index: str | int) -> Event:
        """One of the block's 32 events (``set``/``clear``/``is_set``/``wait``)."""
        return self._attached("event()").event(name_or_index)

    def atomic_u32(self, offset: int) -> AtomicWord:
        """The aligned 32-bit word at ``offset`` of ``buf``, used atomically."""
        return self._attached("atomic_u32()").atomic_u32(offset)

    def atomic_u64(self, offset: int) -> AtomicWord:
        """The aligned 64-bit word at ``offset`` of ``buf``, used atomically."""
        return self._attached("atomic_u64()").atomic_u64(offset)

    async def await_changed(self, generation: int, timeout: float | None = None) -> bool:
        """``wait_changed`` for asyncio."""
        return await self._attached("await_changed()").await_changed(generation, timeout)

    async def alock(self, timeout: float | None = None) -> None:
        """``lock()`` for asyncio: raises ``LockTimeoutError``/``LockError`` as ``lock()``."""
        shm = self._attached("alock()")
        if not await shm.alock(timeout):
            raise _failure(shm, "QSharedMemory::lock: unable to lock", self._name)

    def alocked(self, timeout: float | None = None) -> _ALocked:
        """``async with shm.alocked(timeout=None):`` holds the lock for the block."""
        return _ALocked(self, timeout)

    @property
    def lock_owner_died(self) -> bool:
        """True if the last ``lock()`` found that the previous holder died holding it (the data
        it protected may be half-written)."""
        shm = self._shm
        return shm is not None and shm.lockOwnerDied()

    def ndarray(self, shape: Any, dtype: Any, offset: int = 0) -> numpy.ndarray:
        """A numpy array on the block's memory itself (no copy): ``shape`` and ``dtype`` as for
        ``numpy.ndarray``, starting ``offset`` bytes into the block. Non-writeable for
        ``readonly=True`` handles. Like any view, it stays valid after ``close()`` until it is
        released. Needs numpy (imported on first use)."""
        shm = self._attached("ndarray()")
        try:
            import numpy
        except ImportError as e:  # pragma: no cover - numpy is installed for the tests
            raise ModuleNotFoundError("SharedMemory.ndarray() needs numpy") from e
        offset = operator.index(offset)
        if offset < 0:
            # numpy checks only the end of the array against the buffer, not its start.
            raise ValueError(f"offset must not be negative, got {offset}")
        # A buffer of its own (not `buf`), so that close() can always release `buf`.
        return numpy.ndarray(shape, dtype=dtype, buffer=shm.data(), offset=offset)


class _Locked:
    """The context manager of :meth:`SharedMemory.locked`."""

    __slots__ = ("_shm", "_timeout")

    def __init__(self, shm: SharedMemory, timeout: float | None) -> None:
        self._shm = shm
        self._timeout = timeout

    def __enter__(self) -> SharedMemory:
        self._shm.lock(self._timeout)
        return self._shm

    def __exit__(self, *exc: object) -> None:
        shm = self._shm._shm
        if shm is not None:
            shm.unlock()


class _ALocked:
    """The async context manager of :meth:`SharedMemory.alocked`."""

    __slots__ = ("_shm", "_timeout")

    def __init__(self, shm: SharedMemory, timeout: float | None) -> None:
        self._shm = shm
        self._timeout = timeout

    async def __aenter__(self) -> SharedMemory:
        await self._shm.alock(self._timeout)
        return self._shm

    async def __aexit__(self, *exc: object) -> None:
        shm = self._shm._shm
        if shm is not None:
            shm.unlock()


def _attach_readonly(cls: type[SharedMemory], name: str) -> SharedMemory:
    """Unpickles a read-only handle: attaches read-only again."""
    return cls(name, readonly=True)


# multiprocessing.shared_memory has both classes; so does this module. Imported last: the
# ShareableList module needs SharedMemory, defined above.
from .shareable_list import ShareableList  # noqa: E402
