"""QNativeIpcKey: Qt's tst_qnativeipckey ported, and differential tests against PySide6.

Part 1 ports ``tests/auto/corelib/ipc/qnativeipckey/tst_qnativeipckey.cpp`` test by test
(qt-semantics §7.1). Part 2 runs the same inputs, and many more, through PySide6's
``QNativeIpcKey`` in the same process and requires identical results. Part 3 covers the Python
surface (overloads, errors, ``repr``, copying, pickling). Part 4 checks the directories Qt's key
derivation uses (``$TMPDIR``, ``$XDG_RUNTIME_DIR``) in child processes, against Qt.

Two PySide6 6.12 artefacts shape these tests:

* Converting a Python ``str`` to ``QString`` drops a *leading* U+FEFF (PySide6 decodes it as
  UTF-8 text with a byte-order mark), so Qt never sees it. Inputs starting with U+FEFF are not
  used for comparisons; ``test_pyside6_drops_leading_bom`` documents the artefact.
* Every call of a ``void`` method (``setType``, ``setNativeKey``, ``swap``, ...) drops one
  reference to ``None`` on CPython 3.11; a few thousand such calls abort the interpreter. The
  PySide6 side of these tests therefore calls ``void`` methods only a handful of times.
"""

from __future__ import annotations

import copy
import json
import os
import pickle
import pwd
import random
import stat
from pathlib import Path
from typing import Any

import pytest
import qsharedmem
from PySide6.QtCore import QNativeIpcKey as QtKey
from PySide6.QtCore import QSharedMemory as QtSharedMemory
from qsharedmem import QNativeIpcKey
from qsharedmem._enums import KeyType
from support import DATA_DIR
from support.processes import ChildProcesses, child_env

Type = QNativeIpcKey.Type


def qt_type(value: int) -> Any:
    return QtKey.Type(value)


def value_of(key_type: Any) -> int:
    """The integer value of either implementation's key type."""
    return int(getattr(key_type, "value", key_type))


def legacy_key(legacy: str, type_value: int) -> QNativeIpcKey:
    """Qt's ``makeLegacyKey``: ``QSharedMemory::legacyNativeKey`` made by Qt, carried over in
    its string form (so this module depends on nothing but QNativeIpcKey)."""
    qt = QtSharedMemory.legacyNativeKey(legacy, qt_type(type_value))
    key = QNativeIpcKey.fromString(qt.toString())
    assert key.toString() == qt.toString()
    return key


def state(key: Any) -> tuple[bool, str, int, str, bool]:
    """What both implementations can be compared on."""
    return key.isValid(), key.nativeKey(), value_of(key.type()), key.toString(), key.isEmpty()


# ---------------------------------------------------------------------------------------------
# Part 1: tst_qnativeipckey


def test_default_types() -> None:
    assert Type.SystemV == ord("Q")
    assert QNativeIpcKey.DefaultTypeForOs == Type.PosixRealtime
    assert QNativeIpcKey.legacyDefaultTypeForOs() == Type.SystemV
    assert value_of(QtKey.DefaultTypeForOs) == QNativeIpcKey.DefaultTypeForOs
    assert value_of(QtKey.legacyDefaultTypeForOs()) == QNativeIpcKey.legacyDefaultTypeForOs()
    for name in ("SystemV", "PosixRealtime", "Windows"):
        assert getattr(Type, name) == value_of(getattr(QtKey.Type, name))


def test_construct() -> None:
    invalid = QNativeIpcKey(Type(0))
    assert not invalid.isValid()
    assert invalid.isEmpty()

    def check_default(key: QNativeIpcKey) -> None:
        assert key.isValid()
        assert key.isEmpty()
        assert key.nativeKey() == ""
        assert key.type() == QNativeIpcKey.DefaultTypeForOs

    key = QNativeIpcKey()
    check_default(key)
    check_default(QNativeIpcKey(key))  # copy
    check_default(copy.copy(key))
    moved = QNativeIpcKey(key)
    check_default(moved)
    assigned = QNativeIpcKey()
    assigned.setType(Type(0))
    assigned.setNativeKey("something else")
    assigned = QNativeIpcKey(key)  # copy-assignment
    check_default(assigned)

    def check_dummy(key: QNativeIpcKey) -> None:
        assert key.isValid()
        assert not key.isEmpty()
        assert key.nativeKey() == "dummy"
        assert key.type() == QNativeIpcKey.DefaultTypeForOs

    dummy = QNativeIpcKey("dummy")
    check_dummy(dummy)
    check_dummy(QNativeIpcKey(dummy))
    check_dummy(copy.deepcopy(dummy))
    assigned = QNativeIpcKey()
    assigned.setType(Type(0))
    assigned.setNativeKey("something else")
    assigned = QNativeIpcKey(dummy)
    check_dummy(assigned)


