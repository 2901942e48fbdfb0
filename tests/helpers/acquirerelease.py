"""Port of Qt's ``acquirerelease_helper`` (tests/auto/corelib/ipc/qsystemsemaphore/acquirerelease).

Usage: ``acquirerelease.py [--impl qsharedmem|pyside6] <function> <key.toString()> [count]``
with ``<function>`` one of ``acquire``, ``release``, ``acquirerelease``.

Same protocol and exit codes as Qt's helper: fewer than two positional arguments → a usage
message and exit 1; an unknown function warns and exits 0; a failed acquire/release warns on
stderr (with ``errorString()``) and exits 1. The semaphore is ``QSystemSemaphore(key)`` (Open,
initial value 0), the key comes from ``QNativeIpcKey.fromString``.

* ``acquire`` — acquire ``count`` times (default 1; a bad number counts as 1), then print
  ``done aquiring`` (Qt's spelling).
* ``release`` — release once, print ``done releasing``.
* ``acquirerelease`` — acquire, then release.

Qt's helper prints its two messages with qDebug (stderr); this one prints them on stdout, so
that a test can read them as a handshake.
"""

from __future__ import annotations

import sys

from helper_common import EXIT_FAILURE, EXIT_SUCCESS, load, pop_impl, warn


def acquire(QSystemSemaphore, key, count: int = 1) -> int:
    sem = QSystemSemaphore(key)
    for _ in range(count):
        if not sem.acquire():
            warn("Could not acquire", sem.key(), sem.errorString())
            return EXIT_FAILURE
    print("done aquiring", flush=True)
    return EXIT_SUCCESS


def release(QSystemSemaphore, key) -> int:
    sem = QSystemSemaphore(key)
    if not sem.release():
        warn("Could not release", sem.key(), sem.errorString())
        return EXIT_FAILURE
    print("done releasing", flush=True)
    return EXIT_SUCCESS


def acquirerelease(QSystemSemaphore, key) -> int:
    sem = QSystemSemaphore(key)
    if not sem.acquire():
        warn("Could not acquire", sem.key(), sem.errorString())
        return EXIT_FAILURE
    if not sem.release():
        warn("Could not release", sem.key(), sem.errorString())
        return EXIT_FAILURE
    return EXIT_SUCCESS


def to_int(text: str) -> int:
    """QString::toInt with Qt's helper's fallback: not a number → 1."""
    try:
        return int(text.strip())
    except ValueError:
        return 1


def main(argv: list[str]) -> int:
    args = list(argv[1:])
    impl = pop_impl(args)
    if len(args) < 2:
        warn("Please call the helper with the function to call and key as arguments")
        return EXIT_FAILURE
    function, key_string, *rest = args
    QSystemSemaphore, QNativeIpcKey = load(impl, "QSystemSemaphore", "QNativeIpcKey")
    key = QNativeIpcKey.fromString(key_string)
    # Each function builds its semaphore in a frame of its own, so that it is destroyed (and
    # cleans up what it owns) before the interpreter exits, like Qt's stack objects.
    if function == "acquire":
        return acquire(QSystemSemaphore, key, to_int(rest[0]) if rest else 1)
    if function == "release":
        return release(QSystemSemaphore, key)
    if function == "acquirerelease":
        return acquirerelease(QSystemSemaphore, key)
    warn("Unknown function", function)
    return EXIT_SUCCESS


if __name__ == "__main__":
    sys.exit(main(sys.argv))
