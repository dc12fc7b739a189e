"""Helpers shared by the end-to-end tests (the fixtures live in tests/conftest.py, the
fakes and builders in tests/fakes.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.conftest import DaemonProcess
from tests.fakes import clean_env


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Runs ``hottask-sync ARGS`` to completion (``env`` defaults to clean_env())."""
    return subprocess.run(
        [sys.executable, "-m", "hottask_sync.cli", *args],
        capture_output=True,
        text=True,
        env=env if env is not None else clean_env(),
        timeout=60,
        check=False,
    )


def status(config: Path) -> dict[str, Any]:
    """``hottask-sync status --json`` as a dict."""
    done = cli("status", "--config", str(config), "--json")
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def tree(root: Path) -> dict[str, bytes]:
    """Every regular file below ``root`` (relative path → content); {} if it is missing."""
    out: dict[str, bytes] = {}
    if not root.exists():
        return out
    for dirpath, _dirs, files in os.walk(os.fsencode(root)):
        for name in files:
            full = os.path.join(dirpath, name)
            rel = os.fsdecode(os.path.relpath(full, os.fsencode(root)))
            try:
                with open(full, "rb") as fh:
                    out[rel] = fh.read()
            except FileNotFoundError:
                continue  # moved away by the daemon while we walked: no longer in the tree
    return out


def not_json(daemon: DaemonProcess) -> list[str]:
    """Log lines that are not JSON (tracebacks, stray prints)."""
    return [line["text"] for line in list(daemon.lines) if line.get("event") == "<not json>"]