def test_get_set_check() -> None:
    key = QNativeIpcKey("key1", Type.Windows)
    assert key.isValid()
    assert not key.isEmpty()
    assert key.nativeKey() == "key1"
    assert key.type() == Type.Windows

    key.setType(Type.SystemV)
    assert key.isValid()
    assert key.type() == Type.SystemV

    key.setNativeKey("key2")
    assert key.nativeKey() == "key2"
    assert key.type() == Type.SystemV


def test_equality() -> None:
    key1 = QNativeIpcKey()
    key2 = QNativeIpcKey()
    assert key1 == key2
    assert (key1 != key2) is False

    key1.setNativeKey("key1")
    assert key1 != key2
    assert (key1 == key2) is False

    key2.setType(Type(0))
    assert key1 != key2
    key2.setNativeKey(key1.nativeKey())
    assert key1 != key2
    key2.setType(QNativeIpcKey.DefaultTypeForOs)
    assert key1 == key2

    key3 = legacy_key("key1", value_of(QNativeIpcKey.DefaultTypeForOs))
    assert key3 != key1
    assert key3 != key2
    key1 = QNativeIpcKey(key3)
    assert key3 == key1
    # Same native key and type, but setNativeKey() dropped the legacy key.
    key1.setNativeKey(key3.nativeKey())
    assert key3 != key1
    assert (key3 == key1) is False


def test_hash() -> None:
    key1 = QNativeIpcKey()
    key2 = QNativeIpcKey(key1)
    assert hash(key1) == hash(key2)
    key3 = QNativeIpcKey("/x", Type(84))
    assert hash(key3) == hash(copy.copy(key3))
    # The legacy key is not hashed (qHash), which keeps hash() consistent with ==.
    legacy = legacy_key("demo", 0x51)
    plain = QNativeIpcKey(legacy.nativeKey(), legacy.type())
    assert legacy != plain
    assert hash(legacy) == hash(plain)
    assert len({legacy, plain, QNativeIpcKey(legacy)}) == 2


def test_swap() -> None:
    key1 = QNativeIpcKey("key1", Type.PosixRealtime)
    key1.swap(key1)
    assert key1.nativeKey() == "key1"
    assert key1.type() == Type.PosixRealtime

    key2 = QNativeIpcKey("key2", Type.Windows)
    key1.swap(key2)
    assert key1.nativeKey() == "key2"
    assert key1.type() == Type.Windows
    assert key2.nativeKey() == "key1"
    assert key2.type() == Type.PosixRealtime

    legacy = legacy_key("key3", 0x51)
    legacy_copy = QNativeIpcKey(legacy)
    key1.swap(legacy)
    assert key1 == legacy_copy
    assert legacy == QNativeIpcKey("key2", Type.Windows)
    assert key1.toString().endswith("?legacyKey=key3")


# The rows of tst_qnativeipckey and their extensions, shared with the Rust tests of src/key.rs.
QT_KEYS: dict[str, Any] = json.loads((DATA_DIR / "qt_keys.json").read_text(encoding="utf-8"))

TO_STRING_ROWS: list[tuple[str, str, str]] = [tuple(row) for row in QT_KEYS["to_string"]]

PREFIXES: list[tuple[str, int]] = [tuple(row) for row in QT_KEYS["prefixes"]]

PREFIXED_ROWS = [
    pytest.param(prefix, type_value, native, encoded, id=f"{prefix}-{name}")
    for prefix, type_value in PREFIXES
    for name, native, encoded in TO_STRING_ROWS
]


def test_to_string_invalid() -> None:
    assert QNativeIpcKey(Type(0)).toString() == ""
    assert QNativeIpcKey("x", Type(0)).toString() == ""
    assert QtKey(qt_type(0)).toString() == ""


@pytest.mark.parametrize(("prefix", "type_value", "native", "encoded"), PREFIXED_ROWS)
def test_to_string(prefix: str, type_value: int, native: str, encoded: str) -> None:
    key = QNativeIpcKey(native, Type(type_value))
    assert key.toString() == f"{prefix}:{encoded}"
    assert key.toString() == QtKey(native, qt_type(type_value)).toString()


@pytest.mark.parametrize(("prefix", "type_value", "native", "encoded"), PREFIXED_ROWS)
def test_from_string(prefix: str, type_value: int, native: str, encoded: str) -> None:
    key = QNativeIpcKey.fromString(f"{prefix}:{encoded}")
    assert key.isValid()
    assert key.type() == type_value
    assert key.nativeKey() == native
    assert key == QNativeIpcKey(native, Type(type_value))


FROM_STRING_EXTRA_ROWS: list[tuple[str, str, str, int]] = [
    tuple(row) for row in QT_KEYS["from_string"]
]


@pytest.mark.parametrize(
    ("text", "native", "type_value"),
    [
        pytest.param(text, native, value, id=name)
        for name, text, native, value in FROM_STRING_EXTRA_ROWS
    ],
)
def test_from_string_extra(text: str, native: str, type_value: int) -> None:
    key = QNativeIpcKey.fromString(text)
    assert key.isValid()
    assert key == QNativeIpcKey(native, Type(type_value))
    qt = QtKey.fromString(text)
    assert state(key) == state(qt)


