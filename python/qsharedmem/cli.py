"""``qsharedmem``: see, inspect and clean up shared memory segments.

The console script ``qsharedmem`` (also ``python -m qsharedmem``) lists every shared memory
segment of this user — qsharedmem's own POSIX segments, other POSIX segments in ``/dev/shm``
(Qt's, ``multiprocessing.shared_memory``'s), System V segments with Qt's key files — shows one in
detail, removes one, or removes the orphans that crashed programs left behind::

    qsharedmem ls                 # table of segments; --json for scripts
    qsharedmem info demo          # everything about one segment, with a hex preview
    qsharedmem rm posix:/demo     # remove it (refused while attached; --force)
    qsharedmem gc --dry-run       # what gc would remove: orphans only, never a segment in use
    qsharedmem demo               # the multi-process demonstration

Looking never disturbs a segment: attachments are read from ``/proc``, not probed with locks.

Exit codes (documented in ``--help`` too): 0 success; 1 failure (an OS error, e.g. permission
denied, or a segment ``gc`` could not remove for such a reason); 2 usage error; 3 no segment
matches KEY; 4 refused because the segment is in use (``rm`` without ``--force``); 5 KEY
matches several segments (name one exactly, e.g. by the id ``ls`` prints).

This module is pure Python over the extension's inspection functions
(``list_segments``, ``find_segments``, ``read_segment``, ``remove_segment``,
``collect_garbage``, ``shm_space``); all the logic is in the Rust core (``qsharedmem::inspect``).
"""

from __future__ import annotations

import argparse
import datetime
import errno
import fnmatch
import importlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, TextIO

from . import __version__, _qsharedmem
from ._errors import InvalidKeyError, NotFoundError, SharedMemoryError

if TYPE_CHECKING:
    # The dicts the inspection functions return (typed in the stub only).
    from ._qsharedmem import _EventDict, _LockDict, _SegmentDict

__all__ = [
    "EXIT_AMBIGUOUS",
    "EXIT_FAILURE",
    "EXIT_IN_USE",
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "EXIT_USAGE",
    "main",
]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_IN_USE = 4
EXIT_AMBIGUOUS = 5

PROG = "qsharedmem"

EXIT_CODES_HELP = f"""\
exit codes:
  {EXIT_OK}  success
  {EXIT_FAILURE}  failure (an OS error such as permission denied; gc: a removal failed)
  {EXIT_USAGE}  usage error
  {EXIT_NOT_FOUND}  no segment matches KEY
  {EXIT_IN_USE}  refused: the segment is in use (rm without --force)
  {EXIT_AMBIGUOUS}  KEY matches several segments (use the id that ls prints)
"""

KEY_HELP = """\
KEY may be a plain Qt key ("demo", as in QSharedMemory("demo") or platformSafeKey("demo")),
a native key ("/demo", "/tmp/qipc_sharedmemory_demo89e4..."), Qt's string form
("posix:/demo", "systemv:/tmp/..."), a file in /dev/shm ("/dev/shm/psm_1a2b3c4d"), a System V
IPC key ("0x5100c092") or segment id ("shmid:2818055"). `ls` prints an id for every segment.
"""

