"""QSystemSemaphore: qsharedmem against PySide6 (Qt 6.12), and what qsharedmem adds.

* Keys: ``platformSafeKey``/``legacyNativeKey`` and the keys the constructors and setters make,
  compared with PySide6's in the same process (``toString()`` and ``nativeKey()``).
* Failure paths: every *scenario* drives one implementation through a failure and returns what
  it observed (return values, ``error().name``, ``errorString()``). Each runs against both
  implementations (the ``impl`` fixture) and must give the recorded observation, which is what
  PySide6-Essentials 6.12.0 gives (the pyside6 row checks that it still does), so the two rows
  of a scenario agree with each other in every run. Permission errors come from a child
  interpreter that drops to uid/gid 65534 after its imports (the interpreter lives under /root).
* Interop: a PySide6 process and a qsharedmem process signal each other through the same
  semaphores, for every key type, in both roles.
* Beyond Qt (qsharedmem only): ``acquire(timeout=)``, Ctrl-C during ``acquire()``, other Python
  threads running while one waits, ``with sem:``, argument checking, ``fork()``, and the
  deliberate differences from Qt (docs/qsystemsemaphore.md).
"""

from __future__ import annotations

import gc
import json
import os
import re
import signal
import threading
import warnings
from collections.abc import Callable
from typing import Any

import pytest
from support import ROOT, sem_probe
from support.impls import KEY_TYPES, POSIX_TYPE, WINDOWS_TYPE, Impl, load_impl, type_value
from support.keys import (
    NOBODY,
    PERMISSION_KEYS,
    KeyRegistry,
    as_nobody_child,
    permission_test_key,
)
from support.processes import ChildProcesses
from support.scenarios import Observation, Scenario, Scenarios

HANG_GUARD = 60.0  # seconds; only against hangs, nothing asserts a duration


def _row(typ: int) -> str:
    return next(name for name, value in KEY_TYPES.items() if value == typ)


def is_posix(typ: int) -> bool:
    return typ == POSIX_TYPE


def handle_text(typ: int, rest: str) -> str:
    """Qt's ``handle`` label differs between the backends (System V has a double colon)."""
    return f"QSystemSemaphore::handle{'' if is_posix(typ) else ':'}: {rest}"


def observe(ok: Any, sem: Any) -> Observation:
    return [ok, sem.error().name, sem.errorString()]


# ------------------------------------------------------------------------------------------------
# keys


KEY_NAMES = ["demo", "", "my.app-1", "Noël", "/abs/key", "in/ner", "Global\\x", "x" * 300]
KEY_TYPE_VALUES = [None, 0x51, ord("T"), POSIX_TYPE, WINDOWS_TYPE, 0]


def derived_keys(impl: Impl) -> list[list[str]]:
    S = impl.QSystemSemaphore
    out = []
    for name in KEY_NAMES:
        for typ in KEY_TYPE_VALUES:
            args = (name,) if typ is None else (name, impl.key_type(typ))
            for derive in (S.platformSafeKey, S.legacyNativeKey):
                key = derive(*args)
                out.append([name, str(typ), key.toString(), key.nativeKey()])
    return out


def test_derived_keys_match_pyside6() -> None:
    assert derived_keys(load_impl("qsharedmem")) == derived_keys(load_impl("pyside6"))


def constructed_keys(impl: Impl, keys: KeyRegistry) -> Observation:
    """The keys the constructors and setters store, and key()."""
    S, K = impl.QSystemSemaphore, impl.QNativeIpcKey
    seen = []

    def note(sem: Any) -> None:
        seen.append([sem.nativeIpcKey().toString(), sem.key(), sem.error().name])

    legacy = keys("legacy")
    note(S(legacy))
    note(S(None))
    note(S(""))
    note(S(K("", impl.key_type(POSIX_TYPE))))
    note(S(K("", impl.key_type(0x51))))
    sem = S(S.platformSafeKey(keys("safe")), 1)
    note(sem)
    sem.setKey(keys("other"))
    note(sem)
    sem.setNativeKey(f"/tmp/{keys('plain')}")  # a str: legacyDefaultTypeForOs (System V)
    note(sem)
    sem.setNativeKey(keys("plainposix"), 0, S.Open, impl.key_type(POSIX_TYPE))
    note(sem)
    sem.setKey(None)
    note(sem)
    return seen


