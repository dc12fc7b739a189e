"""The built wheel holds every package of hottask_sync (subpackages included), and only those.

The wheel is built by pip from a copy of the source tree, so that the in-tree build's
``build/`` and ``*.egg-info`` never land in the working tree.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path, PurePosixPath

REPO_ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "hottask_sync"

_NOT_SOURCE = shutil.ignore_patterns(
    ".git",
    ".venv",
    "build",
    "dist",
    "*.egg-info",
    "__pycache__",
    ".mypy_cache",
    ".ruff_cache",
    ".pytest_cache",
    "emu",
    "hottask-demo",
)


def _pip_wheel(source: Path, out: Path) -> subprocess.CompletedProcess[str]:
    # No build isolation: the test extra brings setuptools >= 70.1, which builds wheels by
    # itself, so nothing is fetched.
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
    return subprocess.run(
        [*command, "-w", str(out), str(source)],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def _build_wheel(tmp_path: Path) -> Path:
    source = tmp_path / "src"
    shutil.copytree(REPO_ROOT, source, ignore=_NOT_SOURCE, symlinks=True)
    out = tmp_path / "wheels"
    result = _pip_wheel(source, out)
    assert result.returncode == 0, result.stderr
    (wheel,) = out.glob("*.whl")
    return wheel


def _source_py_files() -> set[PurePosixPath]:
    """Every .py file under hottask_sync/, relative to the repository root."""
    return {
        PurePosixPath(py.relative_to(REPO_ROOT).as_posix())
        for py in (REPO_ROOT / PACKAGE).rglob("*.py")
        if "__pycache__" not in py.parts
    }


def test_wheel_holds_every_package_directory(tmp_path: Path) -> None:
    wheel = _build_wheel(tmp_path)
    with zipfile.ZipFile(wheel) as zf:
        names = {PurePosixPath(n) for n in zf.namelist()}

    source_files = _source_py_files()
    source_dirs = {f.parent for f in source_files}
    wheel_dirs = {n.parent for n in names if n.suffix == ".py"}
    assert PurePosixPath(PACKAGE, "emulator") in source_dirs  # the layout this was written for
    assert source_dirs <= wheel_dirs, sorted(map(str, source_dirs - wheel_dirs))
    assert source_files <= names, sorted(map(str, source_files - names))
    # Only the package itself and its metadata: no tests/ or bench/ packages.
    tops = {n.parts[0] for n in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {PACKAGE}, sorted(tops)
