"""The crash-safe ledger: what has been uploaded, and how far each upload got.

One row per ``(folder, relpath)``. An upload is three network calls, and the ledger records
each step before the next one starts::

    pending --GetPreUploadUrl--> ticketed --PUT--> put --ReportUploadSuccess--> reported
       \\______________________ failed (permanent errors) ______________________/

The state machine is written once, in :data:`TRANSITIONS`: operation, the states it may
change a row from (``(none)``: no row yet), and what each becomes (``(deleted)``: the row
is removed). The guarded UPDATEs' ``state IN (...)`` clauses, the IllegalTransition checks
and record_error's outcomes are derived from it. Rendered by ``_render_table`` (a test keeps
this copy in step)::

    add_pending             (none) pending ticketed reported failed -> pending [new version] *
    mark_ticketed           (none) pending ticketed reported failed -> ticketed
    mark_put                ticketed -> put [same ticket]
    mark_reported           put -> reported [same ticket]
    mark_disposed           reported -> reported
    mark_verified           reported -> reported
    mark_pending            pending ticketed -> pending
    retry_failed            failed -> pending *
    forget                  pending ticketed failed -> (deleted) *
    prune                   reported failed -> (deleted) *
    record_error:transient  (none) -> pending; pending ticketed put reported failed unchanged
    record_error:retry      (none) ticketed -> pending; pending put reported failed unchanged
    record_error:fail       (none) pending ticketed put -> failed; reported failed unchanged

    [new version]: only if the row records another version than the sig given, or none
    [same ticket]: only if the file_store_id given, if any, is the row's
    *: rows it may not change are left alone, without IllegalTransition

An operation asked of a row in any other state, or whose condition does not hold, changes
nothing and raises :class:`IllegalTransition` (unless marked ``*``).

After a crash, :func:`plan` reads the row left behind and says how to finish without ever
reporting a file twice: ``ticketed`` is redone from the first call (an unreported ticket is
harmless), ``put`` is finished by reporting the recorded FileStoreId (the bytes are already
on S3), ``reported`` is skipped. Each action it returns is a transition the table allows
(:data:`ACTION_OPS`).

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
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, Literal, Self

from hottask_sync.errors import LedgerError
from hottask_sync.files import FileSig

#: The schema this code writes. Bump it with a migration in ``_Store._init_schema``.
SCHEMA_VERSION = 2

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
    VERIFY = "verify"  # reported, only its ctime changed: compare the bytes with the hash
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
    - ``reported``, only the ctime differs (same size, mtime and inode) and a hash is on
      record: VERIFY. A ``chmod`` changes the ctime and nothing else; a copy that reused
      the inode with the same size and mtime (``cp -p``, ``tar -x``) changes the bytes:
      only the bytes can tell them apart.
    - ``reported``, different version: UPLOAD (a new version, or a new file at a path whose
      old file was moved away).
    - ``failed``: FAILED while unchanged; UPLOAD once it changed.

    Every action is a transition :data:`TRANSITIONS` allows from the row's state (see
    :data:`ACTION_OPS`); SKIP and FAILED are exactly the rows a rescan's ``add_pending``
    leaves alone.
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
            verifiable = entry.sha256 is not None and sig.same_but_ctime(entry.sig)
            return Action.VERIFY if verifiable else Action.UPLOAD
        if dispose and not entry.disposed:
            return Action.DISPOSE
        return Action.SKIP
    # FAILED
    return Action.FAILED if same else Action.UPLOAD


# --- the state machine --------------------------------------------------------------------


class Op(enum.StrEnum):
    """The operations that change rows: the Ledger methods of the same name, with
    record_error split by outcome (which :func:`_error_op` picks)."""

    ADD_PENDING = "add_pending"
    MARK_TICKETED = "mark_ticketed"
    MARK_PUT = "mark_put"
    MARK_REPORTED = "mark_reported"
    MARK_DISPOSED = "mark_disposed"
    MARK_VERIFIED = "mark_verified"
    MARK_PENDING = "mark_pending"
    RETRY_FAILED = "retry_failed"
    FORGET = "forget"
    PRUNE = "prune"
    ERROR_TRANSIENT = "record_error:transient"  # permanent=False
    ERROR_RETRY = "record_error:retry"  # permanent, attempts left
    ERROR_FAIL = "record_error:fail"  # permanent, fail_now or attempts >= max_attempts


class Cond(enum.Enum):
    """A condition an operation needs besides the row's state; when it does not hold, the
    operation is refused like from any other state. Values are the tags of the docstring."""

    ALWAYS = ""
    # FileSig.same_version against the row's sig: a rescan resets only changed files.
    NEW_VERSION = "[new version]"
    # The file_store_id argument, when given, must be the row's: a stale upload is refused.
    SAME_TICKET = "[same ticket]"


_COND_MEANINGS: Final[Mapping[Cond, str]] = MappingProxyType(
    {
        Cond.NEW_VERSION: "only if the row records another version than the sig given, or none",
        Cond.SAME_TICKET: "only if the file_store_id given, if any, is the row's",
    }
)


@dataclass(frozen=True, slots=True)
class Rule:
    """How one operation changes a row: ``moves`` maps each state it is allowed from to
    the state the row ends in (None as a source: there is no row yet and one is created;
    as a target: the row is deleted). ``strict`` operations raise IllegalTransition when
    refused; the others (bulk sweeps) leave such rows alone quietly."""

    moves: Mapping[State | None, State | None]
    when: Cond = Cond.ALWAYS
    strict: bool = True

    @property
    def sources(self) -> tuple[State | None, ...]:
        return tuple(self.moves)


_P, _T, _U, _R, _F = State.PENDING, State.TICKETED, State.PUT, State.REPORTED, State.FAILED
_NO_ROW: Final = None  # as a source: no row yet; as a target: the row is deleted

#: THE state machine: operation -> {state it is allowed from: state it leads to}.
# fmt: off
TRANSITIONS: Final[Mapping[Op, Rule]] = MappingProxyType({
    Op.ADD_PENDING:     Rule({_NO_ROW: _P, _P: _P, _T: _P, _R: _P, _F: _P},
                             Cond.NEW_VERSION, strict=False),
    Op.MARK_TICKETED:   Rule({_NO_ROW: _T, _P: _T, _T: _T, _R: _T, _F: _T}),
    Op.MARK_PUT:        Rule({_T: _U}, Cond.SAME_TICKET),
    Op.MARK_REPORTED:   Rule({_U: _R}, Cond.SAME_TICKET),
    Op.MARK_DISPOSED:   Rule({_R: _R}),
    Op.MARK_VERIFIED:   Rule({_R: _R}),
    Op.MARK_PENDING:    Rule({_P: _P, _T: _P}),
    Op.RETRY_FAILED:    Rule({_F: _P}, strict=False),
    Op.FORGET:          Rule({_P: _NO_ROW, _T: _NO_ROW, _F: _NO_ROW}, strict=False),
    # Rows of files that are gone (disposed of, or deleted by a user), after the retention
    # period: a file that comes back is then a new one.
    Op.PRUNE:           Rule({_R: _NO_ROW, _F: _NO_ROW}, strict=False),
    # A put row stays put until it fails (going back to pending would upload it again
    # instead of retrying the report); a reported row stays reported (the error is about
    # the after_upload move/delete, the upload itself is done).
    Op.ERROR_TRANSIENT: Rule({_NO_ROW: _P, _P: _P, _T: _T, _U: _U, _R: _R, _F: _F}),
    Op.ERROR_RETRY:     Rule({_NO_ROW: _P, _P: _P, _T: _P, _U: _U, _R: _R, _F: _F}),
    Op.ERROR_FAIL:      Rule({_NO_ROW: _F, _P: _F, _T: _F, _U: _F, _R: _R, _F: _F}),
})
# fmt: on

#: The operation that carries out each action of :func:`plan` (None: the row is left as
#: it is). A test checks that plan() only ever asks for what TRANSITIONS allows.
ACTION_OPS: Final[Mapping[Action, Op | None]] = MappingProxyType(
    {
        Action.UPLOAD: Op.MARK_TICKETED,
        Action.REPORT: Op.MARK_REPORTED,
        Action.DISPOSE: Op.MARK_DISPOSED,
        Action.VERIFY: Op.MARK_VERIFIED,
        Action.SKIP: None,
        Action.FAILED: None,
    }
)

# Why a row in each state refuses what the table does not allow from it.
_REFUSALS: Final[Mapping[State, str]] = MappingProxyType(
    {
        State.PENDING: "it has no ticket yet",
        State.TICKETED: "its PUT is not recorded yet",
        State.PUT: "it owes the report of its upload",
        State.REPORTED: "it is done (a new version goes through add_pending or mark_ticketed)",
        State.FAILED: "it failed for good (retry_failed or a new version sends it back)",
    }
)


def _error_op(cur: Entry | None, *, permanent: bool, fail_now: bool, max_attempts: int) -> Op:
    """Which record_error operation an error is for the row ``cur`` (None: no row): a
    permanent one is final when ``fail_now`` or its attempt makes ``max_attempts``."""
    if not permanent:
        return Op.ERROR_TRANSIENT
    attempts = (0 if cur is None else cur.attempts) + 1
    return Op.ERROR_FAIL if fail_now or attempts >= max_attempts else Op.ERROR_RETRY


def _state_in(op: Op, column: str = "state", *, but: State | None = None) -> str:
    """The SQL test that a row is in a state ``op`` is allowed from (``but`` that one)."""
    quoted = [f"'{s}'" for s in State if s in TRANSITIONS[op].moves and s is not but]
    return f"{column} IN ({', '.join(quoted)})"


def _target(op: Op) -> State | None:
    """The one state ``op`` leads to from every existing row; ValueError if it has several."""
    targets = {t for s, t in TRANSITIONS[op].moves.items() if s is not None}
    if len(targets) != 1:
        raise ValueError(f"{op} leads to {len(targets)} states, not one")
    return targets.pop()


def _created(op: Op) -> State:
    """The state of the row ``op`` creates when there is none; ValueError if it creates none."""
    created = TRANSITIONS[op].moves.get(None)
    if created is None:
        raise ValueError(f"{op} creates no row")
    return created


def _target_sql(op: Op) -> str:
    target = _target(op)
    if target is None:
        raise ValueError(f"{op} deletes rows")
    return f"'{target}'"


def _check(
    path: Path,
    op: Op,
    cur: Entry | None,
    folder: str,
    relpath: str,
    file_store_id: str | None = None,
) -> None:
    """Raises IllegalTransition, explaining why, unless TRANSITIONS allows ``op`` on the
    row ``cur`` (None: no row), ticket ``file_store_id`` included."""
    rule = TRANSITIONS[op]
    if cur is None:
        if None in rule.moves:
            return
        raise IllegalTransition(f"ledger {path}: {op}: no row for {folder!r} {relpath!r}")
    where = f"ledger {path}: {op}: {cur.folder!r} {cur.relpath!r} is {cur.state}"
    if cur.state not in rule.moves:
        allowed = ", ".join(_name(s) for s in rule.sources)
        raise IllegalTransition(f"{where}: {_REFUSALS[cur.state]} (allowed from: {allowed})")
    if rule.when is Cond.SAME_TICKET and file_store_id not in (None, cur.file_store_id):
        raise IllegalTransition(
            f"{where}: its ticket is {cur.file_store_id!r}, not {file_store_id!r}"
        )


def _advance_row(
    conn: sqlite3.Connection,
    path: Path,
    op: Op,
    folder: str,
    relpath: str,
    assignments: str,
    values: tuple[object, ...],
    file_store_id: str | None = None,
) -> None:
    """Moves the row as TRANSITIONS[op] says, applying ``assignments`` too; raises
    IllegalTransition, explaining why, when the table does not allow it."""
    rule = TRANSITIONS[op]
    # One conditional UPDATE does the check and the write; the row is read only to explain
    # a refusal.
    sql = (
        f"UPDATE files SET state = {_target_sql(op)}, {assignments}"
        f" WHERE folder = ? AND relpath = ? AND {_state_in(op)}"
    )
    params: tuple[object, ...] = (*values, folder, os.fsencode(relpath))
    if rule.when is Cond.SAME_TICKET:
        sql += " AND (? IS NULL OR file_store_id = ?)"
        params += (file_store_id, file_store_id)
    elif file_store_id is not None:
        raise ValueError(f"{op} takes no ticket")
    if conn.execute(sql, params).rowcount:
        return
    _check(path, op, _fetch(conn, folder, relpath), folder, relpath, file_store_id)
    raise AssertionError(f"{op}: the row met the conditions but was not updated")


def _name(state: State | None, *, deleted: bool = False) -> str:
    if state is None:
        return "(deleted)" if deleted else "(none)"
    return state.value


def _render_table() -> str:
    """TRANSITIONS as the text in the module docstring: one line per operation, its
    sources grouped by target (rows a multi-target operation leaves in their state as
    "unchanged"), then what the condition tags mean."""
    lines = []
    for op, rule in TRANSITIONS.items():
        groups: dict[str, list[str]] = {}
        several = len(set(rule.moves.values())) > 1
        for source, target in rule.moves.items():
            key = (
                "unchanged" if several and source is target else f"-> {_name(target, deleted=True)}"
            )
            groups.setdefault(key, []).append(_name(source))
        text = "; ".join(f"{' '.join(sources)} {key}" for key, sources in groups.items())
        text += f" {rule.when.value}" if rule.when.value else ""
        text += "" if rule.strict else " *"
        lines.append(f"    {op.value:<24}{text}")
    lines.append("")
    lines += [f"    {cond.value}: {meaning}" for cond, meaning in _COND_MEANINGS.items()]
    lines.append("    *: rows it may not change are left alone, without IllegalTransition")
    return "\n".join(lines)


# --- storage --------------------------------------------------------------------------------

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

#: Version 2 keeps the inode change time with the rest of a file's signature (NULL in rows
#: recorded before: FileSig.same_version then leaves it out).
_MIGRATE_TO_V2 = ("ALTER TABLE files ADD COLUMN ctime_ns INTEGER",)

_COLUMNS = (
    "folder, relpath, state, dev, ino, size, mtime_ns, ctime_ns, sha256, file_store_id, attempts,"
    " transient_errors, last_error, disposed, created_at, updated_at, reported_at"
)

# add_pending in one statement per row, so 100,000 rows fit in one fast executemany. The
# states come from TRANSITIONS[Op.ADD_PENDING] (never ``put``: that row owes a report, and
# losing it would leave uploaded bytes unreported). The rest of the WHERE clause is its
# condition, NEW_VERSION: FileSig.same_version in SQL (size, mtime_ns, ino, and ctime_ns when
# both know it; dev left out),
# so an existing row is reset only when it records another version (or none).
_ADD_PENDING_SQL = f"""
    INSERT INTO files (folder, relpath, dev, ino, size, mtime_ns, ctime_ns, state,
                       created_at, updated_at)
    VALUES (?, ?, ?, ?, ?, ?, ?, '{_created(Op.ADD_PENDING)}', ?, ?)
    ON CONFLICT (folder, relpath) DO UPDATE SET
        dev = excluded.dev, ino = excluded.ino, size = excluded.size,
        mtime_ns = excluded.mtime_ns, ctime_ns = excluded.ctime_ns, state = {_target_sql(Op.ADD_PENDING)}, attempts = 0,
        transient_errors = 0, last_error = NULL, file_store_id = NULL, sha256 = NULL,
        disposed = 0, reported_at = NULL, updated_at = excluded.updated_at
    WHERE {_state_in(Op.ADD_PENDING, "files.state")}
      AND NOT (files.size IS NOT NULL AND files.mtime_ns IS NOT NULL
               AND files.ino IS NOT NULL
               AND files.size = excluded.size AND files.mtime_ns = excluded.mtime_ns
               AND files.ino = excluded.ino
               AND (files.ctime_ns IS NULL OR excluded.ctime_ns IS NULL
                    OR files.ctime_ns = excluded.ctime_ns))