def test_constructed_keys_match_pyside6(make_key: KeyRegistry, procs: ChildProcesses) -> None:
    ours = constructed_keys(load_impl("qsharedmem"), make_key)
    gc.collect()
    assert ours == constructed_keys(load_impl("pyside6"), make_key)
    gc.collect()
    assert make_key.leftovers() == []


# ------------------------------------------------------------------------------------------------
# failure paths


SCENARIOS = Scenarios()
scenario = SCENARIOS.register


def _empty_key(typ: int) -> None:
    empty = handle_text(typ, "key is empty")

    @scenario(
        f"empty key [{_row(typ)}]",
        # Open: no error yet (same key as the object starts with); acquire/release fail;
        # release(0) succeeds and leaves the error; Create fails at once
        [
            *[True, "NoError", ""],
            *[False, "KeyError", empty],
            *[False, "KeyError", empty],
            *[True, "KeyError", empty],
            *[None, "KeyError", empty],
        ],
    )
    def run(impl, keys, procs):
        S, K = impl.QSystemSemaphore, impl.QNativeIpcKey
        sem = S(K("", impl.key_type(typ)))
        out = observe(True, sem)
        out += observe(sem.acquire(), sem)
        out += observe(sem.release(), sem)
        out += observe(sem.release(0), sem)
        created = S(K("", impl.key_type(typ)), 1, S.Create)
        return out + observe(None, created)


def _sysv_missing_dir(typ: int) -> None:
    text = "QSystemSemaphore::handle:: unable to make key"

    @scenario(
        f"System V key in a missing directory [{_row(typ)}]",
        [*[None, "KeyError", text], *[False, "KeyError", text], *[False, "KeyError", text]],
    )
    def run(impl, keys, procs):
        S, K = impl.QSystemSemaphore, impl.QNativeIpcKey
        native = f"/tmp/{keys('missingdir')}/key"
        assert not os.path.exists(os.path.dirname(native))
        sem = S(K(native, impl.key_type(typ)), 1)
        return observe(None, sem) + observe(sem.acquire(), sem) + observe(sem.release(), sem)


EINVAL = "QSystemSemaphore::handle: unknown error: Invalid argument"


def _bad_posix_name(label: str, native: Callable[[KeyRegistry], str]) -> None:
    @scenario(f"POSIX name {label}", [*[None, "UnknownError", EINVAL], False, "UnknownError"])
    def run(impl, keys, procs):
        S, K = impl.QSystemSemaphore, impl.QNativeIpcKey
        sem = S(K(native(keys), impl.key_type(POSIX_TYPE)), 1, S.Create)
        return [*observe(None, sem), sem.acquire(), sem.error().name]


UNSUPPORTED = "QSystemSemaphore::setNativeKey: unsupported key type"


@scenario(
    "Windows key in the constructor",
    [
        *["windows:", "KeyError", UNSUPPORTED],
        *[False, "KeyError", "QSystemSemaphore::handle:: key is empty"],
    ],
)
def _windows_constructor(impl, keys, procs):
    S, K = impl.QSystemSemaphore, impl.QNativeIpcKey
    sem = S(K(f"/{keys('win')}", impl.key_type(WINDOWS_TYPE)), 1)
    constructed = [sem.nativeIpcKey().toString(), sem.error().name, sem.errorString()]
    return [*constructed, *observe(sem.acquire(), sem)]


def _set_native_key_windows(overload: str) -> None:
    @scenario(
        f"setNativeKey({overload}, Windows) keeps the key",
        [*[None, "KeyError", UNSUPPORTED], True, *[True, "NoError", ""], *[True, "NoError", ""]],
    )
    def run(impl, keys, procs):
        S, K = impl.QSystemSemaphore, impl.QNativeIpcKey
        key = S.platformSafeKey(keys("keep"))
        sem = S(key, 1, S.Create)
        windows = impl.key_type(WINDOWS_TYPE)
        if overload == "str":
            sem.setNativeKey("foo", 0, S.Open, windows)
        else:
            sem.setNativeKey(K("foo", windows))
        out = [*observe(None, sem), sem.nativeIpcKey() == key]
        return out + observe(sem.acquire(), sem) + observe(sem.release(), sem)


