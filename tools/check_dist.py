"""Checks the release artefacts (``make wheel``) and the installed wheel (``make test-wheel``).

``check_dist.py --compat manylinux_2_17 dist/`` checks the wheel and the sdist in ``dist/``:

* the wheel is abi3 for CPython 3.11+ and ``auditwheel show`` gives it the platform tag asked
  for;
* its extension references no glibc symbol version newer than that tag, and no unversioned,
  non-weak symbol outside the Python C API (``auditwheel`` does not look at those: an
  unversioned ``gettid`` would make the import fail on glibc < 2.30), and it is stripped;
* it holds exactly the package's files (every ``python/qsharedmem`` module, ``py.typed`` and the
  ``.pyi`` stub) plus the extension, the console script, the metadata (licence expression,
  project URLs) and both licence texts, byte for byte;
* the sdist holds what a build from source needs, the licences and the changelog.

``check_dist.py --installed SOURCE_DIR`` (run by the interpreter under test) checks that
``qsharedmem`` is imported from an installed, non-editable wheel outside ``SOURCE_DIR``.

Needs ``auditwheel`` (and ``pyelftools``, which it brings) for the first form: the ``dist``
dependency group.
"""

from __future__ import annotations

import argparse
import email.parser
import fnmatch
import io
import json
import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LICENCES = ["LICENSE-MIT", "LICENSE-APACHE"]
LICENCE_EXPRESSION = "MIT OR Apache-2.0"
EXTENSION = "qsharedmem/_qsharedmem.abi3.so"


class CheckFailed(Exception):
    pass


def check(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


def package_files() -> list[str]:
    """What the wheel must ship of python/qsharedmem: every module, the stub, py.typed."""
    base = ROOT / "python"
    found = []
    for path in sorted((base / "qsharedmem").rglob("*")):
        if path.is_file() and (path.suffix in (".py", ".pyi") or path.name == "py.typed"):
            found.append(path.relative_to(base).as_posix())
    check("qsharedmem/py.typed" in found, "python/qsharedmem/py.typed is missing")
    check("qsharedmem/_qsharedmem.pyi" in found, "python/qsharedmem/_qsharedmem.pyi is missing")
    return found


def glibc_version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.removeprefix("GLIBC_").split("."))


def check_symbols(library: bytes, compat: str) -> list[str]:
    """The extension's dynamic symbols against the glibc of ``compat`` (manylinux_2_17)."""
    from elftools.elf.elffile import ELFFile
    from elftools.elf.gnuversions import GNUVerSymSection

    limit = tuple(int(n) for n in compat.removeprefix("manylinux_").split("_"))
    elf = ELFFile(io.BytesIO(library))
    dynsym = elf.get_section_by_name(".dynsym")
    versym = next(s for s in elf.iter_sections() if isinstance(s, GNUVerSymSection))
    names: dict[int, str] = {}
    verneed = elf.get_section_by_name(".gnu.version_r")
    if verneed is not None:
        for _, auxiliaries in verneed.iter_versions():
            for aux in auxiliaries:
                names[aux.entry["vna_other"]] = aux.name
    newest: dict[str, tuple[int, ...]] = {}
    too_new, unversioned = [], []
    for index, symbol in enumerate(dynsym.iter_symbols()):
        if index == 0 or symbol["st_shndx"] != "SHN_UNDEF":
            continue
        version = names.get(versym.get_symbol(index)["ndx"]) if versym else None
        weak = symbol["st_info"]["bind"] == "STB_WEAK"
        if version and version.startswith("GLIBC_"):
            number = glibc_version(version)
            newest[version] = number
            if number > limit:
                too_new.append(f"{symbol.name}@{version}")
        elif version is None and not weak and not re.match(r"_?Py", symbol.name):
            unversioned.append(symbol.name)
    check(not too_new, f"symbols newer than {compat}: {', '.join(sorted(too_new))}")
    check(
        not unversioned,
        "unversioned references that an older glibc may not resolve: "
        + ", ".join(sorted(unversioned)),
    )
    sections = {s.name for s in elf.iter_sections()}
    debug = sorted(s for s in sections if s == ".symtab" or s.startswith(".debug"))
    check(not debug, f"the extension is not stripped: {', '.join(debug)}")
    highest = max(newest.values(), default=())
    return [
        f"glibc symbol versions: {', '.join(sorted(newest, key=glibc_version))}"
        f" (highest {'.'.join(map(str, highest))}, limit {'.'.join(map(str, limit))})",
        "no unversioned non-Python references; stripped (no .symtab, no .debug_*)",
    ]


