"""Start-up cost: the daemon imports prometheus_client only when it serves metrics, and
pathspec only when a folder has globs (each cost about 8 ms of CPU at every start).

The imports are checked in a fresh interpreter: this test process has both loaded already.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import tomli_w

from hottask_sync.config import load_config
from hottask_sync.metrics import Metrics
from hottask_sync.runtime import metrics_for

REPO_ROOT = Path(__file__).resolve().parents[2]


def _config(tmp_path: Path, *, listen: str = "", exclude: tuple[str, ...] = ()) -> Path:
    inbox = tmp_path / "inbox"
    inbox.mkdir(exist_ok=True)
    data = {
        "sync": {"state_dir": str(tmp_path / "state")},
        "metrics": {"listen": listen},
        "folders": [{"path": str(inbox), "exclude": list(exclude)}],
    }
    path = tmp_path / "c.toml"
    path.write_text(tomli_w.dumps(data), encoding="utf-8")
    return path


def _loaded_at_start(config: Path) -> str:
    """Imports the CLI, loads the config and makes the daemon's metrics in a new interpreter;
    returns which of prometheus_client and pathspec it then has loaded."""
    code = (
        "import sys\n"
        "import hottask_sync.cli\n"
        "from hottask_sync.config import load_config\n"
        "from hottask_sync.runtime import metrics_for\n"
        f"metrics_for(load_config({str(config)!r}))\n"
        "print(sorted(m for m in ('prometheus_client', 'pathspec') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_without_metrics_or_globs_neither_is_imported(tmp_path: Path) -> None:
    assert _loaded_at_start(_config(tmp_path)) == "[]"


def test_with_metrics_and_globs_both_are_imported(tmp_path: Path) -> None:
    config = _config(tmp_path, listen="127.0.0.1:9464", exclude=("*.log",))
    assert _loaded_at_start(config) == "['pathspec', 'prometheus_client']"


def test_metrics_are_recorded_only_when_served(tmp_path: Path) -> None:
    assert metrics_for(load_config(_config(tmp_path))) is None
    served = load_config(_config(tmp_path, listen="127.0.0.1:9464"))
    assert isinstance(metrics_for(served), Metrics)