@scenario(
    "setNativeKey(same key, Open) keeps the error; Create resets the value",
    [
        *[None, "KeyError", UNSUPPORTED],
        *[None, "KeyError", UNSUPPORTED],
        0,
        *[None, "NoError", ""],
        5,
    ],
)
def _same_key(impl, keys, procs):
    S, K = impl.QSystemSemaphore, impl.QNativeIpcKey
    key = S.platformSafeKey(keys("same"))
    sem = S(key, 1, S.Create)
    assert sem.acquire()
    sem.setNativeKey(K("foo", impl.key_type(WINDOWS_TYPE)))
    out = observe(None, sem)
    sem.setNativeKey(key, 7)
    out += [*observe(None, sem), sem_probe.value(key)]
    sem.setNativeKey(key, 5, S.Create)
    return [*out, *observe(None, sem), sem_probe.value(key)]


def _negative_initial_value(typ: int) -> None:
    # POSIX: sem_open gets the int as an unsigned value > SEM_VALUE_MAX → EINVAL. System V: a
    # negative value is simply not set (the new set starts at 0).
    expected = (
        [*[None, "UnknownError", EINVAL], False] if is_posix(typ) else [*[None, "NoError", ""], 0]
    )

    @scenario(f"initialValue -1 [{_row(typ)}]", expected)
    def run(impl, keys, procs):
        S = impl.QSystemSemaphore
        key = S.platformSafeKey(keys("negative"), impl.key_type(typ))
        sem = S(key, -1, S.Create)
        return [*observe(None, sem), sem_probe.value(key) if sem_probe.exists(key) else False]


def _release_past_the_maximum(typ: int) -> None:
    # System V semaphores stop at 32767 (SEMVMX): ERANGE. (Counts above 32767 are a deliberate
    # difference, see test_sysv_release_of_more_than_32767.)
    @scenario(
        f"release past SEMVMX [{_row(typ)}]",
        [*[False, "OutOfResources", "QSystemSemaphore::modifySemaphore: out of resources"], 5],
    )
    def run(impl, keys, procs):
        S = impl.QSystemSemaphore
        key = S.platformSafeKey(keys("max"), impl.key_type(typ))
        sem = S(key, 5, S.Create)
        return [*observe(sem.release(32763), sem), sem_probe.value(key)]


def _negative_release(typ: int) -> None:
    @scenario(
        f"release(-1) warns and leaves the error [{_row(typ)}]",
        [[False, "KeyError", UNSUPPORTED, 0], True],
    )
    def run(impl, keys, procs):
        S = impl.QSystemSemaphore
        key = S.platformSafeKey(keys("negrelease"), impl.key_type(typ))
        creator = S(key, 0, S.Create)
        module = "PySide6.QtCore" if impl.is_qt else "qsharedmem"
        code = (
            "import json, sys\n"
            f"from {module} import QNativeIpcKey as K, QSystemSemaphore as S\n"
            "sem = S(K.fromString(sys.argv[1]))\n"
            "sem.setNativeKey(K('x', K.Type.Windows))\n"  # an error that must survive
            "ok = sem.release(-1)\n"
            "sys.stderr.flush()\n"
            "print(json.dumps([ok, sem.error().name, sem.errorString()]))\n"
        )
        result = procs.run_python(code, key.toString())
        assert result.returncode == 0, result.stderr
        observed = [*json.loads(result.stdout), sem_probe.value(key)]
        del creator
        return [observed, NEGATIVE in result.stderr]


NEGATIVE = "QSystemSemaphore::release: n is negative."

PERMISSION_CHILD = (
    as_nobody_child("QSystemSemaphore", "mode")
    + r"""
S = QSystemSemaphore
sem = S(QNativeIpcKey.fromString(key), 1, S.Create if mode == "Create" else S.Open)
out = [os.geteuid(), sem.error().name, sem.errorString()]
ok = sem.acquire()
out += [ok, sem.error().name, sem.errorString()]
ok = sem.release()
out += [ok, sem.error().name, sem.errorString()]
print(json.dumps(out))
"""
)


def _permission(label: str, mode: str) -> None:
    typ, _ = PERMISSION_KEYS[label]
    denied = ["PermissionDenied", "QSystemSemaphore::handle: permission denied"]
    # Only the constructor opens in Create mode (POSIX: sem_unlink first); acquire() and
    # release() open in Open mode.
    first = (
        ["PermissionDenied", "QSystemSemaphore::handle (sem_unlink): permission denied"]
        if mode == "Create" and is_posix(typ)
        else denied
    )

    @scenario(
        f"uid {NOBODY} {mode} on root's 0600 {label} semaphore",
        [NOBODY, *first, False, *denied, False, *denied, 1],
    )
    def run(impl, keys, procs):
        S = impl.QSystemSemaphore
        key = permission_test_key(S, impl, keys, label)
        owner = S(key, 1, S.Create)
        assert owner.error().name == "NoError", owner.errorString()
        result = procs.run_python(PERMISSION_CHILD, impl.name, mode, key.toString(), str(NOBODY))
        assert result.returncode == 0, result
        return [*json.loads(result.stdout.strip().splitlines()[-1]), sem_probe.value(key)]


