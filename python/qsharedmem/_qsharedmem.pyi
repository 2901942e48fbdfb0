"""Type stubs for the extension module ``qsharedmem._qsharedmem`` (src/python/).

Kept exact by ``make lint``: ``mypy.stubtest`` compares them with the built module
(tests/typecheck/stubtest_allowlist.txt lists what stubtest cannot check, and why), and
``mypy --strict tests/typecheck/typing_example.py`` checks that they type a user's code as intended.

Enum arguments take the member or its integer value (a bool is a TypeError at runtime, and so
is a member of another enum, as in PySide6). ``None`` for an optional argument means its Qt
default.
"""

import builtins
import sys
from collections.abc import Callable, Coroutine
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import (
    Any,
    Final,
    Generic,
    Literal,
    Self,
    SupportsIndex,
    TypeAlias,
    TypedDict,
    TypeVar,
    final,
    overload,
)

from typing_extensions import disjoint_base

from ._enums import AccessMode as _AccessMode
from ._enums import KeyType as _KeyType
from ._enums import SharedMemoryError as _SharedMemoryErrorCode
from ._enums import SystemSemaphoreAccessMode as _SemaphoreAccessMode
from ._enums import SystemSemaphoreError as _SystemSemaphoreErrorCode
from ._errors import SharedMemoryError as _SharedMemoryException

__all__ = [
    "AtomicWord",
    "Event",
    "QNativeIpcKey",
    "QSharedMemory",
    "QSystemSemaphore",
    "_LockedContext",
    "_SegmentBuffer",
    "_WatchQueue",
    "__version__",
    "_after_fork_in_child",
    "_after_fork_in_parent",
    "_before_fork",
    "_late_wakeups",
    "_rebuild_qsharedmemory",
    "_release_at_exit",
    "collect_garbage",
    "find_segments",
    "list_segments",
    "read_segment",
    "remove_segment",
    "shm_space",
]

__version__: str

_Handle = TypeVar("_Handle", bound=QSharedMemory)

# What a key argument accepts: a QNativeIpcKey, or a str legacy key (``legacyNativeKey(key)``).
_KeyArg: TypeAlias = QNativeIpcKey | str
_KeyTypeArg: TypeAlias = _KeyType | int

@final
class QNativeIpcKey:
    """``QNativeIpcKey``: the native (OS-level) name of an IPC object and its kind (Qt 6.6+).

    ``toString()``/``fromString()`` convert it to and from Qt's string form, which is how
    processes pass keys to each other. Hashable, comparable with ``==`` (also with a ``str``,
    read as ``QNativeIpcKey(str)``), copyable and picklable.
    """

    Type: TypeAlias = _KeyType
    DefaultTypeForOs: Final[_KeyType]
    """``Type.PosixRealtime`` on Linux."""

    @overload
    def __new__(cls, k: str | None = None, /, type: _KeyTypeArg | None = None) -> Self:
        """``QNativeIpcKey()``, ``QNativeIpcKey(k, type=DefaultTypeForOs)``; ``None`` is ``""``."""
    @overload
    def __new__(cls, k: QNativeIpcKey | _KeyTypeArg, /, type: None = None) -> Self:
        """``QNativeIpcKey(other)`` (a copy), ``QNativeIpcKey(type)`` (an empty key)."""
    @staticmethod
    def legacyDefaultTypeForOs() -> _KeyType:
        """The type Qt < 6.6 used: ``Type.SystemV`` on Linux."""
    def nativeKey(self) -> str: ...
    def setNativeKey(self, new_key: str | None, /) -> None:
        """Replaces the native key (``None``: ``""``); a legacy key is forgotten."""
    def type(self) -> _KeyType: ...
    def setType(self, type: _KeyTypeArg, /) -> None:
        """Changes the key type (ignored on legacy keys, as in Qt)."""
    def isEmpty(self) -> bool: ...
    def isValid(self) -> bool:
        """Whether the type is valid (not 0); the native key is not checked."""
    def toString(self) -> str:
        """Qt's string form, e.g. ``'posix:/demo'`` (``''`` for an invalid type)."""
    @staticmethod
    def fromString(string: str | None, /) -> QNativeIpcKey:
        """Parses Qt's string form; an invalid key if it cannot be parsed."""
    def swap(self, other: QNativeIpcKey, /) -> None: ...
    def __eq__(self, other: object, /) -> bool: ...
    def __ne__(self, other: object, /) -> bool: ...
    def __hash__(self) -> int: ...
    def __copy__(self) -> QNativeIpcKey: ...
    def __deepcopy__(self, memo: dict[int, Any], /) -> QNativeIpcKey: ...
    def __reduce__(
        self,
    ) -> tuple[builtins.type[QNativeIpcKey], tuple[()], tuple[str, int, str | None]]: ...
    def __setstate__(self, state: tuple[str, int, str | None], /) -> None: ...

