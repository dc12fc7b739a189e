"""After the report: moving an uploaded file to ``move_to`` or deleting it, never a newer
version, never overwriting a file already at the destination."""

from __future__ import annotations

import errno
import hashlib
import os
from typing import Any

from .files import FileSig, lstat_regular
from .jobs import Job
from .ledger import Entry, Ledger
from .logs import get_logger

log = get_logger("hottask_sync.after_upload")


def dispose(job: Job, entry: Entry, sig: FileSig, ledger: Ledger, ctx: dict[str, Any]) -> None:
    """Moves or deletes an uploaded file; on failure, logs an error and leaves it."""
    folder = job.folder
    path = job.path
    if not sig.same_version(lstat_regular(path)):
        return  # a newer version stands there now: it is uploaded, not removed
    try:
        if folder.after_upload == "delete":
            os.unlink(path)
            log.info("file.deleted", **ctx)
        else:
            assert folder.move_to is not None
            dest = _move(path, os.path.join(folder.move_to, job.relpath), entry.sha256)
            log.info("file.moved", to=dest, **ctx)
    except FileNotFoundError:
        pass  # already gone: nothing left to do
    except OSError as exc:
        error = f"after_upload {folder.after_upload} failed: {_os_error(exc)}"
        log.error("file.dispose_failed", action=folder.after_upload, error=error, **ctx)
        # Kept on the reported row for `status`; the next scan tries the move/delete again.
        # Transient (max_attempts plays no part): the row stays reported.
        ledger.record_error(folder.key, job.relpath, error, permanent=False, max_attempts=1)
        return
    ledger.mark_disposed(folder.key, job.relpath)


def _os_error(exc: OSError) -> str:
    return f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else "")


def _move(src: str, dest: str, sha256: str | None) -> str:
    """Moves ``src`` to ``dest`` without overwriting; returns where it went.

    On a name collision, adds `` (1)``, `` (2)``... before the extension. Across file
    systems, copies to a temporary name, renames it into place, then removes the source.
    """
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    target = _free_name(dest, src, sha256)
    if target is None:
        # An identical copy is already there (a move cut off between copy and unlink).
        os.unlink(src)
        return dest
    try:
        os.rename(src, target)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        _copy_across(src, target)
    return target


def _free_name(dest: str, src: str, sha256: str | None) -> str | None:
    if not os.path.lexists(dest):
        return dest
    if sha256 is not None and _same_content(dest, src, sha256):
        return None
    stem, ext = os.path.splitext(dest)
    n = 1
    while os.path.lexists(f"{stem} ({n}){ext}"):
        n += 1
    return f"{stem} ({n}){ext}"


def _same_content(dest: str, src: str, sha256: str) -> bool:
    try:
        if os.path.getsize(dest) != os.path.getsize(src):
            return False
        h = hashlib.sha256()
        with open(dest, "rb") as fh:
            while chunk := fh.read(1024 * 1024):
                h.update(chunk)
        return h.hexdigest() == sha256
    except OSError:
        return False


def _copy_across(src: str, target: str) -> None:
    tmp = os.path.join(os.path.dirname(target), f".hottask-move-{os.getpid()}.tmp")
    with open(src, "rb") as fin, open(tmp, "wb") as fout:
        while chunk := fin.read(1024 * 1024):
            fout.write(chunk)
        fout.flush()
        os.fsync(fout.fileno())
    os.rename(tmp, target)
    os.unlink(src)
