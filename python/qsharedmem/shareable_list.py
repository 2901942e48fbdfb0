"""``multiprocessing.shared_memory.ShareableList`` on :class:`qsharedmem.SharedMemory`.

A list of fixed length whose items (``int``, ``float``, ``bool``, ``str``, ``bytes``,
``None``) live in one shared memory segment. The segment holds the list in exactly the layout
CPython's class writes, so a list written by one is read by the other, in either direction,
between processes and in the same process. What differs is the segment underneath: our
``SharedMemory``, so there is no resource tracker, the last ``close()`` in any process frees
it, and ``locked()`` holds the segment's cross-process lock.

Layout (native byte order and alignment, as ``struct`` packs without a prefix)::

    [n: q] [offsets: (n + 1) x q] [data: offsets[n] bytes] [formats: n x 8s] [codes: n x b]

``offsets[i]`` is where item ``i`` starts in the data area (``offsets[0]`` is 0); every item
takes a multiple of 8 bytes. ``formats[i]`` is the item's ``struct`` format, NUL-padded to 8
bytes; ``codes[i]`` says how to turn the unpacked value back into a Python object.
"""

from __future__ import annotations

import functools
import itertools
import operator
import struct
import types
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast, overload

from .shared_memory import SharedMemory, _Locked

if TYPE_CHECKING:
    from typing import Self

__all__ = ["ShareableList"]

# The item types, as typeshed declares them for CPython's class.
_SLT = TypeVar("_SLT", int, float, bool, str, bytes, None)

_ENCODING = "utf8"
_ALIGNMENT = 8
_FIELD = 8  # every header field (count, offset, format) is 8 bytes; codes are 1 byte

# How the unpacked value becomes the item again (the codes CPython stores).
_AS_IS, _AS_STR, _AS_BYTES, _AS_NONE = 0, 1, 2, 3


class _UnsupportedItemError(TypeError, KeyError):
    """An item of a type a ShareableList cannot hold.

    CPython raises a bare ``KeyError`` (its lookup of the type's format fails); this is also
    that, so code that catches it keeps working, and it says what went wrong."""

    def __str__(self) -> str:
        return str(self.args[0])


class _ClosedListError(ValueError, TypeError):
    """The list's ``shm`` was closed.

    A ``ValueError``, as for closed files and mmaps; also a ``TypeError``, which is what
    CPython's class raises here (``struct`` is handed the ``None`` that ``buf`` became)."""


def _fixed_format(value: object) -> str:
    """The format of an item that is not ``str``/``bytes``; the type must match exactly, as
    in CPython (``bool`` is not stored as an ``int``, an ``IntEnum`` is refused)."""
    kind = type(value)
    if kind is int:
        return "q"
    if kind is float:
        return "d"
    if kind is bool:
        return "xxxxxxx?"
    if value is None:
        return "xxxxxx?x"
    raise _UnsupportedItemError(
        f"a ShareableList cannot hold {kind.__name__!r} items "
        "(only int, float, bool, str, bytes and None)"
    )


def _code_of(value: object) -> int:
    if isinstance(value, str):
        return _AS_STR
    if isinstance(value, bytes):
        return _AS_BYTES
    if value is None:
        return _AS_NONE
    return _AS_IS