@disjoint_base
class QSharedMemory:
    """``QSharedMemory``: a shared memory segment by key, with Qt 6's API and semantics.

    Methods return ``False`` and record ``error()``/``errorString()``, as in Qt. Extras:
    ``lock(timeout=None)``, ``lockOwnerDied()``, ``remove()``, ``with shm:`` (unlock and detach
    on exit), ``with shm.locked(timeout=None):``, pickling (re-attaches by key).
    """

    AccessMode: TypeAlias = _AccessMode
    SharedMemoryError: TypeAlias = _SharedMemoryErrorCode
    ReadOnly: Final[Literal[_AccessMode.ReadOnly]]
    ReadWrite: Final[Literal[_AccessMode.ReadWrite]]
    NoError: Final[Literal[_SharedMemoryErrorCode.NoError]]
    PermissionDenied: Final[Literal[_SharedMemoryErrorCode.PermissionDenied]]
    InvalidSize: Final[Literal[_SharedMemoryErrorCode.InvalidSize]]
    KeyError: Final[Literal[_SharedMemoryErrorCode.KeyError]]
    AlreadyExists: Final[Literal[_SharedMemoryErrorCode.AlreadyExists]]
    NotFound: Final[Literal[_SharedMemoryErrorCode.NotFound]]
    LockError: Final[Literal[_SharedMemoryErrorCode.LockError]]
    OutOfResources: Final[Literal[_SharedMemoryErrorCode.OutOfResources]]
    UnknownError: Final[Literal[_SharedMemoryErrorCode.UnknownError]]

    def __new__(cls, *args: Any, **kwargs: Any) -> Self:
        """An empty handle: any arguments are accepted, so that a subclass's constructor
        can take its own (``__init__`` sets the key)."""
    def __init__(self, key: _KeyArg | None = None, parent: object | None = None) -> None:
        """``QSharedMemory()``, ``QSharedMemory(key)``; ``parent`` (a QObject in PySide6)
        is accepted and unused. Called again on a live handle, detaches it first."""
    def create(
        self,
        size: SupportsIndex,
        mode: _AccessMode | int | None = None,
        *,
        permissions: int | None = None,
        group: int | str | None = None,
    ) -> bool:
        """Creates and attaches a segment of ``size`` bytes (``mode`` ``None``: ReadWrite).

        ``permissions`` (exact bits, default Qt's 0600 less the umask) and ``group`` (a name or
        gid) go to every object it makes: the segment, its control block, Qt's lock semaphore,
        the System V key files."""
    def attach(self, mode: _AccessMode | int | None = None, timeout: float | None = None) -> bool:
        """Attaches to the existing segment (``mode`` ``None``: ReadWrite). With a ``timeout``
        (seconds, ``math.inf``: as long as it takes) waits for it to be created first."""
    def detach(self) -> bool: ...
    def remove(self) -> bool:
        """Removes the segment's key now (multiprocessing's ``unlink()``); attachments keep
        working and the last detach frees the memory. False + ``error()`` if nothing was
        removed (``NotFound``: no segment, or removed already)."""
    def _exception(self) -> _SharedMemoryException | None:
        """The exception for the recorded error (``None`` for ``NoError``)."""
    def isAttached(self) -> bool: ...
    def data(self) -> memoryview | None:
        """The segment's memory (read-only for ReadOnly attachments), ``None`` if not
        attached. A view stays valid after ``detach()`` until it is released."""
    def constData(self) -> memoryview | None:
        """The segment's memory, read-only; ``None`` if not attached."""
    def size(self) -> int: ...
    def lock(self, timeout: float | None = None) -> bool:
        """Takes the cross-process lock, waiting at most ``timeout`` seconds (None: forever).

        The GIL is released while waiting and Ctrl-C works. False + LockError on timeout.
        """
    def unlock(self) -> bool: ...
    def lockOwnerDied(self) -> bool:
        """True if the last successful lock() found the previous holder dead."""
    def error(self) -> _SharedMemoryErrorCode: ...
    def errorString(self) -> str: ...
    def key(self) -> str:
        """The legacy key (``""`` if the native key was not derived from one)."""
    def setKey(self, key: str) -> None:
        """``setNativeKey(legacyNativeKey(key))``."""
    def nativeKey(self) -> str: ...
    def nativeIpcKey(self) -> QNativeIpcKey: ...
    @overload
    def setNativeKey(self, key: QNativeIpcKey, type: None = None) -> None: ...
    @overload
    def setNativeKey(self, key: str, type: _KeyTypeArg | None = None) -> None:
        """A str key has type ``type`` (``None``: ``legacyDefaultTypeForOs()``)."""
    @staticmethod
    def platformSafeKey(key: str, type: _KeyTypeArg | None = None) -> QNativeIpcKey:
        """The native key Qt makes for ``key`` (``type`` ``None``: ``DefaultTypeForOs``)."""
    @staticmethod
    def legacyNativeKey(key: str, type: _KeyTypeArg | None = None) -> QNativeIpcKey:
        """The key Qt < 6.6 used for ``key`` (``type`` ``None``: ``legacyDefaultTypeForOs()``)."""
    @staticmethod
    def isKeyTypeSupported(type: _KeyTypeArg) -> bool: ...
    def __enter__(self) -> Self: ...
    def __exit__(self, *exc_info: object) -> Literal[False]:
        """Unlocks (if locked) and detaches."""
    def locked(self, timeout: float | None = None) -> _LockedContext[Self]:
        """``with shm.locked():`` holds the lock for the block; raises
        ``LockTimeoutError``/``LockError`` if it cannot be taken."""
    # -- wait and notify (docs/notify.md) -------------------------------------------------
    def generation(self) -> int:
        """The segment's notify generation, a 32-bit counter bumped by ``notify()``."""
    def wait_changed(
        self, generation: int, timeout: float | None = None, *, spin: float | None = None
    ) -> bool:
        """Waits until the generation is no longer ``generation`` (True; at once if it is not),
        at most ``timeout`` seconds (False). Spins ``spin`` seconds (default 10 µs) first, then
        sleeps in the kernel; the GIL is released and Ctrl-C works."""
    def notify(self) -> int:
        """Bumps the generation and wakes one sleeping waiter; returns how many it woke."""
    def notify_all(self) -> int:
        """Bumps the generation and wakes every sleeping waiter; returns how many it woke."""
    def event(self, name_or_index: str | int, /) -> Event:
        """One of the segment's 32 events: by slot number (0-31), or by name (1-48 bytes,
        named now if no slot has it)."""
    def atomic_u32(self, offset: int, /) -> AtomicWord:
        """The aligned 32-bit word at ``offset`` of the data, used atomically."""
    def atomic_u64(self, offset: int, /) -> AtomicWord:
        """The aligned 64-bit word at ``offset`` of the data, used atomically."""
    def await_changed(
        self, generation: int, timeout: float | None = None
    ) -> Coroutine[Any, Any, bool]:
        """``await shm.await_changed(generation)``: ``wait_changed`` for asyncio."""
    def alock(self, timeout: float | None = None) -> Coroutine[Any, Any, bool]:
        """``await shm.alock()``: ``lock()`` for asyncio (also waits while another task holds
        it through this handle); False + ``error()`` on timeout."""
    def alocked(self, timeout: float | None = None) -> AbstractAsyncContextManager[Self]:
        """``async with shm.alocked():`` holds the lock for the block; raises
        ``LockTimeoutError``/``LockError`` if it cannot be taken."""
    def _try_lock(self, record_busy: bool = False) -> bool | None: ...
    def __reduce__(
        self,
    ) -> tuple[
        Callable[[type[Self], QNativeIpcKey, int | None], Self],
        tuple[type[Self], QNativeIpcKey, int | None],
        dict[str, Any] | None,
    ]:
        """Rebuilds the handle from its key and re-attaches it (the memory is not copied)."""
    def _after_fork(self) -> None: ...

