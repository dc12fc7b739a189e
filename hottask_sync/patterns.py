"""Which files in a watched folder are taken: default skips plus the folder's include/exclude globs.

Globs apply to the path relative to the folder, with ``/`` as separator:
a pattern without ``/`` matches a name at any depth (``*.pdf``, ``tmp``); a pattern with ``/``
matches from the folder's root, and ``**`` stands for any number of folders
(``scans/**/*.pdf``). A pattern that matches a folder matches everything below it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

#: Names that are still being written by someone else, or are editor/OS litter.
PARTIAL_SUFFIXES = (".part", ".partial", ".tmp", ".temp", ".crdownload", ".download", ".swp", "~")
PARTIAL_PREFIXES = ("~$",)


def _translate(pattern: str) -> re.Pattern[str]:
    """Given a glob, returns a regex matching relative paths (and their parents) it names."""
    anchored = "/" in pattern.rstrip("/")
    parts: list[str] = []
    i = 0
    pat = pattern.strip("/")
    while i < len(pat):
        c = pat[i]
        if pat.startswith("**/", i):
            parts.append("(?:.*/)?")
            i += 3
            continue
        if pat.startswith("**", i):
            parts.append(".*")
            i += 2
            continue
        if c == "*":
            parts.append("[^/]*")
        elif c == "?":
            parts.append("[^/]")
        elif c == "[":
            j = pat.find("]", i + 1)
            if j == -1:
                parts.append(re.escape(c))
            else:
                body = pat[i + 1 : j]
                if body.startswith("!"):
                    body = "^" + body[1:]
                parts.append(f"[{body}]")
                i = j
        else:
            parts.append(re.escape(c))
        i += 1
    core = "".join(parts)
    prefix = "" if anchored else "(?:.*/)?"
    # "(/.*)?" makes a pattern that names a folder also name everything inside it.
    return re.compile(f"{prefix}{core}(?:/.*)?", re.DOTALL)


def is_partial_or_hidden(relpath: str) -> bool:
    """Returns True when any component is hidden or the base name looks unfinished."""
    parts = relpath.split("/")
    if any(p.startswith(".") for p in parts):
        return True
    name = parts[-1]
    return name.endswith(PARTIAL_SUFFIXES) or name.startswith(PARTIAL_PREFIXES)


@dataclass(frozen=True)
class Selector:
    """Decides from a relative path alone whether a file is one to upload."""

    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    _inc: tuple[re.Pattern[str], ...] = field(init=False, repr=False, compare=False)
    _exc: tuple[re.Pattern[str], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_inc", tuple(_translate(p) for p in self.include))
        object.__setattr__(self, "_exc", tuple(_translate(p) for p in self.exclude))

    @classmethod
    def of(cls, include: Iterable[str], exclude: Iterable[str]) -> Selector:
        """Given include and exclude globs, returns a selector for them."""
        return cls(tuple(include), tuple(exclude))

    def excluded(self, relpath: str) -> bool:
        """Returns True when an exclude glob matches the path or one of its folders."""
        return any(r.fullmatch(relpath) for r in self._exc)

    def wants(self, relpath: str) -> bool:
        """Given a file's path relative to its folder, returns True if it is to be uploaded."""
        if is_partial_or_hidden(relpath) or self.excluded(relpath):
            return False
        return not self._inc or any(r.fullmatch(relpath) for r in self._inc)

    def excluded_dir(self, reldir: str) -> bool:
        """Returns True when an exclude glob covers the folder (``done``, ``done/**``)."""
        return any(r.fullmatch(reldir) or r.fullmatch(reldir + "/") for r in self._exc)

    def may_descend(self, reldir: str) -> bool:
        """Returns False for a folder nothing below which can be wanted (hidden or excluded)."""
        return not (any(p.startswith(".") for p in reldir.split("/")) or self.excluded_dir(reldir))
