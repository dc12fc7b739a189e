"""After the report: moving an uploaded file to ``move_to`` or deleting it, never a newer
version, never overwriting a file already at the destination, never through a link.

Everything goes through the descriptors the upload held (:class:`~hottask_sync.beneath.Held`):
``fstat`` on the file's own descriptor says whether it is still the version uploaded, and
every rename and unlink is relative to the descriptor of the folder it was found in, so a
folder swapped for a link above it cannot steer them elsewhere. No step checks a name and
then acts on it: a file is renamed first (atomically, never over another) and checked after,
and put back if it turned out to be another one.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import hashlib
import itertools
import os
import secrets
import stat as stat_mod
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from . import beneath
from .beneath import Held, NotRegular, same_file, stat_at
from .files import FileSig
from .jobs import Job
from .ledger import Entry
from .logs import get_logger
from .writer import LedgerOps

log = get_logger("hottask_sync.after_upload")

_CHUNK = 1024 * 1024
#: How many `` (n)`` names are tried before a move gives up (it is then retried later).
_MAX_SUFFIX = 10_000


class Done(enum.Enum):
    """How a move or delete ended (anything else raises)."""

    DONE = "done"  # deleted, or moved
    GONE = "gone"  # the source is no longer there: nothing left to do
    NEWER = "newer"  # another version stands at the name now: left alone (it is uploaded next)


def dispose(
    job: Job, entry: Entry, sig: FileSig, ledger: LedgerOps, ctx: dict[str, Any], *, held: Held
) -> None:
    """Moves or deletes the uploaded file ``held`` (its descriptor still open) if it is
    still version ``sig``, and records that on its row; on failure, logs an error, records
    it on the row (``status`` lists it) and leaves the file where it is.

    Never a newer version (rewritten in place, or saved under the same name since): that one
    is left for its own upload. Never overwrites a file at the destination.
    """
    folder = job.folder
    where: str | None = None
    try:
        if folder.after_upload == "delete":
            done = delete(held, sig)
        else:
            assert folder.move_to is not None
            done, where = move(held, sig, folder.move_to, job.relpath, entry.sha256)
    except (OSError, NotRegular) as exc:
        error = f"after_upload {folder.after_upload} failed: {_os_error(exc)}"
        log.error("file.dispose_failed", action=folder.after_upload, error=error, **ctx)
        # Kept on the reported row for `status`; the next scan tries the move/delete again.
        # Transient (max_attempts plays no part): the row stays reported.
        ledger.record_error(folder.key, job.relpath, error, permanent=False, max_attempts=1)
        return
    if done is Done.NEWER:
        log.info("file.kept", reason="a newer version stands there now", **ctx)
        return
    if done is Done.DONE:
        if where is None:
            log.info("file.deleted", **ctx)
        else:
            log.info("file.moved", to=where, **ctx)
    ledger.mark_disposed(folder.key, job.relpath)


def _os_error(exc: OSError | NotRegular) -> str:
    if isinstance(exc, NotRegular):
        return str(exc)
    return f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else "")


# --- delete ---------------------------------------------------------------------------------


def _check(held: Held, sig: FileSig) -> tuple[Done | None, os.stat_result]:
    """Returns (None, the file's stat) when ``held`` is still version ``sig`` and still at
    its name; else (GONE or NEWER, its stat)."""
    st = os.fstat(held.fd)
    if not sig.same_version(FileSig.from_stat(st)):
        return Done.NEWER, st  # rewritten in place since the upload
    here = stat_at(held.dir_fd, held.name)
    if here is None:
        return Done.GONE, st
    return (None if same_file(here, st) else Done.NEWER), st


def _written(held: Held, st: os.stat_result) -> bool:
    """True when the held file was written to since ``st`` was taken (size or mtime).

    Not the ctime: our own renames change it.
    """
    now = os.fstat(held.fd)
    return (now.st_size, now.st_mtime_ns) != (st.st_size, st.st_mtime_ns)


def delete(held: Held, sig: FileSig) -> Done:
    """Deletes the file ``held`` if it is still version ``sig`` at its name.

    The name is first renamed to a private one in the same folder, then the file under it
    is checked with ``fstat`` and unlinked; a file saved at the name in between (a rename
    over it) is never deleted: it is put back.
    """
    early, st = _check(held, sig)
    if early is not None:
        return early
    staged = _stage(held.dir_fd, held.name)
    if staged is None:
        return Done.GONE
    # Under the private name now: if it is our file, nothing can replace it before the unlink.
    if not same_file(stat_at(held.dir_fd, staged), st) or _written(held, st):
        _put_back(held.dir_fd, staged, held.dir_fd, held.name)
        return Done.NEWER
    os.unlink(staged, dir_fd=held.dir_fd)
    return Done.DONE


def _stage(dir_fd: int, name: str) -> str | None:
    """Renames ``name`` to a new hidden name in the same folder; returns it (None when
    ``name`` is gone). Hidden: never uploaded if the daemon stops before it is removed."""
    while True:
        staged = f".hottask-dispose-{secrets.token_hex(8)}.tmp"
        try:
            beneath.rename_noreplace(dir_fd, name, dir_fd, staged)
        except FileExistsError:
            continue  # 64 random bits taken: try others
        except FileNotFoundError:
            return None
        return staged


def _put_back(from_dir: int, from_name: str, to_dir: int, to_name: str) -> str:
    """Renames a file that is not ours to touch back to ``to_name``, or to the first free
    `` (n)`` name beside it if another file took that name meanwhile; returns the name."""
    for name in _names(to_name):
        try:
            beneath.rename_noreplace(from_dir, from_name, to_dir, name)
        except FileExistsError:
            continue
        log.warning("file.put_back", name=name, hint="a newer version was saved meanwhile")
        return name
    raise AssertionError("unreachable: _names ends with an error")


# --- move -----------------------------------------------------------------------------------


def move(
    held: Held, sig: FileSig, move_to: Path, relpath: str, sha256: str | None
) -> tuple[Done, str | None]:
    """Moves the file ``held`` into ``move_to`` under ``relpath`` if it is still version
    ``sig`` at its name; returns how it ended and, when moved, where to.

    On a name collision, adds `` (1)``, `` (2)``... before the extension (never replaces a
    file: renameat2 RENAME_NOREPLACE); a file already there with the same bytes (a move cut
    off before the source was removed) counts as the move. Across file systems, the bytes
    uploaded (read from the held descriptor) are copied to a new private file in the
    destination folder, with their mode and mtime, fsynced and renamed into place; then
    the source is deleted as :func:`delete` does. Folders are made as needed and never
    followed if they are links.
    """
    early, st = _check(held, sig)
    if early is not None:
        return early, None
    reldir, _, base = relpath.rpartition("/")
    os.makedirs(move_to, exist_ok=True)
    root = beneath.open_folder(move_to)
    try:
        dst = beneath.open_dir(root, reldir, create=True)
    finally:
        os.close(root)
    try:
        done, name = _move_into(held, sig, st, dst, base, sha256)
    finally:
        os.close(dst)
    return done, (None if name is None else os.path.join(move_to, reldir, name))


def _move_into(
    held: Held, sig: FileSig, st: os.stat_result, dst: int, base: str, sha256: str | None
) -> tuple[Done, str | None]:
    try:
        name, placed = _place(held.dir_fd, held.name, dst, base, st.st_size, sha256)
    except OSError as exc:
        if exc.errno == errno.ENOENT and stat_at(held.dir_fd, held.name) is None:
            return Done.GONE, None  # only a missing source counts as gone
        if exc.errno != errno.EXDEV:
            raise
        return _copy_across(held, sig, st, dst, base, sha256)
    if not placed:
        # The same bytes are at `name` already (a move cut off before the unlink).
        return delete(held, sig), name
    if not same_file(stat_at(dst, name), st):
        # Another file was saved at the source name between the check and the rename: it
        # is not ours to archive (it has not been uploaded). Back where it was.
        _put_back(dst, name, held.dir_fd, held.name)
        return Done.NEWER, None
    return Done.DONE, name


def _names(base: str) -> Iterator[str]:
    """``base``, then ``stem (1).ext``, ``stem (2).ext``...; raises FileExistsError after
    :data:`_MAX_SUFFIX` of them."""
    yield base
    stem, ext = os.path.splitext(base)
    for n in itertools.count(1):
        if n > _MAX_SUFFIX:
            raise FileExistsError(errno.EEXIST, f"{_MAX_SUFFIX} names taken", base)
        yield f"{stem} ({n}){ext}"


def _place(
    src_dir: int, src: str, dst: int, base: str, size: int, sha256: str | None
) -> tuple[str, bool]:
    """Renames ``src`` to the first free name for ``base`` in ``dst``, never over a file;
    returns (the name, True). Returns (name, False) without renaming when a file with the
    same bytes (``size`` and ``sha256``) holds a name on the way. Raises OSError (EXDEV
    across file systems)."""
    for name in _names(base):
        try:
            beneath.rename_noreplace(src_dir, src, dst, name)
        except FileExistsError:
            if sha256 is not None and _same_content(dst, name, size, sha256):
                return name, False
            continue
        return name, True
    raise AssertionError("unreachable: _names ends with an error")


def _same_content(dir_fd: int, name: str, size: int, sha256: str) -> bool:
    """True when ``name`` in ``dir_fd`` is a regular file of ``size`` bytes hashing to
    ``sha256``. Never follows a link, never waits on a FIFO (O_NONBLOCK, then fstat)."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(name, flags, dir_fd=dir_fd)
    except OSError:
        return False
    try:
        st = os.fstat(fd)
        if not stat_mod.S_ISREG(st.st_mode) or st.st_size != size:
            return False
        return _sha256(fd) == sha256
    except OSError:
        return False
    finally:
        os.close(fd)


def _sha256(fd: int) -> str:
    h = hashlib.sha256()
    offset = 0
    while chunk := os.pread(fd, _CHUNK, offset):
        h.update(chunk)
        offset += len(chunk)
    return h.hexdigest()


def _copy_across(
    held: Held, sig: FileSig, st: os.stat_result, dst: int, base: str, sha256: str | None
) -> tuple[Done, str | None]:
    """Copies the held file into ``dst`` (another file system) under a free name, then
    deletes the source; returns how it ended and the name."""
    tmp, fd = _create_temp(dst)
    try:
        try:
            _copy(held.fd, fd)
            if _written(held, st):
                # Written to while we copied: the copy may mix two versions. Not archived.
                os.unlink(tmp, dir_fd=dst)
                return Done.NEWER, None
            os.fchmod(fd, stat_mod.S_IMODE(st.st_mode))
            os.utime(fd, ns=(st.st_atime_ns, st.st_mtime_ns))
            os.fsync(fd)
        finally:
            os.close(fd)
        name, placed = _place(dst, tmp, dst, base, st.st_size, sha256)
        if not placed:
            os.unlink(tmp, dir_fd=dst)  # the same bytes are there already
        _fsync_dir(dst)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dst)  # ENOENT once it was renamed into place
        raise
    # The copy is safe on disk: now the source. A newer version saved at its name meanwhile
    # is left alone; ours is archived either way.
    delete(held, sig)
    return Done.DONE, name


def _create_temp(dir_fd: int) -> tuple[str, int]:
    """Creates a new private file (mode 0600) in ``dir_fd``, exclusively (O_EXCL: never an
    existing file, never through a link); returns its name and a descriptor to write."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    while True:
        name = f".hottask-move-{secrets.token_hex(8)}.tmp"
        try:
            return name, os.open(name, flags, 0o600, dir_fd=dir_fd)
        except FileExistsError:
            continue  # 64 random bits taken: try others


def _copy(src: int, dst: int) -> None:
    offset = 0
    while chunk := os.pread(src, _CHUNK, offset):
        view = memoryview(chunk)
        while view:
            view = view[os.write(dst, view) :]
        offset += len(chunk)


def _fsync_dir(dir_fd: int) -> None:
    """Makes the names in folder ``dir_fd`` (an O_PATH descriptor) durable."""
    fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