@final
class _LockedContext(Generic[_Handle]):
    """What ``QSharedMemory.locked()`` returns (not constructible from Python)."""

    def __enter__(self) -> _Handle: ...
    def __exit__(self, *exc_info: object) -> Literal[False]: ...

@final
class _SegmentBuffer:
    """The buffer exporter behind the memoryviews of ``data()`` (not constructible)."""

    if sys.version_info >= (3, 12):
        def __buffer__(self, flags: int, /) -> memoryview: ...

def _rebuild_qsharedmemory(cls: type[_Handle], key: _KeyArg | None, mode: int | None) -> _Handle:
    """Unpickling: a ``cls`` handle with ``key``, attached with ``mode`` (0 ReadOnly, else
    ReadWrite) unless ``mode`` is ``None``; raises if it cannot attach."""

@disjoint_base
class QSystemSemaphore:
    """``QSystemSemaphore``: a counting semaphore shared between processes by key, Qt 6's API.

    Extras over Qt: ``acquire(timeout=None)`` (GIL released, Ctrl-C works), ``with sem:``
    (acquire, release on exit).
    """

    AccessMode: TypeAlias = _SemaphoreAccessMode
    SystemSemaphoreError: TypeAlias = _SystemSemaphoreErrorCode
    Open: Final[Literal[_SemaphoreAccessMode.Open]]
    Create: Final[Literal[_SemaphoreAccessMode.Create]]
    NoError: Final[Literal[_SystemSemaphoreErrorCode.NoError]]
    PermissionDenied: Final[Literal[_SystemSemaphoreErrorCode.PermissionDenied]]
    KeyError: Final[Literal[_SystemSemaphoreErrorCode.KeyError]]
    AlreadyExists: Final[Literal[_SystemSemaphoreErrorCode.AlreadyExists]]
    NotFound: Final[Literal[_SystemSemaphoreErrorCode.NotFound]]
    OutOfResources: Final[Literal[_SystemSemaphoreErrorCode.OutOfResources]]
    UnknownError: Final[Literal[_SystemSemaphoreErrorCode.UnknownError]]

    def __new__(
        cls,
        key: _KeyArg | None,
        /,
        initialValue: SupportsIndex | None = None,
        mode: _SemaphoreAccessMode | int | None = None,
        *,
        permissions: int | None = None,
        group: int | str | None = None,
    ) -> Self:
        """``QSystemSemaphore(key, initialValue=0, mode=Open)`` (``None``: those defaults;
        a ``None`` key is ``""``). ``initialValue`` applies only when it creates the semaphore;
        so do ``permissions`` (exact bits, default Qt's 0600) and ``group``."""
    def aacquire(self, timeout: float | None = None) -> Coroutine[Any, Any, bool]:
        """``await sem.aacquire()``: ``acquire()`` for asyncio (tried from the event loop with
        a 0.5-20 ms backoff); cancelling it never leaves a token taken."""
    def _try_acquire(self) -> bool: ...
    def acquire(self, timeout: float | None = None) -> bool:
        """Takes a token, waiting at most ``timeout`` seconds (None: forever).

        The GIL is released while waiting and Ctrl-C works. False on timeout (NoError) or
        when the semaphore is unusable (error() says why).
        """
    def release(self, n: SupportsIndex | None = None) -> bool:
        """Gives ``n`` tokens back (``None``: 1); a negative ``n`` warns and returns False."""
    def error(self) -> _SystemSemaphoreErrorCode: ...
    def errorString(self) -> str: ...
    def key(self) -> str:
        """The legacy key (``""`` if the native key was not derived from one)."""
    def setKey(
        self,
        key: str | None,
        /,
        initialValue: SupportsIndex | None = None,
        mode: _SemaphoreAccessMode | int | None = None,
    ) -> None:
        """``setNativeKey(legacyNativeKey(key), initialValue, mode)``."""
    def nativeIpcKey(self) -> QNativeIpcKey: ...
    @overload
    def setNativeKey(
        self,
        key: QNativeIpcKey,
        /,
        initialValue: SupportsIndex | None = None,
        mode: _SemaphoreAccessMode | int | None = None,
        type: None = None,
    ) -> None: ...
    @overload
    def setNativeKey(
        self,
        key: str | None,
        /,
        initialValue: SupportsIndex | None = None,
        mode: _SemaphoreAccessMode | int | None = None,
        type: _KeyTypeArg | None = None,
    ) -> None:
        """A str key has type ``type`` (``None``: ``legacyDefaultTypeForOs()``)."""
    @staticmethod
    def platformSafeKey(key: str, /, type: _KeyTypeArg | None = None) -> QNativeIpcKey: ...
    @staticmethod
    def legacyNativeKey(key: str, /, type: _KeyTypeArg | None = None) -> QNativeIpcKey: ...
    @staticmethod
    def isKeyTypeSupported(type: _KeyTypeArg, /) -> bool: ...
    def __enter__(self) -> Self:
        """Acquires a token (waiting as long as it takes); raises if the semaphore is unusable."""
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        _exc_value: BaseException | None,
        _traceback: TracebackType | None,
    ) -> Literal[False]:
        """Releases the token (a failure raises, unless the block raised)."""

