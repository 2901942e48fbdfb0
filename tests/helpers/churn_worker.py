"""One worker of the churn tests: create-or-attach, a locked whole-record check and write, detach.

Usage: ``churn_worker.py KEY STOPFILE REPORTFILE`` where KEY is ``legacy:<name>``
(``QSharedMemory(name)``, System V) or a ``QNativeIpcKey.toString()`` form. Loops until STOPFILE
exists, then prints ``DONE <locked iterations> <owner deaths seen>`` and exits.

The record is the whole segment, every byte the same value. Under the lock a worker first checks
that the record is whole, then writes a new one, in two halves. A record that is not
whole means that two writers were inside the lock at once, unless the previous holder died in
the middle of its write: then ``lockOwnerDied()`` says so. A worker appends
``TORN reported`` or ``TORN unreported <first bytes>`` to REPORTFILE at once (one ``O_APPEND``
write, so that a worker killed later loses no report) and goes on.
"""

from __future__ import annotations

import os
import random
import sys

from qsharedmem import QNativeIpcKey, QSharedMemory

SIZE = 4096


def handle(spec: str) -> QSharedMemory:
    if spec.startswith("legacy:"):
        return QSharedMemory(spec[len("legacy:") :])
    return QSharedMemory(QNativeIpcKey.fromString(spec))


def main() -> None:
    spec, stop_file, report_file = sys.argv[1], sys.argv[2], sys.argv[3]
    report = os.open(report_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    rng = random.Random(os.getpid())
    locked = deaths = 0
    print("READY", flush=True)
    while not os.path.exists(stop_file):
        shm = handle(spec)
        if not shm.create(SIZE) and not shm.attach():
            continue
        if shm.lock(timeout=10):
            died = shm.lockOwnerDied()
            deaths += died
            record = shm.data()
            first = record[0]
            if record.tobytes().count(first) != SIZE:
                detail = "reported" if died else f"unreported {record[:16].hex()}"
                os.write(report, f"TORN {detail} pid {os.getpid()}\n".encode())
            # Two halves with a yield in between, as a critical section that does some work
            # would: a second writer inside the lock at the same time tears the record.
            value = bytes([rng.randrange(256)]) * (SIZE // 2)
            record[: SIZE // 2] = value
            os.sched_yield()
            record[SIZE // 2 :] = value
            record.release()  # a view keeps the attachment (and its count) alive
            shm.unlock()
            locked += 1
        shm.detach()
    print(f"DONE {locked} {deaths}", flush=True)


if __name__ == "__main__":
    main()
