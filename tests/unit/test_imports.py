"""The product never imports the emulator, except to run the ``emulator`` and ``demo`` commands.

Each check runs in a fresh interpreter: this test process has the emulator loaded already
(tests/conftest.py imports it).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]

_LOADED = "print(sorted(m for m in sys.modules if m.startswith('hottask_sync.emulator')))"


def _emulator_modules_after(code: str) -> str:
    """Runs ``code`` in a new interpreter; returns the emulator modules it left loaded."""
    result = subprocess.run(
        [sys.executable, "-c", f"import sys\n{code}\n{_LOADED}"],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_importing_the_cli_does_not_import_the_emulator() -> None:
    assert _emulator_modules_after("import hottask_sync.cli") == "[]"


def test_building_the_parser_does_not_import_the_emulator() -> None:
    code = "import hottask_sync.cli\nhottask_sync.cli.build_parser()"
    assert _emulator_modules_after(code) == "[]"


def test_parsing_the_emulator_command_does_not_import_it_yet() -> None:
    code = (
        "import hottask_sync.cli\n"
        "args = hottask_sync.cli.build_parser().parse_args(['emulator', '--port', '0', '--help'])\n"
        "assert args.emulator_args == ['--port', '0', '--help'], args"
    )
    assert _emulator_modules_after(code) == "[]"


def test_the_check_itself_sees_the_emulator_when_it_is_imported() -> None:
    """Guards the guard: the same probe does report an imported emulator."""
    assert "'hottask_sync.emulator'" in _emulator_modules_after("import hottask_sync.emulator")
