"""Shared pytest infrastructure for the qsharedmem test suite.

Fixtures (all function-scoped):

* ``impl`` — parametrized over ``"qsharedmem"`` and ``"pyside6"`` (PySide6 6.12 = the Qt oracle).
  The value is an :class:`Impl`: ``QSharedMemory``, ``QNativeIpcKey``, ``name``, ``is_qt``,
  ``key_type(value_or_row)``, ``next_key_type(t)``. qsharedmem is imported lazily, inside the
  fixture. ``-k pyside6`` / ``-k qsharedmem`` select one implementation (also in modules whose
  file name contains one of these words, see ``pytest_collection_modifyitems``). Also
  ``QSystemSemaphore``; its helper process is ``ACQUIRE_RELEASE`` (helpers/acquirerelease.py).
* ``key_type`` — parametrized like Qt's ``addGlobalTestRows``: ``POSIX`` (PosixRealtime),
  ``SystemV-Q`` (SystemV, ftok id 0x51), ``SystemV-T`` (``Type(84)``), as the *impl's* enum member.
* ``make_key`` — a :class:`KeyRegistry`: ``make_key("name")`` returns ``"tstshm_<pid>-<seq>_name"``
  (Qt's ``mangleKey``; the same name gives the same string within one test, "" stays "") and
  remembers it. At teardown it removes everything such a name can leave behind, for both
  implementations and every key family: ``/dev/shm/<name>``, ``/dev/shm/sem.<name>``, the legacy
  ``qipc_sharedmemory_…``/``sem.qipc_systemsem_…`` variants, the key files (temp dir, Qt runtime
  dir) and the System V segments and semaphore sets whose ftok key belongs to those files (any
  project id). ``make_key.record(qkey)`` registers a key that is not built from a mangled name
  (e.g. an absolute System V path). ``make_key.leftovers(make_key("name"))`` lists what is still
  there without removing it: use it to assert that qsharedmem cleaned up by itself.
* ``procs`` — a :class:`ChildProcesses` for children in fresh interpreters (``sys.executable``,
  ``QT_QPA_PLATFORM=offscreen``, ``tests/`` on ``PYTHONPATH``, no core dumps):
  ``run_python(code, *args, timeout=)`` / ``run_script(path, *args)`` →
  ``Result(returncode, stdout, stderr)`` (a signal death is a negative returncode);
  ``start(argv)`` / ``start_python`` / ``start_script`` → :class:`Child` with
  ``wait_for_line(expected, timeout)`` (the handshake — no sleeps), ``readline``, ``send``,
  ``finish`` (close stdin, wait, collect), ``kill`` (SIGKILL + reap); ``start_ready(argv, "READY")``
  starts and waits for the line. Every child is SIGKILLed and reaped at teardown, before
  ``make_key`` cleans up.

Leak check (no opt-in): every test is compared before/after — ``/dev/shm``,
``/proc/sysvipc/{shm,sem}``, ``qipc_*``/``tstshm_*``/``qsm-rs-*`` files in the temp dirs and the
Qt runtime dir — and a test that leaves anything new fails at teardown (after all its fixtures
cleaned up). The session fails (exit status 1, list in the summary) if anything is left at the
end that was not there at the start. The machine may be shared with concurrent runs: objects
tagged with another live test process (``tstshm_<pid>-`` or the Rust tests' ``qsm-rs-<pid>-``)
and objects mapped/held by live processes outside this run are not counted; pytest sessions are
serialised by an flock on ``/tmp/qsharedmem-tests.lock``.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import dataclasses
import gc
import hashlib
import itertools
import os
import pwd
import re
import resource
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

# Before anything can import PySide6 (test modules are imported after conftest).
os.environ["QT_QPA_PLATFORM"] = "offscreen"

# PySide6 6.12 on CPython 3.11 drops one reference to None on every call of a method that
# returns nothing (QNativeIpcKey.setType, QSharedMemory.setKey, ...); after a few thousand such
# calls in one process the interpreter aborts in none_dealloc. The oracle runs in this process,
# so give None enough references to outlive the whole suite (None is immortal from 3.12 on).
if sys.version_info < (3, 12):
    ctypes.c_ssize_t.from_address(id(None)).value += 1 << 30

import pytest

TESTS_DIR = Path(__file__).resolve().parent
HELPERS_DIR = TESTS_DIR / "helpers"
PRODUCER_CONSUMER = HELPERS_DIR / "producerconsumer.py"
ACQUIRE_RELEASE = HELPERS_DIR / "acquirerelease.py"

IMPLS = ("qsharedmem", "pyside6")

# Qt's addGlobalTestRows order on Linux (Windows is unsupported there): the row name and the
# QNativeIpcKey::Type value.
KEY_TYPES: dict[str, int] = {"POSIX": 0x100, "SystemV-Q": 0x51, "SystemV-T": ord("T")}
POSIX_TYPE = 0x100
SYSV_TYPE = 0x51
WINDOWS_TYPE = 0x101

DEV_SHM = Path("/dev/shm")
KEY_PREFIX = "tstshm"
DEFAULT_TIMEOUT = 60.0


# --------------------------------------------------------------------------------------------
# The implementations under test


@dataclasses.dataclass(frozen=True)
class Impl:
    """One implementation of Qt's Python API: ``qsharedmem`` or PySide6."""

    name: str
    QSharedMemory: Any
    QNativeIpcKey: Any
    QSystemSemaphore: Any = None

    @property
    def is_qt(self) -> bool:
        return self.name == "pyside6"

    def key_type(self, value: int | str) -> Any:
        """The impl's ``QNativeIpcKey.Type`` member for a value or a ``KEY_TYPES`` row name."""
        if isinstance(value, str):
            value = KEY_TYPES[value]
        return self.QNativeIpcKey.Type(value)

    def next_key_type(self, key_type: Any) -> Any:
        """Qt's ``IpcTestCommon::nextKeyType``: rotate through the supported rows."""
        values = list(KEY_TYPES.values())
        index = values.index(type_value(key_type))
        return self.key_type(values[(index + 1) % len(values)])

    def __repr__(self) -> str:
        return f"<Impl {self.name}>"


