"""Type stubs for the extension module ``qsharedmem._qsharedmem``."""

from collections.abc import Callable
from types import TracebackType
from typing import Any, ClassVar, Generic, Literal, SupportsIndex, TypeVar

from ._enums import AccessMode as _AccessMode
from ._enums import KeyType as _KeyType
from ._enums import SharedMemoryError as _SharedMemoryError
from ._enums import SystemSemaphoreAccessMode as _SemAccessMode
from ._enums import SystemSemaphoreError as _SystemSemaphoreError

__version__: str

_Self = TypeVar("_Self", bound="QSharedMemory")
_SemSelf = TypeVar("_SemSelf", bound="QSystemSemaphore")
_S = TypeVar("_S")

class QNativeIpcKey:
    """``QNativeIpcKey``: the native name of an IPC object and its kind (Qt 6.6+)."""

    Type: ClassVar[type[_KeyType]]
    DefaultTypeForOs: ClassVar[_KeyType]

    def __init__(
        self,
        k: str | QNativeIpcKey | _KeyType | int | None = ...,
        type: _KeyType | int | None = ...,
    ) -> None: ...
    def nativeKey(self) -> str: ...
    def setNativeKey(self, newKey: str | None) -> None: ...
    def type(self) -> _KeyType: ...
    def setType(self, type: _KeyType | int) -> None: ...
    def isEmpty(self) -> bool: ...
    def isValid(self) -> bool: ...
    def toString(self) -> str: ...
    @staticmethod
    def fromString(string: str) -> QNativeIpcKey: ...
    @staticmethod
    def legacyDefaultTypeForOs() -> _KeyType: ...
    def swap(self, other: QNativeIpcKey) -> None: ...
    def __eq__(self, other: object) -> bool: ...
    def __ne__(self, other: object) -> bool: ...
    def __hash__(self) -> int: ...
    def __copy__(self) -> QNativeIpcKey: ...
    def __deepcopy__(self, memo: dict[int, Any]) -> QNativeIpcKey: ...

class QSharedMemory:
    """``QSharedMemory``: a shared memory segment by key, with Qt 6's API and semantics.

    Extras over Qt: ``lock(timeout=None)``, ``lockOwnerDied()``, ``with shm:`` (unlock and
    detach on exit), ``with shm.locked(timeout=None):``, pickling (re-attaches by key).
    """

    AccessMode: ClassVar[type[_AccessMode]]
    SharedMemoryError: ClassVar[type[_SharedMemoryError]]
    ReadOnly: ClassVar[_AccessMode]
    ReadWrite: ClassVar[_AccessMode]
    NoError: ClassVar[_SharedMemoryError]
    PermissionDenied: ClassVar[_SharedMemoryError]
    InvalidSize: ClassVar[_SharedMemoryError]
    KeyError: ClassVar[_SharedMemoryError]
    AlreadyExists: ClassVar[_SharedMemoryError]
    NotFound: ClassVar[_SharedMemoryError]
    LockError: ClassVar[_SharedMemoryError]
    OutOfResources: ClassVar[_SharedMemoryError]
    UnknownError: ClassVar[_SharedMemoryError]

    def __init__(self, key: QNativeIpcKey | str | None = None, parent: object = None) -> None: ...
    def create(self, size: SupportsIndex, mode: _AccessMode | int = ...) -> bool: ...
    def attach(self, mode: _AccessMode | int = ...) -> bool: ...
    def detach(self) -> bool: ...
    def isAttached(self) -> bool: ...
    def data(self) -> memoryview | None:
        """The segment's memory; read-only for ReadOnly attachments; valid after detach()."""
    def constData(self) -> memoryview | None:
        """The segment's memory, read-only."""
    def size(self) -> int: ...
    def lock(self, timeout: float | None = None) -> bool:
        """Take the cross-process lock, waiting at most ``timeout`` seconds (None: forever).

        The GIL is released while waiting and Ctrl-C works. False + LockError on timeout.
        """
    def unlock(self) -> bool: ...
    def remove(self) -> bool:
        """Remove the segment's key now (multiprocessing's ``unlink()``); attachments keep
        working and the last detach frees the memory. False + ``error()`` if nothing was
        removed (``NotFound``: no segment, or removed already)."""
    def _exception(self) -> Exception | None: ...
    def lockOwnerDied(self) -> bool:
        """True if the last successful lock() found the previous holder dead."""
    def error(self) -> _SharedMemoryError: ...
    def errorString(self) -> str: ...
    def key(self) -> str: ...
    def setKey(self, key: str) -> None: ...
    def nativeKey(self) -> str: ...
    def nativeIpcKey(self) -> QNativeIpcKey: ...
    def setNativeKey(
        self, key: QNativeIpcKey | str, type: _KeyType | int | None = None
    ) -> None: ...
    @staticmethod
    def platformSafeKey(key: str, type: _KeyType | int | None = None) -> QNativeIpcKey: ...
    @staticmethod
    def legacyNativeKey(key: str, type: _KeyType | int | None = None) -> QNativeIpcKey: ...
    @staticmethod
    def isKeyTypeSupported(type: _KeyType | int) -> bool: ...
    def __enter__(self: _Self) -> _Self: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Literal[False]: ...
    def locked(self: _Self, timeout: float | None = None) -> _LockedContext[_Self]: ...
    def __reduce__(self) -> tuple[Callable[..., Any], tuple[Any, ...]]: ...

