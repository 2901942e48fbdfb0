"""``python -m benchmarks.instructions [--output DIR]``: instructions per loop iteration.

Timed figures move with the machine's load; instruction counts do not. Each peer runs the
same loop, ``for _ in range(n): first(); second()`` over bound methods, under callgrind
(``valgrind --tool=callgrind``, user-space instructions) twice, with ``n`` = 1,000 and 11,000;
the difference divided by 10,000 is what one iteration costs, interpreter overhead and all,
with everything the two runs share (start-up, imports, set-up) cancelled out. The loop and
the interpreter are the same for every peer, so the ratios compare the calls alone on top of
the same floor. Hash randomisation is off (``PYTHONHASHSEED=0``), so two runs of one program
execute the same instructions.

Writes ``instructions.json`` and the "Instruction counts" section of ``results.md`` (replacing
the section if it is there) in the output directory (default: ``benchmarks/``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

SHORT, LONG = 1_000, 11_000

# name: (description, the set-up that defines `first`, `second` and `done()`)
LOOPS: dict[str, tuple[str, str]] = {
    "multiprocessing.Lock": (
        "acquire()+release()",
        "import multiprocessing\n"
        "lock = multiprocessing.Lock()\n"
        "first, second = lock.acquire, lock.release\n"
        "def done(): pass\n",
    ),
    "threading.Lock": (
        "acquire()+release()",
        "import threading\n"
        "lock = threading.Lock()\n"
        "first, second = lock.acquire, lock.release\n"
        "def done(): pass\n",
    ),
    "PySide6 POSIX": (
        "lock()+unlock()",
        "import os\n"
        "os.environ.setdefault('QT_QPA_PLATFORM', 'offscreen')\n"
        "from PySide6.QtCore import QSharedMemory\n"
        "shm = QSharedMemory(QSharedMemory.platformSafeKey(NAME))\n"
        "assert shm.create(64)\n"
        "first, second = shm.lock, shm.unlock\n"
        "def done():\n"
        "    shm.detach()\n"
        "    try:\n"
        "        os.unlink('/dev/shm/' + NAME)  # Qt leaks its POSIX segments\n"
        "    except FileNotFoundError:\n"
        "        pass\n",
    ),
    "qsharedmem POSIX": (
        "lock()+unlock()",
        "from qsharedmem import QSharedMemory\n"
        "shm = QSharedMemory(QSharedMemory.platformSafeKey(NAME))\n"
        "assert shm.create(64)\n"
        "first, second = shm.lock, shm.unlock\n"
        "def done(): shm.detach()\n",
    ),
    "PySide6 data()": (
        "data()+size()",
        "import os\n"
        "os.environ.setdefault('QT_QPA_PLATFORM', 'offscreen')\n"
        "from PySide6.QtCore import QSharedMemory\n"
        "shm = QSharedMemory(QSharedMemory.platformSafeKey(NAME))\n"
        "assert shm.create(64)\n"
        "first, second = shm.data, shm.size\n"
        "def done():\n"
        "    shm.detach()\n"
        "    try:\n"
        "        os.unlink('/dev/shm/' + NAME)\n"
        "    except FileNotFoundError:\n"
        "        pass\n",
    ),
    "qsharedmem data()": (
        "data()+size()",
        "from qsharedmem import QSharedMemory\n"
        "shm = QSharedMemory(QSharedMemory.platformSafeKey(NAME))\n"
        "assert shm.create(64)\n"
        "first, second = shm.data, shm.size\n"
        "def done(): shm.detach()\n",
    ),
}

PROGRAM = """\
import os, sys
NAME = "qsm-bench-instr-%d" % os.getpid()
SETUP
def loop(n):
    for _ in range(n):
        first(); second()
loop(int(sys.argv[1]))
done()
"""


def count(program: Path, iterations: int, workdir: Path) -> int:
    """Instructions callgrind counts for one run of ``program`` (``Ir`` of the whole run)."""
    out = workdir / f"callgrind.{program.stem}.{iterations}"
    env = dict(os.environ, PYTHONHASHSEED="0")
    result = subprocess.run(
        [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={out}",
            sys.executable,
            str(program),
            str(iterations),
        ],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"{program.stem}: {result.stderr[-2000:]}")
    match = re.search(r"refs:\s+([\d,]+)", result.stderr)
    if not match:
        raise RuntimeError(f"{program.stem}: no instruction count in {result.stderr[-500:]}")
    return int(match.group(1).replace(",", ""))


def measure(workdir: Path) -> dict[str, float]:
    per_iteration = {}
    for name, (_, setup) in LOOPS.items():
        program = workdir / (re.sub(r"\W+", "_", name) + ".py")
        program.write_text(PROGRAM.replace("SETUP", setup))
        short, long = count(program, SHORT, workdir), count(program, LONG, workdir)
        per_iteration[name] = (long - short) / (LONG - SHORT)
        print(f"{name}: {per_iteration[name]:.0f} instructions per iteration", file=sys.stderr)
    return per_iteration


def section(counts: dict[str, float], date: str) -> list[str]:
    mp, th = counts["multiprocessing.Lock"], counts["threading.Lock"]
    lines = [
        "## Instruction counts",
        "",
        f"Produced by `make bench-instr` ({date}): user-space instructions per loop iteration "
        "counted with callgrind, the difference of a 1,000- and an 11,000-iteration run of "
        "`for _ in range(n): first(); second()` over bound methods (interpreter overhead "
        "included, the same for every row). Independent of the machine's load.",
        "",
        "| loop | calls | instructions | ÷ multiprocessing.Lock | ÷ threading.Lock | ÷ PySide6 |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for name, (calls, _) in LOOPS.items():
        value = counts[name]
        qt = counts["PySide6 data()" if "data" in name else "PySide6 POSIX"]
        lines.append(
            f"| {name} | {calls} | {value:,.0f} | {value / mp:.2f} | {value / th:.2f} | "
            f"{value / qt:.2f} |"
        )
    lines.append("")
    return lines


def replace_section(markdown: Path, lines: list[str]) -> None:
    """Puts the section into ``markdown``, in place of an older one, else at the end."""
    text = markdown.read_text() if markdown.exists() else "# qsharedmem benchmarks\n"
    new = "\n".join(lines)
    start = text.find("## Instruction counts")
    if start < 0:
        text = text.rstrip("\n") + "\n\n" + new
    else:
        end = text.find("\n## ", start + 1)
        text = text[:start] + new + ("" if end < 0 else text[end + 1 :])
    markdown.write_text(text.rstrip("\n") + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.instructions", description=__doc__)
    parser.add_argument("--output", type=Path, default=Path(__file__).resolve().parent)
    args = parser.parse_args(argv)
    if shutil.which("valgrind") is None:
        print("valgrind is needed (apt install valgrind)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="qsharedmem-instr-") as tmp:
        counts = measure(Path(tmp))
    date = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "instructions.json").write_text(
        json.dumps({"date": date, "per_iteration": counts}, indent=2) + "\n"
    )
    replace_section(args.output / "results.md", section(counts, date))
    return 0


if __name__ == "__main__":
    sys.exit(main())
