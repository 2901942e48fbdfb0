"""docs/qt-compat.md stays true: its examples run against PySide6, its tables name every member.

Examples are the fenced ``python`` blocks preceded by ``<!-- example: <name>/<side> -->`` (side
``qt`` or ``python``); the two blocks of one name form a pair. The block that comes first in the
document runs first, in a child process, and prints one line when it is ready; the second block
then runs to completion in another child, with that line as ``sys.argv[1]``; finally the first
gets a newline on stdin and must exit with status 0 too. The examples check what they read with
``assert``, so a wrong byte fails the test. Key names ``"myapp-<x>"`` become ``make_key("<x>")``
names, so that every example gets unique keys and its leftovers are cleaned up (the POSIX
example leaves Qt's segment behind, as Qt always does).
"""

from __future__ import annotations

import json
import re

import pytest
import qsharedmem
from support import ROOT
from support.keys import KeyRegistry
from support.processes import ChildProcesses

DOC = ROOT / "docs" / "qt-compat.md"
EXAMPLE = re.compile(
    r"<!-- example: (?P<name>[\w-]+)/(?P<side>qt|python) -->\s*```python\n(?P<code>.*?)```",
    re.DOTALL,
)
KEY_LITERAL = re.compile(r'"myapp-([\w-]+)"')


def doc_text() -> str:
    return DOC.read_text(encoding="utf-8")


def examples() -> dict[str, list[tuple[str, str]]]:
    """name → [(side, code), ...] in document order."""
    found: dict[str, list[tuple[str, str]]] = {}
    for match in EXAMPLE.finditer(doc_text()):
        found.setdefault(match["name"], []).append((match["side"], match["code"]))
    return found


EXAMPLES = examples()


def test_the_guide_has_an_example_for_every_key_kind_and_for_passing_keys() -> None:
    assert set(EXAMPLES) == {"legacy", "posix", "sysv", "passing"}
    for name, blocks in EXAMPLES.items():
        assert sorted(side for side, _ in blocks) == ["python", "qt"], name


@pytest.mark.parametrize("name", list(EXAMPLES))
def test_example_runs_against_pyside6(
    name: str, make_key: KeyRegistry, procs: ChildProcesses
) -> None:
    def with_test_keys(code: str) -> str:
        return KEY_LITERAL.sub(lambda m: json.dumps(make_key(m[1])), code)

    (first_side, first_code), (second_side, second_code) = EXAMPLES[name]
    first = procs.start(procs.python("-c", with_test_keys(first_code)))
    ready = first.wait_for_line()
    second = procs.run_python(with_test_keys(second_code), ready)
    assert second.returncode == 0, f"{second_side} side of {name!r}:\n{second.stderr}"
    first.send("\n")
    result = first.finish()
    assert result.returncode == 0, f"{first_side} side of {name!r}:\n{result.stderr}"


def section(number: int) -> str:
    text = doc_text()
    start = text.index(f"\n## {number}. ")
    end = text.find("\n## ", start + 1)
    return text[start:end]


def public_names(cls: type) -> set[str]:
    return {name for name in dir(cls) if not name.startswith("_")}


def missing_from(text: str, names: set[str]) -> list[str]:
    """Names that the text does not mention as code: `name` or `name(...`."""
    return sorted(n for n in names if not re.search("`" + re.escape(n) + "[`(]", text))


def test_the_shared_memory_table_names_every_member_of_both_implementations() -> None:
    from PySide6.QtCore import QObject
    from PySide6.QtCore import QSharedMemory as QtSharedMemory

    qt_own = public_names(QtSharedMemory) - public_names(QObject)
    assert {"attach", "create", "lock"} <= qt_own
    names = public_names(qsharedmem.QSharedMemory) | qt_own
    assert missing_from(section(1), names) == []


def test_the_native_ipc_key_table_names_every_member_of_both_implementations() -> None:
    from PySide6.QtCore import QNativeIpcKey as QtNativeIpcKey

    names = public_names(qsharedmem.QNativeIpcKey) | public_names(QtNativeIpcKey)
    assert {"toString", "fromString", "Type"} <= names
    assert missing_from(section(2), names) == []
