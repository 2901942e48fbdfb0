"""What an installation of qsharedmem must contain: metadata, licences, type information, the
console script, and the package actually in use.

These run in the developer's editable install (``make test-python``) and, with
``QSHAREDMEM_TEST_INSTALLED_WHEEL`` set to the source tree, against the built wheel installed in
a clean virtualenv outside the source tree (``make test-wheel``), where they are stricter: the
imported package must be that wheel's files.
"""

from __future__ import annotations

import importlib.metadata
import importlib.resources
import json
import os
import sys
from pathlib import Path

import qsharedmem
import qsharedmem._qsharedmem
from qsharedmem import cli

# Set by `make test-wheel`: the source tree the wheel was built from.
SOURCE_TREE = os.environ.get("QSHAREDMEM_TEST_INSTALLED_WHEEL")


def distribution() -> importlib.metadata.Distribution:
    return importlib.metadata.distribution("qsharedmem")


def test_metadata_names_version_licence_python_and_urls() -> None:
    metadata = distribution().metadata
    assert metadata["Name"] == "qsharedmem"
    assert metadata["Version"] == qsharedmem.__version__
    assert metadata["License-Expression"] == "MIT OR Apache-2.0"
    assert sorted(metadata.get_all("License-File") or []) == ["LICENSE-APACHE", "LICENSE-MIT"]
    assert metadata["Requires-Python"] == ">=3.11"
    # No runtime dependencies, and no extras: test and dev tools are dependency groups.
    assert metadata.get_all("Requires-Dist") is None
    assert metadata.get_all("Provides-Extra") is None
    urls = dict(url.split(", ", 1) for url in metadata.get_all("Project-URL") or [])
    assert {"Homepage", "Documentation", "Changelog", "Issues"} <= set(urls)


def test_both_licence_texts_are_installed() -> None:
    files = {Path(str(f)).name: f for f in distribution().files or [] if "licenses" in str(f)}
    assert set(files) == {"LICENSE-MIT", "LICENSE-APACHE"}
    mit = files["LICENSE-MIT"].read_text()
    apache = files["LICENSE-APACHE"].read_text()
    assert mit.startswith("MIT License\n") and "The qsharedmem developers" in mit
    assert "Apache License\n" in apache and "Version 2.0, January 2004" in apache
    assert "END OF TERMS AND CONDITIONS" in apache  # the whole text, not a stub


def test_console_script_is_declared_and_points_at_the_cli() -> None:
    scripts = importlib.metadata.entry_points(group="console_scripts", name="qsharedmem")
    assert [ep.value for ep in scripts] == ["qsharedmem.cli:main"]
    (script,) = scripts
    assert script.load() is cli.main
    assert Path(sys.executable).with_name("qsharedmem").is_file()


def test_type_information_ships_with_the_package() -> None:
    package = importlib.resources.files("qsharedmem")
    assert package.joinpath("py.typed").is_file()
    stub = package.joinpath("_qsharedmem.pyi").read_text()
    for name in ("class QSharedMemory", "class QNativeIpcKey", "class QSystemSemaphore"):
        assert name in stub


def test_the_imported_package_is_the_installed_distribution() -> None:
    """The tests must exercise the installation, not some other copy on sys.path."""
    package_file = Path(qsharedmem.__file__ or "").resolve()
    extension_file = Path(qsharedmem._qsharedmem.__file__ or "").resolve()
    assert extension_file.parent == package_file.parent
    dist = distribution()
    direct_url = json.loads(dist.read_text("direct_url.json") or "{}")
    editable = direct_url.get("dir_info", {}).get("editable", False)
    if SOURCE_TREE is not None:  # make test-wheel: the wheel's own files, outside the tree
        assert not editable, "expected the wheel, found an editable install"
        assert not package_file.is_relative_to(Path(SOURCE_TREE).resolve()), package_file
        installed = {Path(str(dist.locate_file(f))).resolve() for f in dist.files or []}
        assert package_file in installed and extension_file in installed
    else:  # make test-python: maturin develop's editable install of this tree
        assert editable, direct_url
        tree = Path(direct_url["url"].removeprefix("file://")).resolve()
        assert package_file == tree / "python" / "qsharedmem" / "__init__.py"
