"""The configuration reference is generated from the config dataclasses: check it is current.

The dataclass fields in hottask_sync.config are the one definition of each key (default, type,
range, meaning). config.example.toml (what `hottask-sync init` writes) and the README's table
are generated from them by hottask_sync.example; these tests regenerate and compare, and check
that what is generated says what the parser does. To refresh both files after changing a key:
`python -m hottask_sync.example --update .`
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from hottask_sync import backoff, config, example
from hottask_sync.example import EXAMPLE_CONFIG

ROOT = Path(__file__).resolve().parents[2]
REFRESH = "run `python -m hottask_sync.example --update .` and commit the result"


def _parser_keys() -> set[str]:
    keys = {f"api.{k}" for k in config.API_KEYS}
    keys |= {f"sync.{k}" for k in config.SYNC_KEYS}
    keys |= {f"logging.{k}" for k in config.LOGGING_KEYS}
    keys |= {f"metrics.{k}" for k in config.METRICS_KEYS}
    keys |= {f"folders[].{k}" for k in config.FOLDER_KEYS}
    return keys


def _example_keys(text: str) -> set[str]:
    """Keys set or shown commented out (`# key = ...`) in an example config."""
    keys: set[str] = set()
    section = ""
    for line in text.splitlines():
        if m := re.match(r"^\[\[(\w+)\]\]", line):
            section = f"{m.group(1)}[]"
        elif m := re.match(r"^\[(\w+)\]", line):
            section = m.group(1)
        elif m := re.match(r"^#? ?(\w+) = ", line):
            keys.add(f"{section}.{m.group(1)}")
    return keys


def _readme() -> str:
    return (ROOT / "README.md").read_text(encoding="utf-8")


# --- the files are the generated text -------------------------------------------------------


def test_example_file_is_the_generated_init_template() -> None:
    text = (ROOT / "config.example.toml").read_text(encoding="utf-8")
    assert text == example.render_example(), REFRESH
    assert example.render_example() == EXAMPLE_CONFIG


def test_readme_table_is_the_generated_table() -> None:
    readme = _readme()
    assert example.replace_table(readme, example.readme_table()) == readme, REFRESH
    assert example.readme_table() in readme


def test_command_line_prints_the_generated_texts() -> None:
    def run(*args: str) -> str:
        argv = [sys.executable, "-m", "hottask_sync.example", *args]
        return subprocess.run(argv, capture_output=True, text=True, check=True).stdout

    assert run() == EXAMPLE_CONFIG
    assert run("--readme-table") == example.readme_table()


def test_update_rewrites_stale_files_and_leaves_current_ones(tmp_path: Path) -> None:
    readme = _readme()
    stale = readme.replace("| `sync.concurrency` |", "| `sync.concurrence` |")
    assert stale != readme
    (tmp_path / "README.md").write_text(stale, encoding="utf-8")
    assert example.update(tmp_path) == [tmp_path / "config.example.toml", tmp_path / "README.md"]
    assert (tmp_path / "README.md").read_text(encoding="utf-8") == readme
    assert (tmp_path / "config.example.toml").read_text(encoding="utf-8") == EXAMPLE_CONFIG
    assert example.update(tmp_path) == []


def test_replace_table_needs_the_table_head() -> None:
    with pytest.raises(ValueError, match="config table"):
        example.replace_table("# no table here\n", example.readme_table())


# --- what is generated says what the parser does ----------------------------------------------


def test_example_parses_and_lists_every_key() -> None:
    tomllib.loads(EXAMPLE_CONFIG)
    assert _example_keys(EXAMPLE_CONFIG) == _parser_keys()


def test_readme_reference_lists_every_key() -> None:
    found = set(re.findall(r"^\| `([\w\[\]]+\.\w+)` \|", _readme(), re.MULTILINE))
    assert found == _parser_keys()


def test_example_defaults_are_the_parser_defaults(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(EXAMPLE_CONFIG, encoding="utf-8")
    loaded = config.load_config(path, environ={"HOME": str(tmp_path)})
    assert loaded.api == config.ApiConfig()
    assert loaded.sync == config.SyncConfig(state_dir=loaded.sync.state_dir)
    assert loaded.logging == config.LoggingConfig()
    assert loaded.metrics == config.MetricsConfig()
    (folder,) = loaded.folders
    assert folder == config.FolderConfig(path=folder.path)


def test_unset_keys_take_the_field_defaults(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[[folders]]\npath = "/srv/in"\n', encoding="utf-8")
    loaded = config.load_config(path, environ={"HOME": str(tmp_path)})
    for section, cls in config.SECTIONS:
        values = loaded.folders[0] if section == "folders" else getattr(loaded, section)
        for f in config.key_fields(cls):
            if config.has_default(f):
                assert getattr(values, f.name) == config.field_default(f), f"{section}.{f.name}"


def test_every_key_is_documented() -> None:
    for section, cls in config.SECTIONS:
        for f in config.key_fields(cls):
            doc = config.key_doc(f)
            assert doc.doc.strip().endswith("."), f"{section}.{f.name}"
            if not config.has_default(f) or config.field_default(f) is None:
                assert doc.shown, f"{section}.{f.name} needs a value to show in the example"


def test_auth_probe_seconds_default_is_the_circuits_first_delay() -> None:
    assert config.ApiConfig().auth_probe_seconds == backoff.AUTH_FIRST_PROBE_SECONDS
    row = next(r for r in example.readme_table().splitlines() if "api.auth_probe_seconds" in r)
    assert "| number > 0 | `30.0` |" in row


def test_the_example_follows_the_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    # Nothing about a key is written in example.py: a new field shows up with its default.
    @dataclass(frozen=True)
    class Toy:
        speed: float = field(
            default=1.5, metadata={"key": config.KeyDoc("How `fast`.", "number", low=0)}
        )
        mode: str = field(
            default="b",
            metadata={"key": config.KeyDoc("Which.", "choice", choices=("a", "b"))},
        )

    monkeypatch.setattr(example, "SECTIONS", (("toy", Toy),))
    assert example.render_example().endswith(
        '[toy]\n# How fast. (number >= 0)\nspeed = 1.5\n# Which. One of "a" or "b".\nmode = "b"\n'
    )
    assert example.readme_table().splitlines()[2:] == [
        "| `toy.speed` | number ≥ 0 | `1.5` | How `fast`. |",
        '| `toy.mode` | `"a"`/`"b"` | `"b"` | Which. |',
    ]


def test_the_architecture_page_names_every_module_and_no_other() -> None:
    """A newcomer finds any behaviour from the file names: the page's module table is
    complete and names nothing that is gone."""
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    listed = set(re.findall(r"^\| `([a-z_]+(?:\.py|/))` \|", text, flags=re.M))
    package = ROOT / "hottask_sync"
    actual = {p.name for p in package.glob("*.py") if p.name != "__init__.py"}
    actual |= {f"{p.name}/" for p in package.iterdir() if (p / "__init__.py").is_file()}
    assert listed == actual