def load_impl(name: str) -> Impl:
    if name == "pyside6":
        from PySide6 import QtCore

        return Impl(name, QtCore.QSharedMemory, QtCore.QNativeIpcKey, QtCore.QSystemSemaphore)
    if name == "qsharedmem":
        import qsharedmem

        return Impl(
            name, qsharedmem.QSharedMemory, qsharedmem.QNativeIpcKey, qsharedmem.QSystemSemaphore
        )
    raise ValueError(f"unknown implementation {name!r}")


def type_value(key_type: Any) -> int:
    """The integer value of a key type of either implementation (IntEnum or PySide6 Enum)."""
    return int(getattr(key_type, "value", key_type))


def error_of(sm: Any) -> tuple[str, str]:
    """``(error().name, errorString())`` — comparable across implementations."""
    return sm.error().name, sm.errorString()


@pytest.fixture(params=IMPLS)
def impl(request: pytest.FixtureRequest) -> Impl:
    return load_impl(request.param)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Make ``-k pyside6`` / ``-k qsharedmem`` select an *implementation*.

    ``-k`` also matches file names, and ``test_errors_vs_pyside6.py`` /
    ``test_qt_tst_qsharedmemory.py`` contain the implementation names, so plain ``-k pyside6``
    would keep the qsharedmem rows of those modules. For items parametrized by ``impl``, the
    ``-k`` expression is evaluated again without the file/directory names.
    """
    text = (config.option.keyword or "").strip()
    if not text or not any(name in text.lower() for name in IMPLS):
        return
    try:
        from _pytest.mark import KeywordMatcher
        from _pytest.mark.expression import Expression
    except ImportError:  # private API moved: fall back to pytest's own -k semantics
        return
    expression = Expression.compile(text)
    keep, drop = [], []
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is None or "impl" not in callspec.params:
            keep.append(item)
            continue
        files = {
            node.name
            for node in item.listchain()
            if isinstance(node, pytest.Module | pytest.Package | pytest.Directory)
        }
        names = set(KeywordMatcher.from_item(item)._names) - files
        (keep if expression.evaluate(KeywordMatcher(names)) else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.fixture(params=list(KEY_TYPES))
def key_type(request: pytest.FixtureRequest, impl: Impl) -> Any:
    return impl.key_type(request.param)


# --------------------------------------------------------------------------------------------
# Permission tests: root makes a 0600 object, a child interpreter that dropped to NOBODY (after
# its imports: the interpreter lives under /root) tries to use it.

NOBODY = 65534

# label: (key type, legacy); new System V keys get an absolute path in /tmp
PERMISSION_KEYS: dict[str, tuple[int, bool]] = {
    "POSIX": (POSIX_TYPE, False),
    "legacy POSIX": (POSIX_TYPE, True),
    "legacy SystemV-Q": (SYSV_TYPE, True),
    "legacy SystemV-T": (ord("T"), True),
    "new SystemV-Q in /tmp": (SYSV_TYPE, False),
    "new SystemV-T in /tmp": (ord("T"), False),
}


def permission_test_key(ipc_class: Any, impl: Impl, keys: KeyRegistry, label: str) -> Any:
    """The key of a ``PERMISSION_KEYS`` row for ``ipc_class`` (QSharedMemory/QSystemSemaphore)."""
    typ, legacy = PERMISSION_KEYS[label]
    if legacy:
        return ipc_class.legacyNativeKey(keys("perm"), impl.key_type(typ))
    if typ == POSIX_TYPE:
        return ipc_class.platformSafeKey(keys("perm"), impl.key_type(typ))
    # an absolute path: /tmp is searchable by everybody (the runtime dir is 0700)
    return keys.record(ipc_class.platformSafeKey(f"/tmp/{keys('perm')}", impl.key_type(typ)))


# --------------------------------------------------------------------------------------------
# Where Qt puts things (qt-semantics §2.4)


def clean_path(path: str) -> str:
    """QDir::cleanPath for absolute paths: collapse //, resolve . and .. lexically."""
    return os.path.normpath(path).replace("//", "/") if path else path