INVALID_STRINGS: list[tuple[str, str]] = [tuple(row) for row in QT_KEYS["from_string_invalid"]]


@pytest.mark.parametrize("text", [pytest.param(text, id=name) for name, text in INVALID_STRINGS])
def test_from_string_invalid(text: str) -> None:
    key = QNativeIpcKey.fromString(text)
    assert not key.isValid()
    assert key.isEmpty()
    assert key == QNativeIpcKey(Type(0))
    assert not QtKey.fromString(text).isValid()


LEGACY_ROWS: list[tuple[str, str]] = [tuple(row) for row in QT_KEYS["legacy_keys"]]

# What QUrl prints for a query "legacyKey=<legacy>" set in DecodedMode, with RemoveScheme |
# RemoveAuthority | DecodeReserved (the expectation tst_qnativeipckey::legacyKeys builds).
LEGACY_QUERY = {"%": "%25", "#": "%23", "&": "%26", "=": "%3D"}


@pytest.mark.parametrize("type_value", [0x100, 0x51], ids=["DefaultTypeForOs", "legacyDefault"])
@pytest.mark.parametrize("legacy", [pytest.param(text, id=name) for name, text in LEGACY_ROWS])
def test_legacy_keys(type_value: int, legacy: str) -> None:
    key = legacy_key(legacy, type_value)
    assert key.type() == type_value

    text = key.toString()
    parsed = QNativeIpcKey.fromString(text)
    assert parsed == key
    assert (parsed != key) is False
    if legacy:
        expected = "?legacyKey=" + "".join(LEGACY_QUERY.get(c, c) for c in legacy)
        assert expected in text
    else:
        assert "?" not in text


# ---------------------------------------------------------------------------------------------
# Part 2: differential tests against PySide6

CONSTRUCT_KEYS: list[str] = [
    "",
    "demo",
    "/demo",
    "Global\\demo",
    "a b",
    "tab\there",
    "line\nfeed",
    "cr\rreturn",
    "nul\x00byte",
    "del\x7fchar",
    "c1\x80\x9fcontrols",
    "a=b&c",
    "%",
    "%%",
    "%25",
    "%41",
    "%zz",
    "?",
    "#",
    "?#&=",
    "//",
    "///x",
    "//host/path",
    "/a//b",
    ":",
    "a:b",
    "@",
    "user@host:80",
    "[]{}<>|^`\"'\\",
    "!$&'()*+,;=",
    "~-._",
    "\u00e9t\u00e9",
    "Noël",
    "日本語",
    "\U0001f600 emoji",
    "a\ufeffb",
    "\ufffd\uffff\ufdd0",
    "x" * 250,
    "/" + "y/" * 120,
    "systemv:/tmp/x?legacyKey=y",
    "mixed %41 ? # \u00e9 \t //",
]

CONSTRUCT_TYPES = [0x100, 0x51, 84, 0x101, 1, 255, 0]


@pytest.mark.parametrize("type_value", CONSTRUCT_TYPES)
def test_construct_vs_pyside6(type_value: int) -> None:
    assert len(CONSTRUCT_KEYS) >= 30
    for native in CONSTRUCT_KEYS:
        ours = QNativeIpcKey(native, Type(type_value))
        qt = QtKey(native, qt_type(type_value))
        assert state(ours) == state(qt), native
        assert ours.nativeKey() == native
        # The string form parses back to the same key in both implementations.
        if type_value:
            assert QNativeIpcKey.fromString(ours.toString()) == ours
            assert state(QNativeIpcKey.fromString(ours.toString())) == state(
                QtKey.fromString(qt.toString())
            )


def test_pyside6_drops_leading_bom() -> None:
    # PySide6's str -> QString conversion eats a leading U+FEFF; QNativeIpcKey keeps it, as Qt's
    # C++ QNativeIpcKey does with a QString that starts with U+FEFF.
    assert QtKey("\ufeffx").nativeKey() == "x"
    assert QNativeIpcKey("\ufeffx").nativeKey() == "\ufeffx"
    assert QNativeIpcKey("\ufeffx").toString() == "posix:\ufeffx"
    # Inside the string both keep it, and Qt's own parsing of an escaped one agrees.
    assert QtKey("a\ufeffx").nativeKey() == QNativeIpcKey("a\ufeffx").nativeKey() == "a\ufeffx"
    text = "posix:%EF%BB%BFx"
    assert state(QNativeIpcKey.fromString(text)) == state(QtKey.fromString(text))


