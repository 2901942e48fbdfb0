"""Rust programs and Python programs share segments and the lock through the same crate.

The Rust side is the crate's examples (examples/producer.rs, consumer.rs, counter.rs), built
here with cargo and run as real processes; they name the segment with Qt's toString() form.
The message layout is examples/mailbox.rs's: u64 counter, u32 sequence, u32 length, message.
"""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

import pytest
from qsharedmem import QNativeIpcKey, QSharedMemory
from support import ROOT
from support.impls import KEY_TYPES

EXAMPLES = ROOT / "target" / "release" / "examples"
BACKENDS = ["POSIX", "SystemV-Q"]


@pytest.fixture(scope="module")
def rust_examples() -> Path:
    """The example binaries, built (incrementally) for this run."""
    subprocess.run(
        ["cargo", "build", "--release", "--examples", "--quiet"],
        cwd=ROOT,
        check=True,
        timeout=900,
    )
    for name in ("producer", "consumer", "counter"):
        assert (EXAMPLES / name).is_file(), f"cargo did not build examples/{name}.rs"
    return EXAMPLES


NAME = "rustpy"


def qkey(make_key, backend: str) -> QNativeIpcKey:
    return QSharedMemory.platformSafeKey(make_key(NAME), QNativeIpcKey.Type(KEY_TYPES[backend]))


def read_message(view: memoryview) -> tuple[int, str]:
    sequence, length = struct.unpack_from("<II", view, 8)
    return sequence, bytes(view[16 : 16 + length]).decode()


def write_message(view: memoryview, text: str) -> None:
    data = text.encode()
    sequence = struct.unpack_from("<I", view, 8)[0]
    view[16 : 16 + len(data)] = data
    struct.pack_into("<II", view, 8, sequence + 1, len(data))


def start(path: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(path), *args], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_rust_creates_and_writes_python_reads_and_answers(rust_examples, make_key, backend):
    key = qkey(make_key, backend)
    producer = start(rust_examples / "producer", key.toString())
    try:
        ready = producer.stdout.readline()
        assert ready.startswith("READY"), ready
        shm = QSharedMemory(key)
        assert shm.attach(), shm.errorString()
        with shm.locked(timeout=30):
            _, text = read_message(shm.data())
            assert text == f"hello from Rust pid {producer.pid}"
            write_message(shm.data(), "answer from Python")
        assert producer.stdout.readline().strip() == "ANSWER answer from Python"
        assert producer.wait(timeout=30) == 0
        assert shm.detach()
    finally:
        producer.kill()
        producer.wait()
    assert make_key.leftovers(make_key(NAME)) == []


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", ["read-write", "read-only"])
def test_python_creates_and_writes_rust_reads_and_answers(rust_examples, make_key, backend, mode):
    key = qkey(make_key, backend)
    shm = QSharedMemory(key)
    assert shm.create(4096), shm.errorString()
    with shm.locked():
        write_message(shm.data(), "hello from Python")
    args = [key.toString()] + (["read-only"] if mode == "read-only" else [])
    consumer = subprocess.run(
        [str(rust_examples / "consumer"), *args], capture_output=True, text=True, timeout=60
    )
    assert consumer.returncode == 0, consumer.stderr
    assert "MESSAGE 1 hello from Python" in consumer.stdout
    with shm.locked():
        sequence, text = read_message(shm.data())
    if mode == "read-only":
        assert "ANSWERED" not in consumer.stdout
        assert (sequence, text) == (1, "hello from Python")
    else:
        assert sequence == 2
        assert text.startswith("answer from Rust pid ")
        assert text.endswith(" to: hello from Python")
    assert shm.detach()
    assert make_key.leftovers(make_key(NAME)) == []


PYTHON_COUNTER = """
import struct, sys, time
from qsharedmem import QNativeIpcKey, QSharedMemory
key = QNativeIpcKey.fromString(sys.argv[1])
rounds = int(sys.argv[2])
shm = QSharedMemory(key)
assert shm.attach(), shm.errorString()
print("READY", flush=True)
for _ in range(rounds):
    assert shm.lock()
    view = shm.data()
    value = struct.unpack_from("<Q", view, 0)[0]
    time.sleep(0)
    struct.pack_into("<Q", view, 0, value + 1)
    assert shm.unlock()
shm.detach()
print("DONE", rounds, flush=True)
"""


@pytest.mark.parametrize("backend", BACKENDS)
def test_lock_excludes_across_rust_and_python(rust_examples, make_key, backend):
    key = qkey(make_key, backend)
    shm = QSharedMemory(key)
    assert shm.create(4096), shm.errorString()
    rounds = 3000
    workers = [
        start(rust_examples / "counter", key.toString(), str(rounds)),
        start(rust_examples / "counter", key.toString(), str(rounds)),
        subprocess.Popen(
            [sys.executable, "-c", PYTHON_COUNTER, key.toString(), str(rounds)],
            stdout=subprocess.PIPE,
            text=True,
        ),
        subprocess.Popen(
            [sys.executable, "-c", PYTHON_COUNTER, key.toString(), str(rounds)],
            stdout=subprocess.PIPE,
            text=True,
        ),
    ]
    try:
        for worker in workers:
            out, _ = worker.communicate(timeout=300)
            assert worker.returncode == 0, out
            assert f"DONE {rounds}" in out
    finally:
        for worker in workers:
            worker.kill()
            worker.wait()
    with shm.locked():
        total = struct.unpack_from("<Q", shm.data(), 0)[0]
    assert total == 4 * rounds
    assert shm.detach()
    assert make_key.leftovers(make_key(NAME)) == []