"""

# mark_ticketed's usual case in one statement, without reading the row first: a row of
# this very version that the table lets take a ticket, reported ones excepted (a reported
# row starts a new upload, so its counters are reset by the general path).
_MARK_TICKETED_SAME_VERSION_SQL = f"""
    UPDATE files SET dev = ?, ctime_ns = ?, state = {_target_sql(Op.MARK_TICKETED)},
        file_store_id = ?, sha256 = NULL, disposed = 0, reported_at = NULL, updated_at = ?
    WHERE folder = ? AND relpath = ? AND {_state_in(Op.MARK_TICKETED, but=State.REPORTED)}
      AND dev IS NOT NULL AND ino = ? AND size = ? AND mtime_ns = ?
      AND (ctime_ns IS NULL OR ? IS NULL OR ctime_ns = ?)
"""


class _Store:
    """The SQLite connection behind a Ledger: opening, pragmas and schema, and the lock and
    transactions every access goes through. Turns ``sqlite3.Error`` into LedgerError."""

    def __init__(
        self, path: Path, *, readonly: bool, synchronous: Literal["NORMAL", "FULL"]
    ) -> None:
        """Opens (creating unless ``readonly``) the database at ``path``; see Ledger."""
        self.path = path
        self.readonly = readonly
        self.synchronous = synchronous
        # Reentrant: inside a batch (one transaction for many operations), each operation's
        # own transaction() takes it again.
        self.lock = threading.RLock()
        self._batch = 0  # > 0 while a batch is open on this connection
        conn: sqlite3.Connection | None = None
        try:
            if readonly:
                # as_uri() percent-encodes the path, so names with '?' or '#' work.
                uri = path.absolute().as_uri() + "?mode=ro"
                conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
            else:
                conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
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
                    self.synchronous = "FULL"
                conn.execute(f"PRAGMA synchronous = {self.synchronous}")
                self._init_schema(conn)
        except sqlite3.Error as exc:
            if conn is not None:
                conn.close()
            raise self.error(exc) from exc
        except BaseException:
            if conn is not None:
                conn.close()
            raise
        self.conn: sqlite3.Connection | None = conn

    def close(self) -> None:
        with self.lock:
            if self.conn is not None:
                conn, self.conn = self.conn, None
                try:
                    conn.close()
                except sqlite3.Error as exc:
                    raise self.error(exc) from exc

    def error(self, exc: BaseException) -> LedgerError:
        return LedgerError(f"ledger {self.path}: {exc}")

    @contextlib.contextmanager
    def reading(self) -> Iterator[sqlite3.Connection]:
        # Reads run in autocommit: each statement sees one consistent snapshot (WAL).
        with self.lock:
            conn = self._open_conn()
            try:
                yield conn
            except sqlite3.Error as exc:
                raise self.error(exc) from exc

    @contextlib.contextmanager
    def batch(self, *, durable: bool) -> Iterator[None]:
        """One transaction (one commit, one sync when ``durable``) for every operation run
        inside it; each operation is a savepoint of its own, so one that fails (an
        IllegalTransition) undoes only itself. Raises LedgerError when it cannot commit:
        then nothing of it was written."""
        with self.lock, self.transaction(durable=durable):
            self._batch += 1
            try:
                yield
            finally:
                self._batch -= 1

    @contextlib.contextmanager
    def transaction(self, *, durable: bool = False) -> Iterator[sqlite3.Connection]:
        # BEGIN IMMEDIATE takes the write lock up front, so a transaction never fails
        # half-way with SQLITE_BUSY after it has read the row it is about to change.
        with self.lock:
            conn = self._open_conn()
            if self.readonly:
                raise LedgerError(f"ledger {self.path}: opened read-only")
            if self._batch:
                with self._savepoint(conn):
                    yield conn
                return
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
                        conn.execute(f"PRAGMA synchronous = {self.synchronous}")
            except sqlite3.Error as exc:
                raise self.error(exc) from exc

    @contextlib.contextmanager
    def _savepoint(self, conn: sqlite3.Connection) -> Iterator[None]:
        try:
            conn.execute("SAVEPOINT op")
            try:
                yield
            except BaseException:
                conn.execute("ROLLBACK TO op")
                raise
            finally:
                conn.execute("RELEASE op")
        except sqlite3.Error as exc:
            raise self.error(exc) from exc

    def _open_conn(self) -> sqlite3.Connection:
        if self.conn is None:
            raise LedgerError(f"ledger {self.path}: closed")
        return self.conn

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
                conn.execute("INSERT INTO schema_version (version) VALUES (1)")
                version = 1
            if version < 2:
                for statement in _MIGRATE_TO_V2:
                    conn.execute(statement)
                conn.execute("UPDATE schema_version SET version = 2")
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise


_RETRY_FAILED_SQL = (
    f"UPDATE files SET state = {_target_sql(Op.RETRY_FAILED)}, attempts = 0,"
    f" file_store_id = NULL, sha256 = NULL, updated_at = ? WHERE {_state_in(Op.RETRY_FAILED)}"
)


def _forget_sql() -> str:
    if _target(Op.FORGET) is not None:
        raise ValueError(f"{Op.FORGET} must delete rows")
    return f"DELETE FROM files WHERE folder = ? AND relpath = ? AND {_state_in(Op.FORGET)}"


_FORGET_SQL = _forget_sql()


class _LedgerReads:
    """The read side of :class:`Ledger`: opening, closing and every query. Ledger adds the
    writes; its docstring is the contract of both."""

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
        if readonly and not self.path.is_file():
            raise LedgerError(f"no ledger at {self.path} (has the daemon run yet?)")
        self._store = _Store(self.path, readonly=readonly, synchronous=synchronous)

    @classmethod
    def in_dir(cls, state_dir: Path, **kw: Any) -> Self:
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
        self._store.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        mode = "ro" if self.readonly else "rw"
        return f"Ledger({str(self.path)!r}, {mode})"

    @property
    def _conn(self) -> sqlite3.Connection | None:
        """The connection (None once closed), for white-box tests."""
        return self._store.conn

    def get(self, folder: str, relpath: str) -> Entry | None:
        """Given a folder and a path relative to it, returns its row, or None."""
        with self._store.reading() as conn:
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
        with self._store.reading() as conn:
            cursor = conn.execute(
                "SELECT relpath, state, size, mtime_ns, ino, dev, ctime_ns, disposed"
                " FROM files WHERE folder = ?",
                (folder,),
            )
            for relpath, state, size, mtime_ns, ino, dev, ctime_ns, disposed in cursor:
                result[fsdecode(relpath)] = (
                    states[state],
                    None
                    if size is None
                    else FileSig(
                        size,
                        mtime_ns,
                        ino if ino >= 0 else ino + u64,
                        dev if dev >= 0 else dev + u64,
                        ctime_ns,
                    ),
                    disposed == 1,
                )
        return result

    def known(self, folder: str, relpaths: Sequence[str]) -> dict[str, Known]:
        """Given a folder and some of its paths, returns ``{relpath: (state, sig, disposed)}``
        for those that have a row: a scan compares a batch of entries at a time, and never
        holds a whole folder's rows in memory."""
        result: dict[str, Known] = {}
        with self._store.reading() as conn:
            for start in range(0, len(relpaths), _IN_LIMIT):
                chunk = [os.fsencode(r) for r in relpaths[start : start + _IN_LIMIT]]
                marks = ", ".join("?" * len(chunk))
                rows = conn.execute(
                    "SELECT relpath, state, size, mtime_ns, ino, dev, ctime_ns, disposed"
                    f" FROM files WHERE folder = ? AND relpath IN ({marks})",
                    (folder, *chunk),
                )
                for relpath, state, size, mtime_ns, ino, dev, ctime_ns, disposed in rows:
                    sig = (
                        None
                        if size is None
                        else FileSig(size, mtime_ns, _from_u64(ino), _from_u64(dev), ctime_ns)
                    )
                    result[os.fsdecode(relpath)] = (State(state), sig, disposed == 1)
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
        with self._store.reading() as conn:
            return [_entry(row) for row in conn.execute(sql, params)]

    def counts(self) -> dict[str, int]:
        """Returns how many rows are in each state (every State value is a key, 0 when
        none) plus ``"total"``."""
        result = {s.value: 0 for s in State}
        with self._store.reading() as conn:
            for state, n in conn.execute("SELECT state, COUNT(*) FROM files GROUP BY state"):
                result[state] = n
        result["total"] = sum(result.values())
        return result

    def recent_failures(self, limit: int = 10) -> list[Entry]:
        """Returns up to ``limit`` rows that failed, hit an error and are not reported yet
        (still retrying), or were reported but whose after_upload move/delete failed (it is
        tried again at the next scan), most recently updated first."""
        with self._store.reading() as conn:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM files"
                " WHERE state = 'failed' OR (last_error IS NOT NULL AND disposed = 0)"
                " ORDER BY updated_at DESC, folder, relpath LIMIT ?",
                (limit,),
            ).fetchall()
        return [_entry(row) for row in rows]


