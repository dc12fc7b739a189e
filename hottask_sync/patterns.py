"""Which files in a watched folder are taken: default skips plus the folder's include/exclude globs.

Each glob is one gitignore pattern (matched by ``pathspec``) on the path relative to the folder,
with ``/`` as separator: a pattern without ``/`` (other than a trailing one) matches a name at
any depth (``*.pdf``, ``tmp``); a pattern with ``/`` matches from the folder's root, and ``**``
stands for any number of folders (``scans/**/*.pdf``). A pattern that matches a folder matches
everything below it. Unlike in a ``.gitignore`` file, a leading ``!`` or ``#`` is literal: the
lists hold no negations and no comments (exclude beats include instead). A pattern pathspec
could not use — an unclosed ``[``, an empty or reversed character class, a lone trailing
``\\`` — is refused with a reason by :func:`pattern_problem`, never silently dropped.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathspec import GitIgnoreSpec

#: Names that are still being written by someone else, or are editor/OS litter.
PARTIAL_SUFFIXES = (".part", ".partial", ".tmp", ".temp", ".crdownload", ".download", ".swp", "~")
PARTIAL_PREFIXES = ("~$",)

_LITERAL_BRACKET = "write \\[ for a literal '['"


class PatternError(ValueError):
    """A glob that cannot be used; ``pattern`` and ``reason`` say which and why."""

    def __init__(self, pattern: str, reason: str) -> None:
        super().__init__(f"invalid pattern {pattern!r}: {reason}")
        self.pattern = pattern
        self.reason = reason


def _gitignore_line(pattern: str) -> str:
    """Returns the pattern as a gitignore line: a leading ``!`` or ``#`` made literal."""
    return "\\" + pattern if pattern.startswith(("!", "#")) else pattern


def _class_end(segment: str, start: int) -> int:
    """Given the index of a ``[``, returns the index of its closing ``]``, or -1 (as git reads it)."""
    j = start + 1
    if j < len(segment) and segment[j] in "!^":
        j += 1
    if j < len(segment) and segment[j] == "]":
        j += 1  # "[]...]" and "[!]...]": a leading "]" is a member
    return segment.find("]", j)


def _class_problem(body: str) -> str | None:
    """Given a bracket expression's inside, returns why it is unusable, or None."""
    negated = body[:1] in ("!", "^")
    regex = "[" + ("^" if negated else "") + body[negated:].replace("\\", "\\\\") + "]"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # "[[:alpha:]]": nested set
            re.compile(regex)
    except re.error as exc:
        return f"invalid character class '[{body}]': {exc.msg}"
    return None


def _segment_problem(segment: str) -> str | None:
    """Given one ``/``-separated part of a glob, returns why it is unusable, or None."""
    i = 0
    while i < len(segment):
        char = segment[i]
        if char == "\\":
            if i + 1 == len(segment):
                return "a '\\' at the end of a name escapes nothing (write \\\\ for a literal '\\')"
            i += 2
        elif char == "[":
            end = _class_end(segment, i)
            if end == -1:
                if segment.startswith(("[]", "[!]", "[^]"), i):
                    return f"unclosed '[' (a ']' right after '[' or '[!' is in the set; {_LITERAL_BRACKET})"
                return f"unclosed '[' ({_LITERAL_BRACKET})"
            if (problem := _class_problem(segment[i + 1 : end])) is not None:
                return problem
            i = end + 1
        else:
            i += 1
    return None


def pattern_problem(pattern: str) -> str | None:
    """Given a glob, returns why it cannot be used (one short sentence), or None when it can."""
    if not pattern:
        return "empty pattern"
    for segment in pattern.split("/"):
        if (problem := _segment_problem(segment)) is not None:
            return problem
    try:
        spec = _spec([pattern])
    except (ValueError, re.error) as exc:
        return str(exc)
    if all(p.include is None for p in spec.patterns):
        return "matches nothing"
    return None


def _spec(patterns: Iterable[str]) -> GitIgnoreSpec:
    # Imported at first use: a daemon whose folders have no globs never needs it (start-up).
    from pathspec import GitIgnoreSpec

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return GitIgnoreSpec.from_lines([_gitignore_line(p) for p in patterns])


def _compile(patterns: tuple[str, ...]) -> GitIgnoreSpec | None:
    """Returns the spec of the globs, or None when there are none."""
    if not patterns:
        return None
    for pattern in patterns:
        if (problem := pattern_problem(pattern)) is not None:
            raise PatternError(pattern, problem)
    return _spec(patterns)


def is_partial_or_hidden(relpath: str) -> bool:
    """Returns True when any component is hidden or the base name looks unfinished."""
    parts = relpath.split("/")
    if any(p.startswith(".") for p in parts):
        return True
    name = parts[-1]
    return name.endswith(PARTIAL_SUFFIXES) or name.startswith(PARTIAL_PREFIXES)


@dataclass(frozen=True)
class Selector:
    """Decides from a relative path alone whether a file is one to upload.

    Raises PatternError for the first unusable glob (see :func:`pattern_problem`).
    """

    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    _inc: GitIgnoreSpec | None = field(init=False, repr=False, compare=False)
    _exc: GitIgnoreSpec | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_inc", _compile(self.include))
        object.__setattr__(self, "_exc", _compile(self.exclude))

    @classmethod
    def of(cls, include: Iterable[str], exclude: Iterable[str]) -> Selector:
        """Given include and exclude globs, returns a selector for them."""
        return cls(tuple(include), tuple(exclude))

    def excluded(self, relpath: str) -> bool:
        """Returns True when an exclude glob matches the path or one of its folders."""
        return self._exc is not None and self._exc.match_file(relpath)

    def wants(self, relpath: str) -> bool:
        """Given a file's path relative to its folder, returns True if it is to be uploaded."""
        if is_partial_or_hidden(relpath) or self.excluded(relpath):
            return False
        return self._inc is None or self._inc.match_file(relpath)

    def excluded_dir(self, reldir: str) -> bool:
        """Returns True when an exclude glob covers the folder (``done``, ``done/``, ``done/**``)."""
        return self._exc is not None and (
            self._exc.match_file(reldir) or self._exc.match_file(reldir + "/")
        )

    def may_descend(self, reldir: str) -> bool:
        """Returns False for a folder nothing below which can be wanted (hidden or excluded)."""
        return not (any(p.startswith(".") for p in reldir.split("/")) or self.excluded_dir(reldir))
