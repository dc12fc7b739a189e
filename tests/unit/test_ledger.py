"""Unit tests for hottask_sync.ledger: the crash-safe SQLite ledger and plan()."""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from hottask_sync import ledger as ledger_module
from hottask_sync.errors import LedgerError
from hottask_sync.files import FileSig
from hottask_sync.ledger import (
    ACTION_OPS,
    SCHEMA_VERSION,
    TRANSITIONS,
    Action,
    Cond,
    Entry,
    IllegalTransition,
    Ledger,
    Op,
    State,
    plan,
)

F = "/watch/in"  # a configured folder
SIG = FileSig(size=100, mtime_ns=1_700_000_000_000_000_000, ino=42, dev=7, ctime_ns=5)
OTHER = FileSig(size=101, mtime_ns=1_700_000_000_000_000_000, ino=42, dev=7, ctime_ns=5)
#: SIG after a chmod (or a same-looking copy into the same inode): only the ctime moved.
CHMODDED = FileSig(size=100, mtime_ns=1_700_000_000_000_000_000, ino=42, dev=7, ctime_ns=6)
REPO = Path(__file__).resolve().parents[2]


class Clock:
    def __init__(self) -> None:
        self.t = 1_000.0

    def __call__(self) -> float:
        self.t += 1.0
        return self.t


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def ledger(tmp_path: Path, clock: Clock) -> Iterator[Ledger]:
    led = Ledger.in_dir(tmp_path / "state", clock=clock)
    yield led
    led.close()


def raw(led: Ledger) -> sqlite3.Connection:
    """A separate plain connection to the ledger file, for white-box checks."""
    return sqlite3.connect(led.path)


def to_state(led: Ledger, relpath: str, state: State, sig: FileSig = SIG) -> Entry:
    """Drives a fresh row through the legal transitions up to ``state``."""
    led.add_pending([(F, relpath, sig)])
    if state is State.FAILED:
        led.record_error(F, relpath, "boom", permanent=True, max_attempts=1)
    if state in (State.TICKETED, State.PUT, State.REPORTED):
        led.mark_ticketed(F, relpath, sig, f"fs-{relpath}")
    if state in (State.PUT, State.REPORTED):
        led.mark_put(F, relpath, "ab" * 32)
    if state is State.REPORTED:
        led.mark_reported(F, relpath)
    entry = led.get(F, relpath)
    assert entry is not None and entry.state is state
    return entry


# --- opening, schema, pragmas -----------------------------------------------------------


def test_creates_schema_wal_and_pragmas(ledger: Ledger, tmp_path: Path) -> None:
    assert ledger.path == tmp_path / "state" / "ledger.sqlite3"
    assert stat.S_IMODE((tmp_path / "state").stat().st_mode) == 0o700
    with raw(ledger) as conn:
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
        assert {"schema_version", "files", "files_state"} <= tables
    own = ledger._conn
    assert own is not None
    assert own.execute("PRAGMA synchronous").fetchone() == (1,)  # NORMAL
    assert own.execute("PRAGMA busy_timeout").fetchone() == (5000,)
    assert SCHEMA_VERSION == 2


def test_reopen_keeps_data_and_schema(tmp_path: Path) -> None:
    with Ledger.in_dir(tmp_path) as led:
        led.add_pending([(F, "a", SIG)])
    with Ledger.in_dir(tmp_path) as led:
        entry = led.get(F, "a")
        assert entry is not None and entry.state is State.PENDING
    with sqlite3.connect(tmp_path / "ledger.sqlite3") as conn:
        assert conn.execute("SELECT COUNT(*) FROM schema_version").fetchone() == (1,)


@pytest.mark.parametrize("readonly", [False, True])
def test_newer_schema_refused(tmp_path: Path, readonly: bool) -> None:
    Ledger.in_dir(tmp_path).close()
    path = tmp_path / "ledger.sqlite3"
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE schema_version SET version = 3")
    conn.close()
    with pytest.raises(LedgerError, match="schema version 3") as info:
        Ledger(path, readonly=readonly)
    assert str(path) in str(info.value)


def test_foreign_database_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE t (x)")
    conn.close()
    with pytest.raises(LedgerError, match="not a hottask-sync ledger"):
        Ledger(path)