@final
class Event:
    """One of a segment's 32 events, shared by every process attached (``QSharedMemory.event``).

    Like ``threading.Event``; it keeps the segment attached while it exists."""

    def set(self) -> bool:
        """Sets the event, waking every waiter; False if it was set already."""
    def clear(self) -> bool:
        """Clears the event; False if it was clear already."""
    def is_set(self) -> bool: ...
    def wait(self, timeout: float | None = None, *, spin: float | None = None) -> bool:
        """True once the event is set (also if a ``set()`` was undone by a ``clear()`` before
        this waiter woke), False on timeout; the GIL is released and Ctrl-C works."""
    def await_set(self, timeout: float | None = None) -> Coroutine[Any, Any, bool]:
        """``await event.await_set()``: ``wait()`` for asyncio."""
    @property
    def index(self) -> int:
        """The slot number, 0 to 31."""
    @property
    def name(self) -> str | None:
        """The name; ``None`` for a numbered event."""
    @property
    def waiters(self) -> int:
        """How many threads (in any process) sleep in ``wait()`` now."""
    def _token(self) -> int: ...
    def _set_since(self, token: int, /) -> bool: ...

@final
class AtomicWord:
    """An aligned 32- or 64-bit word of a segment's data, used atomically
    (``QSharedMemory.atomic_u32``/``atomic_u64``); it keeps the segment attached.

    Every operation is sequentially consistent; writes raise ``TypeError`` on a ReadOnly
    attachment. A 64-bit wait sleeps on the low half (see docs/notify.md)."""

    def load(self) -> int: ...
    def store(self, value: int, /) -> None: ...
    def add(self, delta: int, /) -> int:
        """Adds ``delta`` (negative: subtracts; wraps around); returns the value before."""
    def compare_exchange(self, expected: int, desired: int, /) -> tuple[bool, int]:
        """Stores ``desired`` if the word holds ``expected``; (whether it did, the value it
        held)."""
    def wait(
        self, expected: int, timeout: float | None = None, *, spin: float | None = None
    ) -> bool:
        """Waits while the word holds ``expected``: True once it holds another value, False on
        timeout. Writers must call ``wake()`` after changing it."""
    def wake(self, n: int = 1) -> int:
        """Wakes up to ``n`` waiters (in any process); returns how many it woke."""
    def await_changed(
        self, expected: int, timeout: float | None = None
    ) -> Coroutine[Any, Any, bool]:
        """``await word.await_changed(expected)``: ``wait()`` for asyncio."""
    @property
    def bits(self) -> Literal[32, 64]: ...
    @property
    def offset(self) -> int: ...
    @property
    def readonly(self) -> bool: ...