FROM_STRING_CASES: list[str] = [
    "posix:/foo",
    "POSIX:/foo",
    "PoSiX:/foo",
    "systemv:/tmp/key",
    "SystemV-84:/tmp/key",
    "systemv-0000000000000000000001:x",
    "systemv-+5:x",
    "systemv+5:x",
    "windows:Global\\x",
    "posix:",
    "posix:?",
    "posix:#",
    "posix:/a#b?c",
    "posix:/a?b#?c",
    "posix://",
    "posix:///",
    "posix:////x",
    "posix://@/foo",
    "posix://:/foo",
    "posix://@:/foo",
    "posix://:@/foo",
    "posix://@@/foo",
    "posix://:0/foo",
    "posix://:99999/foo",
    "posix://[::1]/foo",
    "posix://%41/foo",
    "posix://\u00ad/foo",
    "posix:/a%zz%41",
    "posix:/a%4",
    "posix:%",
    "posix:/%E2%82%41",
    "posix:/%E2%82",
    "posix:/%ED%A0%80",
    "posix:/%C0%80",
    "posix:/%EF%BF%BF",
    "posix:/%EF%B7%90",
    "posix:/%F4%90%80%80",
    "posix:/%C3\u00e9",
    "posix:/\uffff",
    "posix:%EF%BB%BFx",
    "posix:%00%0a%7f",
    "posix:a\tb\x00c",
    "posix:/a?legacyKey=x",
    "posix:/a?legacyKey=",
    "posix:/a?legacyKey",
    "posix:/a?legacyKey=x&legacyKey=y",
    "posix:/a?legacyKey=x&",
    "posix:/a?&",
    "posix:/a?&legacyKey=x",
    "posix:/a?=x",
    "posix:/a?legacykey=x",
    "posix:/a?%6CegacyKey=b",
    "posix:/a?%EF%BB%BFlegacyKey=b",
    "posix:/a?legacyKey=%EF%BB%BFx",
    "posix:/a?legacyKey=\ufeffx",
    "posix:/a?legacyKey=x%EF%BB%BF",
    "posix:/a?legacyKey=a%00b",
    "posix:/a?legacyKey=%EF%BF%BF",
    "posix:/a?legacyKey=%E2%82%41",
    "posix:/a?legacyKey=%zz%41",
    "posix:/a?legacyKey=a+b%20c",
    "posix:/a?legacyKey=a=b",
    "posix:/a?legacyKey=a%3Db%26c",
    "posix:/a?legacyKey=?/x",
    "posix:/a?legacyKey=\x7f\x01",
    "systemv:/tmp/qipc_sharedmemory_demo89e495e7941cf9e40e6980d14a16bf023ccd4c91?legacyKey=demo",
    "posix?:/a",
    "pos#ix:/a",
    "/posix:x",
    ":",
    "-posix:x",
    "1posix:x",
    "posi x:/a",
]

# fmt: off
_ATOMS = [
    "%", "%2", "%25", "%41", "%6c", "%C4%80", "%E2%82", "%E2%82%AC", "%EF%BB%BF", "%EF%BF%BF",
    "%ED%A0%80", "%F0%9F%98%80", "%C0%AF", "%zz", "%0a", "%00", "%7F", "%3D", "%26", "%23",
    "%3F", "%2F", "%80", "%FF", "?", "#", "&", "=", ":", "/", "//", "@", "[", "]", "legacyKey",
    "legacyKey=", "&legacyKey=", "posix:", "systemv:", "-", "+", ".", "0", "1", "a", "Z", " ",
    "\t", "\n", "\x7f", "\x00", "\u00e9", "\u00a0", "\ufeff", "\uffff", "\U0001f600", "\\",
    "'", '"', "~", "^", "{", "|", "}", "`", "<", ">", "!", "$", "(", ")", "*", ",", ";",
]
_PREFIXES = [
    "posix:", "systemv:", "systemv-1:", "systemv-84:", "systemv-255:", "windows:", "POSIX:",
    "SystemV-009:", "posix://", "posix:///", "posix://@", "posix://:", "", "junk:",
    "systemv-0:", "systemv-256:", "posix:/a?", "systemv:/a?legacyKey=", "posix:?legacyKey=",
]
# fmt: on


def fuzz_strings(count: int, seed: int = 20261127) -> list[str]:
    """Random key strings (fixed seed), built from the pieces that matter to QUrl."""
    rng = random.Random(seed)
    strings = []
    while len(strings) < count:
        text = rng.choice(_PREFIXES) + "".join(rng.choice(_ATOMS) for _ in range(rng.randint(0, 8)))
        if rng.random() < 0.25:
            text += "?" + "".join(rng.choice(_ATOMS) for _ in range(rng.randint(0, 5)))
        if not text.startswith("\ufeff"):  # see the module docstring
            strings.append(text)
    return strings