class _LedgerUpkeep(_LedgerReads):
    """A ledger's upkeep, beside the transitions of single files: pruning the rows of files
    that are gone, carrying rows over to a folder's new spelling, probing for writability."""

    def batch(self, *, durable: bool = False) -> contextlib.AbstractContextManager[None]:
        """Runs every operation called inside it in ONE transaction: one commit (one sync
        when ``durable``) for all of them, the group commit of the single ledger writer.
        An operation that raises undoes only itself (a savepoint). Raises LedgerError at
        the end when the transaction cannot commit: then none of it was written."""
        return self._store.batch(durable=durable)

    def holding(self) -> contextlib.AbstractContextManager[bool]:
        """Holds the ledger's lock (re-entrant) while inside: no other thread's operation on
        this ledger runs meanwhile; this thread's own run as usual."""
        return self._store.lock

    def stop_autocheckpoint(self) -> None:
        """This connection's commits no longer copy the WAL back into the database when it
        grows (SQLite's automatic checkpoint, which syncs): :meth:`checkpoint` does."""
        with self._store.reading() as conn:
            conn.execute("PRAGMA wal_autocheckpoint = 0")

    def checkpoint(self) -> None:
        """Copies what the WAL holds back into the database, as far as no reader needs it
        (a passive checkpoint: it never waits for one). Raises LedgerError."""
        with self._store.reading() as conn:
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def probe_write(self) -> None:
        """Raises LedgerError unless the ledger can be written again: room for a new file
        beside it (written and synced, then removed) and a transaction that commits."""
        probe = self.path.with_name(f".probe-{os.getpid()}")
        try:
            with open(probe, "wb") as fh:
                fh.write(b"\0" * 65536)
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:
            raise LedgerError(f"ledger {self.path}: cannot write beside it: {exc}") from exc
        finally:
            with contextlib.suppress(OSError):
                probe.unlink()
        with self._store.transaction() as conn:
            conn.execute("UPDATE schema_version SET version = version")

    def prune_disposed(self, folder: str, before: float) -> int:
        """Deletes the rows of files moved or deleted after their upload, last changed
        before ``before`` (a time of the ledger's clock); returns how many."""
        with self._store.transaction() as conn:
            return conn.execute(
                f"DELETE FROM files WHERE folder = ? AND {_state_in(Op.PRUNE)}"
                " AND disposed = 1 AND updated_at < ?",
                (folder, before),
            ).rowcount

    def idle_rows(self, folder: str, before: float, after: str | None, limit: int) -> list[str]:
        """Returns up to ``limit`` paths, in order and past ``after``, of rows that pruning
        may delete once their file is gone: reported or failed, not disposed of, last
        changed before ``before``. A prune pass pages through a folder with it."""
        sql = (
            f"SELECT relpath FROM files WHERE folder = ? AND {_state_in(Op.PRUNE)}"
            " AND disposed = 0 AND updated_at < ?"
        )
        params: tuple[object, ...] = (folder, before)
        if after is not None:
            sql += " AND relpath > ?"
            params += (os.fsencode(after),)
        with self._store.reading() as conn:
            rows = conn.execute(f"{sql} ORDER BY relpath LIMIT ?", (*params, limit))
            return [os.fsdecode(r) for (r,) in rows]

    def prune_gone(self, folder: str, relpaths: Sequence[str], before: float) -> int:
        """Deletes the rows of these paths (their files are gone) that pruning may delete
        and that were last changed before ``before``; returns how many."""
        deleted = 0
        with self._store.transaction() as conn:
            for start in range(0, len(relpaths), _IN_LIMIT):
                chunk = [os.fsencode(r) for r in relpaths[start : start + _IN_LIMIT]]
                marks = ", ".join("?" * len(chunk))
                deleted += conn.execute(
                    f"DELETE FROM files WHERE folder = ? AND relpath IN ({marks})"
                    f" AND {_state_in(Op.PRUNE)} AND updated_at < ?",
                    (folder, *chunk, before),
                ).rowcount
        return deleted

    def adopt_folder(self, old_key: str, new_key: str) -> int:
        """Moves every row of folder ``old_key`` to folder ``new_key`` in ONE transaction
        (each keeps its state, signature, ticket and hash) and returns how many moved.

        For a folder whose key changed spelling (resolved to its real path). A file with a
        row under both keys keeps the one under ``new_key``, the newer record; the one under
        ``old_key`` is dropped, a ``put`` one included: reporting its ticket now could report
        a file the newer row has already reported under another. Not a state transition, so
        outside :data:`TRANSITIONS`. Raises LedgerError when it cannot commit.
        """
        if old_key == new_key:
            return 0
        with self._store.transaction() as conn:
            moved = conn.execute(
                "UPDATE OR IGNORE files SET folder = ? WHERE folder = ?", (new_key, old_key)
            ).rowcount
            conn.execute("DELETE FROM files WHERE folder = ?", (old_key,))
        return int(moved)


