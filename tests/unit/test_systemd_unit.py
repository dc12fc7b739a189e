"""The systemd unit passes `systemd-analyze verify` (via .ci/verify-unit.sh), and the script
really catches a misspelled key, which `systemd-analyze verify` alone exits 0 on; the unit
restarts the daemon after every exit code but bad input's."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hottask_sync.errors import ConfigError, KeyNotFoundError, LockedError

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / ".ci" / "verify-unit.sh"
UNIT = REPO / "systemd" / "hottask-sync.service"

# Only the checks that run systemd-analyze need it; the unit's own content is checked anyway.
needs_analyze = pytest.mark.skipif(
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


@needs_analyze
def test_unit_passes(program: str) -> None:
    result = run_script(program)
    assert result.returncode == 0, result.stderr + result.stdout
    assert result.stderr == ""
    assert "OK" in result.stdout


@needs_analyze
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


@needs_analyze
def test_missing_program_fails(tmp_path: Path) -> None:
    result = run_script(str(tmp_path / "not-installed"))
    assert result.returncode == 1
    assert "is not executable" in result.stderr


def _unit_values(key: str) -> list[str]:
    """Every value the unit gives ``key`` (space-separated lists split, repeats joined)."""
    values: list[str] = []
    for line in UNIT.read_text().splitlines():
        name, sep, value = line.partition("=")
        if sep and name.strip() == key:
            values.extend(value.split())
    return values


def test_restarts_after_already_running_but_not_after_bad_input() -> None:
    """Issue 10 item 11: "already running" exited 2, which RestartPreventExitStatus= lists,
    so a daemon that lost a race for its lock stayed down for good. It now has its own exit
    code, which the unit restarts; bad input (2) still is not restarted."""
    assert _unit_values("Restart") == ["on-failure"]
    prevented = _unit_values("RestartPreventExitStatus")
    assert prevented == ["2"]
    assert str(ConfigError.exit_code) in prevented
    assert str(KeyNotFoundError.exit_code) in prevented
    assert LockedError.exit_code not in (0, 1, 2)
    assert str(LockedError.exit_code) not in prevented


def _unit_seconds(key: str) -> float:
    values = [
        line.split("=", 1)[1].strip()
        for line in UNIT.read_text(encoding="utf-8").splitlines()
        if line.startswith(f"{key}=")
    ]
    assert len(values) == 1, f"{key}= should be set once in the unit"
    value = values[0]
    return float(value[:-1]) * 60 if value.endswith("min") else float(value.rstrip("s"))


def test_the_longest_stop_fits_the_units_stop_timeout() -> None:
    """Grace for running uploads, then the abort's unwinding, then every thread's join:
    together always shorter than TimeoutStopSec, or systemd would SIGKILL mid-stop."""
    from hottask_sync.config import MAX_SHUTDOWN_GRACE_SECONDS
    from hottask_sync.runtime import ABORT_WAIT_SECONDS, JOIN_SECONDS

    worst = MAX_SHUTDOWN_GRACE_SECONDS + ABORT_WAIT_SECONDS + JOIN_SECONDS
    assert worst + 2.0 <= _unit_seconds("TimeoutStopSec")


def test_a_grace_longer_than_the_stop_budget_is_a_config_error(tmp_path: Path) -> None:
    from hottask_sync.config import load_config

    path = tmp_path / "c.toml"
    path.write_text(
        f'[sync]\nshutdown_grace_seconds = 25\n\n[[folders]]\npath = "{tmp_path}"\n',
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as info:
        load_config(path, {})
    assert any("sync.shutdown_grace_seconds" in p for p in info.value.problems)


def test_the_unit_limits_files_and_hides_proc() -> None:
    text = UNIT.read_text(encoding="utf-8")
    for line in ("LimitNOFILE=8192", "ProtectProc=invisible", "ProcSubset=pid", "PrivateTmp=yes"):
        assert f"\n{line}\n" in text, line


@needs_analyze
def test_the_units_exposure_stays_at_or_below_1_7() -> None:
    done = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", str(UNIT)],
        capture_output=True,
        text=True,
        check=False,
    )
    last = done.stdout.strip().splitlines()[-1]
    level = float(last.split("level for hottask-sync.service:")[1].split()[0])
    assert level <= 1.7, last