@final
class _WatchQueue:
    """One event loop's mailbox of the process-wide watcher thread (``qsharedmem._aio``)."""

    def __new__(cls) -> Self: ...
    def fileno(self) -> int: ...
    def take(self) -> list[int]: ...
    def watch_generation(self, shm: QSharedMemory, generation: int, /) -> int: ...
    def watch_event(self, event: Event, token: int, /) -> int: ...
    def watch_word(self, word: AtomicWord, expected: int, /) -> int: ...
    @staticmethod
    def cancel(id: int, /) -> None: ...
    @staticmethod
    def waiting() -> int: ...

# -- Inspection (the `qsharedmem` command line): plain, JSON-ready dicts --------------------

class _LockDict(TypedDict):
    state: Literal["free", "held", "owner-died", "none", "unknown"]
    holder: int | None
    primitive: str
    value: int | None
    waiters: int | None
    owner_deaths: int | None

class _EventDict(TypedDict):
    name: str
    set: bool
    waiters: int

class _SegmentDict(TypedDict):
    """One segment (``None`` where unknown or not applicable)."""

    id: str  # a string find_segments() accepts and that names exactly this segment
    kind: Literal["qsharedmem", "posix", "systemv"]
    origin: Literal["qsharedmem", "qt", "multiprocessing", "unknown"]
    native_key: str
    key_type: int | None
    key: str | None
    legacy_key: str | None
    qt_key: str | None
    file: str | None
    key_file: str | None
    shmid: int | None
    ipc_key: int | None
    size: int
    file_size: int | None
    control_file: str | None
    notify_waiters: int | None
    generation: int | None
    events: list[_EventDict]
    attachments: int
    pids: list[int]
    last_pid: int | None
    lock: _LockDict
    creator_pid: int | None
    creator_alive: bool | None
    created: float | None  # seconds since the epoch
    uid: int
    user: str | None
    mode: int
    usage: Literal["in-use", "unused", "orphan"]
    orphan: bool
    note: str | None

