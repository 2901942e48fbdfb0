"""A Rust consumer (examples/notify_consumer.rs) and a Python producer on one segment: the
example of docs/notify.md, run for real (issue 18).

The consumer starts first and waits for the segment to be created; the producer writes each
message under the lock, calls ``notify()`` and waits on the consumer's acknowledgement word.
Both sides sleep between messages; every message arrives exactly once, in order.
"""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path
from typing import Any

import pytest
from qsharedmem import QSharedMemory
from support.keys import KeyRegistry
from support.notify import TIMEOUT, qkey, wait_until_sleeping

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "target" / "release" / "examples" / "notify_consumer"
ACK = 1024
MESSAGES = [f"message {n}" for n in range(1, 200)] + ["bye"]


@pytest.fixture(scope="module")
def consumer_binary() -> Path:
    """The example, built (incrementally) for this run."""
    subprocess.run(
        ["cargo", "build", "--release", "--example", "notify_consumer", "--quiet"],
        cwd=ROOT,
        check=True,
        timeout=900,
    )
    assert EXAMPLE.is_file()
    return EXAMPLE


def produce(shm: Any, messages: list[str]) -> None:
    """The Python producer of docs/notify.md."""
    ack = shm.atomic_u32(ACK)
    for sequence, text in enumerate(messages, start=1):
        data = text.encode()
        with shm.locked(timeout=TIMEOUT):
            view = shm.data()
            view[16 : 16 + len(data)] = data
            struct.pack_into("<II", view, 8, sequence, len(data))
        shm.notify()
        while (done := ack.load()) < sequence:
            assert ack.wait(done, TIMEOUT), f"message {sequence} was not acknowledged"


@pytest.mark.parametrize("backend", ["posix", "sysv"])
def test_a_rust_consumer_gets_every_message_of_a_python_producer(
    consumer_binary: Path, make_key: KeyRegistry, procs: Any, backend: str
) -> None:
    key = qkey(make_key, backend, "rustnotify")
    consumer = procs.start([str(consumer_binary), key.toString()])
    wait_until_sleeping(consumer.pid)  # waiting for the segment to appear
    shm = QSharedMemory(key)
    assert shm.create(4096), shm.errorString()
    assert consumer.wait_for_line(timeout=TIMEOUT) == "READY"
    produce(shm, MESSAGES)
    result = consumer.finish(timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr
    got = [line for line in result.stdout.splitlines() if line.startswith("GOT ")]
    assert got == [f"GOT {n} {text}" for n, text in enumerate(MESSAGES, start=1)]
    assert shm.detach()
    assert make_key.leftovers() == []
