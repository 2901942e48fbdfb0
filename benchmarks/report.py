"""The targets of issue 5, the ratio tables, ``results.md``, ``results.json`` and the chart."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ._harness import Stats
from .workloads import (
    BACKEND_OF,
    CALL_FLOOR,
    MP,
    QSM_POSIX,
    QSM_SYSV,
    QT_POSIX,
    QT_SYSV,
    Measurement,
    Run,
)


@dataclasses.dataclass(frozen=True)
class Target:
    """``qsharedmem ÷ peer`` of two medians must be ``<=`` (or ``>=``) ``bound``."""

    text: str
    workload: str
    case: str
    ours: str
    peer: str
    bound: float
    at_most: bool = True
    peer_case: str | None = None  # when the peer's row belongs to another case


ATTACH = "attach()+detach() of an existing 4 KiB segment"
CREATE = "create()+detach() of a new 4 KiB segment"
BYTEARRAY = "bytearray (reference)"

TARGETS = (
    Target(
        "lock+unlock ≤ 0.6 × multiprocessing.Lock", "lock", "lock()+unlock()", QSM_POSIX, MP, 0.6
    ),
    Target(
        "lock+unlock ≤ 0.1 × PySide6 POSIX", "lock", "lock()+unlock()", QSM_POSIX, QT_POSIX, 0.1
    ),
    Target(
        "System V lock+unlock ≤ 1.0 × PySide6 System V",
        "lock",
        "lock()+unlock()",
        QSM_SYSV,
        QT_SYSV,
        1.0,
    ),
    Target(
        "2-process hand-off ≥ 2 × PySide6's rate",
        "contention",
        "2-process ping-pong",
        QSM_POSIX,
        QT_POSIX,
        2.0,
        at_most=False,
    ),
    Target("attach+detach ≤ 0.5 × PySide6 POSIX", "lifecycle", ATTACH, QSM_POSIX, QT_POSIX, 0.5),
    Target(
        "attach+detach ≤ 0.5 × multiprocessing.shared_memory",
        "lifecycle",
        ATTACH,
        QSM_POSIX,
        MP,
        0.5,
    ),
    Target("create+detach ≤ 0.5 × PySide6 POSIX", "lifecycle", CREATE, QSM_POSIX, QT_POSIX, 0.5),
    Target("data() ≤ 1.0 × PySide6", "data", "data() call", QSM_POSIX, QT_POSIX, 1.0),
    Target(
        "copy into data() ≥ 0.9 × bytearray copy",
        "data",
        "copy into data()",
        QSM_POSIX,
        BYTEARRAY,
        0.9,
        at_most=False,
        peer_case="copy bytearray → bytearray",
    ),
    Target(
        "copy out of data() ≥ 0.9 × bytearray copy",
        "data",
        "copy out of data()",
        QSM_POSIX,
        BYTEARRAY,
        0.9,
        at_most=False,
        peer_case="copy bytearray → bytearray",
    ),
    Target(
        "create(1 GiB) + touch ≤ 1.0 × PySide6 (page reservation costs nothing overall)",
        "big",
        "create() + touch every page",
        QSM_POSIX,
        QT_POSIX,
        1.0,
    ),
)

SECTIONS = {
    "lock": "1. Uncontended lock()+unlock()",
    "contention": "2. Contention between processes",
    "lifecycle": "3. attach/detach and create/detach",
    "data": "4. data(): the call, and copying through it",
    "big": "5. A big segment: create and touch every page",
}


class Results:
    """Medians and ratios of one run's measurements."""

    def __init__(self, measurements: Iterable[Measurement]) -> None:
        self.rows: dict[tuple[str, str, str], Measurement] = {
            (m.workload, m.case, m.impl): m for m in measurements
        }

    def get(self, workload: str, case: str, impl: str) -> Measurement | None:
        return self.rows.get((workload, case, impl))

    def stats(self, workload: str, case: str, impl: str) -> Stats | None:
        row = self.get(workload, case, impl)
        return Stats.of(row.samples) if row else None

    def ratio(
        self, workload: str, case: str, ours: str, peer: str, peer_case: str | None = None
    ) -> tuple[float, float, float] | None:
        """``ours ÷ peer``: the median and quartiles of the per-round ratios. The implementations
        took turns, so sample i of both rows was taken under the same machine load; pairing
        them keeps a load change between rounds out of the ratio."""
        mine = self.get(workload, case, ours)
        theirs = self.get(workload, peer_case or case, peer)
        if mine is None or theirs is None or len(mine.samples) != len(theirs.samples):
            return None
        if any(sample == 0 for sample in theirs.samples):
            return None
        ratios = Stats.of([a / b for a, b in zip(mine.samples, theirs.samples, strict=True)])
        return (ratios.median, ratios.q1, ratios.q3)

    def target_rows(self) -> list[dict[str, Any]]:
        rows = []
        for target in TARGETS:
            ratio = self.ratio(
                target.workload, target.case, target.ours, target.peer, target.peer_case
            )
            met = None
            if ratio is not None:
                met = ratio[0] <= target.bound if target.at_most else ratio[0] >= target.bound
            rows.append({"target": target, "ratio": ratio, "met": met})
        return rows


