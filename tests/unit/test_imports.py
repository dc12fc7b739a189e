"""What the product imports: never the emulator, except to run the ``emulator`` and ``demo``
commands; prometheus-client only when metrics are served and pathspec only when a folder
has globs (each cost about 8 ms of CPU at every start).

Each check runs in a fresh interpreter: this test process has them all loaded already
(tests/conftest.py imports the emulator).
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
EMULATOR = "hottask_sync.emulator"


def _modules_after(code: str, *names: str) -> str:
    """Runs ``code`` in a new interpreter; returns which of the modules ``names`` (and their
    submodules) it left loaded, sorted."""
    loaded = (
        f"print(sorted(m for m in sys.modules "
        f"if any(m == n or m.startswith(n + '.') for n in {names!r})))"
    )
    result = subprocess.run(
        [sys.executable, "-c", f"import sys\n{code}\n{loaded}"],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_importing_the_cli_does_not_import_the_emulator() -> None:
    assert _modules_after("import hottask_sync.cli", EMULATOR) == "[]"


def test_building_the_parser_does_not_import_the_emulator() -> None:
    code = "import hottask_sync.cli\nhottask_sync.cli.build_parser()"
    assert _modules_after(code, EMULATOR) == "[]"


def test_parsing_the_emulator_command_does_not_import_it_yet() -> None:
    code = (
        "import hottask_sync.cli\n"
        "args = hottask_sync.cli.build_parser().parse_args(['emulator', '--port', '0', '--help'])\n"
        "assert args.emulator_args == ['--port', '0', '--help'], args"
    )
    assert _modules_after(code, EMULATOR) == "[]"


def test_the_check_itself_sees_the_emulator_when_it_is_imported() -> None:
    """Guards the guard: the same probe does report an imported emulator."""
    assert "'hottask_sync.emulator'" in _modules_after("import hottask_sync.emulator", EMULATOR)


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
        "import hottask_sync.cli\n"
        "from hottask_sync.config import load_config\n"
        "from hottask_sync.runtime import metrics_for\n"
        f"metrics_for(load_config({str(config)!r}))"
    )
    return _modules_after(code, "prometheus_client", "pathspec")


def test_without_metrics_or_globs_neither_is_imported(tmp_path: Path) -> None:
    assert _loaded_at_start(_config(tmp_path)) == "[]"


def test_with_metrics_and_globs_both_are_imported(tmp_path: Path) -> None:
    config = _config(tmp_path, listen="127.0.0.1:9464", exclude=("*.log",))
    loaded = _loaded_at_start(config)
    assert "'pathspec'" in loaded and "'prometheus_client'" in loaded


def test_metrics_are_recorded_only_when_served(tmp_path: Path) -> None:
    assert metrics_for(load_config(_config(tmp_path))) is None
    served = load_config(_config(tmp_path, listen="127.0.0.1:9464"))
    assert isinstance(metrics_for(served), Metrics)
