"""The configuration reference is written three times: keep README, example and parser in step."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from hottask_sync import config
from hottask_sync.example import EXAMPLE_CONFIG

ROOT = Path(__file__).resolve().parents[2]


def _parser_keys() -> set[str]:
    keys = {f"api.{k}" for k in config.API_KEYS}
    keys |= {f"sync.{k}" for k in config.SYNC_KEYS}
    keys |= {f"logging.{k}" for k in config.LOGGING_KEYS}
    keys |= {f"metrics.{k}" for k in config.METRICS_KEYS}
    keys |= {f"folders[].{k}" for k in config.FOLDER_KEYS}
    return keys


def _example_keys() -> set[str]:
    """Keys set or shown commented out (`# key = ...`) in the example."""
    keys: set[str] = set()
    section = ""
    for line in EXAMPLE_CONFIG.splitlines():
        if m := re.match(r"^\[\[(\w+)\]\]", line):
            section = f"{m.group(1)}[]"
        elif m := re.match(r"^\[(\w+)\]", line):
            section = m.group(1)
        elif m := re.match(r"^#? ?(\w+) = ", line):
            keys.add(f"{section}.{m.group(1)}")
    return keys


def _readme_keys() -> set[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return set(re.findall(r"^\| `([\w\[\]]+\.\w+)` \|", text, re.MULTILINE))


def test_example_file_is_the_init_template() -> None:
    assert (ROOT / "config.example.toml").read_text(encoding="utf-8") == EXAMPLE_CONFIG


def test_example_parses_and_lists_every_key() -> None:
    tomllib.loads(EXAMPLE_CONFIG)
    assert _example_keys() == _parser_keys()


def test_readme_reference_lists_every_key() -> None:
    assert _readme_keys() == _parser_keys()


def test_example_defaults_are_the_parser_defaults(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(EXAMPLE_CONFIG, encoding="utf-8")
    loaded = config.load_config(path, environ={"HOME": str(tmp_path)})
    assert loaded.api == config.ApiConfig()
    defaults = config.SyncConfig(state_dir=loaded.sync.state_dir)
    assert loaded.sync == defaults
    assert loaded.logging == config.LoggingConfig()
    assert loaded.metrics == config.MetricsConfig()
    folder = loaded.folders[0]
    assert (folder.recursive, folder.after_upload, folder.poll) == (True, "keep", False)