def _number(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1e6:
        return f"{value:.3g}"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _ratio_text(ratio: tuple[float, float, float] | None) -> str:
    if ratio is None:
        return "–"
    median, low, high = ratio
    return f"{median:.2f} ({low:.2f}–{high:.2f})"


def _qsm_row_for(impl: str) -> str:
    return QSM_SYSV if BACKEND_OF.get(impl) == "System V" else QSM_POSIX


def _case_table(
    results: Results, measurements: list[Measurement], workload: str, case: str
) -> list[str]:
    rows = [m for m in measurements if m.workload == workload and m.case == case]
    if not rows:
        return []
    unit = rows[0].unit
    better = "higher" if rows[0].higher_is_better else "lower"
    lines = [
        f"**{case}** ({unit}, {better} is better)",
        "",
        f"| implementation | median {unit} | ± | qsharedmem ÷ this |",
        "|---|---:|---:|---:|",
    ]
    for row in rows:
        stats = Stats.of(row.samples)
        if row.impl.startswith("qsharedmem") and row.impl in BACKEND_OF:
            ratio_text = "–"
        else:
            ours = _qsm_row_for(row.impl)
            if workload == "data" and case.startswith("copy") and row.impl == BYTEARRAY:
                ratio_text = "see targets"
            else:
                ratio_text = _ratio_text(results.ratio(workload, case, ours, row.impl))
        lines.append(
            f"| {row.impl} | {_number(stats.median)} | {stats.spread_pct:.0f}% | {ratio_text} |"
        )
    return [*lines, ""]


def _scale_table(
    measurements: list[Measurement], workload: str, title: str, unit: str
) -> list[str]:
    rows = [m for m in measurements if m.workload == workload]
    if not rows:
        return []
    levels = list(dict.fromkeys(m.case for m in rows))
    impls = list(dict.fromkeys(m.impl for m in rows))
    header = " | ".join(level.replace(" processes attached", "") for level in levels)
    lines = [
        f"**{title}** ({unit}, median; columns: processes attached besides the measuring one)",
        "",
        f"| implementation | {header} |",
        "|---|" + "---:|" * len(levels),
    ]
    for impl in impls:
        cells = []
        for level in levels:
            match = [m for m in rows if m.impl == impl and m.case == level]
            cells.append(_number(Stats.of(match[0].samples).median) if match else "–")
        lines.append(f"| {impl} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def _notes(results: Results) -> list[str]:
    """Explanations that need this run's numbers (the rest is in benchmarks/README.md)."""
    notes = []

    def median(workload: str, case: str, impl: str) -> float | None:
        stats = results.stats(workload, case, impl)
        return stats.median if stats else None

    lock = "lock()+unlock()"
    floor, mp, ours, qt = (median("lock", lock, i) for i in (CALL_FLOOR, MP, QSM_POSIX, QT_POSIX))
    if floor and mp and ours and qt:
        notes.append(
            f"- **Uncontended lock, POSIX.** Two calls of qsharedmem's cheapest method "
            f"(`isAttached()`) cost {floor:.0f} ns, already {floor / mp:.2f}× "
            f"multiprocessing.Lock's acquire()+release() ({mp:.0f} ns) and "
            f"{floor / qt:.2f}× PySide6's lock()+unlock() ({qt:.0f} ns); lock()+unlock() costs "
            f"{ours:.0f} ns, so the robust mutex and the handle add {ours - floor:.0f} ns. "
            f"0.6× multiprocessing would be {0.6 * mp:.0f} ns and 0.1× PySide6 {0.1 * qt:.0f} "
            "ns: less than the two calls alone."
        )
    sysv = [median("lock", lock, i) for i in (QSM_SYSV, QT_SYSV, "sysv_ipc")]
    if all(sysv):
        notes.append(
            f"- **Uncontended lock, System V.** Two system calls each: qsharedmem {sysv[0]:.0f} "
            f"ns, PySide6 {sysv[1]:.0f} ns, sysv_ipc (SEM_UNDO) {sysv[2]:.0f} ns. qsharedmem's "
            "calls take and give back two semaphores at once (Qt's lock and the owner-died "
            "token), which the kernel runs on its slower multi-operation path."
        )
    create = median("big", "create()", QSM_POSIX)
    touched = [median("big", "create() + touch every page", i) for i in (QSM_POSIX, QT_POSIX)]
    if create and all(touched):
        notes.append(
            f"- **Big segment.** qsharedmem's create() reserves every page up front "
            f"(posix_fallocate: {create:.0f} ms), so that a full /dev/shm is an "
            "OutOfResources error instead of a SIGBUS later; the pages are then cheaper to touch, "
            f"and create + touch costs {touched[0]:.0f} ms against PySide6's {touched[1]:.0f} ms."
        )
    return notes


def write_markdown(run: Run, path: Path, header: dict[str, str], elapsed: float) -> None:
    results = Results(run.measurements)
    measurements = run.measurements
    config = run.config
    lines = [
        "# qsharedmem benchmarks",
        "",
        f"Produced by `python -m benchmarks{' --quick' if config.quick else ''}` "
        f"({header['date']}, {elapsed:.0f} s). Every implementation ran in the same process "
        "(or its forked children), taking turns, on the machine below. Each number is the median "
        f"of the samples (micro-benchmarks: {config.repeats} samples of about "
        f"{config.sample_seconds * 1e3:.0f} ms each; multi-process runs: "
        f"{config.process_repeats}), "
        "± half the interquartile range in percent. A ratio is qsharedmem ÷ peer, the median of "
        "the ratios of samples taken in the same round (same load), in brackets their "
        "interquartile range; times: below 1 is faster, rates: above 1 is faster. A qsharedmem "
        "row is compared with the peer of the same backend. Why some targets are not met, with "
        "measurements: `benchmarks/README.md`.",
        "",
        "## Machine",
        "",
        "| | |",
        "|---|---|",
        *(f"| {key} | {value} |" for key, value in header.items() if key != "date"),
        "",
        "## Targets (issue 5)",
        "",
        "| target | ratio (range) | bound | met |",
        "|---|---:|---:|:---:|",
    ]
    for row in results.target_rows():
        target: Target = row["target"]
        sign = "≤" if target.at_most else "≥"
        met = {True: "yes", False: "**no**", None: "–"}[row["met"]]
        lines.append(
            f"| {target.text} | {_ratio_text(row['ratio'])} | {sign} {target.bound} | {met} |"
        )
    lines.append("")
    for workload, title in SECTIONS.items():
        cases = list(dict.fromkeys(m.case for m in measurements if m.workload == workload))
        if not cases:
            continue
        lines += [f"## {title}", ""]
        if workload == "data" and "copy size" in run.facts:
            lines += [f"Copies move {run.facts['copy size']}.", ""]
        if workload == "big" and "big segment size" in run.facts:
            lines += [f"Segment size: {run.facts['big segment size']}.", ""]
        for case in cases:
            lines += _case_table(results, measurements, workload, case)
    scale_tables = (
        _scale_table(measurements, "scale-lock", "lock()+unlock() by the measuring process", "ns")
        + _scale_table(
            measurements, "scale-attach", "attach()+detach() by the measuring process", "µs"
        )
        + _scale_table(measurements, "scale-child-attach", "a new process's attach()", "µs")
    )
    if scale_tables or run.facts.get("segments in one process"):
        lines += ["## 6. Scale", "", *scale_tables]
    if "child detach µs (median)" in run.facts:
        lines += [
            "Detach by the attached processes at the end (µs, median): "
            + ", ".join(f"{k} {v}" for k, v in run.facts["child detach µs (median)"].items()),
            "",
        ]
    many = run.facts.get("segments in one process", {})
    if many:
        keys = list(dict.fromkeys(k for report in many.values() for k in report))
        lines += [
            "**Segments open in one process** (each 4 KiB; in a forked child)",
            "",
            "| run | " + " | ".join(keys) + " |",
            "|---|" + "---|" * len(keys),
        ]
        for name, report in many.items():
            lines.append(f"| {name} | " + " | ".join(str(report.get(k, "")) for k in keys) + " |")
        lines.append("")
    if "limits" in run.facts:
        lines += [
            "Limits on this machine: "
            + ", ".join(f"{k} {v}" for k, v in run.facts["limits"].items()),
            "",
        ]
    notes = _notes(results)
    if notes:
        lines += ["## Notes", "", *notes, ""]
    path.write_text("\n".join(lines))


def write_json(run: Run, path: Path, header: dict[str, str], elapsed: float) -> None:
    results = Results(run.measurements)
    payload = {
        "quick": run.config.quick,
        "elapsed_seconds": elapsed,
        "machine": header,
        "config": dataclasses.asdict(run.config),
        "workloads": sorted({m.workload.split("-")[0] for m in run.measurements}),
        "measurements": [
            {**dataclasses.asdict(m), "stats": dataclasses.asdict(Stats.of(m.samples))}
            for m in run.measurements
        ],
        "targets": [
            {
                "target": row["target"].text,
                "ratio": row["ratio"][0] if row["ratio"] else None,
                "bound": row["target"].bound,
                "met": row["met"],
            }
            for row in results.target_rows()
        ],
        "facts": run.facts,
    }
    path.write_text(json.dumps(payload, indent=1, ensure_ascii=False))


def write_chart(run: Run, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = Results(run.measurements)
    figure, axes = plt.subplots(2, 2, figsize=(15, 10))
    figure.suptitle("qsharedmem benchmarks" + (" (quick mode)" if run.config.quick else ""))

    ax = axes[0][0]
    rows = [row for row in results.target_rows() if row["ratio"]]
    if not rows:
        ax.set_axis_off()
    labels = [row["target"].text.split(" (")[0] for row in rows]
    values = [row["ratio"][0] for row in rows]
    colours = ["tab:green" if row["met"] else "tab:red" for row in rows]
    ax.barh(range(len(rows)), values, color=colours)
    ax.scatter([row["target"].bound for row in rows], range(len(rows)), marker="|", s=400, c="k")
    ax.set_yticks(range(len(rows)), labels, fontsize=8)
    ax.invert_yaxis()
    if rows:
        ax.set_xscale("log")
    ax.set_title("Targets: qsharedmem ÷ peer (bar), bound (|); green = met")

    def bars(ax: Any, workload: str, case: str, title: str) -> None:
        rows = [m for m in run.measurements if m.workload == workload and m.case == case]
        if not rows:
            ax.set_axis_off()
            return
        medians = [Stats.of(m.samples).median for m in rows]
        colours = ["tab:blue" if m.impl.startswith("qsharedmem") else "tab:gray" for m in rows]
        ax.barh(range(len(rows)), medians, color=colours)
        ax.set_yticks(range(len(rows)), [m.impl for m in rows], fontsize=8)
        ax.invert_yaxis()
        ax.set_xscale("log")
        ax.set_title(f"{title} ({rows[0].unit}, log scale)")

    bars(axes[0][1], "lock", "lock()+unlock()", "Uncontended lock()+unlock()")
    bars(axes[1][0], "lifecycle", ATTACH, "attach()+detach(), existing 4 KiB segment")

    ax = axes[1][1]
    rows = [m for m in run.measurements if m.workload == "scale-attach"]
    for impl in dict.fromkeys(m.impl for m in rows):
        points = [
            (int(m.case.split()[0]), Stats.of(m.samples).median) for m in rows if m.impl == impl
        ]
        ax.plot(*zip(*points, strict=True), marker="o", label=impl)
    if not rows:
        ax.set_axis_off()
    else:
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("processes attached")
        ax.set_ylabel("µs")
        ax.legend(fontsize=8)
    ax.set_title("attach()+detach() while N processes are attached")
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)