DESCRIPTIONS = {
    "ls": (
        "List every shared memory segment of this user: qsharedmem's, other POSIX segments "
        "in /dev/shm (Qt's, multiprocessing's) and System V segments (Qt's, with their key "
        "files).",
        """\
columns:
  ID       names the segment exactly (use it with info/rm)
  TYPE     qsharedmem (POSIX, with qsharedmem's header), posix (foreign), systemv
  ORIGIN   who made it, as far as can be told: qsharedmem, qt, multiprocessing, unknown
  SIZE     bytes: the size qsharedmem reports (logical size / file size / shm_segsz)
  ATT      attachments (flock holders + mappers / processes using it / shm_nattch)
  PIDS     attached processes visible to this user
  LOCK     free, held[:pid], died[:pid] (holder died holding it), none
  CREATOR  creator pid ("dead" if it is gone), "-" if unknown
  AGE      since creation
  STATE    in-use, unused (nobody attached, creator alive), orphan (gc removes these)

examples:
  qsharedmem ls
  qsharedmem ls --orphans
  qsharedmem ls --match 'psm_*'
  qsharedmem ls --json | python -c 'import json,sys; print(len(json.load(sys.stdin)))'
""",
    ),
    "info": (
        "Show everything known about one segment, with a hex preview of its first bytes.",
        KEY_HELP
        + """
examples:
  qsharedmem info demo
  qsharedmem info posix:/demo --bytes 256
  qsharedmem info shmid:2818055 --json
""",
    ),
    "rm": (
        "Remove one segment, with its key file and lock. Refused while processes are "
        "attached, unless --force (they keep their memory until they detach, but nobody can "
        "attach any more).",
        KEY_HELP
        + """
examples:
  qsharedmem rm demo
  qsharedmem rm posix:/demo --force
""",
    ),
    "gc": (
        "Remove orphans: segments nobody is attached to whose creator is gone (for foreign "
        "POSIX segments, whose creator is not recorded: that no process maps or has open). "
        "Never touches a segment in use; usage is checked again right before each removal.",
        """\
examples:
  qsharedmem gc --dry-run
  qsharedmem gc
  qsharedmem gc --match 'qipc_*'
""",
    ),
    "demo": (
        "Run the multi-process demonstration (the same as `make demo`). Every argument "
        "after `demo` goes to the demonstration itself.",
        """\
examples:
  qsharedmem demo
  qsharedmem demo --help      # the demonstration's own options
""",
    ),
}


# --------------------------------------------------------------------------------------------
# Formatting


def _date(created: float) -> str | None:
    """A creation time as a local date, or None if it is not a date at all (corrupt)."""
    try:
        return datetime.datetime.fromtimestamp(created).isoformat(sep=" ", timespec="seconds")
    except (ValueError, OverflowError, OSError):
        return None


def _age(created: float | None, now: float) -> str:
    if created is None:
        return "-"
    if _date(created) is None:
        return "corrupt"
    if created > now + 1:  # a clock step, or a recorded time that is wrong
        return "future"
    seconds = max(0, int(now - created))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _lock_cell(lock: _LockDict) -> str:
    state = lock["state"]
    short = {"owner-died": "died", "unknown": "?"}.get(state, state)
    if lock["holder"] is not None and state in ("held", "owner-died"):
        return f"{short}:{lock['holder']}"
    return short


def _pids_cell(pids: Sequence[int]) -> str:
    if not pids:
        return "-"
    shown = ",".join(map(str, pids[:3]))
    return shown + (f",+{len(pids) - 3}" if len(pids) > 3 else "")


def _creator_cell(segment: _SegmentDict) -> str:
    pid = segment["creator_pid"]
    if pid is None:
        return "-"
    return str(pid) if segment["creator_alive"] else f"{pid} dead"


def _table(rows: list[list[str]], out: TextIO) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=True)]
        out.write("  ".join(cells).rstrip() + "\n")


def _human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _hexdump(data: bytes, out: TextIO) -> None:
    for offset in range(0, len(data), 16):
        chunk = data[offset : offset + 16]
        hex_part = " ".join(f"{b:02x}" for b in chunk)
        text = "".join(chr(b) if 0x20 <= b < 0x7F else "." for b in chunk)
        out.write(f"  {offset:08x}  {hex_part:<47}  |{text}|\n")


def _key_type_name(value: int | None) -> str:
    if value is None:
        return "-"
    names = {0x51: "SystemV", 0x100: "PosixRealtime", 0x101: "Windows"}
    return f"{names.get(value, f'SystemV-{value}' if 1 <= value <= 0xFF else 'unknown')} ({value})"


def _describe_removed(objects: Iterable[str]) -> str:
    objects = list(objects)
    return ", ".join(objects) if objects else "already gone"


# --------------------------------------------------------------------------------------------
# Commands