for _typ in KEY_TYPES.values():
    _empty_key(_typ)
    _negative_initial_value(_typ)
    _negative_release(_typ)
for _typ in (0x51, ord("T")):
    _sysv_missing_dir(_typ)
    _release_past_the_maximum(_typ)
_bad_posix_name("with an inner '/'", lambda keys: f"/{keys('in')}/ner")
_bad_posix_name("of 300 characters", lambda keys: "/" + "x" * 300)
_bad_posix_name("of 300 characters without '/'", lambda keys: "x" * 300)
for _overload in ("str", "QNativeIpcKey"):
    _set_native_key_windows(_overload)
for _label in PERMISSION_KEYS:
    for _mode in ("Open", "Create"):
        _permission(_label, _mode)


@pytest.mark.parametrize("scenario", SCENARIOS, ids=str)
def test_error_matches_qt(
    impl: Impl, scenario: Scenario, make_key: KeyRegistry, procs: ChildProcesses
) -> None:
    got = scenario.run(impl, make_key, procs)
    if impl.is_qt:
        assert got == scenario.expected, "PySide6 no longer behaves as recorded"
    else:
        assert got == scenario.expected


# ------------------------------------------------------------------------------------------------
# PySide6 and qsharedmem processes signalling each other

PING_PONG = r"""
import sys
impl, role, ping, pong, rounds = sys.argv[1:6]
if impl == "pyside6":
    from PySide6.QtCore import QNativeIpcKey as K, QSystemSemaphore as S
else:
    from qsharedmem import QNativeIpcKey as K, QSystemSemaphore as S

def main():
    mode = S.Create if role == "starter" else S.Open
    ping_sem = S(K.fromString(ping), 0, mode)
    pong_sem = S(K.fromString(pong), 0, mode)
    for sem in (ping_sem, pong_sem):
        assert sem.error() == S.NoError, sem.errorString()
    print("READY", flush=True)
    if role == "starter":
        sys.stdin.readline()  # the answerer is ready too
    for i in range(int(rounds)):
        if role == "starter":
            assert ping_sem.release(), ping_sem.errorString()
            assert pong_sem.acquire(), pong_sem.errorString()
        else:
            assert ping_sem.acquire(), ping_sem.errorString()
            assert pong_sem.release(), pong_sem.errorString()
    print("DONE", flush=True)
    sys.stdin.readline()  # stay alive (System V: SEM_UNDO) until the parent has looked

main()
"""


@pytest.mark.parametrize("starter", ["pyside6", "qsharedmem"])
@pytest.mark.parametrize("key_row", list(KEY_TYPES))
def test_pyside6_and_qsharedmem_processes_signal_each_other(
    starter: str, key_row: str, make_key: KeyRegistry, procs: ChildProcesses
) -> None:
    answerer = "qsharedmem" if starter == "pyside6" else "pyside6"
    impl = load_impl("qsharedmem")
    typ = impl.key_type(key_row)
    ping = impl.QSystemSemaphore.platformSafeKey(make_key("ping"), typ)
    pong = impl.QSystemSemaphore.platformSafeKey(make_key("pong"), typ)
    rounds = "200"
    args = (ping.toString(), pong.toString(), rounds)
    first = procs.start_ready(procs.python("-c", PING_PONG, starter, "starter", *args), "READY")
    second = procs.start_ready(procs.python("-c", PING_PONG, answerer, "answerer", *args), "READY")
    first.send("go\n")
    first.wait_for_line("DONE", HANG_GUARD)
    second.wait_for_line("DONE", HANG_GUARD)
    # Every release was consumed by an acquire in the other process.
    assert (sem_probe.value(ping), sem_probe.value(pong)) == (0, 0)
    for child in (second, first):
        result = child.finish(HANG_GUARD)
        assert result.returncode == 0, result.stderr
    # The starter created (Create mode) both semaphores and removed them when it exited.
    assert make_key.leftovers() == []