def test_garbage_file_is_ledger_error(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(LedgerError, match=str(path)):
        Ledger(path)


def test_db_path_is_a_directory(tmp_path: Path) -> None:
    (tmp_path / "ledger.sqlite3").mkdir()
    with pytest.raises(LedgerError, match="ledger"):
        Ledger.in_dir(tmp_path)


def test_closed_ledger_raises(ledger: Ledger) -> None:
    ledger.close()
    ledger.close()  # idempotent
    with pytest.raises(LedgerError, match="closed"):
        ledger.get(F, "a")
    with pytest.raises(LedgerError, match="closed"):
        ledger.add_pending([(F, "a", SIG)])


# --- the happy path and each transition -------------------------------------------------


def test_full_lifecycle(ledger: Ledger, clock: Clock) -> None:
    ledger.add_pending([(F, "a.mp4", SIG)])
    e = ledger.get(F, "a.mp4")
    assert e is not None
    assert (e.folder, e.relpath, e.state, e.sig) == (F, "a.mp4", State.PENDING, SIG)
    assert (e.file_store_id, e.sha256, e.attempts, e.transient_errors) == (None, None, 0, 0)
    assert (e.last_error, e.disposed, e.reported_at) == (None, False, None)
    created = e.created_at

    ledger.mark_ticketed(F, "a.mp4", SIG, "fs-1")
    e = ledger.get(F, "a.mp4")
    assert e is not None and (e.state, e.file_store_id) == (State.TICKETED, "fs-1")

    ledger.mark_put(F, "a.mp4", "ab" * 32, file_store_id="fs-1")
    e = ledger.get(F, "a.mp4")
    assert e is not None and (e.state, e.sha256, e.file_store_id) == (State.PUT, "ab" * 32, "fs-1")
    assert ledger.unfinished() == [e]

    ledger.mark_reported(F, "a.mp4", file_store_id="fs-1")
    e = ledger.get(F, "a.mp4")
    assert e is not None and e.state is State.REPORTED and e.reported_at is not None
    assert e.file_store_id == "fs-1" and e.sha256 == "ab" * 32
    assert e.created_at == created < e.updated_at
    assert ledger.unfinished() == []

    ledger.mark_disposed(F, "a.mp4")
    ledger.mark_disposed(F, "a.mp4")  # idempotent
    e = ledger.get(F, "a.mp4")
    assert e is not None and e.disposed and e.state is State.REPORTED


def test_get_missing_is_none(ledger: Ledger) -> None:
    assert ledger.get(F, "nope") is None
    assert ledger.get("/other", "nope") is None


def test_folders_are_separate(ledger: Ledger) -> None:
    ledger.add_pending([(F, "x", SIG), ("/watch/two", "x", OTHER)])
    a, b = ledger.get(F, "x"), ledger.get("/watch/two", "x")
    assert a is not None and b is not None and a.sig == SIG and b.sig == OTHER
    assert set(ledger.snapshot(F)) == {"x"}


def test_mark_ticketed_upserts(ledger: Ledger) -> None:
    ledger.mark_ticketed(F, "new", SIG, "fs-1")  # no row yet
    e = ledger.get(F, "new")
    assert e is not None and (e.state, e.sig, e.file_store_id) == (State.TICKETED, SIG, "fs-1")
    ledger.mark_ticketed(F, "new", SIG, "fs-2")  # redo after a crash: a new ticket
    e = ledger.get(F, "new")
    assert e is not None and e.file_store_id == "fs-2"


def test_mark_ticketed_keeps_attempts_for_same_version(ledger: Ledger) -> None:
    ledger.add_pending([(F, "a", SIG)])
    ledger.record_error(F, "a", "400 bad", permanent=True, max_attempts=5)
    ledger.record_error(F, "a", "timeout", permanent=False, max_attempts=5)
    ledger.mark_ticketed(F, "a", SIG, "fs-1")
    e = ledger.get(F, "a")
    assert e is not None and (e.attempts, e.transient_errors, e.last_error) == (1, 1, "timeout")


def test_mark_ticketed_new_version_resets_counters(ledger: Ledger) -> None:
    to_state(ledger, "a", State.REPORTED)
    ledger.mark_disposed(F, "a")
    ledger.mark_ticketed(F, "a", OTHER, "fs-new")
    e = ledger.get(F, "a")
    assert e is not None
    assert (e.state, e.sig, e.file_store_id, e.sha256) == (State.TICKETED, OTHER, "fs-new", None)
    assert (e.disposed, e.reported_at, e.attempts) == (False, None, 0)

    to_state(ledger, "f", State.FAILED)
    ledger.mark_ticketed(F, "f", OTHER, "fs-f")
    e = ledger.get(F, "f")
    assert e is not None and (e.state, e.attempts, e.last_error) == (State.TICKETED, 0, None)


def test_mark_ticketed_refused_on_put(ledger: Ledger) -> None:
    before = to_state(ledger, "a", State.PUT)
    with pytest.raises(IllegalTransition, match="owes the report"):
        ledger.mark_ticketed(F, "a", SIG, "fs-other")
    assert ledger.get(F, "a") == before


@pytest.mark.parametrize("state", [None, State.PENDING, State.PUT, State.REPORTED, State.FAILED])
def test_mark_put_only_from_ticketed(ledger: Ledger, state: State | None) -> None:
    before = None if state is None else to_state(ledger, "a", state)
    with pytest.raises(IllegalTransition):
        ledger.mark_put(F, "a", "cd" * 32)
    assert ledger.get(F, "a") == before


def test_mark_put_checks_the_ticket(ledger: Ledger) -> None:
    before = to_state(ledger, "a", State.TICKETED)
    with pytest.raises(IllegalTransition, match="fs-a"):
        ledger.mark_put(F, "a", "cd" * 32, file_store_id="fs-stale")
    assert ledger.get(F, "a") == before


@pytest.mark.parametrize(
    "state", [None, State.PENDING, State.TICKETED, State.REPORTED, State.FAILED]
)
def test_mark_reported_only_from_put(ledger: Ledger, state: State | None) -> None:
    before = None if state is None else to_state(ledger, "a", state)
    with pytest.raises(IllegalTransition):
        ledger.mark_reported(F, "a")
    assert ledger.get(F, "a") == before


def test_mark_reported_checks_the_ticket(ledger: Ledger) -> None:
    to_state(ledger, "a", State.PUT)
    with pytest.raises(IllegalTransition):
        ledger.mark_reported(F, "a", file_store_id="fs-other")


@pytest.mark.parametrize("state", [None, State.PENDING, State.TICKETED, State.PUT, State.FAILED])
def test_mark_disposed_only_from_reported(ledger: Ledger, state: State | None) -> None:
    before = None if state is None else to_state(ledger, "a", state)
    with pytest.raises(IllegalTransition):
        ledger.mark_disposed(F, "a")
    assert ledger.get(F, "a") == before


def test_mark_pending_from_ticketed(ledger: Ledger) -> None:
    to_state(ledger, "a", State.TICKETED)
    ledger.record_error(F, "a", "400", permanent=True, max_attempts=9)  # → pending, attempts 1
    ledger.mark_ticketed(F, "a", SIG, "fs-2")
    ledger.mark_pending(F, "a", OTHER)  # the file changed during the PUT
    e = ledger.get(F, "a")
    assert e is not None
    assert (e.state, e.sig, e.file_store_id, e.sha256, e.attempts) == (
        State.PENDING,
        OTHER,
        None,
        None,
        1,
    )
    ledger.mark_pending(F, "a")  # from pending, keeping the sig
    e = ledger.get(F, "a")
    assert e is not None and e.sig == OTHER


@pytest.mark.parametrize("state", [None, State.PUT, State.REPORTED, State.FAILED])
def test_mark_pending_refused(ledger: Ledger, state: State | None) -> None:
    before = None if state is None else to_state(ledger, "a", state)
    with pytest.raises(IllegalTransition):
        ledger.mark_pending(F, "a", OTHER)
    assert ledger.get(F, "a") == before


def test_illegal_transition_is_a_ledger_error() -> None:
    assert issubclass(IllegalTransition, LedgerError)


def test_mark_put_commits_with_synchronous_full(ledger: Ledger) -> None:
    to_state(ledger, "a", State.TICKETED)
    conn = ledger._conn
    assert conn is not None
    statements: list[str] = []
    conn.set_trace_callback(statements.append)
    ledger.mark_put(F, "a", "ef" * 32)
    conn.set_trace_callback(None)
    normalized = [" ".join(s.split()).upper() for s in statements]
    full = normalized.index("PRAGMA SYNCHRONOUS = FULL")
    commit = normalized.index("COMMIT")
    back = normalized.index("PRAGMA SYNCHRONOUS = NORMAL")
    assert full < commit < back
    assert conn.execute("PRAGMA synchronous").fetchone() == (1,)
    # other transitions stay NORMAL
    statements.clear()
    conn.set_trace_callback(statements.append)
    ledger.mark_reported(F, "a")
    conn.set_trace_callback(None)
    assert not any("SYNCHRONOUS" in s.upper() for s in statements)


def test_synchronous_full_option(tmp_path: Path) -> None:
    with Ledger.in_dir(tmp_path, synchronous="FULL") as led:
        to_state(led, "a", State.PUT)
        assert led._conn is not None
        assert led._conn.execute("PRAGMA synchronous").fetchone() == (2,)


# --- plan() ------------------------------------------------------------------------------


def _entry(state: State, sig: FileSig | None = SIG, disposed: bool = False) -> Entry:
    return Entry(
        folder=F,
        relpath="a",
        state=state,
        sig=sig,
        sha256=None,
        file_store_id="fs-1" if state is not State.PENDING else None,
        attempts=0,
        transient_errors=0,
        last_error=None,
        disposed=disposed,
        created_at=1.0,
        updated_at=1.0,
        reported_at=2.0 if state is State.REPORTED else None,
    )


# (state, disposed) x same version x dispose configured -> action
PLAN_TABLE: list[tuple[State | None, bool, bool, bool, Action]] = []
for _same in (True, False):
    for _dispose in (True, False):
        PLAN_TABLE += [
            (None, False, _same, _dispose, Action.UPLOAD),
            (State.PENDING, False, _same, _dispose, Action.UPLOAD),
            (State.TICKETED, False, _same, _dispose, Action.UPLOAD),
            (State.PUT, False, _same, _dispose, Action.REPORT),
            (State.FAILED, False, _same, _dispose, Action.FAILED if _same else Action.UPLOAD),
        ]
PLAN_TABLE += [
    (State.REPORTED, False, True, False, Action.SKIP),
    (State.REPORTED, False, True, True, Action.DISPOSE),
    (State.REPORTED, True, True, False, Action.SKIP),
    (State.REPORTED, True, True, True, Action.SKIP),
    (State.REPORTED, False, False, False, Action.UPLOAD),
    (State.REPORTED, False, False, True, Action.UPLOAD),
    (State.REPORTED, True, False, False, Action.UPLOAD),
    (State.REPORTED, True, False, True, Action.UPLOAD),
]


@pytest.mark.parametrize(("state", "disposed", "same", "dispose", "expected"), PLAN_TABLE)
def test_plan(
    state: State | None, disposed: bool, same: bool, dispose: bool, expected: Action
) -> None:
    entry = None if state is None else _entry(state, disposed=disposed)
    seen = SIG if same else OTHER
    assert plan(entry, seen, dispose=dispose) is expected


def test_plan_same_version_ignores_device() -> None:
    remounted = FileSig(SIG.size, SIG.mtime_ns, SIG.ino, dev=99)
    assert plan(_entry(State.REPORTED), remounted, dispose=False) is Action.SKIP
    assert plan(_entry(State.FAILED), remounted, dispose=False) is Action.FAILED


@pytest.mark.parametrize("state", [State.FAILED, State.REPORTED])
def test_plan_unknown_recorded_sig_counts_as_changed(state: State) -> None:
    assert plan(_entry(state, sig=None), SIG, dispose=False) is Action.UPLOAD


# --- the transition table -----------------------------------------------------------------
#
# TRANSITIONS is the state machine; these tests hold the ledger's real behaviour, plan(),
# the docstring and the schema to it.

SOURCES: list[State | None] = [None, *State]  # None: no row


def _always(source: State | None) -> bool:
    return True


def _never(source: State | None) -> bool:
    return False


def _no_row(source: State | None) -> bool:
    return source is None


@dataclass(frozen=True)
class Call:
    """One way of asking for an operation on row (F, "a"), as left by to_state() (version
    SIG, ticket "fs-a"). ``holds`` says whether the operation's condition holds then."""

    label: str
    run: Callable[[Ledger], object]
    holds: Callable[[State | None], bool] = _always


def _put(ticket: str | None) -> Callable[[Ledger], object]:
    return lambda led: led.mark_put(F, "a", "cd" * 32, file_store_id=ticket)


def _reported(ticket: str | None) -> Callable[[Ledger], object]:
    return lambda led: led.mark_reported(F, "a", file_store_id=ticket)


def _error(**kw: Any) -> Callable[[Ledger], object]:
    return lambda led: led.record_error(F, "a", "boom", **kw)


CALLS: dict[Op, list[Call]] = {
    Op.ADD_PENDING: [
        Call("other version", lambda led: led.add_pending([(F, "a", OTHER)])),
        Call("same version", lambda led: led.add_pending([(F, "a", SIG)]), _no_row),
    ],
    Op.MARK_TICKETED: [
        Call("same version", lambda led: led.mark_ticketed(F, "a", SIG, "fs-new")),
        Call("other version", lambda led: led.mark_ticketed(F, "a", OTHER, "fs-new")),
    ],
    Op.MARK_PUT: [
        Call("no ticket", _put(None)),
        Call("its ticket", _put("fs-a")),
        Call("stale ticket", _put("fs-stale"), _never),
    ],
    Op.MARK_REPORTED: [
        Call("no ticket", _reported(None)),
        Call("its ticket", _reported("fs-a")),
        Call("stale ticket", _reported("fs-stale"), _never),
    ],
    Op.MARK_DISPOSED: [Call("", lambda led: led.mark_disposed(F, "a"))],
    Op.MARK_VERIFIED: [Call("", lambda led: led.mark_verified(F, "a", CHMODDED))],
    Op.MARK_PENDING: [
        Call("new sig", lambda led: led.mark_pending(F, "a", OTHER)),
        Call("keep sig", lambda led: led.mark_pending(F, "a")),
    ],
    Op.RETRY_FAILED: [
        Call("path", lambda led: led.retry_failed(F, ["a"])),
        Call("folder", lambda led: led.retry_failed(F)),
        Call("all", lambda led: led.retry_failed()),
    ],
    Op.FORGET: [Call("", lambda led: led.forget(F, "a"))],
    Op.PRUNE: [Call("gone", lambda led: led.prune_gone(F, ["a"], before=float("inf")))],
    Op.ERROR_TRANSIENT: [Call("", _error(permanent=False, max_attempts=1))],
    Op.ERROR_RETRY: [Call("", _error(permanent=True, max_attempts=9))],
    Op.ERROR_FAIL: [
        Call("fail_now", _error(permanent=True, max_attempts=9, fail_now=True)),
        Call("last attempt", _error(permanent=True, max_attempts=1)),
    ],
}

TABLE_CASES = [
    pytest.param(op, call, source, id=f"{op}-{call.label}-{source or 'no row'}")
    for op, calls in CALLS.items()
    for call in calls
    for source in SOURCES
]


def test_table_covers_every_operation_and_only_states() -> None:
    assert list(TRANSITIONS) == list(Op) == list(CALLS)
    for rule in TRANSITIONS.values():
        assert rule.moves
        assert all(s is None or isinstance(s, State) for s in rule.moves)
        assert all(t is None or isinstance(t, State) for t in rule.moves.values())
        assert rule.moves.get(None, State.PENDING) is not None  # no row -> no row is no move


@pytest.mark.parametrize("op", list(Op))
def test_calls_exercise_exactly_the_table_conditions(op: Op) -> None:
    # A condition the table declares must be refused by some call, and a call may only be
    # refused on an allowed state when the table declares a condition.
    refused = any(not c.holds(s) for c in CALLS[op] for s in SOURCES if s in TRANSITIONS[op].moves)
    assert refused is (TRANSITIONS[op].when is not Cond.ALWAYS)


@pytest.mark.parametrize(("op", "call", "source"), TABLE_CASES)
def test_ledger_follows_the_table(ledger: Ledger, op: Op, call: Call, source: State | None) -> None:
    rule = TRANSITIONS[op]
    before = None if source is None else to_state(ledger, "a", source)
    allowed = source in rule.moves and call.holds(source)
    result: object = None
    if not allowed and rule.strict:
        with pytest.raises(IllegalTransition) as info:
            call.run(ledger)
        message = str(info.value)
        assert str(ledger.path) in message and f": {op}: " in message
        if source is not None and source not in rule.moves:
            assert f" is {source}: " in message
            assert all(ledger_module._name(s) in message for s in rule.moves)
    else:
        result = call.run(ledger)
    after = ledger.get(F, "a")
    if not allowed:  # changes nothing, says so
        assert after == before
        assert ledger.counts()["total"] == int(before is not None)
        assert result in (None, 0, False)
        return
    assert (None if after is None else after.state) is rule.moves[source]
    if op is Op.RETRY_FAILED:
        assert result == 1
    elif op is Op.FORGET:
        assert result is True
    elif op is Op.PRUNE:
        assert result == 1
    elif op in (Op.ERROR_TRANSIENT, Op.ERROR_RETRY, Op.ERROR_FAIL):
        assert result == after
    else:
        assert result is None


def _do(led: Ledger, op: Op, seen: FileSig, entry: Entry | None) -> None:
    """Carries out the operation ACTION_OPS gives for a plan() action, as the uploader does."""
    if op is Op.MARK_TICKETED:
        led.mark_ticketed(F, "a", seen, "fs-next")
    elif op is Op.MARK_REPORTED:
        assert entry is not None
        led.mark_reported(F, "a", file_store_id=entry.file_store_id)
    elif op is Op.MARK_DISPOSED:
        led.mark_disposed(F, "a")
    elif op is Op.MARK_VERIFIED:
        led.mark_verified(F, "a", seen)
    else:  # pragma: no cover - a new action needs a case here
        raise AssertionError(op)


PLAN_CASES = [
    pytest.param(state, disposed, seen, dispose, id=f"{state}-{disposed}-{seen.size}-{dispose}")
    for state in SOURCES
    for disposed in ((False, True) if state is State.REPORTED else (False,))
    for seen in (SIG, OTHER, CHMODDED)
    for dispose in (False, True)
]


@pytest.mark.parametrize(("state", "disposed", "seen", "dispose"), PLAN_CASES)
def test_plan_only_asks_for_transitions_the_table_allows(
    ledger: Ledger, state: State | None, disposed: bool, seen: FileSig, dispose: bool
) -> None:
    assert set(ACTION_OPS) == set(Action)
    if state is not None:
        to_state(ledger, "a", state)
        if disposed:
            ledger.mark_disposed(F, "a")
    before = ledger.get(F, "a")
    action = plan(before, seen, dispose=dispose)
    op = ACTION_OPS[action]
    if op is None:
        # SKIP/FAILED leave the row as it is, and so must the next rescan: the table's
        # add_pending condition (another version) does not hold.
        assert state is not None and TRANSITIONS[Op.ADD_PENDING].when is Cond.NEW_VERSION
        ledger.add_pending([(F, "a", seen)])
        assert ledger.get(F, "a") == before
        return
    assert state in TRANSITIONS[op].moves, f"plan says {action} from {state}"
    _do(ledger, op, seen, before)
    after = ledger.get(F, "a")
    assert after is not None and after.state is TRANSITIONS[op].moves[state]


def test_docstring_shows_the_table() -> None:
    doc = ledger_module.__doc__
    assert doc is not None
    assert ledger_module._render_table() in doc
    diagram = doc.split("::", 1)[1].split("\n\n")[1]  # the first literal block
    assert {w for w in diagram.replace("-", " ").split() if w.islower()} >= {s.value for s in State}


def test_schema_allows_exactly_the_states() -> None:
    states = ", ".join(f"'{s}'" for s in State)
    assert f"CHECK (state IN ({states}))" in ledger_module._SCHEMA_V1[0]


# --- resume after a crash -----------------------------------------------------------------

_CRASH_SCRIPT = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    from hottask_sync.files import FileSig
    from hottask_sync.ledger import Ledger
    led = Ledger.in_dir(Path(sys.argv[1]))
    sig = FileSig(100, 1_700_000_000_000_000_000, 42, 7)
    steps = sys.argv[2].split(",")
    F = "/watch/in"
    for step in steps:
        if step == "pending":
            led.add_pending([(F, "a", sig)])
        elif step == "ticketed":
            led.mark_ticketed(F, "a", sig, "fs-crash")
        elif step == "put":
            led.mark_put(F, "a", "ab" * 32)
        elif step == "reported":
            led.mark_reported(F, "a")
        elif step == "disposed":
            led.mark_disposed(F, "a")
    os._exit(0)  # die without closing: no checkpoint, the WAL is left behind
    """
)

# steps done before the crash -> state found, plan() without and with after_upload disposal
_CRASH_CASES = [
    ("pending", State.PENDING, Action.UPLOAD, Action.UPLOAD),
    ("pending,ticketed", State.TICKETED, Action.UPLOAD, Action.UPLOAD),
    ("pending,ticketed,put", State.PUT, Action.REPORT, Action.REPORT),
    # a move/delete cut off by the crash is finished
    ("pending,ticketed,put,reported", State.REPORTED, Action.SKIP, Action.DISPOSE),
    ("pending,ticketed,put,reported,disposed", State.REPORTED, Action.SKIP, Action.SKIP),
]


@pytest.mark.parametrize(("steps", "state", "action", "action_dispose"), _CRASH_CASES)
def test_resume_after_process_crash(
    tmp_path: Path, steps: str, state: State, action: Action, action_dispose: Action
) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    subprocess.run([sys.executable, "-c", _CRASH_SCRIPT, str(tmp_path), steps], check=True, env=env)
    assert (tmp_path / "ledger.sqlite3-wal").exists()  # it really did not close
    with Ledger.in_dir(tmp_path) as led:
        entry = led.get(F, "a")
        assert entry is not None and entry.state is state
        assert plan(entry, SIG, dispose=False) is action
        assert plan(entry, SIG, dispose=True) is action_dispose
        if state is State.PUT:
            assert entry.file_store_id == "fs-crash"
            assert entry.sha256 == "ab" * 32
            assert [e.relpath for e in led.unfinished()] == ["a"]
        else:
            assert led.unfinished() == []


@pytest.mark.parametrize("state", [State.PENDING, State.TICKETED, State.PUT, State.REPORTED])
def test_resume_after_close_and_reopen(tmp_path: Path, state: State) -> None:
    led = Ledger.in_dir(tmp_path)
    before = to_state(led, "a", state)
    led.close()
    with Ledger.in_dir(tmp_path) as again:
        entry = again.get(F, "a")
        assert entry == before
        expected = {
            State.PENDING: Action.UPLOAD,
            State.TICKETED: Action.UPLOAD,
            State.PUT: Action.REPORT,
            State.REPORTED: Action.SKIP,
        }[state]
        assert plan(entry, SIG, dispose=False) is expected
        if state is State.PUT:
            assert entry is not None and entry.file_store_id == "fs-a"
            # ... and a changed file still gets the recorded version reported first
            assert plan(entry, OTHER, dispose=False) is Action.REPORT


# --- add_pending ----------------------------------------------------------------------------


def test_add_pending_inserts_new_rows(ledger: Ledger) -> None:
    ledger.add_pending([(F, "a", SIG), (F, "b", OTHER)])
    assert ledger.counts()["pending"] == 2
    ledger.add_pending([])
    assert ledger.counts()["total"] == 2


@pytest.mark.parametrize(
    "state", [State.PENDING, State.TICKETED, State.PUT, State.REPORTED, State.FAILED]
)
def test_add_pending_same_version_leaves_row_alone(ledger: Ledger, state: State) -> None:
    before = to_state(ledger, "a", state)
    ledger.add_pending([(F, "a", SIG)])
    assert ledger.get(F, "a") == before


def test_add_pending_same_version_other_device_is_same(ledger: Ledger) -> None:
    before = to_state(ledger, "a", State.REPORTED)
    ledger.add_pending([(F, "a", FileSig(SIG.size, SIG.mtime_ns, SIG.ino, 1234))])
    assert ledger.get(F, "a") == before


@pytest.mark.parametrize("state", [State.PENDING, State.TICKETED, State.REPORTED, State.FAILED])
def test_add_pending_new_version_resets(ledger: Ledger, state: State) -> None:
    before = to_state(ledger, "a", state)
    if state is State.REPORTED:
        ledger.mark_disposed(F, "a")
    ledger.record_error(F, "a", "slow", permanent=False, max_attempts=3)
    ledger.add_pending([(F, "a", OTHER)])
    e = ledger.get(F, "a")
    assert e is not None
    assert (e.state, e.sig, e.file_store_id, e.sha256) == (State.PENDING, OTHER, None, None)
    assert (e.attempts, e.transient_errors, e.last_error) == (0, 0, None)
    assert (e.disposed, e.reported_at) == (False, None)
    assert e.created_at == before.created_at


def test_add_pending_never_touches_put(ledger: Ledger) -> None:
    before = to_state(ledger, "a", State.PUT)
    ledger.add_pending([(F, "a", OTHER)])
    assert ledger.get(F, "a") == before


def test_add_pending_fills_a_missing_sig(ledger: Ledger) -> None:
    ledger.record_error(F, "a", "timeout", permanent=False, max_attempts=3)
    e = ledger.get(F, "a")
    assert e is not None and e.sig is None
    ledger.add_pending([(F, "a", SIG)])
    e = ledger.get(F, "a")
    assert e is not None and e.sig == SIG and e.state is State.PENDING


def test_add_pending_is_one_transaction(ledger: Ledger) -> None:
    def items() -> Iterator[tuple[str, str, FileSig]]:
        yield (F, "a", SIG)
        yield (F, "b", SIG)
        raise RuntimeError("scan died")

    with pytest.raises(RuntimeError, match="scan died"):
        ledger.add_pending(items())
    assert ledger.counts()["total"] == 0
    ledger.add_pending([(F, "c", SIG)])  # the ledger is still usable
    assert ledger.counts()["total"] == 1


def test_large_inode_and_device_round_trip(ledger: Ledger) -> None:
    big = FileSig(size=5, mtime_ns=-1_000, ino=2**64 - 3, dev=2**63 + 5)
    ledger.add_pending([(F, "big", big)])
    e = ledger.get(F, "big")
    assert e is not None and e.sig == big
    assert ledger.snapshot(F)["big"] == (State.PENDING, big, False)
    ledger.mark_ticketed(F, "big", big, "fs-big")
    ledger.add_pending([(F, "big", big)])  # same version in SQL too: left alone
    e = ledger.get(F, "big")
    assert e is not None and e.state is State.TICKETED


# --- errors ---------------------------------------------------------------------------------


def test_record_error_transient(ledger: Ledger) -> None:
    e = ledger.record_error(F, "new", "timeout", permanent=False, max_attempts=3)
    assert (e.state, e.sig, e.transient_errors, e.attempts, e.last_error) == (
        State.PENDING,
        None,
        1,
        0,
        "timeout",
    )
    to_state(ledger, "t", State.TICKETED)
    for i in range(5):
        e = ledger.record_error(F, "t", f"503 #{i}", permanent=False, max_attempts=3)
    assert (e.state, e.transient_errors, e.attempts, e.file_store_id) == (
        State.TICKETED,
        5,
        0,
        "fs-t",
    )
    assert e.last_error == "503 #4"
    assert ledger.get(F, "t") == e


def test_record_error_permanent_until_max_attempts(ledger: Ledger) -> None:
    to_state(ledger, "a", State.TICKETED)
    e = ledger.record_error(F, "a", "400 #1", permanent=True, max_attempts=3)
    assert (e.state, e.attempts, e.file_store_id) == (State.PENDING, 1, None)
    e = ledger.record_error(F, "a", "400 #2", permanent=True, max_attempts=3)
    assert (e.state, e.attempts) == (State.PENDING, 2)
    e = ledger.record_error(F, "a", "400 #3", permanent=True, max_attempts=3)
    assert (e.state, e.attempts, e.last_error) == (State.FAILED, 3, "400 #3")
    assert plan(e, SIG, dispose=False) is Action.FAILED
    assert plan(e, OTHER, dispose=False) is Action.UPLOAD


def test_record_error_fail_now(ledger: Ledger) -> None:
    to_state(ledger, "a", State.PENDING)
    e = ledger.record_error(F, "a", "too large", permanent=True, max_attempts=5, fail_now=True)
    assert (e.state, e.attempts) == (State.FAILED, 1)
    # without a row, with the version it is about
    e = ledger.record_error(
        F, "b", "unreadable", permanent=True, max_attempts=5, fail_now=True, sig=SIG
    )
    assert (e.state, e.sig) == (State.FAILED, SIG)
    assert plan(e, SIG, dispose=False) is Action.FAILED


def test_record_error_keeps_put_until_failed(ledger: Ledger) -> None:
    to_state(ledger, "a", State.PUT)
    e = ledger.record_error(F, "a", "report 400", permanent=True, max_attempts=2)
    assert (e.state, e.attempts, e.file_store_id) == (State.PUT, 1, "fs-a")
    e = ledger.record_error(F, "a", "report 400", permanent=True, max_attempts=2)
    assert (e.state, e.file_store_id) == (State.FAILED, "fs-a")


def test_record_error_keeps_reported(ledger: Ledger) -> None:
    to_state(ledger, "a", State.REPORTED)
    e = ledger.record_error(F, "a", "move: EACCES", permanent=True, max_attempts=1, fail_now=True)
    assert (e.state, e.attempts, e.last_error) == (State.REPORTED, 1, "move: EACCES")
    ledger.mark_disposed(F, "a")
    e2 = ledger.get(F, "a")
    assert e2 is not None and e2.last_error is None and e2.disposed


def test_record_error_bad_max_attempts(ledger: Ledger) -> None:
    with pytest.raises(ValueError):
        ledger.record_error(F, "a", "x", permanent=True, max_attempts=0)


def test_retry_failed(ledger: Ledger) -> None:
    for name in ("a", "b", "c"):
        to_state(ledger, name, State.FAILED)
    ledger.add_pending([("/two", "z", SIG)])
    ledger.record_error("/two", "z", "bad", permanent=True, max_attempts=1)
    to_state(ledger, "ok", State.REPORTED)

    assert ledger.retry_failed(F, ["a", "ok", "missing"]) == 1
    e = ledger.get(F, "a")
    assert e is not None and (e.state, e.attempts, e.file_store_id) == (State.PENDING, 0, None)
    assert ledger.retry_failed("/two") == 1
    assert ledger.retry_failed() == 2
    assert ledger.retry_failed() == 0
    assert ledger.counts()["failed"] == 0
    assert ledger.counts()["reported"] == 1
    with pytest.raises(ValueError):
        ledger.retry_failed(None, ["a"])


@pytest.mark.parametrize(
    ("state", "deleted"),
    [
        (State.PENDING, True),
        (State.TICKETED, True),
        (State.FAILED, True),
        (State.PUT, False),
        (State.REPORTED, False),
    ],
)
def test_forget(ledger: Ledger, state: State, deleted: bool) -> None:
    before = to_state(ledger, "a", state)
    assert ledger.forget(F, "a") is deleted
    assert ledger.get(F, "a") == (None if deleted else before)
    assert ledger.forget(F, "never") is False


# --- queries ----------------------------------------------------------------------------------


def test_counts_in_state_unfinished(ledger: Ledger) -> None:
    assert ledger.counts() == {
        "pending": 0,
        "ticketed": 0,
        "put": 0,
        "reported": 0,
        "failed": 0,
        "total": 0,
    }
    to_state(ledger, "p1", State.PENDING)
    to_state(ledger, "p2", State.PENDING)
    to_state(ledger, "t", State.TICKETED)
    to_state(ledger, "u1", State.PUT)
    to_state(ledger, "u2", State.PUT)
    to_state(ledger, "r", State.REPORTED)
    to_state(ledger, "f", State.FAILED)
    assert ledger.counts() == {
        "pending": 2,
        "ticketed": 1,
        "put": 2,
        "reported": 1,
        "failed": 1,
        "total": 7,
    }
    assert [e.relpath for e in ledger.in_state(State.PENDING)] == ["p1", "p2"]
    assert [e.relpath for e in ledger.in_state(State.PUT, limit=1)] == ["u1"]
    assert [e.relpath for e in ledger.unfinished()] == ["u1", "u2"]
    assert ledger.in_state(State.REPORTED)[0].file_store_id == "fs-r"


def test_recent_failures(ledger: Ledger) -> None:
    to_state(ledger, "old-failed", State.FAILED)
    to_state(ledger, "retrying", State.TICKETED)
    ledger.record_error(F, "retrying", "503", permanent=False, max_attempts=3)
    to_state(ledger, "fine", State.PENDING)
    to_state(ledger, "done", State.PUT)
    ledger.record_error(F, "done", "timeout", permanent=False, max_attempts=3)
    ledger.mark_reported(F, "done")
    ledger.record_error(F, "new-failed", "too large", permanent=True, max_attempts=3, fail_now=True)
    assert [e.relpath for e in ledger.recent_failures()] == [
        "new-failed",
        "retrying",
        "old-failed",
    ]
    assert [e.relpath for e in ledger.recent_failures(limit=1)] == ["new-failed"]


def test_snapshot(ledger: Ledger) -> None:
    to_state(ledger, "a", State.REPORTED)
    ledger.mark_disposed(F, "a")
    to_state(ledger, "b", State.PUT, sig=OTHER)
    ledger.record_error(F, "c", "x", permanent=False, max_attempts=3)
    assert ledger.snapshot(F) == {
        "a": (State.REPORTED, SIG, True),
        "b": (State.PUT, OTHER, False),
        "c": (State.PENDING, None, False),
    }
    assert ledger.snapshot("/elsewhere") == {}


def test_invalid_utf8_relpath_round_trip(ledger: Ledger) -> None:
    bad = os.fsdecode(b"sub/bad\xff.txt")
    assert "\udcff" in bad
    ledger.add_pending([(F, bad, SIG)])
    ledger.mark_ticketed(F, bad, SIG, "fs-bad")
    ledger.mark_put(F, bad, "ab" * 32)
    e = ledger.get(F, bad)
    assert e is not None and e.relpath == bad and e.state is State.PUT
    assert os.fsencode(e.relpath) == b"sub/bad\xff.txt"
    assert list(ledger.snapshot(F)) == [bad]
    assert ledger.unfinished()[0].relpath == bad
    with raw(ledger) as conn:
        assert conn.execute("SELECT relpath, typeof(relpath) FROM files").fetchall() == [
            (b"sub/bad\xff.txt", "blob")
        ]


def test_unicode_relpath_round_trip(ledger: Ledger) -> None:
    name = "Überweisung 日本/ファイル 🎬.mp4"
    ledger.add_pending([(F, name, SIG)])
    assert list(ledger.snapshot(F)) == [name]
    e = ledger.get(F, name)
    assert e is not None and e.relpath == name


# --- read-only mode, storage failures -------------------------------------------------------


def test_readonly_reads_while_writer_is_open(tmp_path: Path) -> None:
    writer = Ledger.in_dir(tmp_path)
    try:
        to_state(writer, "a", State.PUT)
        reader = Ledger.in_dir(tmp_path, readonly=True)
        try:
            assert reader.counts()["put"] == 1
            writer.mark_reported(F, "a")
            writer.add_pending([(F, "b", SIG)])
            assert reader.counts()["reported"] == 1  # sees the writer's later commits
            assert reader.get(F, "b") is not None
            assert reader.snapshot(F).keys() == {"a", "b"}
            with pytest.raises(LedgerError, match="read-only"):
                reader.add_pending([(F, "c", SIG)])
            with pytest.raises(LedgerError):
                reader.mark_disposed(F, "a")
        finally:
            reader.close()
        writer.add_pending([(F, "c", SIG)])  # the writer is unaffected
    finally:
        writer.close()


def test_readonly_after_daemon_stopped(tmp_path: Path) -> None:
    with Ledger.in_dir(tmp_path) as led:
        to_state(led, "a", State.REPORTED)
    with Ledger.in_dir(tmp_path, readonly=True) as reader:
        assert reader.counts()["reported"] == 1


def test_readonly_path_with_uri_special_characters(tmp_path: Path) -> None:
    state = tmp_path / "we?ird #dir%20"
    with Ledger.in_dir(state) as led:
        led.add_pending([(F, "a", SIG)])
    with Ledger.in_dir(state, readonly=True) as reader:
        assert reader.counts()["pending"] == 1


def test_readonly_missing_ledger(tmp_path: Path) -> None:
    missing = tmp_path / "nothing-here"
    with pytest.raises(LedgerError, match=r"no ledger at .*has the daemon run yet"):
        Ledger.in_dir(missing, readonly=True)
    assert not missing.exists()  # read-only never creates anything
    with pytest.raises(LedgerError, match="no ledger at"):
        Ledger(tmp_path / "ledger.sqlite3", readonly=True)


def test_disk_full_is_ledger_error_and_rolls_back(ledger: Ledger) -> None:
    ledger.add_pending([(F, "before", SIG)])
    conn = ledger._conn
    assert conn is not None
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count = {pages}")  # the "disk" is now full
    many = [(F, f"file-{i:06d}-{'x' * 100}", SIG) for i in range(2_000)]
    with pytest.raises(LedgerError, match="full") as info:
        ledger.add_pending(many)
    assert str(ledger.path) in str(info.value)
    assert isinstance(info.value.__cause__, sqlite3.Error)
    assert ledger.counts()["total"] == 1  # all or nothing
    conn.execute("PRAGMA max_page_count = 1073741823")  # space freed
    ledger.add_pending(many)
    assert ledger.counts()["total"] == 2_001


def test_disk_full_during_mark_put_restores_synchronous(ledger: Ledger) -> None:
    to_state(ledger, "a", State.TICKETED)
    conn = ledger._conn
    assert conn is not None
    ledger.add_pending([(F, f"pad-{i}-{'y' * 200}", SIG) for i in range(50)])
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count = {pages}")
    with pytest.raises(LedgerError):
        ledger.mark_put(F, "a", "z" * 4000)  # a big hash forces new pages
    assert conn.execute("PRAGMA synchronous").fetchone() == (1,)
    e = ledger.get(F, "a")
    assert e is not None and e.state is State.TICKETED


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_readonly_file_is_ledger_error_on_write(tmp_path: Path) -> None:
    with Ledger.in_dir(tmp_path) as led:
        led.add_pending([(F, "a", SIG)])
    path = tmp_path / "ledger.sqlite3"
    path.chmod(0o444)
    try:
        with pytest.raises(LedgerError):
            led2 = Ledger(path)
            led2.add_pending([(F, "b", SIG)])
    finally:
        path.chmod(0o644)


def test_threads_share_one_ledger(ledger: Ledger) -> None:
    ledger.add_pending([(F, f"f{i}", SIG) for i in range(8)])
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            for _ in range(25):
                ledger.record_error(F, f"f{i}", "503", permanent=False, max_attempts=3)
                ledger.get(F, f"f{(i + 1) % 8}")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert all(e.transient_errors == 25 for e in ledger.in_state(State.PENDING))


# --- scale ------------------------------------------------------------------------------------


def test_snapshot_of_100k_rows_is_fast(tmp_path: Path) -> None:
    n = 100_000
    with Ledger.in_dir(tmp_path) as led:
        items = [
            (F, f"dir{i % 100:02d}/file-{i:06d}.mp4", FileSig(i, 1_700_000_000 * 10**9 + i, i, 1))
            for i in range(n)
        ]
        t0 = time.perf_counter()
        led.add_pending(items)
        t_add = time.perf_counter() - t0
        # a second scan of the same files changes nothing
        t1 = time.perf_counter()
        led.add_pending(items)
        t_readd = time.perf_counter() - t1
    with Ledger.in_dir(tmp_path) as led:
        t2 = time.perf_counter()
        snap = led.snapshot(F)
        t_snap = time.perf_counter() - t2
        counts = led.counts()
    print(f"100k: add_pending {t_add:.3f}s, re-add {t_readd:.3f}s, snapshot {t_snap:.3f}s")
    assert len(snap) == n and counts["pending"] == n
    assert snap["dir07/file-000007.mp4"] == (State.PENDING, items[7][2], False)
    # A guard against quadratic behaviour (minutes), not a benchmark: bench/ measures it.
    assert t_snap < 10.0


# --- the inode change time (schema 2) ---------------------------------------------------------


def test_a_version_1_ledger_is_migrated_and_its_rows_kept(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        for statement in ledger_module._SCHEMA_V1:
            conn.execute(statement)
        conn.execute("INSERT INTO schema_version (version) VALUES (1)")
        conn.execute(
            "INSERT INTO files (folder, relpath, dev, ino, size, mtime_ns, state, sha256,"
            " file_store_id, created_at, updated_at)"
            " VALUES (?, ?, 7, 42, 100, ?, 'reported', 'ab', '9', 0, 0)",
            (F, b"a", SIG.mtime_ns),
        )
    conn.close()
    with Ledger(path) as led:
        entry = led.get(F, "a")
        assert entry is not None and entry.state is State.REPORTED
        assert entry.sig == FileSig(SIG.size, SIG.mtime_ns, SIG.ino, SIG.dev, None)
        # A row without a ctime is the same version whatever the file's ctime is now.
        assert plan(entry, CHMODDED, dispose=False) is Action.SKIP
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [(2,)]
    conn.close()


def test_ctime_is_recorded_and_read_back_everywhere(ledger: Ledger) -> None:
    ledger.add_pending([(F, "a", SIG)])
    ledger.mark_ticketed(F, "a", SIG, "fs-a")
    assert ledger.get(F, "a").sig == SIG  # type: ignore[union-attr]
    assert ledger.snapshot(F)["a"][1] == SIG
    ledger.mark_pending(F, "a", CHMODDED)
    assert ledger.get(F, "a").sig == CHMODDED  # type: ignore[union-attr]


def test_a_failed_file_whose_ctime_changed_is_tried_again(ledger: Ledger) -> None:
    """`chmod` on an unreadable file that failed: the README says it is tried again when
    it changes, and a chmod changes only the ctime."""
    ledger.record_error(F, "a", "cannot read", permanent=True, max_attempts=1, sig=SIG)
    failed = ledger.get(F, "a")
    assert failed is not None and failed.state is State.FAILED
    assert plan(failed, SIG, dispose=False) is Action.FAILED
    assert plan(failed, CHMODDED, dispose=False) is Action.UPLOAD
    ledger.add_pending([(F, "a", CHMODDED)])
    assert ledger.get(F, "a").state is State.PENDING  # type: ignore[union-attr]


def test_a_reported_file_whose_ctime_alone_changed_is_verified_not_uploaded(
    ledger: Ledger,
) -> None:
    to_state(ledger, "a", State.REPORTED)
    reported = ledger.get(F, "a")
    assert plan(reported, CHMODDED, dispose=False) is Action.VERIFY
    assert plan(reported, OTHER, dispose=False) is Action.UPLOAD
    ledger.mark_verified(F, "a", CHMODDED)
    verified = ledger.get(F, "a")
    assert verified is not None and verified.state is State.REPORTED
    assert plan(verified, CHMODDED, dispose=False) is Action.SKIP


# --- pruning rows of files that are gone ------------------------------------------------------


def test_prune_forgets_only_old_rows_of_files_that_are_gone(tmp_path: Path) -> None:
    now = [1000.0]
    with Ledger.in_dir(tmp_path, clock=lambda: now[0]) as led:
        for name in ("moved", "kept", "deleted", "fresh", "owed"):
            to_state(led, name, State.REPORTED if name != "owed" else State.PUT)
        led.mark_disposed(F, "moved")
        now[0] = 5000.0
        to_state(led, "fresh", State.REPORTED)  # changed recently: kept
        led.mark_disposed(F, "fresh")
        assert led.prune_disposed(F, before=2000.0) == 1  # "moved"; "fresh" is too recent
        assert led.idle_rows(F, 2000.0, None, 10) == ["deleted", "kept"]  # never "owed"
        assert led.idle_rows(F, 2000.0, "deleted", 10) == ["kept"]
        assert led.prune_gone(F, ["deleted", "owed", "fresh"], before=2000.0) == 1
        assert {
            name for name in ("moved", "kept", "deleted", "fresh", "owed") if led.get(F, name)
        } == {
            "kept",
            "fresh",
            "owed",
        }