def test_from_string_vs_pyside6() -> None:
    texts = FROM_STRING_CASES + fuzz_strings(2500)
    ours = [QNativeIpcKey.fromString(text) for text in texts]
    qts = [QtKey.fromString(text) for text in texts]
    valid = 0
    for text, key, qt in zip(texts, ours, qts, strict=True):
        assert state(key) == state(qt), text
        valid += qt.isValid()
        # Re-parsing the string form: equal in ours exactly when it is in Qt.
        assert (QNativeIpcKey.fromString(key.toString()) == key) == (
            QtKey.fromString(qt.toString()) == qt
        ), text
    assert valid > 300, "the fuzz strings should parse often enough to be useful"

    # == and != relate the same pairs (legacy keys included) in both implementations.
    rng = random.Random(7)
    pairs = [(i, i + 1) for i in range(len(texts) - 1)]
    pairs += [(rng.randrange(len(texts)), rng.randrange(len(texts))) for _ in range(3000)]
    for i, j in pairs:
        assert (ours[i] == ours[j]) == (qts[i] == qts[j]), (texts[i], texts[j])
        assert (ours[i] != ours[j]) == (qts[i] != qts[j]), (texts[i], texts[j])


EQUIVALENT_GROUPS: list[list[str]] = [
    ["posix:/a", "POSIX:/a", "posix:%2Fa", "posix:///a", "posix://@:/a", "posix:/a?", "posix:/a#x"],
    ["posix:/a?legacyKey=x", "posix:/a?legacyKey=%78", "posix:/a?legacyKey=y&legacyKey=x"],
    ["posix:/b?legacyKey=", "posix:/b?legacyKey", "posix:/b"],
    ["systemv-81:x", "systemv:x", "SYSTEMV-0081:x"],
]


def test_equality_vs_pyside6() -> None:
    for group in EQUIVALENT_GROUPS:
        for a in group:
            for b in group:
                assert QNativeIpcKey.fromString(a) == QNativeIpcKey.fromString(b), (a, b)
                assert QtKey.fromString(a) == QtKey.fromString(b), (a, b)
    firsts = [QNativeIpcKey.fromString(group[0]) for group in EQUIVALENT_GROUPS]
    for i, a in enumerate(firsts):
        for j, b in enumerate(firsts):
            assert (a == b) == (i == j)


def test_set_type_on_legacy_data_vs_pyside6() -> None:
    # A key with Qt's private legacy part (even an empty one) ignores setType(). This calls a
    # PySide6 void method, so only a few times (see the module docstring).
    cases = {
        "systemv:/a?legacyKey=x": 0x51,
        "systemv:/a?legacyKey=": 0x51,
        "systemv:/a?legacyKey": 0x51,
        "systemv:/a?": 0x100,
        "systemv:/a": 0x100,
    }
    for text, expected in cases.items():
        ours = QNativeIpcKey.fromString(text)
        qt = QtKey.fromString(text)
        ours.setType(Type.PosixRealtime)
        qt.setType(QtKey.Type.PosixRealtime)
        assert value_of(qt.type()) == expected, text
        assert ours.type() == expected, text

    legacy = legacy_key("demo", 0x51)
    legacy.setNativeKey("other")
    assert legacy.toString() == "systemv:other"
    legacy.setType(Type.PosixRealtime)
    assert legacy.type() == Type.SystemV  # still frozen after setNativeKey, as in Qt


# ---------------------------------------------------------------------------------------------
# Part 3: the Python surface


def test_class_attributes() -> None:
    assert QNativeIpcKey.Type is KeyType
    assert QNativeIpcKey.__name__ == "QNativeIpcKey"
    assert QNativeIpcKey.__module__ == "qsharedmem"
    assert qsharedmem.QNativeIpcKey is QNativeIpcKey
    assert QNativeIpcKey.DefaultTypeForOs is Type.PosixRealtime
    assert QNativeIpcKey.legacyDefaultTypeForOs() is Type.SystemV
    assert QNativeIpcKey().legacyDefaultTypeForOs() is Type.SystemV
    assert QNativeIpcKey.Type(84) is Type(84)
    assert QNativeIpcKey("x", Type(84)).type() is Type(84)
    assert str(QNativeIpcKey().type()) == "Type.PosixRealtime"
    # fromString is static, callable on an instance as in PySide6.
    assert QNativeIpcKey().fromString("posix:/a").nativeKey() == "/a"


def test_constructor_overloads() -> None:
    assert QNativeIpcKey() == QNativeIpcKey("", Type.PosixRealtime)
    assert QNativeIpcKey(Type.SystemV) == QNativeIpcKey("", Type.SystemV)
    assert QNativeIpcKey("k") == QNativeIpcKey("k", QNativeIpcKey.DefaultTypeForOs)
    assert QNativeIpcKey("k", type=Type.SystemV).type() == Type.SystemV
    assert QNativeIpcKey("k", 84).type() is Type(84)  # plain ints work: the enum is an IntEnum
    assert QNativeIpcKey(0x51) == QNativeIpcKey(Type.SystemV)
    # Beyond PySide6: `type` may be given by keyword alone, and None means the default.
    assert QNativeIpcKey(type=Type.SystemV) == QNativeIpcKey(Type.SystemV)
    assert QNativeIpcKey("k", None) == QNativeIpcKey("k")
    # A copy is independent of the original.
    original = QNativeIpcKey("k")
    duplicate = QNativeIpcKey(original)
    duplicate.setNativeKey("other")
    assert original.nativeKey() == "k"
    # None is a null string, as PySide6 reads it.
    assert QNativeIpcKey(None) == QNativeIpcKey()
    assert QNativeIpcKey(None, Type.SystemV) == QNativeIpcKey(Type.SystemV)
    assert state(QNativeIpcKey(None, Type.SystemV)) == state(QtKey(None, QtKey.Type.SystemV))
    key = QNativeIpcKey("k")
    key.setNativeKey(None)
    assert key.nativeKey() == ""
    assert not QNativeIpcKey.fromString(None).isValid()