# ------------------------------------------------------------------------------------------------
# beyond Qt: timeouts, Ctrl-C, threads, `with`


@pytest.fixture
def qsm() -> Impl:
    return load_impl("qsharedmem")


@pytest.mark.parametrize("key_row", list(KEY_TYPES))
def test_acquire_timeout(qsm: Impl, key_row: str, make_key: KeyRegistry) -> None:
    S = qsm.QSystemSemaphore
    sem = S(S.platformSafeKey(make_key("timeout"), qsm.key_type(key_row)), 0, S.Create)
    # A stale error, to see that a timeout is not an error (NoError afterwards).
    sem.setNativeKey(qsm.QNativeIpcKey("x", qsm.key_type(WINDOWS_TYPE)))
    assert sem.error() == S.KeyError
    assert sem.acquire(timeout=0.05) is False
    assert sem.error() == S.NoError
    assert sem.acquire(timeout=0) is False
    assert sem.acquire(0.0) is False
    assert sem.release(2)
    assert sem.acquire(timeout=0)
    assert sem.acquire(timeout=HANG_GUARD)
    assert sem.acquire(timeout=0.01) is False


def test_acquire_timeout_argument_checks(qsm: Impl, make_key: KeyRegistry) -> None:
    S = qsm.QSystemSemaphore
    sem = S(S.platformSafeKey(make_key("args")), 1, S.Create)
    for bad, error in [
        (-1, ValueError),
        (float("nan"), ValueError),
        ("1", TypeError),
        (True, TypeError),
        (1e300, OverflowError),
    ]:
        with pytest.raises(error):
            sem.acquire(timeout=bad)
    assert sem.acquire(timeout=float("inf"))  # a free token: no wait at all


def test_acquire_with_timeout_gets_a_token_released_by_another_process(
    qsm: Impl, make_key: KeyRegistry, procs: ChildProcesses
) -> None:
    S = qsm.QSystemSemaphore
    key = S.platformSafeKey(make_key("later"))
    sem = S(key, 0, S.Create)
    code = (
        "import sys\n"
        "from qsharedmem import QNativeIpcKey as K, QSystemSemaphore as S\n"
        "sem = S(K.fromString(sys.argv[1]))\n"
        "print('WAITING', flush=True)\n"
        "print(sem.acquire(timeout=float(sys.argv[2])), sem.error().name, flush=True)\n"
    )
    child = procs.start_ready(procs.python("-c", code, key.toString(), str(HANG_GUARD)), "WAITING")
    sem_probe.wait_until_waiting(key, child)
    assert sem.release()
    assert child.wait_for_line() == "True NoError"
    assert child.finish(HANG_GUARD).returncode == 0


CTRL_C_CHILD = r"""
import sys
from qsharedmem import QNativeIpcKey as K, QSystemSemaphore as S
sem = S(K.fromString(sys.argv[1]))
try:
    if sys.argv[2] == "with":
        with sem:
            print("entered", flush=True)
    else:
        print(sem.acquire(), flush=True)
except KeyboardInterrupt:
    print("KeyboardInterrupt", sem.error().name, flush=True)
    sys.exit(0)
"""


@pytest.mark.parametrize("how", ["acquire", "with"])
@pytest.mark.parametrize("key_row", list(KEY_TYPES))
def test_ctrl_c_interrupts_acquire(
    qsm: Impl, key_row: str, how: str, make_key: KeyRegistry, procs: ChildProcesses
) -> None:
    S = qsm.QSystemSemaphore
    key = S.platformSafeKey(make_key("ctrlc"), qsm.key_type(key_row))
    sem = S(key, 0, S.Create)
    child = procs.start(procs.python("-c", CTRL_C_CHILD, key.toString(), how))
    sem_probe.wait_until_waiting(key, child)
    child.proc.send_signal(signal.SIGINT)
    assert child.wait_for_line(timeout=HANG_GUARD) == "KeyboardInterrupt NoError"
    assert child.finish(HANG_GUARD).returncode == 0
    assert sem_probe.value(key) == 0  # the interrupted wait took nothing
    del sem