class _Failure(Exception):
    """A command failed: message for stderr, exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def _exit_code_for(error: OSError) -> int:
    """The exit code for an exception from the inspection functions."""
    if isinstance(error, NotFoundError):
        return EXIT_NOT_FOUND
    if isinstance(error, InvalidKeyError):  # the key names several segments
        return EXIT_AMBIGUOUS
    if isinstance(error, SharedMemoryError) and error.errno == errno.EBUSY:
        return EXIT_IN_USE
    return EXIT_FAILURE


def _matcher(patterns: Sequence[str] | None, all_users: bool) -> Callable[[_SegmentDict], bool]:
    """A predicate: does a segment's id, native key, file name or Qt key match a glob, or does
    a pattern name the segment as a key, the way ``info`` and ``rm`` resolve one?

    The second half is what finds a legacy System V segment by the key the user typed
    (``QSharedMemory("k1")``): its key file keeps only a hash of the key, so no glob over its
    names can match ``k1``.
    """
    if not patterns:
        return lambda segment: True
    named = {
        segment["id"]
        for pattern in patterns
        for segment in _qsharedmem.find_segments(pattern, all_users=all_users)
    }

    def names(segment: _SegmentDict) -> list[str]:
        found = [segment["id"], segment["native_key"]]
        if segment["file"]:
            found.append(segment["file"].rsplit("/", 1)[-1])
        if segment["key_file"]:
            found.append(segment["key_file"].rsplit("/", 1)[-1])
        if segment["qt_key"]:
            found.append(segment["qt_key"])
        return [n for n in found if n]

    def matches(segment: _SegmentDict) -> bool:
        if segment["id"] in named:
            return True
        return any(fnmatch.fnmatchcase(n, p) for n in names(segment) for p in patterns)

    return matches


def _resolve(key: str, all_users: bool) -> _SegmentDict:
    found = _qsharedmem.find_segments(key, all_users=all_users)
    if not found:
        raise _Failure(f"no shared memory segment matches {key!r}", EXIT_NOT_FOUND)
    if len(found) > 1:
        ids = "\n".join(f"  {s['id']}" for s in found)
        raise _Failure(
            f"{key!r} matches {len(found)} segments; name one of them exactly:\n{ids}",
            EXIT_AMBIGUOUS,
        )
    return found[0]


def _cmd_ls(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    segments = _qsharedmem.list_segments(all_users=args.all_users)
    accept = _matcher(args.match, args.all_users)
    segments = [s for s in segments if accept(s) and (not args.orphans or s["orphan"])]
    if args.json:
        json.dump(segments, out, indent=2)
        out.write("\n")
        return EXIT_OK
    if not segments:
        err.write("no shared memory segments\n")
        return EXIT_OK
    now = time.time()
    rows = [["ID", "TYPE", "ORIGIN", "SIZE", "ATT", "PIDS", "LOCK", "CREATOR", "AGE", "STATE"]]
    for s in segments:
        rows.append(
            [
                s["id"],
                s["kind"],
                s["origin"],
                str(s["size"]),
                str(s["attachments"]),
                _pids_cell(s["pids"]),
                _lock_cell(s["lock"]),
                _creator_cell(s),
                _age(s["created"], now),
                s["usage"],
            ]
        )
    _table(rows, out)
    orphans = sum(1 for s in segments if s["orphan"])
    free, total = _qsharedmem.shm_space()
    err.write(
        f"{len(segments)} segment(s), {orphans} orphan(s); /dev/shm: "
        f"{_human_bytes(free)} free of {_human_bytes(total)}\n"
    )
    return EXIT_OK


def _event_text(event: _EventDict) -> str:
    text = f"{event['name']} {'set' if event['set'] else 'clear'}"
    if event["waiters"]:
        text += f" ({event['waiters']} waiting)"
    return text


def _info_lines(s: _SegmentDict, now: float) -> list[tuple[str, str]]:
    kinds = {
        "qsharedmem": "POSIX segment made by qsharedmem",
        "posix": "POSIX segment (not made by qsharedmem)",
        "systemv": "System V segment",
    }
    lines = [
        ("id", s["id"]),
        ("type", kinds.get(s["kind"], s["kind"])),
        ("origin", s["origin"]),
        ("native key", s["native_key"] or "- (key file not found)"),
        ("key type", _key_type_name(s["key_type"])),
        ("Qt key", s["qt_key"] or "- (not recoverable)"),
    ]
    if s["legacy_key"]:
        lines.append(("legacy key", s["legacy_key"]))
    if s["key"]:
        lines.append(("toString()", s["key"]))
    if s["file"]:
        lines.append(("file", f"{s['file']} ({s['file_size']} bytes)"))
    if s["kind"] == "systemv":
        lines.append(("key file", s["key_file"] or "-"))
        lines.append(("shmid", str(s["shmid"])))
        lines.append(("IPC key", f"0x{s['ipc_key']:08x}"))
    lines.append(("size", f"{s['size']} bytes"))
    pids = ", ".join(map(str, s["pids"])) or "none visible"
    lines.append(("attachments", f"{s['attachments']} (pids: {pids})"))
    if s["last_pid"] is not None:
        lines.append(("last attach/detach", f"pid {s['last_pid']}"))
    lock = s["lock"]
    text: str = lock["state"]
    if lock["holder"] is not None:
        text += f" (pid {lock['holder']})"
    details = [lock["primitive"]] if lock["primitive"] else []
    if lock["value"] is not None:
        details.append(f"value {lock['value']}")
    if lock["waiters"]:
        details.append(f"{lock['waiters']} waiting")
    if lock["owner_deaths"]:
        details.append(f"{lock['owner_deaths']} holder(s) died holding it so far")
    if details:
        text += " — " + "; ".join(details)
    lines.append(("lock", text))
    if s["generation"] is not None:
        waiting = s["notify_waiters"] or 0
        lines.append(("notify", f"generation {s['generation']}, {waiting} waiting"))
        if s["events"]:
            lines.append(("events", ", ".join(_event_text(e) for e in s["events"])))
        if s["kind"] == "systemv" and s["control_file"]:
            lines.append(("notify block", s["control_file"]))
    if s["creator_pid"] is None:
        lines.append(("creator", "unknown"))
    else:
        alive = "alive" if s["creator_alive"] else "dead"
        lines.append(("creator", f"pid {s['creator_pid']} ({alive})"))
    created = s["created"]
    if created is not None:
        when = _date(created)
        if when is None:
            text = f"corrupt ({created:.0f} seconds since 1970 is no date)"
        elif created > now + 1:
            text = f"{when} (in the future)"
        else:
            text = f"{when} ({_age(created, now)} ago)"
        lines.append(("created", text))
    owner = s["user"] or "?"
    lines.append(("owner", f"{owner} (uid {s['uid']}), mode {s['mode']:04o}"))
    lines.append(("state", s["usage"]))
    if s["note"]:
        lines.append(("note", s["note"]))
    return lines


def _cmd_info(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    segment = _resolve(args.key, args.all_users)
    preview: bytes | None = None
    preview_error: str | None = None
    if args.bytes > 0:
        try:
            preview = _qsharedmem.read_segment(segment["id"], args.bytes, all_users=args.all_users)
        except OSError as e:
            preview_error = str(e)
    if args.json:
        result = dict(segment)
        result["preview"] = preview.hex() if preview is not None else None
        result["preview_error"] = preview_error
        json.dump(result, out, indent=2)
        out.write("\n")
        return EXIT_OK
    lines = _info_lines(segment, time.time())
    width = max(len(label) for label, _ in lines) + 1
    for label, value in lines:
        out.write(f"{(label + ':').ljust(width)} {value}\n")
    if preview is not None:
        out.write(f"first {len(preview)} byte(s):\n")
        _hexdump(preview, out)
    elif preview_error is not None:
        err.write(f"{PROG} info: no preview: {preview_error}\n")
    return EXIT_OK


def _cmd_rm(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    segment = _resolve(args.key, args.all_users)
    try:
        result = _qsharedmem.remove_segment(
            segment["id"], force=args.force, all_users=args.all_users
        )
    except SharedMemoryError as e:
        code = _exit_code_for(e)
        hint = " (use --force to remove it anyway)" if code == EXIT_IN_USE else ""
        raise _Failure(f"{e}{hint}", code) from e
    if args.json:
        json.dump(result, out, indent=2)
        out.write("\n")
    else:
        out.write(f"removed {segment['id']}: {_describe_removed(result['removed'])}\n")
    return EXIT_OK


def _cmd_gc(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    outcomes = _qsharedmem.collect_garbage(
        dry_run=args.dry_run,
        predicate=_matcher(args.match, args.all_users),
        all_users=args.all_users,
    )
    failed = [o for o in outcomes if o["skipped"] and o["errno"] != errno.EBUSY]
    if args.json:
        json.dump(outcomes, out, indent=2)
        out.write("\n")
    else:
        now = time.time()
        for o in outcomes:
            s = o["segment"]
            facts = f"{s['kind']}, {s['size']} bytes, creator {_creator_cell(s)}"
            facts += f", age {_age(s['created'], now)}"
            if args.dry_run:
                out.write(f"would remove {s['id']} ({facts})\n")
            elif o["skipped"]:
                err.write(f"{PROG} gc: left {s['id']} alone: {o['skipped']}\n")
            else:
                out.write(f"removed {s['id']}: {_describe_removed(o['removed'])}\n")
        if not outcomes:
            err.write("no orphans\n")
    return EXIT_FAILURE if failed else EXIT_OK


def _run_demo(demo_args: Sequence[str]) -> int:
    try:
        demo = importlib.import_module("qsharedmem.demo")
    except ModuleNotFoundError as e:
        if e.name != "qsharedmem.demo":
            raise
        raise _Failure(
            "the demonstration is not part of this installation (qsharedmem.demo is missing)",
            EXIT_FAILURE,
        ) from e
    return int(demo.main(list(demo_args), prog="qsharedmem demo") or 0)


# --------------------------------------------------------------------------------------------
# Parser and entry point


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (one subcommand per command)."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="See, inspect and clean up shared memory segments (qsharedmem's, Qt's, "
        "multiprocessing's, System V). Looking never disturbs a segment; removing never "
        "touches one in use unless forced.",
        epilog="run `qsharedmem COMMAND --help` for examples\n\n" + EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, summary: str) -> argparse.ArgumentParser:
        description, examples = DESCRIPTIONS[name]
        sub = commands.add_parser(
            name,
            help=summary,
            description=description,
            epilog=examples + "\n" + EXIT_CODES_HELP,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        return sub

    def all_users(sub: argparse.ArgumentParser) -> None:
        sub.add_argument(
            "--all-users",
            action="store_true",
            help="include other users' segments (what this user may see of them)",
        )

    def match(sub: argparse.ArgumentParser) -> None:
        sub.add_argument(
            "--match",
            metavar="GLOB",
            action="append",
            help="only segments whose id, native key, file name or Qt key matches "
            "(shell-style pattern), or that GLOB names as a key, as info KEY would "
            "(may be repeated)",
        )

    ls = command("ls", "list segments")
    ls.add_argument("--json", action="store_true", help="print a JSON list of segments")
    ls.add_argument("--orphans", action="store_true", help="only orphans")
    match(ls)
    all_users(ls)
    ls.set_defaults(run=_cmd_ls)

    info = command("info", "show one segment in detail")
    info.add_argument("key", metavar="KEY", help="the segment (see below)")
    info.add_argument(
        "--bytes",
        type=int,
        default=64,
        metavar="N",
        help="how many bytes to preview (default 64; 0: none)",
    )
    info.add_argument("--json", action="store_true", help="print JSON (preview as hex)")
    all_users(info)
    info.set_defaults(run=_cmd_info)

    rm = command("rm", "remove one segment")
    rm.add_argument("key", metavar="KEY", help="the segment (see below)")
    rm.add_argument(
        "--force", action="store_true", help="remove it even while processes are attached"
    )
    rm.add_argument("--json", action="store_true", help="print JSON")
    all_users(rm)
    rm.set_defaults(run=_cmd_rm)

    gc = command("gc", "remove orphaned segments")
    gc.add_argument("--dry-run", action="store_true", help="only print what would be removed")
    gc.add_argument("--json", action="store_true", help="print JSON")
    match(gc)
    all_users(gc)
    gc.set_defaults(run=_cmd_gc)

    # Listed for --help; main() hands `demo ...` to the demonstration before parsing, so that
    # all its arguments (--help included) reach it.
    command("demo", "run the multi-process demonstration")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (see the module documentation)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    out, err = sys.stdout, sys.stderr
    run: Callable[[], int]
    if argv[:1] == ["demo"]:
        command, run = "demo", lambda: _run_demo(argv[1:])
    else:
        parser = build_parser()
        args = parser.parse_args(argv)
        if getattr(args, "bytes", 0) < 0:
            parser.error("--bytes must not be negative")
        command, run = args.command, lambda: args.run(args, out, err)
    try:
        return run()
    except _Failure as failure:
        err.write(f"{PROG} {command}: {failure}\n")
        return failure.code
    except BrokenPipeError:
        # `qsharedmem ls | head`: the reader is gone; say nothing more.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, out.fileno())
        return EXIT_OK
    except OSError as error:
        err.write(f"{PROG} {command}: {error}\n")
        return _exit_code_for(error)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