@pytest.mark.parametrize(
    ("call", "error"),
    [
        pytest.param(lambda: QNativeIpcKey(3.5), TypeError, id="float"),
        pytest.param(lambda: QNativeIpcKey(b"k"), TypeError, id="bytes"),
        pytest.param(lambda: QNativeIpcKey(True), TypeError, id="bool"),
        pytest.param(lambda: QNativeIpcKey([]), TypeError, id="list"),
        pytest.param(lambda: QNativeIpcKey("k", "posix"), TypeError, id="str-type"),
        pytest.param(lambda: QNativeIpcKey("k", 1.0), TypeError, id="float-type"),
        pytest.param(lambda: QNativeIpcKey("k", 0x10000), ValueError, id="type-too-big"),
        pytest.param(lambda: QNativeIpcKey("k", -1), ValueError, id="type-negative"),
        pytest.param(lambda: QNativeIpcKey(0x10000), ValueError, id="type-only-too-big"),
        pytest.param(
            lambda: QNativeIpcKey(QNativeIpcKey(), Type.SystemV), TypeError, id="copy-type"
        ),
        pytest.param(lambda: QNativeIpcKey(Type.SystemV, Type.SystemV), TypeError, id="type-type"),
        pytest.param(lambda: QNativeIpcKey(k="k"), TypeError, id="k-keyword"),
        pytest.param(
            lambda: QNativeIpcKey("a", Type.SystemV, Type.SystemV), TypeError, id="3-args"
        ),
        pytest.param(lambda: QNativeIpcKey().setNativeKey(1), TypeError, id="setNativeKey-int"),
        pytest.param(lambda: QNativeIpcKey().setNativeKey(), TypeError, id="setNativeKey-none"),
        pytest.param(lambda: QNativeIpcKey().setType("SystemV"), TypeError, id="setType-str"),
        pytest.param(lambda: QNativeIpcKey().setType(65536), ValueError, id="setType-range"),
        pytest.param(lambda: QNativeIpcKey().setType(QtKey.Type.SystemV), TypeError, id="qt-enum"),
        pytest.param(lambda: QNativeIpcKey.fromString(1), TypeError, id="fromString-int"),
        pytest.param(lambda: QNativeIpcKey.fromString(b"posix:"), TypeError, id="fromString-bytes"),
        pytest.param(lambda: QNativeIpcKey().swap("k"), TypeError, id="swap-str"),
        pytest.param(lambda: QNativeIpcKey().swap(QtKey()), TypeError, id="swap-pyside6"),
        pytest.param(lambda: QNativeIpcKey().nativeKey(1), TypeError, id="nativeKey-arg"),
        pytest.param(lambda: QNativeIpcKey() < QNativeIpcKey(), TypeError, id="ordering"),
        pytest.param(
            lambda: QNativeIpcKey().__setstate__(("x", 70000, None)),
            OverflowError,
            id="setstate-range",
        ),
        pytest.param(lambda: QNativeIpcKey().__setstate__("x"), TypeError, id="setstate-shape"),
    ],
)
def test_argument_errors(call: Any, error: type[Exception]) -> None:
    with pytest.raises(error):
        call()


def test_lone_surrogates_are_rejected() -> None:
    # A str with a lone surrogate has no UTF-8 form; PySide6 silently drops the surrogate.
    for call in (
        lambda: QNativeIpcKey("a\ud800"),
        lambda: QNativeIpcKey().setNativeKey("a\ud800"),
        lambda: QNativeIpcKey.fromString("posix:a\ud800"),
    ):
        with pytest.raises(UnicodeEncodeError):
            call()
    assert QtKey("a\ud800b").nativeKey() == "ab"


def test_comparison_with_other_types() -> None:
    # As in PySide6, a str compares as QNativeIpcKey(str), i.e. with type DefaultTypeForOs.
    for text, type_value in (("x", 0x100), ("x", 0x51), ("", 0x100), ("/a", 0)):
        ours = QNativeIpcKey(text, Type(type_value))
        qt = QtKey(text, qt_type(type_value))
        for other in ("x", "", "/a", "y"):
            assert (ours == other) == (qt == other) == (other == ours)
            assert (ours != other) == (qt != other) == (other != ours)
    assert QNativeIpcKey("x") == "x"
    assert QNativeIpcKey("x", Type.SystemV) != "x"
    # Anything else is simply unequal.
    key = QNativeIpcKey("x")
    assert key != 3
    assert key != None  # noqa: E711
    assert key != QtKey("x")
    assert key.__eq__(3) is NotImplemented
    assert (QtKey("x") == 3) is False


