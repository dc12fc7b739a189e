"""The ledger writer: writes handed in while a commit runs share the next one and its sync
(group commit), a refused one undoes only itself, a failed commit fails them all, a write
handed in without waiting never runs a sync in the caller's thread and is never left behind."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from hottask_sync.errors import LedgerError
from hottask_sync.files import FileSig
from hottask_sync.ledger import IllegalTransition, Ledger, State
from hottask_sync.writer import SYNC_WINDOW, LedgerWriter, Pending, SharedLedger

F = "/srv/in"
SIG = FileSig(5, 1, 1, 1, 1)


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    return Ledger.in_dir(tmp_path)


def wait_until(condition: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.001)


@contextlib.contextmanager
def commit_under_way(writer: LedgerWriter) -> Iterator[threading.Thread]:
    """Another thread is in the middle of a commit (a slow sync, say) until the block ends;
    yields that thread, which is joined at the end."""
    running, release = threading.Event(), threading.Event()

    def slow(led: Ledger) -> None:
        running.set()
        release.wait(10)

    thread = threading.Thread(target=writer.call, args=(slow,), kwargs={"durable": True})
    thread.start()
    assert running.wait(10)
    try:
        yield thread
    finally:
        release.set()
        thread.join(10)


def in_threads(n: int, fn: object) -> list[threading.Thread]:
    threads = [threading.Thread(target=fn, args=(i,)) for i in range(n)]  # type: ignore[arg-type]
    for t in threads:
        t.start()
    return threads


def counting_batches(ledger: Ledger) -> list[bool]:
    """Records the durability of every multi-write commit of ``ledger``."""
    syncs: list[bool] = []
    real_batch = ledger.batch

    def counting_batch(*, durable: bool = False) -> object:
        syncs.append(durable)
        return real_batch(durable=durable)

    ledger.batch = counting_batch  # type: ignore[method-assign]
    return syncs


def test_a_write_with_nothing_else_going_is_committed_at_once_in_the_callers_thread(
    ledger: Ledger,
) -> None:
    writer = LedgerWriter(ledger)
    shared = SharedLedger(writer, ledger.path)
    shared.mark_ticketed(F, "a", SIG, "fs-a")  # handed over without waiting: done already
    assert shared.get(F, "a").state is State.TICKETED  # type: ignore[union-attr]
    shared.mark_put(F, "a", "ab" * 32, file_store_id="fs-a")
    assert shared.get(F, "a").state is State.PUT  # type: ignore[union-attr]
    assert writer.batches == 2
    shared.close()


def test_writes_handed_in_during_a_commit_share_the_next_one_and_its_sync(
    ledger: Ledger,
) -> None:
    for i in range(8):
        ledger.mark_ticketed(F, f"f{i}", SIG, f"fs-{i}")
    syncs = counting_batches(ledger)
    writer = LedgerWriter(ledger)
    with commit_under_way(writer):
        # Eight report threads hand their put in while a sync is under way.
        waiting = in_threads(
            8, lambda i: writer.call(lambda led: led.mark_put(F, f"f{i}", "ab" * 32), durable=True)
        )
        wait_until(lambda: len(writer._queue) == 8)
    for t in waiting:
        t.join(10)
    assert writer.batches == 2  # the slow one, then the eight together
    assert syncs == [True]
    assert all(ledger.get(F, f"f{i}").state is State.PUT for i in range(8))  # type: ignore[union-attr]


def test_a_write_handed_in_during_a_commit_is_never_left_behind(ledger: Ledger) -> None:
    writer = LedgerWriter(ledger)
    with commit_under_way(writer):
        pending = writer.submit(lambda led: led.mark_ticketed(F, "a", SIG, "fs-a"))
        assert not pending.done  # queued: the turn is taken
    # The thread that held the turn took it along; nobody else had to write again.
    assert pending.done and pending.error is None
    assert ledger.get(F, "a").state is State.TICKETED  # type: ignore[union-attr]


class SyncClock:
    """A clock that moves ``step`` seconds at every reading: each synced commit measures
    ``step`` long (a quick disk's or a slow one's, as the test says)."""

    def __init__(self, step: float) -> None:
        self.now, self.step = 0.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def synced(writer: LedgerWriter) -> None:
    """Makes a synced commit (measured by the writer's clock)."""
    writer.call(lambda led: None, durable=True)


def test_on_a_quick_disk_a_write_handed_in_during_a_turn_is_committed_in_the_callers_thread(
    ledger: Ledger,
) -> None:
    """Waiting for a quick commit (the ledger's lock) costs an upload slot less than handing
    its ticket over to the thread whose turn it is (bench/layers.py)."""
    writer = LedgerWriter(ledger, clock=SyncClock(0.001))
    synced(writer)
    committed_by: list[threading.Thread] = []

    def ticket(led: Ledger) -> None:
        committed_by.append(threading.current_thread())
        led.mark_ticketed(F, "a", SIG, "fs-a")

    writer._leading = True  # another thread's turn, between two of its commits
    pending = writer.submit(ticket)
    assert pending.done and pending.error is None
    writer._leading = False
    assert committed_by == [threading.current_thread()]
    assert ledger.get(F, "a").state is State.TICKETED  # type: ignore[union-attr]


def test_on_a_slow_disk_a_write_handed_in_during_a_commit_is_left_to_the_next_commit(
    ledger: Ledger,
) -> None:
    """An upload slot never waits for a slow disk's sync (row 2c of bench/run.py)."""
    writer = LedgerWriter(ledger, clock=SyncClock(0.020))
    synced(writer)
    with commit_under_way(writer):
        pending = writer.submit(lambda led: led.mark_ticketed(F, "a", SIG, "fs-a"))
        assert not pending.done
    assert pending.done and pending.error is None


@pytest.mark.parametrize(
    ("steps", "quick"),
    [
        pytest.param([0.020] * 3, False, id="every-sync-slow"),
        # A synced commit's time also holds its thread's waits for the GIL: one quick one
        # among the last few shows what the disk itself takes.
        pytest.param([0.020, 0.001, 0.020, 0.020], True, id="one-quick-among-slow"),
        pytest.param([0.001] + [0.020] * SYNC_WINDOW, False, id="the-disk-became-slow"),
    ],
)
def test_the_disk_is_judged_by_the_quickest_of_the_last_synced_commits(
    ledger: Ledger, steps: list[float], quick: bool
) -> None:
    clock = SyncClock(0.0)
    writer = LedgerWriter(ledger, clock=clock)
    for step in steps:
        clock.step = step
        synced(writer)
    writer._leading = True  # another thread's turn, between two of its commits
    pending = writer.submit(lambda led: led.mark_ticketed(F, "a", SIG, "fs-a"))
    assert pending.done is quick  # committed at once, or left to that turn
    writer._leading = False
    writer.stop(10)
    assert pending.done and pending.error is None


class WatchedLock:
    """The ledger's lock, calling ``on_take`` whenever a thread takes it without holding it
    already (where it would wait for another thread's commit)."""

    def __init__(self, on_take: Callable[[], object]) -> None:
        self._lock = threading.RLock()
        self._depth = threading.local()
        self.on_take = on_take

    def __enter__(self) -> bool:
        depth = getattr(self._depth, "n", 0)
        if depth == 0:
            self.on_take()
        self._lock.acquire()
        self._depth.n = depth + 1
        return True

    def __exit__(self, *exc: object) -> None:
        self._depth.n -= 1
        self._lock.release()

    def acquire(self, blocking: bool = True) -> bool:  # as the test's own probe
        return self._lock.acquire(blocking)


def test_a_wait_for_the_ledgers_lock_is_not_taken_for_the_disks_sync(ledger: Ledger) -> None:
    """Under load a report thread waits for the ledger's lock behind other threads' commits
    (20 ms a put at the median in row 1): that wait is not the disk's, and a quick disk
    stays quick, its writes committed at once by their own threads (it used to be taken
    for a slow one, on and off, for a fifth of the writes, each then handed over)."""
    clock = SyncClock(0.001)
    writer = LedgerWriter(ledger, clock=clock)
    synced(writer)

    def other_commits() -> None:  # the lock taken after 20 ms of other threads' commits
        clock.now += 0.020

    ledger._store.lock = WatchedLock(other_commits)  # type: ignore[assignment]
    for i in range(SYNC_WINDOW):
        assert writer.call(lambda led, i=i: led.forget(F, f"x{i}"), durable=True) is False
    writer._leading = True  # another thread's turn, between two of its commits
    pending = writer.submit(lambda led: led.mark_ticketed(F, "a", SIG, "fs-a"))
    assert pending.done  # not left to that turn
    writer._leading = False
    assert ledger.get(F, "a").state is State.TICKETED  # type: ignore[union-attr]


@pytest.mark.parametrize("waited", [False, True], ids=["handed-in", "waited-for"])
def test_on_a_quick_disk_a_write_goes_after_the_writes_queued_before_it(
    ledger: Ledger, waited: bool
) -> None:
    """On a quick disk a write is committed by its own thread, but never before one handed in
    earlier: here a report queued while the disk counted as slow, then the changed file's
    next ticket. Handed in without waiting, the ticket is queued behind the report (never
    its thread's wait); waited for, its thread waits for the report's commit, then commits
    it. Either way it is committed (it used to go first and be refused: the file uploaded
    again for nothing)."""
    ledger.mark_ticketed(F, "a", SIG, "fs-1")
    ledger.mark_put(F, "a", "ab" * 32, file_store_id="fs-1")
    writer = LedgerWriter(ledger, clock=SyncClock(0.020))
    shared = SharedLedger(writer, ledger.path)
    newer = FileSig(6, 2, 1, 1, 2)
    committed_by: list[threading.Thread] = []
    handed: list[Pending[None]] = []

    def ticket(led: Ledger) -> None:
        committed_by.append(threading.current_thread())
        led.mark_ticketed(F, "a", newer, "fs-2")

    def hand_in() -> None:
        if waited:
            writer.call(ticket)  # raises if refused: committed_by stays empty
        else:
            handed.append(writer.submit(ticket))

    slot = threading.Thread(target=hand_in)
    with commit_under_way(writer) as other:
        shared.mark_reported(F, "a", wait=False)  # queued: the disk counts as slow
        writer._quick_syncs = True  # the commit under way turns out quick
        slot.start()
        if waited:
            wait_until(lambda: writer._sleepers)  # waits for the report's commit
        else:
            slot.join(10)
            assert len(writer._queue) == 2  # behind the report
        assert shared.get(F, "a").state is State.PUT  # type: ignore[union-attr]
    slot.join(10)
    assert all(p.done and p.error is None for p in handed)
    assert committed_by == [slot if waited else other]
    entry = shared.get(F, "a")
    assert entry is not None and (entry.state, entry.file_store_id) == (State.TICKETED, "fs-2")
    shared.close()


def test_a_write_committed_by_its_own_thread_waits_for_a_batch_taken_off_the_queue(
    ledger: Ledger,
) -> None:
    """The queue can be empty while an earlier write is still being committed: taken off
    the queue by the thread whose turn it is. That thread holds the ledger's lock from
    before it takes the batch until it is committed, so a write committed by its own thread
    meanwhile comes after it."""
    ledger.mark_ticketed(F, "a", SIG, "fs-1")
    ledger.mark_put(F, "a", "ab" * 32, file_store_id="fs-1")
    writer = LedgerWriter(ledger, clock=SyncClock(0.020))
    taken, release, asked = threading.Event(), threading.Event(), threading.Event()

    def report(led: Ledger) -> None:
        taken.set()
        release.wait(10)
        led.mark_reported(F, "a")

    def ticket(led: Ledger) -> None:
        led.mark_ticketed(F, "a", FileSig(6, 2, 1, 1, 2), "fs-2")

    def on_take() -> None:
        if threading.current_thread().name == "slot":
            asked.set()

    ledger._store.lock = WatchedLock(on_take)  # type: ignore[assignment]

    leader = threading.Thread(target=writer.call, args=(report,))  # a slow disk: queued
    leader.start()
    assert taken.wait(10)  # off the queue, being committed
    assert not writer._queue
    assert not ledger.holding().acquire(blocking=False)  # type: ignore[attr-defined]
    writer._quick_syncs = True
    tickets: list[Pending[None]] = []
    slot = threading.Thread(target=lambda: tickets.append(writer.submit(ticket)), name="slot")
    slot.start()
    assert asked.wait(10)  # the ticket's commit waits for the ledger's lock
    release.set()
    leader.join(10)
    slot.join(10)
    assert tickets[0].done and tickets[0].error is None
    entry = ledger.get(F, "a")
    assert entry is not None and (entry.state, entry.file_store_id) == (State.TICKETED, "fs-2")


def test_on_a_quick_disk_a_put_is_committed_by_its_own_thread_with_its_own_sync(
    ledger: Ledger,
) -> None:
    """A report thread commits its own ``put`` on a quick disk, synced, without waiting for
    the turn another thread holds (between two of its commits, say): bench/README."""
    ledger.mark_ticketed(F, "a", SIG, "fs-a")
    writer = LedgerWriter(ledger, clock=SyncClock(0.001))
    synced(writer)
    statements: list[str] = []
    ledger._store._open_conn().set_trace_callback(statements.append)
    writer._leading = True  # another thread's turn
    committed_by: list[threading.Thread] = []

    def put(led: Ledger) -> None:
        committed_by.append(threading.current_thread())
        led.mark_put(F, "a", "ab" * 32, file_store_id="fs-a")

    report = threading.Thread(target=writer.call, args=(put,), kwargs={"durable": True})
    report.start()
    report.join(10)
    assert not report.is_alive() and committed_by == [report]
    writer._leading = False
    assert ledger.get(F, "a").state is State.PUT  # type: ignore[union-attr]
    assert statements.index("PRAGMA synchronous = FULL") < statements.index("COMMIT")


def test_a_write_committed_in_the_callers_thread_after_a_failed_commit_fails_too(
    ledger: Ledger,
) -> None:
    writer = LedgerWriter(FullDisk(ledger, times=1), clock=SyncClock(0.020))  # type: ignore[arg-type]
    writer._queue.append(Pending(lambda led: None, False, writer))
    with pytest.raises(LedgerError):
        synced(writer)  # a batch of two (FullDisk fails only batches): the commit fails
    writer._quick_syncs = True
    pending = writer.submit(lambda led: led.mark_ticketed(F, "a", SIG, "fs-a"))
    assert pending.done and isinstance(pending.error, LedgerError)
    assert ledger.get(F, "a") is None


def test_a_write_handed_in_without_waiting_never_runs_a_sync_in_the_callers_thread(
    ledger: Ledger,
) -> None:
    """An upload slot hands its ticket in while a put waits to be synced: the slot goes on
    at once; the put's own thread commits both, in order, with one sync."""
    ledger.mark_ticketed(F, "a", SIG, "fs-a")
    syncs = counting_batches(ledger)
    writer = LedgerWriter(ledger)
    put: Pending[None] = writer.submit(lambda led: led.mark_put(F, "a", "ab" * 32), durable=True)
    ticket = writer.submit(lambda led: led.mark_ticketed(F, "b", SIG, "fs-b"))
    assert not put.done and not ticket.done and writer.batches == 0
    put.wait()
    assert ticket.done and syncs == [True]
    assert ledger.get(F, "b").state is State.TICKETED  # type: ignore[union-attr]


def test_on_a_quick_disk_a_write_handed_in_behind_a_queued_put_is_queued_not_synced(
    ledger: Ledger,
) -> None:
    """A ``put`` left queued (handed in while the disk counted as slow): an upload slot's
    ticket handed in after it is queued behind it, never committed by the slot with the
    put's sync; the put's own thread commits both, in order."""
    ledger.mark_ticketed(F, "a", SIG, "fs-a")
    writer = LedgerWriter(ledger, clock=SyncClock(0.001))
    synced(writer)
    put: Pending[None] = Pending(lambda led: led.mark_put(F, "a", "ab" * 32), True, writer)
    writer._queue.append(put)
    statements: list[str] = []
    ledger._store._open_conn().set_trace_callback(statements.append)
    ticket = writer.submit(lambda led: led.mark_ticketed(F, "b", SIG, "fs-b"))
    assert not ticket.done and statements == []
    put.wait()
    assert ticket.done and ticket.error is None
    assert ledger.get(F, "b").state is State.TICKETED  # type: ignore[union-attr]


def test_a_refused_write_undoes_only_itself(ledger: Ledger) -> None:
    ledger.mark_ticketed(F, "a", SIG, "fs-a")
    writer = LedgerWriter(ledger)
    # Queued (not committed yet), then a waiter commits it with its own write: one batch.
    refused: Pending[None] = Pending(lambda led: led.mark_reported(F, "a"), False, writer)
    writer._queue.append(refused)  # not put yet: illegal
    writer.call(lambda led: led.mark_put(F, "a", "ab" * 32), durable=True)
    assert writer.batches == 1
    with pytest.raises(IllegalTransition):
        refused.wait()
    assert ledger.get(F, "a").state is State.PUT  # type: ignore[union-attr]


def test_a_refused_write_alone_is_refused(ledger: Ledger) -> None:
    writer = LedgerWriter(ledger)
    with pytest.raises(IllegalTransition):
        writer.call(lambda led: led.mark_reported(F, "nothing"))
    writer.call(lambda led: led.mark_ticketed(F, "a", SIG, "fs-a"))  # not broken by it
    assert ledger.get(F, "a").state is State.TICKETED  # type: ignore[union-attr]


class FullDisk:
    """A ledger whose commits fail (as on a full disk) after the writes ran, ``times``
    times; every other attribute is the real ledger's."""

    def __init__(self, ledger: Ledger, times: int = 1_000) -> None:
        self.ledger, self.times = ledger, times

    @contextlib.contextmanager
    def batch(self, *, durable: bool = False) -> Iterator[None]:
        with self.ledger.batch(durable=durable):
            yield
            if self.times > 0:
                self.times -= 1
                raise LedgerError("ledger: database or disk is full")

    def __getattr__(self, name: str) -> object:
        return getattr(self.ledger, name)


def test_a_commit_that_fails_fails_every_write_of_the_batch(ledger: Ledger) -> None:
    writer = LedgerWriter(FullDisk(ledger))  # type: ignore[arg-type]
    # Queued (not committed yet), then a waiter commits it with its own write: one batch.
    first: Pending[None] = Pending(lambda led: None, False, writer)
    writer._queue.append(first)
    with pytest.raises(LedgerError, match="disk is full"):
        writer.call(lambda led: None, durable=True)
    assert writer.batches == 1
    with pytest.raises(LedgerError, match="disk is full"):
        first.wait()


def test_after_a_failed_commit_every_later_write_fails_too(ledger: Ledger) -> None:
    """A ticket handed over without waiting may have been lost with the failed commit: the
    put that follows must not be refused as a mere illegal transition (that would loop
    upload after upload on a full disk); it fails with the storage error, and so does every
    later write, so the daemon stops."""
    full = FullDisk(ledger, times=1)
    writer = LedgerWriter(full)  # type: ignore[arg-type]
    with commit_under_way(writer):
        ticket = writer.submit(lambda led: led.mark_ticketed(F, "a", SIG, "fs-a"))
        writer.submit(lambda led: None)  # a batch of two: through the failing commit
    with pytest.raises(LedgerError, match="disk is full"):
        ticket.wait()
    assert full.times == 0  # the disk has room again, yet:
    with pytest.raises(LedgerError, match="disk is full") as info:
        writer.call(lambda led: led.mark_put(F, "a", "ab" * 32), durable=True)
    assert not isinstance(info.value, IllegalTransition)


def test_a_single_write_that_cannot_be_stored_breaks_the_writer(ledger: Ledger) -> None:
    writer = LedgerWriter(ledger)

    def full(led: Ledger) -> None:
        raise LedgerError("ledger: database or disk is full")

    writer.submit(full)
    with pytest.raises(LedgerError, match="disk is full"):
        writer.call(lambda led: led.mark_ticketed(F, "a", SIG, "fs-a"))
    assert ledger.get(F, "a") is None


def test_shared_ledger_reads_do_not_wait_for_the_writer(ledger: Ledger) -> None:
    ledger.add_pending([(F, "a", SIG)])
    writer = LedgerWriter(ledger)
    shared = SharedLedger(writer, ledger.path)
    inside, release = threading.Event(), threading.Event()

    def stuck_commit(led: Ledger) -> None:  # a write transaction left open (a slow sync, say)
        with led.batch(durable=True):
            led.mark_ticketed(F, "a", SIG, "fs-a")
            inside.set()
            release.wait(10)

    committing = threading.Thread(target=writer.call, args=(stuck_commit,))
    committing.start()
    assert inside.wait(10)
    read: list[object] = []
    reader = threading.Thread(target=lambda: read.append(shared.get(F, "a")))
    reader.start()
    reader.join(5)
    release.set()
    committing.join(10)
    # Read at once, while the write was still open, and without seeing it.
    assert read and read[0].state is State.PENDING  # type: ignore[attr-defined]
    assert shared.get(F, "a").state is State.TICKETED  # type: ignore[union-attr]
    shared.close()


def test_a_waiter_commits_no_further_than_its_own_write(ledger: Ledger) -> None:
    """Writes queued behind a waiter's own, by other waiters, are theirs to commit: a
    waiter that drained until the queue ran dry would be held (its caller, a report thread
    or the main loop, waiting) for as long as others keep writing."""
    writer = LedgerWriter(ledger)
    committed_by: dict[str, str] = {}

    def first(led: Ledger) -> None:
        committed_by["first"] = threading.current_thread().name
        wait_until(lambda: len(writer._queue) == 1)  # the second write is queued behind

    def second(led: Ledger) -> None:
        committed_by["second"] = threading.current_thread().name

    a = threading.Thread(target=writer.call, args=(first,), name="first-caller")
    a.start()
    wait_until(lambda: "first" in committed_by)
    b = threading.Thread(target=writer.call, args=(second,), name="second-caller")
    b.start()
    a.join(10)
    b.join(10)
    assert committed_by == {"first": "first-caller", "second": "second-caller"}


def test_a_checkpoint_that_fails_fails_no_write(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The put was committed before the checkpoint: its caller goes on (and reports)."""
    import hottask_sync.writer as writer_module

    monkeypatch.setattr(writer_module, "CHECKPOINT_EVERY", 1)

    def failing() -> None:
        raise LedgerError("ledger: disk I/O error")

    monkeypatch.setattr(ledger, "checkpoint", failing)
    writer = LedgerWriter(ledger)
    with structlog.testing.capture_logs() as logged:
        writer.call(lambda led: led.mark_ticketed(F, "a", SIG, "fs-a"))
        writer.call(lambda led: led.mark_put(F, "a", "ab" * 32), durable=True)
        assert ledger.get(F, "a").state is State.PUT  # type: ignore[union-attr]
        writer.call(lambda led: led.mark_reported(F, "a"))
    assert ledger.get(F, "a").state is State.REPORTED  # type: ignore[union-attr]
    assert [e["event"] for e in logged] == ["ledger.checkpoint_failed"] * 3


@pytest.mark.parametrize("timeout", [0.05, -1], ids=["short", "below-zero"])
def test_stop_says_how_many_writes_it_left_when_a_commit_does_not_end_in_time(
    ledger: Ledger, timeout: float
) -> None:
    """Below zero is no time at all (not "no timeout"), and giving up breaks nothing: the
    writer is not left leading, and the write is committed by the next turn."""
    writer = LedgerWriter(ledger)
    with commit_under_way(writer):
        writer.submit(lambda led: led.mark_ticketed(F, "a", SIG, "fs-a"))
        with structlog.testing.capture_logs() as logged:
            writer.stop(timeout)
    assert [(e["event"], e["count"]) for e in logged] == [("ledger.writes_left", 1)]
    later = threading.Thread(target=writer.call, args=(lambda led: None,))
    later.start()
    later.join(10)
    assert not later.is_alive()
    assert ledger.get(F, "a").state is State.TICKETED  # type: ignore[union-attr]


def test_a_put_after_a_refused_ticket_is_refused_too(ledger: Ledger) -> None:
    """The ticket of a row that owes another report is refused; the put that follows it
    (same file, new ticket) must be refused too, or a new ticket would be reported."""
    ledger.mark_ticketed(F, "a", SIG, "fs-old")
    ledger.mark_put(F, "a", "ab" * 32)
    writer = LedgerWriter(ledger)
    shared = SharedLedger(writer, ledger.path)
    shared.mark_ticketed(F, "a", SIG, "fs-new")
    with pytest.raises(IllegalTransition):
        shared.mark_put(F, "a", "cd" * 32, file_store_id="fs-new")
    assert shared.get(F, "a").file_store_id == "fs-old"  # type: ignore[union-attr]
    shared.close()


def test_stop_commits_what_was_handed_in(ledger: Ledger) -> None:
    writer = LedgerWriter(ledger)
    writer.submit(lambda led: led.mark_ticketed(F, "a", SIG, "fs-a"))
    writer.submit(lambda led: led.mark_put(F, "a", "ab" * 32), durable=True)  # not waited
    assert ledger.get(F, "a").state is State.TICKETED  # type: ignore[union-attr]
    writer.stop(5)
    assert ledger.get(F, "a").state is State.PUT  # type: ignore[union-attr]


def test_a_write_handed_in_as_the_turn_ends_is_taken_by_the_thread_ending_it(
    ledger: Ledger,
) -> None:
    """Handed in after the committing thread's last look at the queue but before it let
    go of the turn (the submitter found the turn taken): still committed, by that thread."""
    late: list[Pending[None]] = []

    class LateArrival(LedgerWriter):
        def _drain(self, *, durable: bool, until: Pending[Any] | None = None) -> None:
            super()._drain(durable=durable, until=until)
            if not late:
                late.append(
                    Pending(lambda led: led.mark_ticketed(F, "b", SIG, "fs-b"), False, self)
                )
                self._queue.append(late[0])

    writer = LateArrival(ledger)
    writer.call(lambda led: led.mark_ticketed(F, "a", SIG, "fs-a"))
    assert late and late[0].done
    assert ledger.get(F, "b").state is State.TICKETED  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("error", "match"),
    [
        (LedgerError("ledger: database or disk is full"), "disk is full"),  # on a statement
        (RuntimeError("boom"), "boom"),  # a bug
    ],
)
def test_a_write_that_fails_otherwise_than_refused_fails_its_batch_and_every_later_write(
    ledger: Ledger, error: Exception, match: str
) -> None:
    """Only a refused transition is undone alone; a write that cannot be stored (or a bug)
    fails every write of its batch, which is not committed (a ticket handed in without
    waiting would otherwise be lost without anyone knowing), and every later write too, as
    after a failed commit: the daemon stops rather than go on unrecorded."""
    writer = LedgerWriter(ledger)

    def failing(led: Ledger) -> None:
        raise error

    with commit_under_way(writer):
        ticket = writer.submit(lambda led: led.mark_ticketed(F, "a", SIG, "fs-a"))
        writer.submit(failing)
    with pytest.raises(LedgerError, match=match):
        ticket.wait()
    with pytest.raises(LedgerError, match=match):
        writer.call(lambda led: led.mark_ticketed(F, "b", SIG, "fs-b"))
    assert ledger.get(F, "a") is None and ledger.get(F, "b") is None


def test_a_write_someone_waits_for_is_never_committed_by_a_thread_that_does_not(
    ledger: Ledger,
) -> None:
    """The main loop's pending rows (thousands, say) are committed by the main loop, never
    by an upload slot handing in its ticket meanwhile."""
    committed_by: list[str] = []
    writer = LedgerWriter(ledger)

    def rows(led: Ledger) -> None:
        committed_by.append(threading.current_thread().name)
        led.add_pending([(F, "a", SIG)])

    # Handed in by the main loop, which is about to wait for it (not yet its turn).
    main_rows: Pending[None] = Pending(rows, False, writer, waited=True)
    writer._queue.append(main_rows)
    slot = writer.submit(lambda led: led.mark_ticketed(F, "b", SIG, "fs-b"))
    assert not slot.done and not main_rows.done and committed_by == []
    main = threading.Thread(target=main_rows.wait, name="main-loop")
    main.start()
    main.join(10)
    assert committed_by == ["main-loop"] and slot.done


@pytest.mark.parametrize("quick", [False, True], ids=["slow-disk", "quick-disk"])
def test_only_a_thread_that_waits_for_its_write_checkpoints(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch, quick: bool
) -> None:
    import hottask_sync.writer as writer_module

    monkeypatch.setattr(writer_module, "CHECKPOINT_EVERY", 4)
    checkpoints: list[str] = []
    real = ledger.checkpoint
    monkeypatch.setattr(
        ledger,
        "checkpoint",
        lambda: (checkpoints.append(threading.current_thread().name), real())[1],
    )
    writer = LedgerWriter(ledger, clock=SyncClock(0.001 if quick else 0.020))
    with ledger._store.reading() as conn:
        assert conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
    if quick:
        synced(writer)  # one commit: no checkpoint yet
    before = writer.batches
    for i in range(8):  # quick commits of a slot: never a checkpoint
        writer.submit(lambda led, i=i: led.mark_ticketed(F, f"f{i}", SIG, f"fs-{i}"))
    assert writer.batches == before + 8 and checkpoints == []
    writer.call(lambda led: led.mark_put(F, "f0", "ab" * 32), durable=True)
    assert checkpoints == [threading.current_thread().name]


def test_stop_waits_for_a_commit_under_way_then_commits_what_was_queued_behind_it(
    ledger: Ledger,
) -> None:
    """The turn ending is handed to stop(), which commits the writes handed in meanwhile
    (and nothing of its own: the queue is empty after it)."""
    writer = LedgerWriter(ledger)
    stopped = threading.Thread(target=writer.stop, args=(10,))
    with commit_under_way(writer):
        writer.submit(lambda led: led.mark_ticketed(F, "a", SIG, "fs-a"))
        stopped.start()
        wait_until(lambda: len(writer._sleepers) == 1)  # stop() asleep behind the commit
    stopped.join(10)
    assert not stopped.is_alive()
    assert ledger.get(F, "a").state is State.TICKETED  # type: ignore[union-attr]
    assert not writer._queue and not writer._sleepers and not writer._leading


def test_waiters_asleep_behind_a_commit_are_woken_with_their_writes_done_by_one_turn(
    ledger: Ledger,
) -> None:
    """The end of a turn hands the next one to a single sleeper: its first batch commits
    every sleeper's write, and the others wake with theirs done, committing nothing."""
    for i in range(3):
        ledger.mark_ticketed(F, f"f{i}", SIG, f"fs-{i}")
    writer = LedgerWriter(ledger)
    committed_by: list[str] = []

    def put(i: int) -> None:
        def fn(led: Ledger) -> None:
            committed_by.append(threading.current_thread().name)
            led.mark_put(F, f"f{i}", "ab" * 32)

        writer.call(fn, durable=True)

    with commit_under_way(writer):
        waiting = in_threads(3, put)
        wait_until(lambda: len(writer._sleepers) == 3)
    for t in waiting:
        t.join(10)
    assert writer.batches == 2  # the slow one, then the three together
    assert len(set(committed_by)) == 1 and len(committed_by) == 3
    assert not writer._sleepers and not writer._leading


def test_stop_is_handed_the_turn_before_waiters_that_came_after_it(ledger: Ledger) -> None:
    """Turns go to sleepers in the order they came: under a steady stream of waiters, a
    stop() that came earlier is never passed over until its time runs out."""
    writer = LedgerWriter(ledger)
    committed_by: dict[str, str] = {}

    def later(led: Ledger) -> None:
        committed_by["later"] = threading.current_thread().name

    stopper = threading.Thread(target=writer.stop, args=(10,), name="stopper")
    waiter = threading.Thread(target=writer.call, args=(later,), name="waiter")
    with commit_under_way(writer):
        stopper.start()
        wait_until(lambda: len(writer._sleepers) == 1)
        waiter.start()
        wait_until(lambda: len(writer._sleepers) == 2)
    stopper.join(10)
    waiter.join(10)
    assert committed_by == {"later": "stopper"}


class InterruptedOnWaking:
    """threading for the writer module: a lock made by the thread named ``interrupted``
    raises KeyboardInterrupt as that thread wakes from it (a signal handler's exception
    arriving just then), after the wake-up was given."""

    def __init__(self) -> None:
        self.real = threading

    def Lock(self) -> object:
        lock = self.real.Lock()
        if self.real.current_thread().name != "interrupted":
            return lock

        class Interrupted:
            def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
                got = lock.acquire(blocking, timeout)
                if timeout != -1 or not blocking or getattr(self, "armed", False):
                    raise KeyboardInterrupt
                self.armed = True  # the next acquire is the sleep
                return got

            def release(self) -> None:
                lock.release()

        return Interrupted()

    def __getattr__(self, name: str) -> object:
        return getattr(self.real, name)


def test_a_waiter_interrupted_as_it_is_handed_the_turn_passes_it_on(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nobody else would end a turn handed to a thread that is gone: every later write
    would wait forever."""
    import hottask_sync.writer as writer_module

    writer = LedgerWriter(ledger)
    monkeypatch.setattr(writer_module, "threading", InterruptedOnWaking())
    raised: list[BaseException] = []

    def interrupted() -> None:
        try:
            writer.call(lambda led: led.mark_ticketed(F, "a", SIG, "fs-a"))
        except KeyboardInterrupt as exc:
            raised.append(exc)

    first = threading.Thread(target=interrupted, name="interrupted")
    with commit_under_way(writer):
        first.start()
        wait_until(lambda: len(writer._sleepers) == 1)
    first.join(10)
    assert raised
    later = threading.Thread(
        target=writer.call, args=(lambda led: led.mark_ticketed(F, "b", SIG, "fs-b"),)
    )
    later.start()
    later.join(10)
    assert not later.is_alive()  # the turn was not left with the interrupted thread
    assert ledger.get(F, "b").state is State.TICKETED  # type: ignore[union-attr]
    assert not writer._leading and not writer._sleepers


def test_two_threads_waiting_for_one_write_both_return(ledger: Ledger) -> None:
    writer = LedgerWriter(ledger)
    with commit_under_way(writer):
        pending = writer.submit(lambda led: led.mark_ticketed(F, "a", SIG, "fs-a"))
        waiters = in_threads(2, lambda i: pending.wait())
        wait_until(lambda: len(writer._sleepers) == 2)
    for t in waiters:
        t.join(10)
    assert not any(t.is_alive() for t in waiters)
    assert not writer._leading and not writer._sleepers
