"""The crash-safe ledger: what has been uploaded, and how far each upload got.

One row per ``(folder, relpath)``. An upload is three network calls, and the ledger records
each step before the next one starts::

    pending --GetPreUploadUrl--> ticketed --PUT--> put --ReportUploadSuccess--> reported
       \\______________________ failed (permanent errors) ______________________/

After a crash, :func:`plan` reads the row left behind and says how to finish without ever
reporting a file twice: ``ticketed`` is redone from the first call (an unreported ticket is
harmless), ``put`` is finished by reporting the recorded FileStoreId (the bytes are already
on S3), ``reported`` is skipped.

Storage is one SQLite file in WAL mode, used through a single connection behind a lock, with
explicit ``BEGIN IMMEDIATE``/``COMMIT`` transactions. Every ``sqlite3.Error`` (disk full,
read-only file, corruption, lock timeout) becomes :class:`~hottask_sync.errors.LedgerError`:
when the ledger cannot record a step, uploads must stop rather than go on unrecorded.
"""

from __future__ import annotations

import contextlib
import enum
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from hottask_sync.errors import LedgerError
from hottask_sync.files import FileSig

#: The schema this code writes. Bump it with a migration in ``_init_schema``.
SCHEMA_VERSION = 1

LEDGER_FILENAME = "ledger.sqlite3"

_BUSY_TIMEOUT_MS = 5000


class IllegalTransition(LedgerError):
    """A state change the state machine does not allow (e.g. ``mark_put`` on a row that is
    not ``ticketed``).

    It means the row changed under the caller (another worker or a rescan reset it) or a
    bug; nothing was written. Storage failures raise plain :class:`LedgerError`.
    """


class State(enum.StrEnum):
    """Where one file's upload stands."""

    PENDING = "pending"  # seen, settled, not uploaded yet
    TICKETED = "ticketed"  # GetPreUploadUrl answered: file_store_id recorded, PUT not done
    PUT = "put"  # the bytes are on S3: ReportUploadSuccess is owed
    REPORTED = "reported"  # HotTask has the file: done
    FAILED = "failed"  # permanent error: left alone until the file changes or a retry


@dataclass(frozen=True, slots=True)
class Entry:
    """One ledger row. ``sig`` is None when no version was recorded (a row created by
    :meth:`Ledger.record_error` before the file was stat'ed)."""

    folder: str
    relpath: str
    state: State
    sig: FileSig | None
    sha256: str | None
    file_store_id: str | None
    attempts: int
    transient_errors: int
    last_error: str | None
    disposed: bool
    created_at: float
    updated_at: float
    reported_at: float | None


class Action(enum.Enum):
    """What to do with a file seen on disk, as decided by :func:`plan`."""

    SKIP = "skip"  # already reported (and disposed of, if that is configured)
    UPLOAD = "upload"  # start from GetPreUploadUrl
    REPORT = "report"  # call ReportUploadSuccess with the recorded file_store_id
    DISPOSE = "dispose"  # reported, but the after_upload move/delete was cut off
    FAILED = "failed"  # failed permanently and unchanged since: leave it alone


def plan(entry: Entry | None, sig: FileSig, *, dispose: bool) -> Action:
    """Given a file's ledger row (None if it has none), its current signature, and whether
    an after_upload move/delete is configured, returns what to do with it. Pure.

    - no row, ``pending``, ``ticketed``: UPLOAD. A ticketed upload is redone from the first
      call; the orphan ticket was never reported, so it is harmless.
    - ``put``: REPORT, whatever ``sig`` is. The recorded version's bytes are on S3 under
      the recorded FileStoreId; reporting it is the only way never to upload twice. If the
      file changed since, the new version is uploaded afterwards.
    - ``reported``, same version: SKIP, or DISPOSE when disposal is configured and was not
      done yet (a move/delete cut off by a crash). A disposed row seen again with the same
      version (same inode, size and mtime: the very file moved back) is also SKIP.
    - ``reported``, different version: UPLOAD (a new version, or a new file at a path whose
      old file was moved away).
    - ``failed``: FAILED while unchanged; UPLOAD once it changed.
    """
    if entry is None:
        return Action.UPLOAD
    state = entry.state
    if state is State.PENDING or state is State.TICKETED:
        return Action.UPLOAD
    if state is State.PUT:
        return Action.REPORT
    same = sig.same_version(entry.sig)
    if state is State.REPORTED:
        if not same:
            return Action.UPLOAD
        if dispose and not entry.disposed:
            return Action.DISPOSE
        return Action.SKIP
    # FAILED
    return Action.FAILED if same else Action.UPLOAD