def test_repr() -> None:
    assert repr(QNativeIpcKey("/demo")) == (
        "QNativeIpcKey('/demo', QNativeIpcKey.Type.PosixRealtime)"
    )
    assert repr(QNativeIpcKey("x", Type(84))) == "QNativeIpcKey('x', QNativeIpcKey.Type(84))"
    assert repr(QNativeIpcKey(Type(0))) == "QNativeIpcKey('', QNativeIpcKey.Type(0))"
    assert repr(QNativeIpcKey("it's\n")) == (
        'QNativeIpcKey("it\'s\\n", QNativeIpcKey.Type.PosixRealtime)'
    )
    legacy = legacy_key("demo", 0x51)
    assert repr(legacy) == (
        f"QNativeIpcKey({legacy.nativeKey()!r}, QNativeIpcKey.Type.SystemV, legacyKey='demo')"
    )
    # Plain keys: the repr is an expression that rebuilds the key.
    namespace = {"QNativeIpcKey": QNativeIpcKey}
    for native in CONSTRUCT_KEYS:
        for type_value in (0x51, 0x100, 84):
            key = QNativeIpcKey(native, Type(type_value))
            assert eval(repr(key), namespace) == key


def round_trips() -> list[QNativeIpcKey]:
    frozen = QNativeIpcKey.fromString("systemv:/a?legacyKey=")
    reset = legacy_key("demo", 0x51)
    reset.setNativeKey("/b")
    return [
        QNativeIpcKey(),
        QNativeIpcKey("/x", Type(84)),
        QNativeIpcKey("\ufeff\x00%?#", Type(0)),
        QNativeIpcKey("k", Type(0x102)),
        legacy_key("demo", 0x51),
        legacy_key("a=b&c", 0x100),
        frozen,
        reset,
    ]


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_pickle(protocol: int) -> None:
    for key in round_trips():
        clone = pickle.loads(pickle.dumps(key, protocol))
        assert type(clone) is QNativeIpcKey
        assert clone == key
        assert repr(clone) == repr(key)
        # The legacy part survives exactly: setType() stays a no-op where it was one.
        clone.setType(Type.Windows)
        original = QNativeIpcKey(key)
        original.setType(Type.Windows)
        assert clone.type() == original.type()


def test_copy_and_deepcopy() -> None:
    for key in round_trips():
        for clone in (copy.copy(key), copy.deepcopy(key), QNativeIpcKey(key)):
            assert clone is not key
            assert clone == key
            clone.setNativeKey("changed")
            assert key.nativeKey() != "changed"
    holder = {"key": legacy_key("demo", 0x51)}
    deep = copy.deepcopy(holder)
    assert deep == holder
    assert deep["key"] is not holder["key"]


def test_swap_with_legacy_and_self() -> None:
    legacy = legacy_key("demo", 0x51)
    plain = QNativeIpcKey("/p", Type.PosixRealtime)
    legacy.swap(plain)
    # The legacy part moves with the key: setType() is now a no-op on `plain` only.
    legacy.setType(Type.Windows)
    plain.setType(Type.Windows)
    assert legacy.type() == Type.Windows
    assert plain.type() == Type.SystemV
    assert plain.toString().endswith("?legacyKey=demo")
    plain.swap(plain)
    assert plain.toString().endswith("?legacyKey=demo")


# ---------------------------------------------------------------------------------------------
# Part 4: the directories, in child processes with their own environment

# The child prints, as JSON, Qt's and qsharedmem's view of the directories and of the keys
# derived in them: tempPath() / legacy SystemV keys, RuntimeLocation / new SystemV keys.
CHILD = r"""
import json, os, stat, sys
which = sys.argv[1]
if which == "qt":
    from PySide6.QtCore import QDir, QNativeIpcKey, QSharedMemory, QStandardPaths
    runtime = QStandardPaths.writableLocation(QStandardPaths.StandardLocation.RuntimeLocation)
    temp = QDir.tempPath()
else:
    from qsharedmem import QNativeIpcKey, QSharedMemory
    runtime = temp = None
SysV = QNativeIpcKey.Type.SystemV
safe = QSharedMemory.platformSafeKey("key", SysV)
legacy = QSharedMemory.legacyNativeKey("key", SysV)
mode = None
probe = sys.argv[2]
if os.path.lexists(probe):
    mode = oct(stat.S_IMODE(os.lstat(probe).st_mode))
print(json.dumps({
    "runtime": runtime, "temp": temp, "safe": safe.nativeKey(), "legacy": legacy.nativeKey(),
    "legacy_string": legacy.toString(), "probe_mode": mode,
}))
"""

LEGACY_NAME = "qipc_sharedmemory_key" + "a62f2225bf70bfaccbc7f1ef2a397836717377de"


