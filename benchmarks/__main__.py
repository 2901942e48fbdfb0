"""``python -m benchmarks [--quick] [--output DIR] [--only WORKLOAD,...]``

Runs the workloads (all of them by default) against every implementation, then writes
``results.md``, ``results.json`` and ``results.png`` to the output directory: ``benchmarks/``
for a full run, a new temporary directory for a quick one. Exits with status 1 if a workload
failed or if anything the run created is still there at the end.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

# Before anything imports PySide6.
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

# PySide6 6.12 on CPython 3.11 drops one reference to None on every call of a method that
# returns nothing; give None enough references for any number of them (tests/conftest.py does
# the same). None is immortal from 3.12 on.
if sys.version_info < (3, 12):
    ctypes.c_ssize_t.from_address(id(None)).value += 1 << 30

from ._harness import kill_children, leftovers, load_average, machine, sweep
from .instructions import replace_section, section
from .peers import all_peers
from .report import write_chart, write_json, write_markdown
from .workloads import WORKLOADS, Config, Run


def _log(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="every workload once, small sizes (for make test)"
    )
    parser.add_argument("--output", type=Path, help="directory for results.{md,json,png}")
    parser.add_argument(
        "--only", help=f"comma-separated workloads (default: all of {', '.join(WORKLOADS)})"
    )
    args = parser.parse_args(argv)
    selected = args.only.split(",") if args.only else list(WORKLOADS)
    unknown = [name for name in selected if name not in WORKLOADS]
    if unknown:
        parser.error(f"unknown workloads: {', '.join(unknown)}")
    config = Config.quick_mode() if args.quick else Config.full()
    if args.output:
        output = args.output
    elif args.quick:
        output = Path(tempfile.mkdtemp(prefix="qsharedmem-bench-"))
    else:
        output = Path(__file__).resolve().parent
    output.mkdir(parents=True, exist_ok=True)

    header = {"date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"), **machine()}
    run = Run(config, all_peers(), _log)
    status = 0
    start = time.perf_counter()
    try:
        for name in selected:
            _log(f"{name} ...")
            WORKLOADS[name](run)
    except Exception:
        traceback.print_exc()
        status = 1
    finally:
        kill_children()
        swept = sweep()
    elapsed = time.perf_counter() - start
    header["load average at end"] = load_average()
    if swept:
        # The adapters remove everything themselves; anything found here is a bug to look at.
        _log("the final sweep had to remove: " + ", ".join(swept))
        run.facts["removed by the final sweep"] = swept
    remaining = leftovers()
    if remaining:
        _log("left behind: " + ", ".join(remaining))
        status = 1

    write_json(run, output / "results.json", header, elapsed)
    write_markdown(run, output / "results.md", header, elapsed)
    # The instruction counts come from `make bench-instr`, a run of their own: keep them.
    counted = output / "instructions.json"
    if counted.exists():
        recorded = json.loads(counted.read_text())
        replace_section(output / "results.md", section(recorded["per_iteration"], recorded["date"]))
    write_chart(run, output / "results.png")
    _log(f"wrote {output / 'results.md'} ({elapsed:.0f} s)")
    return status


if __name__ == "__main__":
    sys.exit(main())