_SCHEMA_V1 = (
    """
    CREATE TABLE files (
        folder           TEXT    NOT NULL,
        relpath          BLOB    NOT NULL,  -- os.fsencode(relpath): names need not be UTF-8
        dev              INTEGER,
        ino              INTEGER,
        size             INTEGER,
        mtime_ns         INTEGER,
        sha256           TEXT,
        file_store_id    TEXT,
        state            TEXT    NOT NULL
            CHECK (state IN ('pending', 'ticketed', 'put', 'reported', 'failed')),
        attempts         INTEGER NOT NULL DEFAULT 0,  -- permanent errors of this version
        transient_errors INTEGER NOT NULL DEFAULT 0,
        last_error       TEXT,
        disposed         INTEGER NOT NULL DEFAULT 0 CHECK (disposed IN (0, 1)),
        created_at       REAL    NOT NULL,
        updated_at       REAL    NOT NULL,
        reported_at      REAL,
        PRIMARY KEY (folder, relpath)
    ) WITHOUT ROWID
    """,
    "CREATE INDEX files_state ON files (state)",
)

_COLUMNS = (
    "folder, relpath, state, dev, ino, size, mtime_ns, sha256, file_store_id, attempts,"
    " transient_errors, last_error, disposed, created_at, updated_at, reported_at"
)

# add_pending in one statement per row, so 100,000 rows fit in one fast executemany. The
# WHERE clause is FileSig.same_version in SQL (size, mtime_ns, ino; dev left out): an
# existing row is reset only when it records another version (or none), and never when it
# is ``put``: that row owes a report, and losing it would leave uploaded bytes unreported.
_ADD_PENDING_SQL = """
    INSERT INTO files (folder, relpath, dev, ino, size, mtime_ns, state,
                       created_at, updated_at)
    VALUES (?, ?, ?, ?, ?, ?, 'pending', ?, ?)
    ON CONFLICT (folder, relpath) DO UPDATE SET
        dev = excluded.dev, ino = excluded.ino, size = excluded.size,
        mtime_ns = excluded.mtime_ns, state = 'pending', attempts = 0,
        transient_errors = 0, last_error = NULL, file_store_id = NULL, sha256 = NULL,
        disposed = 0, reported_at = NULL, updated_at = excluded.updated_at
    WHERE files.state != 'put'
      AND NOT (files.size IS NOT NULL AND files.mtime_ns IS NOT NULL
               AND files.ino IS NOT NULL
               AND files.size = excluded.size AND files.mtime_ns = excluded.mtime_ns
               AND files.ino = excluded.ino)
"""