def temp_dirs() -> list[Path]:
    """QDir::tempPath() (cleaned $TMPDIR or /tmp), plus /tmp itself."""
    dirs = [Path("/tmp")]
    tmpdir = os.environ.get("TMPDIR")
    if tmpdir:
        dirs.insert(0, Path(clean_path(tmpdir)))
    return list(dict.fromkeys(dirs))


def runtime_dirs() -> list[Path]:
    """Candidates for QStandardPaths::RuntimeLocation: $XDG_RUNTIME_DIR, <temp>/runtime-<user>."""
    user = pwd.getpwuid(os.geteuid()).pw_name
    dirs = []
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and xdg.startswith("/"):
        dirs.append(Path(xdg))
    dirs.extend(d / f"runtime-{user}" for d in temp_dirs())
    return list(dict.fromkeys(dirs))


def _letters(key: str) -> str:
    return "".join(c for c in key if "a" <= c <= "z" or "A" <= c <= "Z")


def legacy_suffix(key: str) -> str:
    """<ASCII letters of key><sha1 hex of utf-8 key> (qt-semantics §2.2)."""
    return _letters(key) + hashlib.sha1(key.encode("utf-8")).hexdigest()


# --------------------------------------------------------------------------------------------
# System V objects, read from /proc and removed with ctypes (no dependency on ipcrm/sysv_ipc)

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
IPC_RMID = 0


class SysvObject(NamedTuple):
    kind: str  # "shm" | "sem"
    ident: int
    key: int  # as unsigned 32-bit
    cpid: int  # creator pid (shm only, 0 for sem)
    lpid: int  # pid of the last shmat/shmdt (shm only, 0 for sem)


def sysv_objects() -> list[SysvObject]:
    objects = []
    for kind in ("shm", "sem"):
        try:
            lines = Path(f"/proc/sysvipc/{kind}").read_text().splitlines()
        except OSError:
            continue
        if not lines:
            continue
        header = lines[0].split()
        for line in lines[1:]:
            fields = dict(zip(header, line.split(), strict=False))
            ident = int(fields["shmid" if kind == "shm" else "semid"])
            key = int(fields["key"]) & 0xFFFFFFFF
            objects.append(
                SysvObject(kind, ident, key, int(fields.get("cpid", 0)), int(fields.get("lpid", 0)))
            )
    return objects


