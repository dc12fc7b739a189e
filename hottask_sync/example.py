"""The commented starter config and the README's configuration table, generated from the keys.

Every key's default, type, range and meaning is defined once, on the config dataclasses in
:mod:`hottask_sync.config`. From them this module renders ``EXAMPLE_CONFIG`` (what
``hottask-sync init`` writes; config.example.toml is a copy) and the README's table. After
changing a key, regenerate both and commit them (a test checks they are current)::

    python -m hottask_sync.example --update .
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from collections.abc import Sequence
from dataclasses import Field
from pathlib import Path
from typing import Any

import tomli_w

from .config import SECTIONS, KeyDoc, field_default, has_default, is_required, key_doc, key_fields

EXAMPLE_NAME = "config.example.toml"
README_NAME = "README.md"
TABLE_HEAD = ("| key | type | default | meaning |", "|---|---|---|---|")

_HEADER = (
    "# hottask-sync configuration. Every key is shown with its default; a key that is",
    "# commented out has no fixed default (its comment says what applies when unset).",
    "# Check it with:  hottask-sync check --config THIS_FILE",
)
_INTROS = {"folders": "One [[folders]] table per watched folder; path is required."}
_WIDTH = 80
_NBSP = "\N{NO-BREAK SPACE}"


def type_text(spec: KeyDoc, *, markdown: bool) -> str:
    """Returns the key's type and range as the README (``markdown``) or the example shows it."""
    if spec.kind == "choice":
        if markdown:
            return "/".join(f'`"{c}"`' for c in spec.choices)
        return ", ".join(f'"{c}"' for c in spec.choices[:-1]) + f' or "{spec.choices[-1]}"'
    base = {"bool": "bool", "string": "string", "path": "string", "globs": "array of globs"}
    text = base.get(spec.kind, spec.kind)
    at_least = "≥" if markdown else ">="
    if spec.positive:
        text += " > 0"
    if spec.low is not None and spec.high is not None:
        text += f" {spec.low:g}..{spec.high:g}"
    elif spec.low is not None:
        text += f" {at_least} {spec.low:g}"
    return text


def toml_value(value: Any) -> str:
    """Returns a value as TOML writes it on the right of ``key = ``."""
    line = tomli_w.dumps({"k": list(value) if isinstance(value, tuple) else value})
    return line.removeprefix("k = ").strip()


def default_text(f: Field[Any]) -> str:
    """Returns the README's default column for a key."""
    spec = key_doc(f)
    if spec.default_doc is not None:
        return spec.default_doc
    if is_required(f):
        return "required"
    default = field_default(f)
    return "—" if default is None else f"`{toml_value(default)}`"


def _comment(text: str) -> list[str]:
    return textwrap.wrap(text, _WIDTH - 2, initial_indent="# ", subsequent_indent="# ")


def _key_lines(f: Field[Any]) -> list[str]:
    """Returns the example's comment and ``key = value`` lines for one key."""
    spec = key_doc(f)
    comment = spec.doc.replace("`", "")
    if spec.kind == "choice":
        comment += f" One of {type_text(spec, markdown=False)}."
    elif spec.positive or spec.low is not None:
        # Kept on one line: no-break spaces while wrapping.
        comment += " (" + type_text(spec, markdown=False).replace(" ", _NBSP) + ")"
    lines = [line.replace(_NBSP, " ") for line in _comment(comment)]
    lines += [f"# {line}".rstrip() for line in spec.note]
    default = field_default(f)
    if has_default(f) and default is not None:
        lines.append(f"{f.name} = {toml_value(default)}")
    else:
        value = f"{f.name} = {toml_value(spec.shown)}"
        lines.append(value if is_required(f) else f"# {value}")
    return lines


def render_example() -> str:
    """Returns the commented example config: every key with its default and meaning."""
    lines = list(_HEADER)
    for name, cls in SECTIONS:
        lines.append("")
        if name in _INTROS:
            lines += _comment(_INTROS[name])
        lines.append(f"[[{name}]]" if name == "folders" else f"[{name}]")
        for f in key_fields(cls):
            lines += _key_lines(f)
    return "\n".join(lines) + "\n"


def readme_table() -> str:
    """Returns the README's configuration table (Markdown), one row per key."""
    rows = list(TABLE_HEAD)
    for name, cls in SECTIONS:
        prefix = f"{name}[]" if name == "folders" else name
        for f in key_fields(cls):
            spec = key_doc(f)
            cells = (
                f"`{prefix}.{f.name}`",
                type_text(spec, markdown=True),
                default_text(f),
                spec.doc.replace("|", "\\|"),
            )
            rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"


def replace_table(readme: str, table: str) -> str:
    """Given the README's text, returns it with its configuration table replaced by ``table``."""
    lines = readme.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.rstrip("\n") == TABLE_HEAD[0]), None)
    if start is None:
        raise ValueError(f"{README_NAME}: no line {TABLE_HEAD[0]!r} starts the config table")
    end = start
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    return "".join(lines[:start]) + table + "".join(lines[end:])


def update(root: Path) -> list[Path]:
    """Rewrites config.example.toml and the README's table under ``root``; returns those changed."""
    changed: list[Path] = []
    readme = root / README_NAME
    old = readme.read_text(encoding="utf-8")
    targets = {root / EXAMPLE_NAME: EXAMPLE_CONFIG, readme: replace_table(old, readme_table())}
    for path, text in targets.items():
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
            changed.append(path)
    return changed


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m hottask_sync.example",
        description="Print the example config (default), or the README's config table.",
    )
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--readme-table", action="store_true", help="print the README table")
    group.add_argument(
        "--update",
        metavar="ROOT",
        type=Path,
        help=f"rewrite ROOT/{EXAMPLE_NAME} and the table in ROOT/{README_NAME}",
    )
    args = parser.parse_args(argv)
    if args.update is not None:
        for path in update(args.update):
            print(f"updated {path}")
        return 0
    sys.stdout.write(readme_table() if args.readme_table else EXAMPLE_CONFIG)
    return 0


EXAMPLE_CONFIG = render_example()

if __name__ == "__main__":
    sys.exit(main())