class Ledger:
    """The SQLite ledger. Thread-safe: one connection used under a lock.

    Every method raises :class:`LedgerError` when the database cannot be read or written,
    and :class:`IllegalTransition` (a LedgerError) when asked for a state change the state
    machine forbids. A ledger opened with ``readonly=True`` raises LedgerError on any write.
    """

    def __init__(
        self,
        path: Path,
        *,
        clock: Callable[[], float] = time.time,
        readonly: bool = False,
        synchronous: Literal["NORMAL", "FULL"] = "NORMAL",
    ) -> None:
        """Given the ledger file's path, opens it, creating it and its schema if needed.

        ``clock`` gives the timestamps stored in rows. ``readonly`` opens the file for
        reading only (for ``hottask-sync status`` while the daemon runs): it never creates
        anything. ``synchronous`` is the default durability of commits (``mark_put`` is
        always FULL).

        Raises LedgerError when the file cannot be opened or created, is not a ledger,
        has a schema newer than this code understands, or (read-only) does not exist.
        """
        self.path = Path(path)
        self.readonly = readonly
        self._clock = clock
        if synchronous not in ("NORMAL", "FULL"):
            raise ValueError(f"synchronous must be NORMAL or FULL, got {synchronous!r}")
        self._synchronous = synchronous
        self._lock = threading.Lock()
        if readonly and not self.path.is_file():
            raise LedgerError(f"no ledger at {self.path} (has the daemon run yet?)")
        conn: sqlite3.Connection | None = None
        try:
            if readonly:
                # as_uri() percent-encodes the path, so names with '?' or '#' work.
                uri = self.path.absolute().as_uri() + "?mode=ro"
                conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
            else:
                conn = sqlite3.connect(
                    str(self.path), isolation_level=None, check_same_thread=False
                )
            conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
            if readonly:
                self._check_schema(conn)
            else:
                # WAL: readers (status) never block the writer and a commit is one append.
                # journal_mode cannot change inside a transaction, so it comes first.
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()
                if not mode or str(mode[0]).lower() != "wal":
                    # Some filesystems (network shares) cannot do WAL and SQLite keeps a
                    # rollback journal, where NORMAL may corrupt the file on power loss.
                    self._synchronous = "FULL"
                conn.execute(f"PRAGMA synchronous = {self._synchronous}")
                self._init_schema(conn)
        except sqlite3.Error as exc:
            if conn is not None:
                conn.close()
            raise self._error(exc) from exc
        except BaseException:
            if conn is not None:
                conn.close()
            raise
        self._conn: sqlite3.Connection | None = conn

    @classmethod
    def in_dir(cls, state_dir: Path, **kw: Any) -> Ledger:
        """Given the state directory, returns the ledger ``state_dir / "ledger.sqlite3"``.

        Creates ``state_dir`` (mode 0700: the ledger lists file names) unless opening
        read-only. Raises LedgerError when the directory cannot be created.
        """
        state_dir = Path(state_dir)
        if not kw.get("readonly", False):
            try:
                state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            except OSError as exc:
                raise LedgerError(f"ledger {state_dir / LEDGER_FILENAME}: {exc}") from exc
        return cls(state_dir / LEDGER_FILENAME, **kw)

    def close(self) -> None:
        """Closes the ledger; idempotent. Later calls raise LedgerError."""
        with self._lock:
            if self._conn is not None:
                conn, self._conn = self._conn, None
                try:
                    conn.close()
                except sqlite3.Error as exc:
                    raise self._error(exc) from exc

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        mode = "ro" if self.readonly else "rw"
        return f"Ledger({str(self.path)!r}, {mode})"

    # --- reads ------------------------------------------------------------------------

    def get(self, folder: str, relpath: str) -> Entry | None:
        """Given a folder and a path relative to it, returns its row, or None."""
        with self._reading() as conn:
            return _fetch(conn, folder, relpath)

    def snapshot(self, folder: str) -> dict[str, tuple[State, FileSig | None, bool]]:
        """Given a folder, returns ``{relpath: (state, sig, disposed)}`` for all its rows.

        One query, for startup scans: 100,000 rows load in a fraction of a second.
        """
        fsdecode = os.fsdecode
        states = {s.value: s for s in State}
        u64 = _U64
        result: dict[str, tuple[State, FileSig | None, bool]] = {}
        # The hot loop of a startup scan: plain locals and inline conversions, and the
        # cursor is iterated rather than fetched into a second list first. The four sig
        # columns are always written together (_sig_params), so checking size is enough.
        with self._reading() as conn:
            cursor = conn.execute(
                "SELECT relpath, state, size, mtime_ns, ino, dev, disposed"
                " FROM files WHERE folder = ?",
                (folder,),
            )
            for relpath, state, size, mtime_ns, ino, dev, disposed in cursor:
                result[fsdecode(relpath)] = (
                    states[state],
                    None
                    if size is None
                    else FileSig(
                        size,
                        mtime_ns,
                        ino if ino >= 0 else ino + u64,
                        dev if dev >= 0 else dev + u64,
                    ),
                    disposed == 1,
                )
        return result

    def unfinished(self) -> list[Entry]:
        """Returns the rows in ``put``: uploads whose report is owed. The daemon reports
        them at start, even when the file is gone (the bytes are already on S3)."""
        return self.in_state(State.PUT)

    def in_state(self, state: State, limit: int | None = None) -> list[Entry]:
        """Given a state and an optional limit, returns up to ``limit`` rows in that state,
        least recently updated first."""
        sql = f"SELECT {_COLUMNS} FROM files WHERE state = ? ORDER BY updated_at, folder, relpath"
        params: tuple[object, ...] = (State(state).value,)
        if limit is not None:
            sql += " LIMIT ?"
            params += (limit,)
        with self._reading() as conn:
            return [_entry(row) for row in conn.execute(sql, params)]

    def counts(self) -> dict[str, int]:
        """Returns how many rows are in each state (every State value is a key, 0 when
        none) plus ``"total"``."""
        result = {s.value: 0 for s in State}
        with self._reading() as conn:
            for state, n in conn.execute("SELECT state, COUNT(*) FROM files GROUP BY state"):
                result[state] = n
        result["total"] = sum(result.values())
        return result

    def recent_failures(self, limit: int = 10) -> list[Entry]:
        """Returns up to ``limit`` rows that failed, hit an error and are not reported yet
        (still retrying), or were reported but whose after_upload move/delete failed (it is
        tried again at the next scan), most recently updated first."""
        with self._reading() as conn:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM files"
                " WHERE state = 'failed' OR (last_error IS NOT NULL AND disposed = 0)"
                " ORDER BY updated_at DESC, folder, relpath LIMIT ?",
                (limit,),
            ).fetchall()
        return [_entry(row) for row in rows]

    # --- writes -----------------------------------------------------------------------
    #
    # Durability: commits run with synchronous=NORMAL, so the last few can be lost to a
    # power cut (never to a process crash). That is harmless for every transition except
    # mark_put, because losing one only sends a file back to an earlier state and plan()
    # redoes the work from there:
    #   - add_pending / mark_pending / record_error / retry_failed / forget lost: the next
    #     scan or attempt re-derives them; at worst an error count is off by one.
    #   - mark_ticketed lost: the row is pending again and a new ticket is fetched; the
    #     first ticket was never reported, so it is an orphan, not a duplicate.
    #   - mark_reported lost: the row is put again and the same FileStoreId is reported a
    #     second time; that is one file in HotTask, not two.
    #   - mark_disposed lost: the move/delete is redone (plan says DISPOSE).
    # Losing mark_put is not harmless: the row would fall back to ticketed, the file would
    # be uploaded under a new ticket and reported, while the caller may already have
    # reported the first ticket. So mark_put is committed with synchronous=FULL.

    def add_pending(self, items: Iterable[tuple[str, str, FileSig]]) -> None:
        """Given ``(folder, relpath, sig)`` triples, records them as pending in ONE
        transaction (all or nothing).

        A path without a row gets a new pending row. An existing row is reset to pending
        (attempts and errors cleared, file_store_id/sha256 NULL, disposed 0) only when it
        records a different version than ``sig`` (or none). Rows of the same version are
        left alone whatever their state, and ``put`` rows are never touched (they owe a
        report; plan() says REPORT for them). Raises LedgerError when it cannot commit.
        """
        now = self._clock()

        def params() -> Iterator[tuple[object, ...]]:
            for folder, relpath, sig in items:
                yield (
                    folder,
                    os.fsencode(relpath),
                    _to_u64(sig.dev),
                    _to_u64(sig.ino),
                    sig.size,
                    sig.mtime_ns,
                    now,
                    now,
                )

        with self._transaction() as conn:
            conn.executemany(_ADD_PENDING_SQL, params())

    def mark_ticketed(self, folder: str, relpath: str, sig: FileSig, file_store_id: str) -> None:
        """Records that GetPreUploadUrl gave ``file_store_id`` for version ``sig``, before
        the PUT starts. Creates the row if needed.

        Allowed from any state but ``put`` (which owes a report of its own ticket: raises
        IllegalTransition). When the row held another version, or was reported, the attempt
        counters and last error are reset; otherwise they are kept.
        """
        now = self._clock()
        dev, ino, size, mtime_ns = _sig_params(sig)
        with self._transaction() as conn:
            # The usual case in one statement, without reading the row first: a pending,
            # ticketed or failed row of this very version keeps its counters and takes the
            # ticket (what the general path below does when new_version is False).
            if conn.execute(
                "UPDATE files SET dev = ?, state = 'ticketed', file_store_id = ?, sha256 = NULL,"
                " disposed = 0, reported_at = NULL, updated_at = ?"
                " WHERE folder = ? AND relpath = ? AND state IN ('pending', 'ticketed', 'failed')"
                " AND dev IS NOT NULL AND ino = ? AND size = ? AND mtime_ns = ?",
                (dev, file_store_id, now, folder, os.fsencode(relpath), ino, size, mtime_ns),
            ).rowcount:
                return
            cur = _fetch(conn, folder, relpath)
            if cur is None:
                conn.execute(
                    "INSERT INTO files (folder, relpath, dev, ino, size, mtime_ns, state,"
                    " file_store_id, created_at, updated_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, 'ticketed', ?, ?, ?)",
                    (folder, os.fsencode(relpath), *_sig_params(sig), file_store_id, now, now),
                )
                return
            if cur.state is State.PUT:
                raise self._illegal(cur, "mark_ticketed", "it owes the report of its upload")
            new_version = cur.state is State.REPORTED or not sig.same_version(cur.sig)
            conn.execute(
                "UPDATE files SET dev = ?, ino = ?, size = ?, mtime_ns = ?, state = 'ticketed',"
                " file_store_id = ?, sha256 = NULL, disposed = 0, reported_at = NULL,"
                " attempts = ?, transient_errors = ?, last_error = ?, updated_at = ?"
                " WHERE folder = ? AND relpath = ?",
                (
                    *_sig_params(sig),
                    file_store_id,
                    0 if new_version else cur.attempts,
                    0 if new_version else cur.transient_errors,
                    None if new_version else cur.last_error,
                    now,
                    folder,
                    os.fsencode(relpath),
                ),
            )

    def mark_put(
        self, folder: str, relpath: str, sha256: str, *, file_store_id: str | None = None
    ) -> None:
        """Records that the PUT to S3 succeeded, with the uploaded bytes' SHA-256.

        Only from ``ticketed``; when ``file_store_id`` is given it must also be the recorded
        ticket. Raises IllegalTransition otherwise (e.g. a rescan reset the row because the
        file changed: the caller must not report this upload). Committed with
        synchronous=FULL, so it is on disk before this returns and the caller reports the
        upload: a power cut cannot undo it. Raises LedgerError when it cannot commit.
        """
        now = self._clock()
        with self._transaction(durable=True) as conn:
            self._advance(
                conn,
                "mark_put",
                State.TICKETED,
                file_store_id,
                folder,
                relpath,
                "state = 'put', sha256 = ?, updated_at = ?",
                (sha256, now),
            )

    def mark_reported(self, folder: str, relpath: str, *, file_store_id: str | None = None) -> None:
        """Records that ReportUploadSuccess succeeded: the file is done.

        Only from ``put`` (and, when ``file_store_id`` is given, only for that ticket);
        raises IllegalTransition otherwise. Clears ``last_error``; sets ``reported_at``.
        """
        now = self._clock()
        with self._transaction() as conn:
            self._advance(
                conn,
                "mark_reported",
                State.PUT,
                file_store_id,
                folder,
                relpath,
                "state = 'reported', reported_at = ?, last_error = NULL, updated_at = ?",
                (now, now),
            )

    def mark_disposed(self, folder: str, relpath: str) -> None:
        """Records that the after_upload move/delete of a reported file was done.

        Only from ``reported``; raises IllegalTransition otherwise. Idempotent. Clears
        ``last_error`` (left by a failed earlier try of the move/delete).
        """
        now = self._clock()
        with self._transaction() as conn:
            cur = _fetch(conn, folder, relpath)
            self._require(cur, "mark_disposed", State.REPORTED, None, folder, relpath)
            conn.execute(
                "UPDATE files SET disposed = 1, last_error = NULL, updated_at = ?"
                " WHERE folder = ? AND relpath = ?",
                (now, folder, os.fsencode(relpath)),
            )

    def mark_pending(self, folder: str, relpath: str, sig: FileSig | None = None) -> None:
        """Sends a ``pending`` or ``ticketed`` row back to pending (the file changed during
        the PUT): drops its ticket and hash, records ``sig`` if given, keeps ``attempts``.

        Raises IllegalTransition when there is no row, or it is ``put`` (it owes a report),
        ``reported`` (a new version goes through add_pending/mark_ticketed) or ``failed``
        (use retry_failed).
        """
        now = self._clock()
        with self._transaction() as conn:
            cur = _fetch(conn, folder, relpath)
            if cur is None:
                raise IllegalTransition(
                    f"ledger {self.path}: mark_pending: no row for {folder!r} {relpath!r}"
                )
            if cur.state not in (State.PENDING, State.TICKETED):
                raise self._illegal(cur, "mark_pending", "only pending/ticketed rows can be")
            new_sig = sig if sig is not None else cur.sig
            conn.execute(
                "UPDATE files SET state = 'pending', file_store_id = NULL, sha256 = NULL,"
                " dev = ?, ino = ?, size = ?, mtime_ns = ?, updated_at = ?"
                " WHERE folder = ? AND relpath = ?",
                (*_sig_params(new_sig), now, folder, os.fsencode(relpath)),
            )

    def record_error(
        self,
        folder: str,
        relpath: str,
        error: str,
        *,
        permanent: bool,
        max_attempts: int,
        fail_now: bool = False,
        sig: FileSig | None = None,
    ) -> Entry:
        """Records an error for a file and returns its row as it now is.

        Transient: ``transient_errors += 1`` and ``last_error = error``; the state is
        unchanged. Permanent: ``attempts += 1`` and ``last_error = error``; the row becomes
        ``failed`` when ``fail_now`` or ``attempts >= max_attempts``, otherwise it goes back
        to ``pending`` (its ticket dropped) to be tried again.

        Two exceptions keep the exactly-once promise: a ``put`` row stays ``put`` until it
        fails (going back to pending would upload again instead of retrying the report),
        and a ``reported`` row stays ``reported`` (the error is about the after_upload
        move/delete; the upload itself is done). A ``failed`` row stays ``failed``.

        Without a row, one is created (pending, or failed as above). ``sig``, when given,
        records the version the error is about, so that plan() can tell whether a failed
        file changed since; a row without a sig is retried whenever it is seen.
        Raises ValueError when ``max_attempts < 1``.
        """
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
        now = self._clock()
        with self._transaction() as conn:
            cur = _fetch(conn, folder, relpath)
            if cur is None:
                conn.execute(
                    "INSERT INTO files (folder, relpath, dev, ino, size, mtime_ns, state,"
                    " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, 'pending', ?, ?)",
                    (folder, os.fsencode(relpath), *_sig_params(sig), now, now),
                )
                cur = _fetch(conn, folder, relpath)
                assert cur is not None
            state = cur.state
            attempts = cur.attempts
            transient = cur.transient_errors
            file_store_id = cur.file_store_id
            sha256 = cur.sha256
            if permanent:
                attempts += 1
                if state is State.REPORTED:
                    pass
                elif fail_now or attempts >= max_attempts:
                    state = State.FAILED
                elif state is not State.PUT and state is not State.FAILED:
                    state = State.PENDING
                    file_store_id = sha256 = None
            else:
                transient += 1
            conn.execute(
                "UPDATE files SET state = ?, attempts = ?, transient_errors = ?,"
                " last_error = ?, file_store_id = ?, sha256 = ?, updated_at = ?"
                " WHERE folder = ? AND relpath = ?",
                (
                    state.value,
                    attempts,
                    transient,
                    error,
                    file_store_id,
                    sha256,
                    now,
                    folder,
                    os.fsencode(relpath),
                ),
            )
            if sig is not None:
                conn.execute(
                    "UPDATE files SET dev = ?, ino = ?, size = ?, mtime_ns = ?"
                    " WHERE folder = ? AND relpath = ?",
                    (*_sig_params(sig), folder, os.fsencode(relpath)),
                )
            entry = _fetch(conn, folder, relpath)
            assert entry is not None
            return entry

    def retry_failed(self, folder: str | None = None, relpaths: Iterable[str] | None = None) -> int:
        """Sends failed rows back to pending with ``attempts = 0`` (their ticket and hash
        dropped, so the file is uploaded afresh) and returns how many there were.

        All failed rows; or those of ``folder``; or only ``relpaths`` of ``folder`` (paths
        that are not failed are ignored). Raises ValueError for ``relpaths`` without a
        ``folder``.
        """
        now = self._clock()
        sql = (
            "UPDATE files SET state = 'pending', attempts = 0, file_store_id = NULL,"
            " sha256 = NULL, updated_at = ? WHERE state = 'failed'"
        )
        with self._transaction() as conn:
            if relpaths is not None:
                if folder is None:
                    raise ValueError("retry_failed: relpaths need a folder")
                sql += " AND folder = ? AND relpath = ?"
                return sum(
                    conn.execute(sql, (now, folder, os.fsencode(p))).rowcount for p in relpaths
                )
            if folder is not None:
                return conn.execute(sql + " AND folder = ?", (now, folder)).rowcount
            return conn.execute(sql, (now,)).rowcount

    def forget(self, folder: str, relpath: str) -> bool:
        """Deletes the row of a file that vanished before it was uploaded: only if it is
        ``pending``, ``ticketed`` or ``failed``. ``put`` and ``reported`` rows are kept
        (the first owes a report, the second stops a re-upload if the file comes back).
        Returns True when a row was deleted."""
        with self._transaction() as conn:
            cursor = conn.execute(
                "DELETE FROM files WHERE folder = ? AND relpath = ?"
                " AND state IN ('pending', 'ticketed', 'failed')",
                (folder, os.fsencode(relpath)),
            )
            return cursor.rowcount > 0

    # --- internals --------------------------------------------------------------------

    def _error(self, exc: BaseException) -> LedgerError:
        return LedgerError(f"ledger {self.path}: {exc}")

    def _illegal(self, cur: Entry, op: str, why: str) -> IllegalTransition:
        return IllegalTransition(
            f"ledger {self.path}: {op}: {cur.folder!r} {cur.relpath!r} is {cur.state}: {why}"
        )

    def _advance(
        self,
        conn: sqlite3.Connection,
        op: str,
        state: State,
        file_store_id: str | None,
        folder: str,
        relpath: str,
        assignments: str,
        values: tuple[object, ...],
    ) -> None:
        """Applies ``assignments`` to the row if it is in ``state`` (and holds the given
        ticket); raises IllegalTransition, explaining why, when it is not."""
        # One conditional UPDATE does the check and the write; the row is read only to
        # explain a refusal.
        if conn.execute(
            f"UPDATE files SET {assignments} WHERE folder = ? AND relpath = ?"
            " AND state = ? AND (? IS NULL OR file_store_id = ?)",
            (*values, folder, os.fsencode(relpath), str(state), file_store_id, file_store_id),
        ).rowcount:
            return
        self._require(_fetch(conn, folder, relpath), op, state, file_store_id, folder, relpath)
        raise AssertionError(f"{op}: the row met the conditions but was not updated")

    def _require(
        self,
        cur: Entry | None,
        op: str,
        state: State,
        file_store_id: str | None,
        folder: str,
        relpath: str,
    ) -> None:
        if cur is None:
            raise IllegalTransition(f"ledger {self.path}: {op}: no row for {folder!r} {relpath!r}")
        if cur.state is not state:
            raise self._illegal(cur, op, f"it must be {state}")
        if file_store_id is not None and cur.file_store_id != file_store_id:
            raise self._illegal(
                cur, op, f"its ticket is {cur.file_store_id!r}, not {file_store_id!r}"
            )

    @contextlib.contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        # Reads run in autocommit: each statement sees one consistent snapshot (WAL).
        with self._lock:
            conn = self._open_conn()
            try:
                yield conn
            except sqlite3.Error as exc:
                raise self._error(exc) from exc

    @contextlib.contextmanager
    def _transaction(self, *, durable: bool = False) -> Iterator[sqlite3.Connection]:
        # BEGIN IMMEDIATE takes the write lock up front, so a transaction never fails
        # half-way with SQLITE_BUSY after it has read the row it is about to change.
        with self._lock:
            conn = self._open_conn()
            if self.readonly:
                raise LedgerError(f"ledger {self.path}: opened read-only")
            try:
                if durable:
                    conn.execute("PRAGMA synchronous = FULL")
                try:
                    conn.execute("BEGIN IMMEDIATE")
                    yield conn
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        # A failed rollback leaves nothing better to do than report the
                        # original error; SQLite rolls back on its own when it can.
                        with contextlib.suppress(sqlite3.Error):
                            conn.execute("ROLLBACK")
                    raise
                finally:
                    if durable:
                        conn.execute(f"PRAGMA synchronous = {self._synchronous}")
            except sqlite3.Error as exc:
                raise self._error(exc) from exc

    def _open_conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise LedgerError(f"ledger {self.path}: closed")
        return self._conn

    def _check_schema(self, conn: sqlite3.Connection) -> int | None:
        """Returns the schema version, None for an empty database; raises LedgerError for a
        database that is not a ledger or is newer than this code."""
        tables = {
            name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        }
        if "schema_version" not in tables:
            if tables or self.readonly:
                raise LedgerError(
                    f"ledger {self.path}: not a hottask-sync ledger (no schema_version table)"
                )
            return None
        row = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
        version = row[0] if row else None
        if not isinstance(version, int):
            raise LedgerError(f"ledger {self.path}: schema_version table is empty or corrupt")
        if version > SCHEMA_VERSION:
            raise LedgerError(
                f"ledger {self.path} has schema version {version}, newer than the"
                f" {SCHEMA_VERSION} this hottask-sync understands: upgrade hottask-sync"
            )
        return version

    def _init_schema(self, conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = self._check_schema(conn)
            if version is None:
                conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
                for statement in _SCHEMA_V1:
                    conn.execute(statement)
                conn.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
            # Future migrations: `if version < 2: ...; UPDATE schema_version SET version = 2`.
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise


# --- row helpers --------------------------------------------------------------------------

# SQLite integers are signed 64-bit, but st_ino and st_dev are unsigned and can use all 64
# bits (NFS, btrfs, overlayfs). They are stored two's-complement and mapped back on read.
_U64 = 1 << 64
_I64_MAX = (1 << 63) - 1


def _to_u64(n: int) -> int:
    return n - _U64 if n > _I64_MAX else n


def _from_u64(n: int) -> int:
    return n + _U64 if n < 0 else n


def _sig_params(sig: FileSig | None) -> tuple[int | None, int | None, int | None, int | None]:
    if sig is None:
        return (None, None, None, None)
    return (_to_u64(sig.dev), _to_u64(sig.ino), sig.size, sig.mtime_ns)


def _fetch(conn: sqlite3.Connection, folder: str, relpath: str) -> Entry | None:
    row = conn.execute(
        f"SELECT {_COLUMNS} FROM files WHERE folder = ? AND relpath = ?",
        (folder, os.fsencode(relpath)),
    ).fetchone()
    return None if row is None else _entry(row)


def _entry(row: Sequence[Any]) -> Entry:
    (
        folder,
        relpath,
        state,
        dev,
        ino,
        size,
        mtime_ns,
        sha256,
        file_store_id,
        attempts,
        transient_errors,
        last_error,
        disposed,
        created_at,
        updated_at,
        reported_at,
    ) = row
    sig = (
        None
        if size is None or mtime_ns is None or ino is None or dev is None
        else FileSig(size, mtime_ns, _from_u64(ino), _from_u64(dev))
    )
    return Entry(
        folder=folder,
        relpath=os.fsdecode(relpath),
        state=State(state),
        sig=sig,
        sha256=sha256,
        file_store_id=file_store_id,
        attempts=attempts,
        transient_errors=transient_errors,
        last_error=last_error,
        disposed=bool(disposed),
        created_at=created_at,
        updated_at=updated_at,
        reported_at=reported_at,
    )