def sysv_remove(obj: SysvObject) -> None:
    if obj.kind == "shm":
        rc = _libc.shmctl(ctypes.c_int(obj.ident), ctypes.c_int(IPC_RMID), None)
    else:
        rc = _libc.semctl(ctypes.c_int(obj.ident), ctypes.c_int(0), ctypes.c_int(IPC_RMID))
    if rc == -1:
        err = ctypes.get_errno()
        if err not in (0, 22, 43):  # EINVAL / EIDRM: already gone
            raise OSError(err, f"IPC_RMID {obj}: {os.strerror(err)}")


def ftok_matches(key: int, st: os.stat_result) -> bool:
    """Whether a SysV key was made by glibc's ftok() from this file (any project id)."""
    return (
        key != 0
        and (key & 0xFFFF) == (st.st_ino & 0xFFFF)
        and ((key >> 16) & 0xFF) == (st.st_dev & 0xFF)
    )


def sysv_objects_for_file(path: Path, objects: Iterable[SysvObject] | None = None):
    try:
        st = path.stat()
    except OSError:
        return []
    if objects is None:
        objects = sysv_objects()
    return [o for o in objects if ftok_matches(o.key, st)]


# --------------------------------------------------------------------------------------------
# Unique keys and their cleanup

_SEQ = itertools.count()


class KeyRegistry:
    """Qt's mangleKey/rememberKey/remove, for every key family and both implementations."""

    def __init__(self, prefix: str = KEY_PREFIX) -> None:
        self.seq = next(_SEQ)
        self.prefix = f"{prefix}_{os.getpid()}-{self.seq}_"
        self.names: list[str] = []  # mangled names
        self.posix_names: list[str] = []  # /dev/shm entries (without the directory)
        self.files: list[Path] = []  # SysV key files (absolute)
        self.removed: list[str] = []  # what cleanup() had to remove

    # -- making keys
    def __call__(self, name: str) -> str:
        return self.name(name)

    def name(self, name: str) -> str:
        """Qt's mangleKey: ``tstshm_<pid>-<seq>_<name>``; the empty string stays empty."""
        if not name:
            return name
        mangled = self.prefix + name
        if mangled not in self.names:
            self.names.append(mangled)
        return mangled

    def record(self, key: Any) -> Any:
        """Remember a QNativeIpcKey of either implementation; returns it."""
        self.record_native(key.nativeKey(), type_value(key.type()))
        return key

    def record_native(self, native: str, typ: int) -> None:
        if not native:
            return
        if typ == POSIX_TYPE:
            base = native[1:] if native.startswith("/") else native
            if "/" not in base:
                self._add_posix(base, base + ".qsm", "sem." + base)
                if base.startswith("qipc_sharedmemory_"):
                    self._add_posix("sem.qipc_systemsem_" + base[len("qipc_sharedmemory_") :])
        elif 0 <= typ <= 0xFF:
            path = Path(native) if native.startswith("/") else Path.cwd() / native
            self._add_file(path)
            if path.name.startswith("qipc_sharedmemory_"):
                rest = path.name[len("qipc_sharedmemory_") :]
                self._add_file(path.with_name("qipc_systemsem_" + rest))

    def _add_posix(self, *names: str) -> None:
        for name in names:
            if name not in self.posix_names:
                self.posix_names.append(name)

    def _add_file(self, *paths: Path) -> None:
        for path in paths:
            if path not in self.files:
                self.files.append(path)

    # -- what a name can leave behind
    def _candidates(self, names: Iterable[str] = ()) -> tuple[list[Path], list[Path]]:
        names = list(names)
        if names:  # only what these mangled names can leave behind
            shm: list[str] = []
            files: list[Path] = []
        else:
            names = self.names
            shm = list(self.posix_names)
            files = list(self.files)
        for name in names:
            legacy = legacy_suffix(name)
            shm += [
                name,
                name + ".qsm",
                "sem." + name,
                "qipc_sharedmemory_" + legacy,
                "qipc_sharedmemory_" + legacy + ".qsm",
                "sem.qipc_systemsem_" + legacy,
            ]
            for d in runtime_dirs():
                files.append(d / name)
            for d in temp_dirs():
                files += [d / ("qipc_sharedmemory_" + legacy), d / ("qipc_systemsem_" + legacy)]
                files.append(d / name)
        shm_paths = [DEV_SHM / n for n in dict.fromkeys(shm) if "/" not in n]
        return shm_paths, list(dict.fromkeys(files))

    def leftovers(self, *names: str) -> list[str]:
        """Everything still present for the recorded keys (nothing is removed).

        With ``names`` (mangled names, as returned by ``make_key("x")``): only for those.
        """
        shm_paths, files = self._candidates(names)
        objects = sysv_objects()
        found = [str(p) for p in shm_paths if os.path.lexists(p)]
        for path in files:
            if os.path.lexists(path):
                found.append(str(path))
                for obj in sysv_objects_for_file(path, objects):
                    found.append(describe_sysv(obj, path))
                    block = sysv_notify_block(obj)
                    if block is not None and block.exists():
                        found.append(str(block))
        return found

    def cleanup(self) -> list[str]:
        """Remove everything the recorded keys left behind; returns what was removed."""
        shm_paths, files = self._candidates()
        removed: list[str] = []
        objects = sysv_objects()
        for path in files:
            for obj in sysv_objects_for_file(path, objects):
                sysv_remove(obj)
                removed.append(describe_sysv(obj, path))
                block = sysv_notify_block(obj)
                if block is not None:
                    with contextlib.suppress(FileNotFoundError):
                        block.unlink()
                        removed.append(str(block))
        for path in [*files, *shm_paths]:
            # OSError: also names that cannot exist (too long, a component is not a directory)
            with contextlib.suppress(OSError):
                path.unlink()
                removed.append(str(path))
        self.removed += removed
        return removed


