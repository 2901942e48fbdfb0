"""data()/constData() hand out new views of a view cached per attachment (a performance
measure, benchmarks/README.md): the cache must never change what a caller sees, and must never
keep a detached segment alive."""

from __future__ import annotations

from typing import Any

import pytest
import qsharedmem
from qsharedmem import QSharedMemory

KEY_TYPES = {"POSIX": 0x100, "SystemV": 0x51}


@pytest.fixture(params=list(KEY_TYPES))
def native_key(request: pytest.FixtureRequest, make_key: Any) -> Any:
    key_type = qsharedmem.QNativeIpcKey.Type(KEY_TYPES[request.param])
    return make_key.record(QSharedMemory.platformSafeKey(make_key("views"), key_type))


def test_every_call_returns_a_new_view_of_the_same_memory(native_key: Any) -> None:
    shm = QSharedMemory(native_key)
    assert shm.create(64)
    first, second = shm.data(), shm.data()
    assert first is not second
    first[:5] = b"hello"
    assert bytes(second[:5]) == b"hello"
    assert bytes(shm.constData()[:5]) == b"hello"
    assert not first.readonly
    assert shm.constData().readonly
    with pytest.raises(TypeError):
        shm.constData()[0] = 1
    first.release()
    assert bytes(second[:5]) == b"hello"
    assert shm.detach()


def test_releasing_a_view_does_not_affect_the_next_call(native_key: Any) -> None:
    shm = QSharedMemory(native_key)
    assert shm.create(16)
    for _ in range(3):
        with shm.data() as view:
            view[0] = 7
        with shm.constData() as view:
            assert view[0] == 7
    assert shm.data()[0] == 7
    assert shm.detach()


def test_detach_after_data_destroys_the_segment(native_key: Any, make_key: Any) -> None:
    shm = QSharedMemory(native_key)
    assert shm.create(16)
    shm.data()[0] = 1
    shm.constData()
    assert shm.detach()
    assert shm.data() is None
    assert shm.constData() is None
    assert make_key.leftovers() == []


def test_a_view_kept_across_detach_stays_valid_until_released(
    native_key: Any, make_key: Any
) -> None:
    shm = QSharedMemory(native_key)
    assert shm.create(16)
    shm.data()  # cached
    kept = shm.data()
    kept[0] = 42
    assert shm.detach()
    assert shm.data() is None
    assert kept[0] == 42  # still mapped
    kept.release()
    assert make_key.leftovers() == []


def test_views_follow_a_new_attachment(native_key: Any) -> None:
    creator = QSharedMemory(native_key)
    assert creator.create(16)
    creator.data()[0] = 5
    reader = QSharedMemory(native_key)
    assert reader.attach(QSharedMemory.AccessMode.ReadOnly)
    assert reader.data().readonly
    assert reader.data()[0] == 5
    assert reader.detach()
    assert reader.attach()
    view = reader.data()
    assert not view.readonly
    view[0] = 6
    assert creator.constData()[0] == 6
    view.release()
    assert reader.detach()
    assert creator.detach()


def test_dropping_the_handle_after_data_destroys_the_segment(
    native_key: Any, make_key: Any
) -> None:
    shm = QSharedMemory(native_key)
    assert shm.create(16)
    shm.data()
    del shm
    assert make_key.leftovers() == []