def test_other_threads_run_while_one_waits(qsm: Impl, make_key: KeyRegistry) -> None:
    """acquire() releases the GIL: the main thread runs Python code, then releases the token
    the waiting thread gets (PySide6 keeps the GIL here and would hang)."""
    S = qsm.QSystemSemaphore
    key = S.platformSafeKey(make_key("threads"))
    sem = S(key, 0, S.Create)
    got: list[bool] = []
    waiter = threading.Thread(target=lambda: got.append(sem.acquire()), daemon=True)
    waiter.start()
    sem_probe.wait_until_waiting(key, _ThreadAsChild(waiter))
    assert sum(i * i for i in range(100_000)) > 0  # Python code runs meanwhile
    assert got == []
    assert sem.release()
    waiter.join(HANG_GUARD)
    assert got == [True]


class _ThreadAsChild:
    """Lets sem_probe.wait_until_waiting watch a thread instead of a child process."""

    def __init__(self, thread: threading.Thread) -> None:
        self.thread = thread
        self.proc = self

    def poll(self) -> int | None:
        return None if self.thread.is_alive() else 0

    returncode = 0

    def describe(self) -> str:
        return f"thread {self.thread.name}"

    def stderr(self) -> str:
        return ""


@pytest.mark.parametrize("key_row", list(KEY_TYPES))
def test_with_statement(qsm: Impl, key_row: str, make_key: KeyRegistry) -> None:
    S = qsm.QSystemSemaphore
    key = S.platformSafeKey(make_key("with"), qsm.key_type(key_row))
    sem = S(key, 1, S.Create)
    with sem as entered:
        assert entered is sem
        assert sem_probe.value(key) == 0
    assert sem_probe.value(key) == 1
    with pytest.raises(ZeroDivisionError), sem:
        assert sem_probe.value(key) == 0
        _ = 1 / 0
    assert sem_probe.value(key) == 1


def test_with_statement_on_an_unusable_semaphore_raises(qsm: Impl) -> None:
    import qsharedmem

    S, K = qsm.QSystemSemaphore, qsm.QNativeIpcKey
    sem = S(K("", qsm.key_type(0x51)))
    with pytest.raises(qsharedmem.InvalidKeyError) as info, sem:
        pytest.fail("entered")
    assert str(info.value) == "QSystemSemaphore::handle:: key is empty"
    assert info.value.qt_error == S.KeyError
    assert isinstance(info.value, ValueError)


def test_negative_release_warning(qsm: Impl, make_key: KeyRegistry) -> None:
    S = qsm.QSystemSemaphore
    sem = S(S.platformSafeKey(make_key("warn")), 0, S.Create)
    with pytest.warns(RuntimeWarning, match="n is negative"):
        assert sem.release(-1) is False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(RuntimeWarning):
            sem.release(n=-5)


def test_argument_checks(qsm: Impl, make_key: KeyRegistry) -> None:
    S, K = qsm.QSystemSemaphore, qsm.QNativeIpcKey
    key = S.platformSafeKey(make_key("badargs"))
    for args, error in [
        ((123,), TypeError),
        ((key, "1"), TypeError),
        ((key, 1.5), TypeError),
        ((key, 1, 5), ValueError),
        ((key, 1, -1), ValueError),
        ((key, 2**31), OverflowError),
        ((key, -(2**31) - 1), OverflowError),
    ]:
        with pytest.raises(error):
            S(*args)
    with pytest.raises(TypeError):
        S()
    with pytest.raises(TypeError):
        S(key=key)
    sem = S(key, initialValue=1, mode=1)  # plain ints work for the enums
    for bad, error in [(2**31, OverflowError), (1.5, TypeError), ("2", TypeError)]:
        with pytest.raises(error):
            sem.release(bad)
    with pytest.raises(TypeError):
        sem.setNativeKey(key, 0, S.Open, K.Type.PosixRealtime)
    with pytest.raises(TypeError):
        sem.setKey(5)
    with pytest.raises(ValueError):
        S.platformSafeKey("x", 0x10000)
    assert sem.error() == S.NoError


def test_a_member_of_another_enum_is_a_type_error(impl: Impl, make_key: KeyRegistry) -> None:
    """QSharedMemory.ReadWrite or a key type where an AccessMode belongs is a mistake, not the
    mode with that number: both implementations refuse it."""
    S = impl.QSystemSemaphore
    key = S.platformSafeKey(make_key("wrongenum"))
    wrong_enums = [impl.QSharedMemory.AccessMode.ReadWrite, impl.QNativeIpcKey.Type.SystemV]
    for wrong in wrong_enums:
        with pytest.raises(TypeError):
            S(key, 1, wrong)
    sem = S(key, 1, S.AccessMode.Create)
    for wrong in wrong_enums:
        with pytest.raises(TypeError):
            sem.setNativeKey(key, 1, wrong)
    assert sem.nativeIpcKey() == key
    assert sem.error() == S.NoError