def check_auditwheel(wheel: Path, compat: str) -> list[str]:
    shown = subprocess.run(
        [sys.executable, "-m", "auditwheel", "show", str(wheel)],
        capture_output=True,
        text=True,
        check=False,
    )
    check(shown.returncode == 0, f"auditwheel show failed:\n{shown.stdout}{shown.stderr}")
    text = " ".join(shown.stdout.split())
    match = re.search(r'consistent with the following platform tag: "([^"]+)"', text)
    check(match is not None, f"unexpected auditwheel output:\n{shown.stdout}")
    assert match is not None
    check(
        match.group(1).startswith(compat + "_"),
        f"auditwheel: the wheel is {match.group(1)}, not {compat}",
    )
    return [f"auditwheel show: consistent with {match.group(1)}"]


def check_wheel(wheel: Path, compat: str) -> list[str]:
    tags = wheel.name.removesuffix(".whl").split("-")[-3:]
    check(tags[:2] == ["cp311", "abi3"], f"{wheel.name}: not an abi3 wheel for CPython 3.11+")
    check(
        any(t.startswith(compat + "_") for t in tags[2].split(".")),
        f"{wheel.name}: platform tag is not {compat}",
    )
    report = [f"wheel {wheel.name}"]
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        dist_info = next(n.split("/")[0] for n in names if n.split("/")[0].endswith(".dist-info"))
        expected = [*package_files(), EXTENSION]
        shipped = sorted(n for n in names if not n.startswith(dist_info + "/"))
        check(
            shipped == sorted(expected),
            f"wheel contents differ from python/qsharedmem + the extension:\n"
            f"  missing: {sorted(set(expected) - set(shipped))}\n"
            f"  extra:   {sorted(set(shipped) - set(expected))}",
        )
        report.append(
            f"  package: {len(shipped)} files ({', '.join(Path(n).name for n in shipped)})"
        )
        for licence in LICENCES:
            member = f"{dist_info}/licenses/{licence}"
            check(member in names, f"{member} is not in the wheel")
            check(
                archive.read(member) == (ROOT / licence).read_bytes(),
                f"{member} differs from {licence}",
            )
        metadata = email.parser.Parser().parsestr(archive.read(f"{dist_info}/METADATA").decode())
        check(
            metadata["License-Expression"] == LICENCE_EXPRESSION,
            f"License-Expression is {metadata['License-Expression']!r}",
        )
        check(
            sorted(metadata.get_all("License-File") or []) == sorted(LICENCES),
            f"License-File: {metadata.get_all('License-File')}",
        )
        urls = metadata.get_all("Project-URL") or []
        check(urls != [], "no Project-URL in the metadata")
        check(metadata["Requires-Python"] == ">=3.11", "Requires-Python is not >=3.11")
        check(metadata.get_all("Requires-Dist") is None, "the wheel declares dependencies")
        entry_points = archive.read(f"{dist_info}/entry_points.txt").decode()
        check(
            re.search(r"^qsharedmem\s*=\s*qsharedmem\.cli:main$", entry_points, re.M) is not None,
            f"no console script qsharedmem = qsharedmem.cli:main:\n{entry_points}",
        )
        report.append(
            f"  {dist_info}: METADATA (License-Expression: {LICENCE_EXPRESSION}; "
            f"{len(urls)} Project-URLs), licenses/{', licenses/'.join(LICENCES)}, "
            "entry_points.txt (console script qsharedmem)"
        )
        report += ["  " + line for line in check_symbols(archive.read(EXTENSION), compat)]
    report += ["  " + line for line in check_auditwheel(wheel, compat)]
    return report