def sysv_notify_block(obj: SysvObject) -> Path | None:
    """The wait/notify block qsharedmem keeps for a System V segment (``qsm-sysv-<shmid>``)."""
    return DEV_SHM / f"qsm-sysv-{obj.ident}.qsm" if obj.kind == "shm" else None


@pytest.fixture
def make_key() -> Iterator[KeyRegistry]:
    registry = KeyRegistry()
    yield registry
    gc.collect()  # destroy unreachable PySide6/qsharedmem objects before removing their files
    registry.cleanup()


# --------------------------------------------------------------------------------------------
# Leak check


def describe_sysv(obj: SysvObject, path: Path | str | None = None) -> str:
    text = f"System V {obj.kind} id={obj.ident} key=0x{obj.key:08x}"
    if obj.cpid:
        text += f" cpid={obj.cpid}"
    if path is not None:
        text += f" (key file {path})"
    return text


def _watched_files() -> list[Path]:
    found = []
    for d in temp_dirs():
        with contextlib.suppress(OSError):
            found += [
                d / n for n in os.listdir(d) if n.startswith(("qipc_", KEY_PREFIX + "_", "qsm-rs-"))
            ]
    for d in runtime_dirs():
        with contextlib.suppress(OSError):
            found += [d / n for n in os.listdir(d)]
    return found


def ipc_snapshot() -> dict[str, str]:
    """Every IPC object and key file on the machine: identity → description."""
    snapshot: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for name in os.listdir(DEV_SHM):
            snapshot[f"/dev/shm/{name}"] = f"/dev/shm/{name}"
    files = _watched_files()
    stats = {}
    for path in files:
        snapshot[str(path)] = str(path)
        with contextlib.suppress(OSError):
            stats[path] = path.stat()
    for obj in sysv_objects():
        owner = next((p for p, st in stats.items() if ftok_matches(obj.key, st)), None)
        snapshot[f"sysv-{obj.kind}-{obj.ident}-{obj.key}"] = describe_sysv(obj, owner)
    return snapshot


# Names tagged with the pid of the test process that made them: ours (``tstshm_<pid>-<seq>_``)
# and the Rust integration tests' (``qsm-rs-<pid>-<seq>-``, tests/lifecycle.rs).
_TAG = re.compile(r"(?:" + re.escape(KEY_PREFIX) + r"_|qsm-rs-)(\d+)-")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _belongs_to_other_session(description: str) -> bool:
    match = _TAG.search(description)
    if not match:
        return False
    pid = int(match.group(1))
    return pid != os.getpid() and _pid_alive(pid)


