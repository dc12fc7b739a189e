"""What the ledger says about named files: the answers of ``hottask-sync status FILE…``.

An operator's first question is "did ``invoice-123.pdf`` go up, and as what?". For each
named file this says where it belongs (folder and relative path), how far its upload got
(the ledger row), and whether the version on disk now is the one that was sent: a file
counts as uploaded only when its row is ``reported`` and the file is either still that
version (:meth:`FileSig.same_version`) or gone from disk (moved or deleted after upload).
"""

from __future__ import annotations

import enum
import os
import stat as stat_mod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from .config import FolderConfig
from .errors import UserError
from .files import FileSig
from .ledger import Entry, Ledger, State

#: Given a name from the command line, returns (folder key, path relative to the folder);
#: raises UserError (one line naming it) when it is inside no configured folder.
Locate = Callable[[str], tuple[str, str]]


class Verdict(enum.StrEnum):
    """The answer for one named file; only UPLOADED counts as done."""

    UPLOADED = "uploaded"  # reported, and the file on disk (if any) is the version sent
    CHANGED = "changed"  # reported once, but the file on disk is another version now
    IN_PROGRESS = "in_progress"  # pending, ticketed or put: not reported yet
    FAILED = "failed"  # failed permanently: waits for a change or `retry`
    UNKNOWN = "unknown"  # no ledger row: never seen, still settling, or left out
    OUTSIDE = "outside"  # inside no configured folder


_WAITING = {
    State.PENDING: "not uploaded yet (pending: waiting to be sent)",
    State.TICKETED: "not uploaded yet (ticketed: being sent)",
    State.PUT: "not uploaded yet (put: the bytes are sent, the report is owed)",
}


@dataclass(frozen=True, slots=True)
class FileProof:
    """One named file: the verdict, why (``detail``), and its ledger row if it has one."""

    name: str
    verdict: Verdict
    detail: str
    folder: str | None = None
    relpath: str | None = None
    entry: Entry | None = None

    @property
    def uploaded(self) -> bool:
        """True when the file is uploaded in its current version (or gone after upload)."""
        return self.verdict is Verdict.UPLOADED

    def as_json(self) -> dict[str, Any]:
        """Returns the JSON object of ``status --json FILE…`` for this file."""
        e = self.entry
        size, sha256 = _sent(e)
        return {
            "name": _printable(self.name),
            "folder": self.folder,
            "path": None if self.relpath is None else _printable(self.relpath),
            "verdict": str(self.verdict),
            "uploaded": self.uploaded,
            "detail": self.detail,
            "state": None if e is None else str(e.state),
            "file_store_id": None if e is None else e.file_store_id,
            "reported_at": None if e is None else _when(e.reported_at),
            "size": size,
            "sha256": sha256,
            "attempts": None if e is None else e.attempts,
            "last_error": None if e is None else e.last_error,
        }

    def line(self) -> str:
        """Returns the one line ``status FILE…`` prints for this file."""
        head = f"{_printable(self.name)}: {self.detail}"
        if self.folder is None or self.relpath is None:
            return head
        parts = [f"folder {self.folder}, path {_printable(self.relpath)}"]
        e = self.entry
        if e is not None:
            parts.append(f"state {e.state}")
            if e.file_store_id is not None:
                parts.append(f"FileStoreId {e.file_store_id}")
            if e.reported_at is not None:
                parts.append(f"reported {_when(e.reported_at)}")
            size, sha256 = _sent(e)
            if sha256 is not None:
                parts.append(f"sent {size} bytes, sha256 {sha256}")
            if e.last_error:
                parts.append(f"last error: {e.last_error}")
        return f"{head} ({'; '.join(parts)})"


def prove(
    names: Iterable[str],
    ledger: Ledger,
    folders: Sequence[FolderConfig],
    locate: Locate,
) -> list[FileProof]:
    """Given names from the command line, the ledger (read-only is enough), the configured
    folders and how to place a name in them, returns one FileProof per name, in order."""
    by_key = {f.key: f for f in folders}
    proofs = []
    for name in names:
        try:
            key, rel = locate(name)
        except UserError as exc:
            why = str(exc)  # names the file already: said once, by line()
            proofs.append(FileProof(name, Verdict.OUTSIDE, why.removeprefix(f"{name}: ")))
            continue
        folder = by_key[key]
        entry = ledger.get(key, rel)
        on_disk = _look(os.path.join(folder.path, rel))
        verdict, detail = judge(entry, on_disk, wanted=_wanted(folder, rel))
        proofs.append(FileProof(name, verdict, detail, key, rel, entry))
    return proofs


def judge(
    entry: Entry | None, on_disk: FileSig | str | None, *, wanted: bool
) -> tuple[Verdict, str]:
    """Given a file's ledger row, what is on disk now (its signature; a string naming what
    it is when it is not a regular file; None when nothing is there) and whether its
    folder's patterns take it, returns the verdict and a short explanation. Pure."""
    if entry is None:
        if on_disk is None:
            return Verdict.UNKNOWN, "not in the ledger, and no such file"
        if isinstance(on_disk, str):
            return Verdict.UNKNOWN, f"not in the ledger: a {on_disk}, never uploaded"
        if not wanted:
            return Verdict.UNKNOWN, "not in the ledger: the folder's patterns leave it out"
        return Verdict.UNKNOWN, "not in the ledger yet (still settling, or not seen yet)"
    if entry.state is State.REPORTED:
        if on_disk is None:
            gone = "moved or deleted after upload" if entry.disposed else "no longer on disk"
            return Verdict.UPLOADED, f"uploaded ({gone})"
        if isinstance(on_disk, FileSig) and on_disk.same_version(entry.sig):
            return Verdict.UPLOADED, "uploaded"
        return Verdict.CHANGED, "changed since upload: the version on disk is not uploaded yet"
    if entry.state is State.FAILED:
        return Verdict.FAILED, f"failed after {entry.attempts} attempt(s)"
    return Verdict.IN_PROGRESS, _WAITING[entry.state]


def _sent(entry: Entry | None) -> tuple[int | None, str | None]:
    """The size and SHA-256 of the version sent (None, None before any bytes were)."""
    if entry is None or entry.sha256 is None or entry.sig is None:
        return None, None
    return entry.sig.size, entry.sha256


def _look(path: str) -> FileSig | str | None:
    """The signature of the regular file at ``path`` (links not followed), a word for what
    is there when it is something else, or None when nothing (or nothing visible) is."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    if stat_mod.S_ISREG(st.st_mode):
        return FileSig.from_stat(st)
    if stat_mod.S_ISLNK(st.st_mode):
        return "symbolic link"
    return "directory" if stat_mod.S_ISDIR(st.st_mode) else "special file"


def _wanted(folder: FolderConfig, rel: str) -> bool:
    """True when the folder takes the file at ``rel`` (depth and include/exclude)."""
    if not folder.recursive and "/" in rel:
        return False
    return folder.selector.wants(rel)


def _when(timestamp: float | None) -> str | None:
    """A wall-clock timestamp as ISO 8601 in UTC (to the second), or None."""
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")


def _printable(text: str) -> str:
    """Text safe to print: undecodable bytes of a file name shown as escapes."""
    return text.encode("utf-8", "backslashreplace").decode()