def run_child(
    procs: ChildProcesses, which: str, probe: Path, cwd: Path, **env: str | None
) -> dict[str, Any]:
    environment = child_env()
    for name, value in env.items():
        if value is None:
            environment.pop(name, None)
        else:
            environment[name] = value
    result = procs.run_python(CHILD, which, str(probe), env=environment, cwd=str(cwd))
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def make_dir(path: Path, kind: str, scratch: Path) -> None:
    if kind == "dir0700":
        path.mkdir(mode=0o700)
        path.chmod(0o700)
    elif kind == "dir0755":
        path.mkdir()
        path.chmod(0o755)
    elif kind == "symlink":
        target = scratch / "target"
        target.mkdir(mode=0o700, exist_ok=True)
        target.chmod(0o700)
        path.symlink_to(target)
    elif kind == "file":
        path.write_text("")
    else:
        assert kind == "missing"


RUNTIME_CASES = [
    # (id, kind of $XDG_RUNTIME_DIR, its value relative to the scratch dir, expected dir)
    ("missing-is-created", "missing", "rt", "rt"),
    ("good", "dir0700", "rt", "rt"),
    ("trailing-slash-kept", "dir0700", "rt/", "rt/"),
    ("wrong-mode", "dir0755", "rt", "tmp/runtime-{user}"),
    ("symlink", "symlink", "rt", "tmp/runtime-{user}"),
    ("regular-file", "file", "rt", "tmp/runtime-{user}"),
    ("relative-ignored", "missing", "relative", "tmp/runtime-{user}"),
    ("unset", "missing", None, "tmp/runtime-{user}"),
    ("missing-parent", "missing", "no/such/parent", "tmp/runtime-{user}"),
]


@pytest.mark.parametrize(
    ("kind", "xdg", "expected"),
    [pytest.param(kind, xdg, expected, id=name) for name, kind, xdg, expected in RUNTIME_CASES],
)
def test_runtime_dir_vs_qt(
    procs: ChildProcesses, tmp_path: Path, kind: str, xdg: str | None, expected: str
) -> None:
    user = pwd.getpwuid(os.geteuid()).pw_name
    seen = {}
    for which in ("qt", "ours"):
        scratch = tmp_path / which
        (scratch / "tmp").mkdir(parents=True)
        probe = scratch / (xdg or "rt").rstrip("/")
        make_dir(probe, kind, scratch)
        xdg_value = xdg if xdg in (None, "relative") else f"{scratch}/{xdg}"
        found = run_child(
            procs, which, probe, scratch, XDG_RUNTIME_DIR=xdg_value, TMPDIR=f"{scratch}/tmp"
        )
        runtime = f"{scratch}/{expected.format(user=user)}"
        if which == "qt":
            assert found["runtime"] == runtime
        assert found["safe"] == f"{runtime}/key"
        assert found["legacy"] == f"{scratch}/tmp/{LEGACY_NAME}"
        # A missing directory is created 0700; an existing one is never repaired.
        assert stat.S_IMODE(Path(runtime).stat().st_mode) == 0o700
        if kind == "dir0755":
            assert found["probe_mode"] == "0o755"
        seen[which] = {
            field: found[field].replace(str(scratch), "<scratch>")
            if isinstance(found[field], str)
            else found[field]
            for field in ("safe", "legacy", "legacy_string", "probe_mode")
        }
    assert seen["ours"] == seen["qt"]


TEMP_CASES = [
    # (id, $TMPDIR relative to the scratch dir or absolute, expected temp dir)
    ("plain", "{s}/t", "{s}/t"),
    ("trailing-slash", "{s}/t/", "{s}/t"),
    ("two-trailing-slashes", "{s}/t//", "{s}/t/"),
    ("dots-and-doubled-slashes", "{s}/t/../t//x/..", "{s}/t"),
    ("nonexistent-kept", "{s}/does/not/exist", "{s}/does/not/exist"),
    ("symlink-kept", "{s}/link", "{s}/link"),
    ("relative-to-cwd", "rel/./dir", "{s}/rel/dir"),
    ("dot", ".", "{s}"),
    ("unset", None, "/tmp"),
    ("empty", "", "/tmp"),
]


@pytest.mark.parametrize(
    ("tmpdir", "expected"),
    [pytest.param(tmpdir, expected, id=name) for name, tmpdir, expected in TEMP_CASES],
)
def test_temp_path_vs_qt(
    procs: ChildProcesses, tmp_path: Path, tmpdir: str | None, expected: str
) -> None:
    (tmp_path / "t").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "t")
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    runtime.chmod(0o700)
    value = None if tmpdir is None else tmpdir.format(s=tmp_path)
    results = [
        run_child(procs, which, tmp_path, tmp_path, TMPDIR=value, XDG_RUNTIME_DIR=str(runtime))
        for which in ("qt", "ours")
    ]
    qt, ours = results
    temp = expected.format(s=tmp_path)
    assert qt["temp"] == temp
    assert qt["legacy"] == f"{temp}/{LEGACY_NAME}"  # Qt appends without cleaning again
    for field in ("safe", "legacy", "legacy_string"):
        assert ours[field] == qt[field]