class _RemoveResult(TypedDict):
    segment: _SegmentDict
    removed: list[str]

class _GcOutcome(TypedDict):
    segment: _SegmentDict
    removed: list[str]
    skipped: str | None
    errno: int | None

def list_segments(all_users: bool = False) -> list[_SegmentDict]:
    """Every shared memory segment of this user (of every user with ``all_users``):
    qsharedmem's, other POSIX segments in /dev/shm, System V segments. Looking never disturbs a
    segment."""

def find_segments(key: str, all_users: bool = False) -> list[_SegmentDict]:
    """The segments ``key`` names: a plain Qt key (``"demo"``), a native key (``"/demo"``,
    ``"/tmp/qipc_sharedmemory_..."``), Qt's string form (``"posix:/demo"``),
    ``"/dev/shm/<name>"``, a System V IPC key (``"0x5100c092"``) or segment id
    (``"shmid:123"``)."""

def read_segment(key: str, length: SupportsIndex = 256, all_users: bool = False) -> bytes:
    """A copy of the first ``length`` bytes of the one segment ``key`` names (System V: attached
    under its lock for a moment). ``NotFoundError``, ``InvalidKeyError`` if ``key`` names several
    segments, ``SharedMemoryError`` (errno ``EBUSY``) if a System V lock stays held."""

def remove_segment(key: str, force: bool = False, all_users: bool = False) -> _RemoveResult:
    """Removes the one segment ``key`` names, with its key file and lock. Without ``force``, a
    segment in use is refused with ``SharedMemoryError`` (errno ``EBUSY``); ``NotFoundError``,
    ``InvalidKeyError`` (ambiguous key), ``PermissionDeniedError`` as they apply."""

def collect_garbage(
    dry_run: bool = False,
    predicate: Callable[[_SegmentDict], object] | None = None,
    all_users: bool = False,
) -> list[_GcOutcome]:
    """Removes every orphan (no live attachment, creator gone) that ``predicate(segment)``
    accepts (all orphans without a predicate); never a segment in use. With ``dry_run``, removes
    nothing. One outcome per orphan."""

def shm_space() -> tuple[int, int]:
    """``(free, total)`` bytes of the file system behind /dev/shm."""

# -- Process hooks (registered by qsharedmem/__init__.py) ----------------------------------

def _late_wakeups() -> int:
    """How many waits of this process found their word changed only at the end of a 100 ms
    slice instead of being woken (0 unless a notifier died between its change and its wake)."""

def _before_fork() -> None: ...
def _after_fork_in_parent() -> None: ...
def _after_fork_in_child() -> None: ...
def _release_at_exit() -> None: ...
