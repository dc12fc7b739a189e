"""The systemd unit passes `systemd-analyze verify` (via .ci/verify-unit.sh), and the script
really catches a misspelled key, which `systemd-analyze verify` alone exits 0 on."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / ".ci" / "verify-unit.sh"
UNIT = REPO / "systemd" / "hottask-sync.service"

pytestmark = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None and not os.environ.get("CI"),
    reason="systemd-analyze is not installed (apt install systemd); CI=1 makes this a failure",
)


@pytest.fixture
def program(tmp_path: Path) -> str:
    """An executable to stand in for the installed console script in ExecStart=."""
    installed = Path(sys.executable).with_name("hottask-sync")
    if installed.is_file() and os.access(installed, os.X_OK):
        return str(installed)
    stand_in = tmp_path / "hottask-sync"
    stand_in.write_text("#!/bin/sh\nexit 0\n")
    stand_in.chmod(0o755)
    return str(stand_in)


def run_script(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_unit_passes(program: str) -> None:
    result = run_script(program)
    assert result.returncode == 0, result.stderr + result.stdout
    assert result.stderr == ""
    assert "OK" in result.stdout


@pytest.mark.parametrize(
    ("original", "broken", "expected"),
    [
        ("ProtectSystem=strict", "ProtectSytem=strict", "Unknown key"),
        ("Type=notify", "Type=notifyy", "Failed to parse service type"),
        ("WatchdogSec=30", "WatchdogSec=30x", "Failed to parse sec value"),
    ],
)
def test_broken_copy_fails(
    program: str, tmp_path: Path, original: str, broken: str, expected: str
) -> None:
    text = UNIT.read_text()
    assert f"\n{original}\n" in text
    copy = tmp_path / "hottask-sync.service"
    copy.write_text(text.replace(f"\n{original}\n", f"\n{broken}\n"))
    result = run_script(program, str(copy))
    assert result.returncode == 1
    assert expected in result.stderr
    assert str(copy) in result.stderr  # names the file checked, not its temporary copy


def test_missing_program_fails(tmp_path: Path) -> None:
    result = run_script(str(tmp_path / "not-installed"))
    assert result.returncode == 1
    assert "is not executable" in result.stderr