def _our_processes() -> set[int]:
    """This process and its live descendants."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                stat = Path(f"/proc/{entry}/stat").read_text()
                parents[int(entry)] = int(stat.rpartition(")")[2].split()[1])
    ours = {os.getpid()}
    changed = True
    while changed:
        changed = False
        for pid, ppid in parents.items():
            if ppid in ours and pid not in ours:
                ours.add(pid)
                changed = True
    return ours


def _foreign_holders(paths: set[str], ours: set[int]) -> set[str]:
    """The paths among ``paths`` that a live process outside this test run maps or has open."""
    held: set[str] = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in ours:
            continue
        with contextlib.suppress(OSError):
            maps = Path(f"/proc/{entry}/maps").read_text()
            held |= {p for p in paths if p in maps}
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{entry}/fd"):
                with contextlib.suppress(OSError):
                    target = os.readlink(f"/proc/{entry}/fd/{fd}")
                    if target in paths:
                        held.add(target)
    return held


_SYSV_IDENT = re.compile(r"^sysv-(shm|sem)-(\d+)-(\d+)$")


def new_objects(before: dict[str, str], after: dict[str, str]) -> list[str]:
    """What is in ``after`` but not in ``before`` and does not belong to somebody else.

    The machine is shared with concurrent test runs (other pytest sessions, ``cargo test``), so
    an object is not counted if its name carries another live session's ``tstshm_<pid>-`` tag,
    if it is a /dev/shm file that a live process outside this run maps or has open, or if it is
    a System V segment whose creator or last user is such a process.
    """
    new = {
        ident: desc
        for ident, desc in after.items()
        if ident not in before and not _belongs_to_other_session(desc)
    }
    if not new:
        return []
    ours = _our_processes()
    shm_objects = {o.ident: o for o in sysv_objects() if o.kind == "shm"}
    files = {ident for ident in new if ident.startswith("/dev/shm/")}
    foreign = _foreign_holders(files, ours) if files else set()
    foreign_shm = {
        o.ident: o.key
        for o in shm_objects.values()
        if any(p and p not in ours and _pid_alive(p) for p in (o.cpid, o.lpid))
    }
    foreign_keys = {key for key in foreign_shm.values() if key}
    for ident in list(new):
        match = _SYSV_IDENT.match(ident)
        if match is None:
            continue
        kind, ident_number, key = match.group(1), int(match.group(2)), int(match.group(3))
        # A semaphore set has no creator pid; one with the key of a foreign segment (Qt's new
        # System V keys use one key file for both) is taken to be foreign too.
        if (kind == "shm" and ident_number in foreign_shm) or (
            kind == "sem" and key in foreign_keys
        ):
            foreign.add(ident)
    return sorted(desc for ident, desc in new.items() if ident not in foreign)


_SESSION_BASELINE = pytest.StashKey[dict[str, str]]()
_SESSION_LEAKS = pytest.StashKey[list[str]]()


SESSION_LOCK = Path("/tmp/qsharedmem-tests.lock")
_SESSION_LOCK_FD = pytest.StashKey[int]()


def _take_session_lock(config: pytest.Config) -> None:
    """Serialise test sessions on this machine.

    System V and /dev/shm are machine-wide, and ftok() keys of different key files can collide;
    two concurrent sessions would see (and count as leaks) each other's objects. A session
    therefore holds an exclusive flock on ``SESSION_LOCK`` from its start to its end (the
    kernel releases it if the process dies). Other test drivers (e.g. ``cargo test``) can take
    the same lock to stay out of the way.
    """
    import fcntl

    fd = os.open(SESSION_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        sys.stderr.write(f"waiting for another test session to release {SESSION_LOCK} ...\n")
        sys.stderr.flush()
        fcntl.flock(fd, fcntl.LOCK_EX)
    config.stash[_SESSION_LOCK_FD] = fd


def pytest_sessionstart(session: pytest.Session) -> None:
    _take_session_lock(session.config)
    session.config.stash[_SESSION_BASELINE] = ipc_snapshot()


def pytest_unconfigure(config: pytest.Config) -> None:
    fd = config.stash.get(_SESSION_LOCK_FD, None)
    if fd is not None:
        os.close(fd)  # releases the flock


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    baseline = session.config.stash.get(_SESSION_BASELINE, None)
    if baseline is None:
        return
    gc.collect()
    leaks = new_objects(baseline, ipc_snapshot())
    session.config.stash[_SESSION_LEAKS] = leaks
    if leaks and session.exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config):
    leaks = config.stash.get(_SESSION_LEAKS, [])
    if leaks:
        terminalreporter.section("IPC leak check", sep="=", red=True, bold=True)
        terminalreporter.line(
            "FAILED: these IPC objects / key files were created during the session "
            "and are still there:",
            red=True,
        )
        for leak in leaks:
            terminalreporter.line(f"  {leak}")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    """Destroy the objects of a failed test before its fixtures clean up.

    pytest keeps the last failure's traceback (``sys.last_traceback``, for post-mortem
    debugging), and with it the test's locals — e.g. PySide6 objects whose destructors would
    recreate a System V semaphore long after ``make_key`` removed it, and so show up as a leak
    of some later test. Clearing those frames runs the destructors now.
    """
    tb = getattr(sys, "last_traceback", None)
    while tb is not None:
        frame = tb.tb_frame
        with contextlib.suppress(RuntimeError):  # a frame that is still executing
            frame.clear()
            # pytest's traceback formatting made a f_locals snapshot; re-syncing it with the
            # cleared frame drops the stale references
            frame.f_locals.clear()
        tb = tb.tb_next
    gc.collect()


@pytest.fixture(autouse=True)
def _ipc_leak_check() -> Iterator[None]:
    """Fail the test (at teardown) that left IPC objects behind.

    Autouse and defined here, so it is set up before and torn down after every other fixture
    of the test — in particular after ``make_key``'s cleanup.
    """
    before = ipc_snapshot()
    yield
    gc.collect()
    leaks = new_objects(before, ipc_snapshot())
    if leaks:
        pytest.fail("test left IPC objects behind:\n  " + "\n  ".join(leaks), pytrace=False)


# --------------------------------------------------------------------------------------------
# Child processes


class Result(NamedTuple):
    returncode: int
    stdout: str
    stderr: str


def child_env(**extra: str) -> dict[str, str]:
    """The environment for child interpreters: offscreen Qt, tests/ on the path."""
    env = dict(os.environ)
    env["QT_QPA_PLATFORM"] = "offscreen"
    paths = [str(TESTS_DIR)]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env.update(extra)
    return env


def _no_core_dumps() -> None:
    # Children that are expected to crash (SIGSEGV) must not write core files.
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


class Child:
    """A running child process whose stdout is read line by line with timeouts."""

    def __init__(self, argv: list[str], *, env: dict[str, str] | None, cwd: str | None):
        self.argv = argv
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 (closed by kill_all)
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env=child_env() if env is None else env,
            cwd=cwd,
            preexec_fn=_no_core_dumps,
        )
        self.pid = self.proc.pid
        self._buffer = b""
        self._eof = False
        self.lines: list[str] = []  # every stdout line read so far

    # -- stdout
    def _fill(self, deadline: float) -> bool:
        """Read what is available before the deadline; False on timeout."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            remaining = deadline - _monotonic()
            if remaining <= 0 or not sel.select(remaining):
                return False
        chunk = os.read(fd, 65536)
        if not chunk:
            self._eof = True
        self._buffer += chunk
        return True

    def readline(self, timeout: float = DEFAULT_TIMEOUT) -> str | None:
        """The next stdout line (without the newline); None at EOF. Fails on timeout."""
        deadline = _monotonic() + timeout
        while b"\n" not in self._buffer and not self._eof:
            if not self._fill(deadline):
                pytest.fail(f"timeout waiting for a line from {self.describe()}")
        if b"\n" not in self._buffer:
            if not self._buffer:
                return None
            line, self._buffer = self._buffer, b""
        else:
            line, _, self._buffer = self._buffer.partition(b"\n")
        text = line.decode(errors="replace")
        self.lines.append(text)
        return text

    def wait_for_line(
        self, expected: str | Callable[[str], bool] | None = None, timeout: float = DEFAULT_TIMEOUT
    ) -> str:
        """Handshake: wait for a stdout line equal to ``expected`` (or any line if None)."""
        deadline = _monotonic() + timeout
        while True:
            line = self.readline(max(0.0, deadline - _monotonic()))
            if line is None:
                rc = self.proc.wait()
                pytest.fail(
                    f"{self.describe()} exited ({rc}) before printing {expected!r}; "
                    f"stderr:\n{self.stderr()}"
                )
            if expected is None or (
                line == expected if isinstance(expected, str) else expected(line)
            ):
                return line

    # -- stdin
    def send(self, data: bytes | str) -> None:
        assert self.proc.stdin is not None
        if isinstance(data, str):
            data = data.encode()
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def close_stdin(self) -> None:
        if self.proc.stdin and not self.proc.stdin.closed:
            with contextlib.suppress(BrokenPipeError):
                self.proc.stdin.close()

    # -- termination
    def wait(self, timeout: float = DEFAULT_TIMEOUT) -> int:
        """Wait for exit; fails (after killing it) on timeout."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"timeout waiting for {self.describe()} to exit")

    def finish(self, timeout: float = DEFAULT_TIMEOUT) -> Result:
        """Close stdin, wait, and collect everything: Result(returncode, stdout, stderr)."""
        self.close_stdin()
        rc = self.wait(timeout)
        while not self._eof:
            if not self._fill(_monotonic() + timeout):
                break
        rest = self._buffer.decode(errors="replace")
        self._buffer = b""
        out = "".join(line + "\n" for line in self.lines) + rest
        return Result(rc, out, self.stderr())

    def kill(self) -> int:
        """SIGKILL (if still running) and reap. Returns the exit status."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGKILL)
        rc = self.proc.wait()
        self.close_stdin()
        if self.proc.stdout:
            self.proc.stdout.close()
        return rc

    def stderr(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")

    def describe(self) -> str:
        return f"child {self.pid} {self.argv[1:]!r}"


def _monotonic() -> float:
    return time.monotonic()


class ChildProcesses:
    """Starts children in fresh interpreters and guarantees they are killed and reaped."""

    def __init__(self) -> None:
        self.children: list[Child] = []

    @staticmethod
    def python(*args: str | os.PathLike[str]) -> list[str]:
        return [sys.executable, *map(str, args)]

    def start(
        self,
        argv: list[str],
        *,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
    ) -> Child:
        child = Child(argv, env=env, cwd=cwd)
        self.children.append(child)
        return child

    def start_python(self, code: str, *args: str, **kw: Any) -> Child:
        return self.start(self.python("-c", code, *args), **kw)

    def start_script(self, script: str | os.PathLike[str], *args: str, **kw: Any) -> Child:
        return self.start(self.python(script, *args), **kw)

    def start_ready(
        self, argv: list[str], ready: str | None = None, timeout: float = DEFAULT_TIMEOUT, **kw
    ) -> Child:
        """Start a child and wait until it prints ``ready`` (any line if None)."""
        child = self.start(argv, **kw)
        child.wait_for_line(ready, timeout)
        return child

    def run(
        self,
        argv: list[str],
        *,
        input: bytes | str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        **kw: Any,
    ) -> Result:
        child = self.start(argv, **kw)
        if input is not None:
            with contextlib.suppress(BrokenPipeError):
                child.send(input)
        return child.finish(timeout)

    def run_python(self, code: str, *args: str, **kw: Any) -> Result:
        return self.run(self.python("-c", code, *args), **kw)

    def run_script(self, script: str | os.PathLike[str], *args: str, **kw: Any) -> Result:
        return self.run(self.python(script, *args), **kw)

    def kill_all(self) -> None:
        for child in self.children:
            child.kill()
            child._stderr.close()
        self.children.clear()


@pytest.fixture
def procs(make_key: KeyRegistry) -> Iterator[ChildProcesses]:
    # Depends on make_key so that children are killed before the keys are cleaned up.
    manager = ChildProcesses()
    try:
        yield manager
    finally:
        manager.kill_all()