def _slot_size(item: str | bytes, encoded: bytes) -> int:
    """The bytes a ``str``/``bytes`` item gets: its length rounded up to the next multiple of
    8, always with room for at least one more byte.

    CPython counts a ``str`` in characters, and ``struct`` silently cuts a UTF-8 encoding that
    is longer than its slot (gh-145261: the item then reads back cut or not at all). We take
    CPython's size whenever the item fits in it, so those lists are the same bytes, and the
    encoded length otherwise."""
    cpython_size = _ALIGNMENT * (len(item) // _ALIGNMENT + 1)
    if len(encoded) <= cpython_size:
        return cpython_size
    return _ALIGNMENT * (len(encoded) // _ALIGNMENT + 1)


def _encode(value: str | bytes) -> bytes:
    return value.encode(_ENCODING) if isinstance(value, str) else value


class ShareableList(Generic[_SLT]):
    """A list of fixed length in shared memory, ``multiprocessing.shared_memory``'s.

    ``ShareableList(sequence)`` creates a segment (a random name, or ``name=``) holding the
    items of ``sequence``: ``int`` (64-bit), ``float``, ``bool``, ``str`` and ``bytes`` (each
    with room for its own length, rounded up to 8 bytes), ``None``. ``ShareableList(name=...)``
    attaches to an existing list. Items can be read and replaced (also by a value of another
    type, and a ``str``/``bytes`` one up to the room of its slot), the length is fixed.

    ``shm`` is the :class:`qsharedmem.SharedMemory` underneath: ``sl.shm.close()`` detaches,
    and the last close in any process frees the segment. ``with sl.locked():`` holds the
    segment's cross-process lock, for updates that other processes must see whole.
    """

    shm: SharedMemory

    @overload
    def __init__(self, sequence: None = None, *, name: str | None = None) -> None: ...
    @overload
    def __init__(self, sequence: Iterable[_SLT], *, name: str | None = None) -> None: ...
    def __init__(self, sequence: Iterable[_SLT] | None = None, *, name: str | None = None) -> None:
        if name is not None and sequence is None:
            self.shm = SharedMemory(name)
            try:
                self._read_header()
            except BaseException:
                self.shm.close()
                raise
            return

        # A generator is read once (CPython's class reads the sequence twice and then fails).
        items = list(sequence) if sequence is not None else []
        encoded = [_encode(item) if isinstance(item, str | bytes) else item for item in items]
        formats = [
            f"{_slot_size(item, value)}s" if isinstance(item, str | bytes) else _fixed_format(item)
            for item, value in zip(items, encoded, strict=True)
        ]
        offsets = [0]
        for fmt in formats:
            offsets.append(offsets[-1] + (int(fmt[:-1]) if fmt.endswith("s") else _ALIGNMENT))
        n = len(items)
        self._list_len = n
        self._allocated_offsets = offsets
        size = (n + 2) * _FIELD + offsets[-1] + n * _FIELD + n

        self.shm = SharedMemory(name, create=True, size=size)
        try:
            buf = self._buf()
            struct.pack_into(f"{n + 2}q", buf, 0, n, *offsets)
            struct.pack_into("".join(formats), buf, self._offset_data_start, *encoded)
            struct.pack_into(
                "8s" * n,
                buf,
                self._offset_packing_formats,
                *(fmt.encode(_ENCODING) for fmt in formats),
            )
            struct.pack_into(f"{n}b", buf, self._offset_back_transform_codes, *map(_code_of, items))
        except BaseException:
            # An int out of range (struct.error), for instance: the segment goes with its only
            # handle, nothing is left half-written (CPython's class leaves it to the tracker).
            self.shm.close()
            raise

    # -- the layout -------------------------------------------------------------------------

    def _buf(self) -> memoryview:
        buf = self.shm.buf
        if buf is None:
            raise _ClosedListError("the ShareableList's shared memory is closed")
        return buf

    def _read_header(self) -> None:
        """Reads the length and the offsets of a list someone else wrote, and checks that they
        fit in the segment: a segment that holds something else is refused here, instead of
        making us allocate a format string as long as its first 8 bytes say."""
        buf = self._buf()
        size = len(buf)
        name = self.shm.name
        if size < 2 * _FIELD:
            raise ValueError(f"{name!r} is too small to hold a ShareableList ({size} bytes)")
        (n,) = struct.unpack_from("q", buf, 0)
        if n < 0 or (n + 2) * _FIELD + n * (_FIELD + 1) > size:
            raise ValueError(f"{name!r} does not hold a ShareableList (it says {n} items)")
        offsets = list(struct.unpack_from(f"{n + 1}q", buf, _FIELD))
        in_order = offsets[0] == 0 and all(a <= b for a, b in itertools.pairwise(offsets))
        if not in_order or (n + 2) * _FIELD + offsets[-1] + n * (_FIELD + 1) > size:
            raise ValueError(f"{name!r} does not hold a ShareableList (its offsets are wrong)")
        self._list_len = n
        self._allocated_offsets = offsets

    @property
    def _offset_data_start(self) -> int:
        return (self._list_len + 2) * _FIELD

    @property
    def _offset_packing_formats(self) -> int:
        return self._offset_data_start + self._allocated_offsets[-1]

    @property
    def _offset_back_transform_codes(self) -> int:
        return self._offset_packing_formats + self._list_len * _FIELD

    def _position(self, position: int, message: str) -> int:
        """The index for ``position`` (negative counts from the end), or IndexError."""
        try:
            index = operator.index(position)
        except TypeError:
            raise TypeError(
                f"ShareableList indices must be integers, not {type(position).__name__}"
            ) from None
        if index < 0:
            index += self._list_len
        # Stricter than CPython, whose sl[-n - 1] reads (and writes) past the data area.
        if not 0 <= index < self._list_len:
            raise IndexError(message)
        return index

    def _get_packing_format(self, position: int) -> str:
        """The ``struct`` format item ``position`` is stored with (CPython's name)."""
        return self._format_at(self._position(position, "Requested position out of range."))

    def _format_at(self, index: int) -> str:
        (raw,) = struct.unpack_from(
            "8s", self._buf(), self._offset_packing_formats + index * _FIELD
        )
        return bytes(raw).rstrip(b"\0").decode(_ENCODING)

    # -- the list ---------------------------------------------------------------------------

    def __getitem__(self, position: int) -> _SLT:
        index = self._position(position, "index out of range")
        buf = self._buf()
        fmt = self._format_at(index)
        (value,) = struct.unpack_from(
            fmt, buf, self._offset_data_start + self._allocated_offsets[index]
        )
        (code,) = struct.unpack_from("b", buf, self._offset_back_transform_codes + index)
        # Trailing NUL bytes are padding to the reader: a str or bytes item that ended in NULs
        # loses them, as in CPython (the layout has no length of its own, gh-106939).
        item: Any
        if code == _AS_IS:
            item = value
        elif code == _AS_STR:
            item = value.rstrip(b"\0").decode(_ENCODING)
        elif code == _AS_BYTES:
            item = value.rstrip(b"\0")
        elif code == _AS_NONE:
            item = None
        else:
            raise ValueError(f"item {index} of {self.shm.name!r} has an unknown type code {code}")
        return cast(_SLT, item)

    def __setitem__(self, position: int, value: _SLT) -> None:
        index = self._position(position, "assignment index out of range")
        current_format = self._format_at(index)
        start = self._allocated_offsets[index]
        encoded: Any
        if isinstance(value, str | bytes):
            room = self._allocated_offsets[index + 1] - start
            encoded = _encode(value)
            if len(encoded) > room:
                raise ValueError("bytes/str item exceeds available storage")
            new_format = current_format if current_format.endswith("s") else f"{room}s"
        else:
            encoded = value
            new_format = _fixed_format(value)
        # Packed before anything is written, so that a value struct refuses (an int out of
        # range) leaves the item as it was; CPython's class has written the new format by then.
        packed = struct.pack(new_format, encoded)
        buf = self._buf()
        struct.pack_into(
            "8s", buf, self._offset_packing_formats + index * _FIELD, new_format.encode()
        )
        struct.pack_into("b", buf, self._offset_back_transform_codes + index, _code_of(value))
        offset = self._offset_data_start + start
        buf[offset : offset + len(packed)] = packed

    def __len__(self) -> int:
        # From the segment, as CPython's class reads it (the length never changes).
        return int(struct.unpack_from("q", self._buf(), 0)[0])

    def __iter__(self) -> Iterator[_SLT]:
        for index in range(self._list_len):
            yield self[index]

    def __reduce__(self) -> tuple[Any, ...]:
        return (functools.partial(self.__class__, name=self.shm.name), ())

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({list(self)}, name={self.shm.name!r})"

    @property
    def format(self) -> str:
        """The ``struct`` format of all items, concatenated."""
        return "".join(self._get_packing_format(index) for index in range(self._list_len))

    def count(self, value: _SLT) -> int:
        """The number of items equal to ``value``."""
        return sum(value == item for item in self)

    def index(self, value: _SLT) -> int:
        """The position of the first item equal to ``value``; ``ValueError`` if none is."""
        for position, item in enumerate(self):
            if value == item:
                return position
        raise ValueError(f"{value!r} not in this container")

    def __class_getitem__(cls, item: Any, /) -> types.GenericAlias:
        # As in CPython: ShareableList[int] is a types.GenericAlias.
        return types.GenericAlias(cls, item)

    # -- extras -----------------------------------------------------------------------------

    def locked(self, timeout: float | None = None) -> _Locked:
        """``with sl.locked(timeout=None):`` holds the segment's cross-process lock (see
        :meth:`SharedMemory.lock`). Items are read and written without it; take it in every
        process that must see a series of updates whole."""
        return self.shm.locked(timeout)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.shm.close()