def test_sysv_release_of_more_than_32767(qsm: Impl, make_key: KeyRegistry) -> None:
    """Deliberate difference: Qt stores n in the 16-bit sem_op unchecked, so its release(40000)
    turns into an acquire of 25536 (and waits); qsharedmem refuses with ERANGE, what the kernel
    says for any release past 32767."""
    S = qsm.QSystemSemaphore
    key = S.platformSafeKey(make_key("big"), qsm.key_type(0x51))
    sem = S(key, 5, S.Create)
    for n in (32768, 40000, 65536, 70000, 2**31 - 1):
        assert sem.release(n) is False
        assert sem.error() == S.OutOfResources
        assert sem.errorString() == "QSystemSemaphore::modifySemaphore: out of resources"
        assert sem_probe.value(key) == 5


def test_posix_release_past_sem_value_max_is_refused_at_once(
    qsm: Impl, make_key: KeyRegistry
) -> None:
    """Qt posts until sem_post fails with EOVERFLOW (two billion calls) and rolls back; the
    outcome is the same, without the calls."""
    S = qsm.QSystemSemaphore
    key = S.platformSafeKey(make_key("bigposix"))
    sem = S(key, 5, S.Create)
    assert sem.release(2**31 - 1) is False
    assert sem.error() == S.UnknownError
    assert sem.errorString() == (
        "QSystemSemaphore::modifySemaphore (sem_post): unknown error: "
        "Value too large for defined data type"
    )
    assert sem_probe.value(key) == 5
    assert sem.release(2**31 - 1 - 5)
    assert sem_probe.value(key) == 2**31 - 1


FORK_CHILD = r"""
import gc, os, sys
from qsharedmem import QNativeIpcKey as K, QSystemSemaphore as S
sem = S(K.fromString(sys.argv[1]), 1, S.Create)
pid = os.fork()
if pid == 0:
    assert sem.acquire()
    assert sem.release()
    del sem
    gc.collect()
    os._exit(0)
_, status = os.waitpid(pid, 0)
assert status == 0, status
print("PARENT", os.path.exists(sys.argv[2]), sem.acquire(), sem.error().name, flush=True)
"""


@pytest.mark.parametrize("key_row", list(KEY_TYPES))
def test_forked_child_never_removes_the_parents_semaphore(
    qsm: Impl, key_row: str, make_key: KeyRegistry, procs: ChildProcesses
) -> None:
    S = qsm.QSystemSemaphore
    key = S.platformSafeKey(make_key("fork"), qsm.key_type(key_row))
    native = key.nativeKey()
    path = f"/dev/shm/sem.{native.lstrip('/')}" if type_value(key.type()) == POSIX_TYPE else native
    result = procs.run_python(FORK_CHILD, key.toString(), path, timeout=HANG_GUARD)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["PARENT", "True", "True", "NoError"]
    assert make_key.leftovers() == []  # the parent's own cleanup still happened


def test_repr_and_enums(qsm: Impl) -> None:
    S, K = qsm.QSystemSemaphore, qsm.QNativeIpcKey
    sem = S(K("", qsm.key_type(POSIX_TYPE)))
    assert repr(sem) == '<QSystemSemaphore "posix:">'
    assert S.Open == S.AccessMode.Open == 0
    assert S.Create == S.AccessMode.Create == 1
    assert [m.name for m in S.SystemSemaphoreError] == [
        m.name for m in load_impl("pyside6").QSystemSemaphore.SystemSemaphoreError
    ]
    assert [int(m.value) for m in S.SystemSemaphoreError] == list(range(7))
    assert str(S.UnknownError) == "SystemSemaphoreError.UnknownError"


def test_docs_example_runs(make_key: KeyRegistry, procs: ChildProcesses) -> None:
    doc = (ROOT / "docs" / "qsystemsemaphore.md").read_text()
    (block,) = re.findall(r"```python\n(.*?)```", doc, flags=re.S)
    code = block.replace('"jobs-ready"', repr(make_key("jobs")))
    assert code != block
    result = procs.run_python(code, timeout=HANG_GUARD)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "NoError\n"
    assert make_key.leftovers() == []