class Ledger(_LedgerUpkeep):
    """The SQLite ledger. Thread-safe: one connection used under a lock.

    Every method raises :class:`LedgerError` when the database cannot be read or written,
    and :class:`IllegalTransition` (a LedgerError) when asked for a state change the state
    machine (:data:`TRANSITIONS`) forbids. A ledger opened with ``readonly=True`` raises
    LedgerError on any write. The reads and the constructor are inherited.
    """

    # Each write is an operation of TRANSITIONS.
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
    #
    # A row that enters pending always loses its ticket and hash (file_store_id and
    # sha256 NULL): a pending row is uploaded afresh.

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
                    sig.ctime_ns,
                    now,
                    now,
                )

        with self._store.transaction() as conn:
            conn.executemany(_ADD_PENDING_SQL, params())

    def mark_ticketed(self, folder: str, relpath: str, sig: FileSig, file_store_id: str) -> None:
        """Records that GetPreUploadUrl gave ``file_store_id`` for version ``sig``, before
        the PUT starts. Creates the row if needed.

        Allowed from any state but ``put`` (which owes a report of its own ticket: raises
        IllegalTransition). When the row held another version, or was reported, the attempt
        counters and last error are reset; otherwise they are kept.
        """
        now = self._clock()
        dev, ino, size, mtime_ns, ctime_ns = sig_params = _sig_params(sig)
        rel = os.fsencode(relpath)
        with self._store.transaction() as conn:
            if conn.execute(
                _MARK_TICKETED_SAME_VERSION_SQL,
                (
                    dev,
                    ctime_ns,
                    file_store_id,
                    now,
                    folder,
                    rel,
                    ino,
                    size,
                    mtime_ns,
                    *[ctime_ns] * 2,
                ),
            ).rowcount:
                return
            cur = _fetch(conn, folder, relpath)
            _check(self.path, Op.MARK_TICKETED, cur, folder, relpath)
            if cur is None:
                conn.execute(
                    "INSERT INTO files (folder, relpath, dev, ino, size, mtime_ns, ctime_ns, state,"
                    " file_store_id, created_at, updated_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (folder, rel, *sig_params, _created(Op.MARK_TICKETED), file_store_id, now, now),
                )
                return
            new_version = cur.state is State.REPORTED or not sig.same_version(cur.sig)
            conn.execute(
                f"UPDATE files SET state = {_target_sql(Op.MARK_TICKETED)},"
                f" {_SIG_SET}, file_store_id = ?, sha256 = NULL,"
                " disposed = 0, reported_at = NULL, attempts = ?, transient_errors = ?,"
                " last_error = ?, updated_at = ? WHERE folder = ? AND relpath = ?",
                (
                    *sig_params,
                    file_store_id,
                    0 if new_version else cur.attempts,
                    0 if new_version else cur.transient_errors,
                    None if new_version else cur.last_error,
                    now,
                    folder,
                    rel,
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
        self._advance(
            Op.MARK_PUT,
            folder,
            relpath,
            "sha256 = ?, updated_at = ?",
            (sha256, now),
            file_store_id=file_store_id,
            durable=True,
        )

    def mark_reported(
        self, folder: str, relpath: str, *, file_store_id: str | None = None, wait: bool = True
    ) -> None:
        """Records that ReportUploadSuccess succeeded: the file is done (``wait`` is for the
        shared ledger's sake: here the commit is always made before returning).

        Only from ``put`` (and, when ``file_store_id`` is given, only for that ticket);
        raises IllegalTransition otherwise. Clears ``last_error``; sets ``reported_at``.
        """
        now = self._clock()
        assignments = "reported_at = ?, last_error = NULL, updated_at = ?"
        self._advance(
            Op.MARK_REPORTED, folder, relpath, assignments, (now, now), file_store_id=file_store_id
        )

    def mark_disposed(self, folder: str, relpath: str) -> None:
        """Records that the after_upload move/delete of a reported file was done.

        Only from ``reported``; raises IllegalTransition otherwise. Idempotent. Clears
        ``last_error`` (left by a failed earlier try of the move/delete).
        """
        now = self._clock()
        assignments = "disposed = 1, last_error = NULL, updated_at = ?"
        self._advance(Op.MARK_DISPOSED, folder, relpath, assignments, (now,))

    def mark_verified(self, folder: str, relpath: str, sig: FileSig) -> None:
        """Records that a reported file whose ctime changed still holds the bytes that were
        uploaded (its hash matched): the row takes ``sig`` and stays reported.

        Only from ``reported``; raises IllegalTransition otherwise.
        """
        now = self._clock()
        values = (*_sig_params(sig), now)
        self._advance(Op.MARK_VERIFIED, folder, relpath, f"{_SIG_SET}, updated_at = ?", values)

    def mark_pending(self, folder: str, relpath: str, sig: FileSig | None = None) -> None:
        """Sends a ``pending`` or ``ticketed`` row back to pending (the file changed during
        the PUT): drops its ticket and hash, records ``sig`` if given, keeps ``attempts``.

        Raises IllegalTransition when there is no row, or it is ``put`` (it owes a report),
        ``reported`` (a new version goes through add_pending/mark_ticketed) or ``failed``
        (use retry_failed).
        """
        now = self._clock()
        assignments = "file_store_id = NULL, sha256 = NULL, updated_at = ?"
        values: tuple[object, ...] = (now,)
        if sig is not None:
            assignments += f", {_SIG_SET}"
            values += _sig_params(sig)
        self._advance(Op.MARK_PENDING, folder, relpath, assignments, values)

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
        (These are the ``record_error:*`` entries of TRANSITIONS.)

        Without a row, one is created (pending, or failed as above). ``sig``, when given,
        records the version the error is about, so that plan() can tell whether a failed
        file changed since; a row without a sig is retried whenever it is seen.
        Raises ValueError when ``max_attempts < 1``.
        """
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
        now = self._clock()
        rel = os.fsencode(relpath)
        with self._store.transaction() as conn:
            cur = _fetch(conn, folder, relpath)
            op = _error_op(cur, permanent=permanent, fail_now=fail_now, max_attempts=max_attempts)
            target = TRANSITIONS[op].moves[None if cur is None else cur.state]
            assert target is not None  # record_error never deletes
            if cur is None:
                conn.execute(
                    "INSERT INTO files (folder, relpath, state, created_at, updated_at)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (folder, rel, target.value, now, now),
                )
            counter = "attempts" if permanent else "transient_errors"
            sets = f"state = ?, last_error = ?, updated_at = ?, {counter} = {counter} + 1"
            values: tuple[object, ...] = (target.value, error, now)
            if target is State.PENDING:
                sets += ", file_store_id = NULL, sha256 = NULL"
            if sig is not None:
                sets += f", {_SIG_SET}"
                values += _sig_params(sig)
            conn.execute(
                f"UPDATE files SET {sets} WHERE folder = ? AND relpath = ?", (*values, folder, rel)
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
        sql = _RETRY_FAILED_SQL
        with self._store.transaction() as conn:
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
        with self._store.transaction() as conn:
            return conn.execute(_FORGET_SQL, (folder, os.fsencode(relpath))).rowcount > 0

    def _advance(
        self,
        op: Op,
        folder: str,
        relpath: str,
        assignments: str,
        values: tuple[object, ...],
        *,
        file_store_id: str | None = None,
        durable: bool = False,
    ) -> None:
        """One transaction of :func:`_advance_row`: ``op`` on one row, or IllegalTransition."""
        with self._store.transaction(durable=durable) as conn:
            _advance_row(conn, self.path, op, folder, relpath, assignments, values, file_store_id)


#: What a scan needs of a row: its state, the version it records, whether it was disposed.
Known = tuple[State, FileSig | None, bool]
#: SQLite's default limit of host parameters is 32,766; a scan's batches stay far below.
_IN_LIMIT = 500


# --- row helpers --------------------------------------------------------------------------

# SQLite integers are signed 64-bit, but st_ino and st_dev are unsigned and can use all 64
# bits (NFS, btrfs, overlayfs). They are stored two's-complement and mapped back on read.
_U64 = 1 << 64
_I64_MAX = (1 << 63) - 1


def _to_u64(n: int) -> int:
    return n - _U64 if n > _I64_MAX else n


def _from_u64(n: int) -> int:
    return n + _U64 if n < 0 else n


#: The columns of a FileSig, in the order of _sig_params.
_SIG_SET = "dev = ?, ino = ?, size = ?, mtime_ns = ?, ctime_ns = ?"


def _sig_params(sig: FileSig | None) -> tuple[int | None, ...]:
    if sig is None:
        return (None, None, None, None, None)
    return (_to_u64(sig.dev), _to_u64(sig.ino), sig.size, sig.mtime_ns, sig.ctime_ns)


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
        ctime_ns,
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
        else FileSig(size, mtime_ns, _from_u64(ino), _from_u64(dev), ctime_ns)
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
