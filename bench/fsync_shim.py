"""The slow-disk shim of the bench: ``slow_fsync.c`` built with gcc and preloaded into one
process, so that every fsync/fdatasync/sync_file_range of that process waits first.

``build(directory)`` compiles it (once per directory), ``environment(...)`` gives the
variables that load it into a child process, ``read_report(path)`` reads back how many
calls the child made. bench/README.md explains how it works and why it is applied only to
the daemon.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

SOURCE = Path(__file__).resolve().parent / "slow_fsync.c"
LIBRARY = "slow_fsync.so"


class ShimError(Exception):
    """The shim cannot be built here (no gcc, or the compiler failed)."""


def build(directory: Path) -> Path:
    """Compiles ``slow_fsync.c`` into ``directory/slow_fsync.so`` (if not already there)
    and returns its path. Raises ShimError with a one-line reason when it cannot."""
    target = directory / LIBRARY
    if target.exists():
        return target
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        raise ShimError("no C compiler (gcc or cc) on PATH: the slow-disk shim cannot be built")
    directory.mkdir(parents=True, exist_ok=True)
    partial = directory / (LIBRARY + ".tmp")
    cmd = [gcc, "-O2", "-shared", "-fPIC", "-o", str(partial), str(SOURCE), "-ldl"]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        first = (done.stderr.strip().splitlines() or ["no output"])[0]
        raise ShimError(f"building the slow-disk shim failed: {first}")
    partial.replace(target)
    return target


def environment(library: Path, delay_ms: float, report: Path | None = None) -> dict[str, str]:
    """The environment variables that make a child process's syncs wait ``delay_ms``."""
    env = {"LD_PRELOAD": str(library), "SLOW_FSYNC_MS": f"{delay_ms:g}"}
    if report is not None:
        env["SLOW_FSYNC_REPORT"] = str(report)
    return env


def read_report(path: Path) -> dict[str, int] | None:
    """The call counts a shimmed process appended at exit (summed over its lines), or None
    if it wrote none (it was killed, or the shim was not loaded)."""
    try:
        text = path.read_text(encoding="ascii")
    except FileNotFoundError:
        return None
    counts: dict[str, int] = {}
    for line in text.splitlines():
        for item in line.split():
            name, _, value = item.partition("=")
            if value.isdigit():
                counts[name] = counts.get(name, 0) + int(value)
    return counts or None