SDIST_REQUIRED = [
    "pyproject.toml",
    "Cargo.toml",
    "Cargo.lock",
    "README.md",
    "CHANGELOG.md",
    *LICENCES,
    "src/lib.rs",
    "src/sys/*.rs",
    "src/python/*.rs",
]


def check_sdist(sdist: Path) -> list[str]:
    with tarfile.open(sdist) as archive:
        members = {m.name.split("/", 1)[1]: m for m in archive.getmembers() if "/" in m.name}
        for pattern in SDIST_REQUIRED:
            check(
                any(fnmatch.fnmatchcase(name, pattern) for name in members),
                f"{sdist.name}: nothing matches {pattern}",
            )
        for path in package_files():
            check(f"python/{path}" in members, f"{sdist.name}: python/{path} is missing")
        for licence in LICENCES:
            extracted = archive.extractfile(members[licence])
            assert extracted is not None
            check(
                extracted.read() == (ROOT / licence).read_bytes(),
                f"{sdist.name}: {licence} differs",
            )
        pkg_info = archive.extractfile(members["PKG-INFO"])
        assert pkg_info is not None
        metadata = email.parser.Parser().parsestr(pkg_info.read().decode())
        check(
            metadata["License-Expression"] == LICENCE_EXPRESSION,
            f"{sdist.name}: License-Expression is {metadata['License-Expression']!r}",
        )
        return [
            f"sdist {sdist.name}: {len(members)} entries, with {', '.join(LICENCES)}, "
            "CHANGELOG.md, Cargo.lock, src/, python/qsharedmem/ (every module, py.typed, .pyi)"
        ]


def check_installed(source: Path) -> list[str]:
    import importlib.metadata
    import sysconfig

    import qsharedmem
    import qsharedmem._qsharedmem as extension

    site = {Path(sysconfig.get_paths()[k]).resolve() for k in ("purelib", "platlib")}
    report = []
    for module in (qsharedmem, extension):
        where = Path(str(module.__file__)).resolve()
        check(
            not where.is_relative_to(source.resolve()),
            f"{module.__name__} is imported from the source tree: {where}",
        )
        check(
            any(where.is_relative_to(s) for s in site),
            f"{module.__name__} is not imported from this interpreter's site-packages: {where}",
        )
        report.append(f"{module.__name__}: {where}")
    distribution = importlib.metadata.distribution("qsharedmem")
    direct_url = distribution.read_text("direct_url.json")
    editable = bool(direct_url and json.loads(direct_url).get("dir_info", {}).get("editable"))
    check(not editable, "qsharedmem is an editable install, not the wheel")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--compat", default="manylinux_2_17", help="the platform tag to expect")
    parser.add_argument("--installed", metavar="SOURCE_DIR", type=Path)
    parser.add_argument("dist", nargs="?", type=Path, help="the directory make wheel fills")
    args = parser.parse_args(argv)
    report: list[str] = []
    try:
        if args.installed is not None:
            report += check_installed(args.installed)
        if args.dist is not None:
            wheels = sorted(args.dist.glob("*.whl"))
            sdists = sorted(args.dist.glob("*.tar.gz"))
            check(len(wheels) == 1, f"expected one wheel in {args.dist}, found {wheels}")
            check(len(sdists) == 1, f"expected one sdist in {args.dist}, found {sdists}")
            report += check_wheel(wheels[0], args.compat)
            report += check_sdist(sdists[0])
    except CheckFailed as failure:
        print(f"check_dist: FAILED: {failure}", file=sys.stderr)
        return 1
    print("\n".join(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