class QSystemSemaphore:
    """``QSystemSemaphore``: a counting semaphore shared between processes by key, Qt 6's API.

    Extras over Qt: ``acquire(timeout=None)`` (GIL released, Ctrl-C works), ``with sem:``
    (acquire, release on exit).
    """

    AccessMode: ClassVar[type[_SemAccessMode]]
    SystemSemaphoreError: ClassVar[type[_SystemSemaphoreError]]
    Open: ClassVar[_SemAccessMode]
    Create: ClassVar[_SemAccessMode]
    NoError: ClassVar[_SystemSemaphoreError]
    PermissionDenied: ClassVar[_SystemSemaphoreError]
    KeyError: ClassVar[_SystemSemaphoreError]
    AlreadyExists: ClassVar[_SystemSemaphoreError]
    NotFound: ClassVar[_SystemSemaphoreError]
    OutOfResources: ClassVar[_SystemSemaphoreError]
    UnknownError: ClassVar[_SystemSemaphoreError]

    def __init__(
        self,
        key: QNativeIpcKey | str | None,
        /,
        initialValue: SupportsIndex | None = 0,
        mode: _SemAccessMode | int | None = ...,
    ) -> None: ...
    def acquire(self, timeout: float | None = None) -> bool:
        """Take a token, waiting at most ``timeout`` seconds (None: forever).

        The GIL is released while waiting and Ctrl-C works. False on timeout (NoError) or
        when the semaphore is unusable (error() says why).
        """
    def release(self, n: SupportsIndex = 1) -> bool: ...
    def error(self) -> _SystemSemaphoreError: ...
    def errorString(self) -> str: ...
    def key(self) -> str: ...
    def setKey(
        self,
        key: str | None,
        /,
        initialValue: SupportsIndex | None = 0,
        mode: _SemAccessMode | int | None = ...,
    ) -> None: ...
    def nativeIpcKey(self) -> QNativeIpcKey: ...
    def setNativeKey(
        self,
        key: QNativeIpcKey | str | None,
        /,
        initialValue: SupportsIndex | None = 0,
        mode: _SemAccessMode | int | None = ...,
        type: _KeyType | int | None = None,
    ) -> None: ...
    @staticmethod
    def platformSafeKey(key: str, /, type: _KeyType | int | None = None) -> QNativeIpcKey: ...
    @staticmethod
    def legacyNativeKey(key: str, /, type: _KeyType | int | None = None) -> QNativeIpcKey: ...
    @staticmethod
    def isKeyTypeSupported(type: _KeyType | int, /) -> bool: ...
    def __enter__(self: _SemSelf) -> _SemSelf: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Literal[False]: ...

class _LockedContext(Generic[_S]):
    def __enter__(self) -> _S: ...
    def __exit__(self, *exc: object) -> Literal[False]: ...

def _before_fork() -> None: ...
def _after_fork_in_parent() -> None: ...
def _after_fork_in_child() -> None: ...
def _release_at_exit() -> None: ...
