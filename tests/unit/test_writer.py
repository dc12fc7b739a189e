"""The single ledger writer: writes handed in together share one transaction and one sync
(group commit), a refused one undoes only itself, a failed commit fails them all."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from hottask_sync.errors import LedgerError
from hottask_sync.files import FileSig
from hottask_sync.ledger import IllegalTransition, Ledger, State
from hottask_sync.writer import LedgerWriter, SharedLedger

F = "/srv/in"
SIG = FileSig(5, 1, 1, 1, 1)


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    return Ledger.in_dir(tmp_path)


def test_writes_waiting_together_are_committed_together_with_one_sync(ledger: Ledger) -> None:
    syncs: list[bool] = []
    real_batch = ledger.batch

    def counting_batch(*, durable: bool = False) -> object:
        syncs.append(durable)
        return real_batch(durable=durable)

    ledger.batch = counting_batch  # type: ignore[method-assign]
    for i in range(8):
        ledger.mark_ticketed(F, f"f{i}", SIG, f"fs-{i}")
    writer = LedgerWriter(ledger)
    # Eight workers hand their put in at once, before the writer runs: one batch, one sync.
    pendings = [
        writer.submit(lambda led, i=i: led.mark_put(F, f"f{i}", "ab" * 32), durable=True)
        for i in range(8)
    ]
    writer.start()
    for p in pendings:
        p.wait()
    writer.stop(5)
    assert syncs == [True]
    assert all(ledger.get(F, f"f{i}").state is State.PUT for i in range(8))  # type: ignore[union-attr]


def test_a_refused_write_undoes_only_itself(ledger: Ledger) -> None:
    ledger.mark_ticketed(F, "a", SIG, "fs-a")
    writer = LedgerWriter(ledger)
    refused = writer.submit(lambda led: led.mark_reported(F, "a"))  # not put yet: illegal
    kept = writer.submit(lambda led: led.mark_put(F, "a", "ab" * 32), durable=True)
    writer.start()
    with pytest.raises(IllegalTransition):
        refused.wait()
    kept.wait()
    writer.stop(5)
    assert ledger.get(F, "a").state is State.PUT  # type: ignore[union-attr]


def test_a_commit_that_fails_fails_every_write_of_the_batch(ledger: Ledger) -> None:
    class FullDisk:
        """A ledger whose commit fails (as on a full disk) after the writes ran."""

        @contextlib.contextmanager
        def batch(self, *, durable: bool = False) -> Iterator[None]:
            with ledger.batch(durable=durable):
                yield
                raise LedgerError("ledger: database or disk is full")

    writer = LedgerWriter(FullDisk())  # type: ignore[arg-type]
    first = writer.submit(lambda led: None)
    second = writer.submit(lambda led: None, durable=True)
    writer.start()
    for p in (first, second):
        with pytest.raises(LedgerError, match="disk is full"):
            p.wait()
    writer.stop(5)


def test_shared_ledger_reads_do_not_wait_for_the_writer(ledger: Ledger, tmp_path: Path) -> None:
    ledger.add_pending([(F, "a", SIG)])
    writer = LedgerWriter(ledger)
    shared = SharedLedger(writer, ledger.path)
    hold = threading.Event()
    holding = threading.Event()

    def slow(led: Ledger) -> None:
        holding.set()
        hold.wait(10)  # a batch stuck in a slow sync, say

    writer.start()
    blocked = writer.submit(slow)
    assert holding.wait(10)
    assert shared.get(F, "a").state is State.PENDING  # type: ignore[union-attr]
    hold.set()
    blocked.wait()
    shared.mark_pending(F, "a", SIG)  # a write that waits for its commit
    assert shared.get(F, "a").state is State.PENDING  # type: ignore[union-attr]
    writer.stop(5)
    shared.close()


def test_a_ticket_is_handed_over_without_waiting_and_its_put_follows_it(ledger: Ledger) -> None:
    writer = LedgerWriter(ledger)  # not started yet: nothing is committed
    shared = SharedLedger(writer, ledger.path)
    shared.mark_ticketed(F, "a", SIG, "fs-a")  # returns at once: the PUT need not wait
    assert shared.get(F, "a") is None
    writer.start()
    shared.mark_put(F, "a", "ab" * 32, file_store_id="fs-a")  # after the ticket, in order
    assert shared.get(F, "a").state is State.PUT  # type: ignore[union-attr]
    writer.stop(5)
    shared.close()


def test_a_put_after_a_refused_ticket_is_refused_too(ledger: Ledger) -> None:
    """The ticket of a row that owes another report is refused; the put that follows it
    (same file, new ticket) must be refused too, or a new ticket would be reported."""
    ledger.mark_ticketed(F, "a", SIG, "fs-old")
    ledger.mark_put(F, "a", "ab" * 32)
    writer = LedgerWriter(ledger)
    shared = SharedLedger(writer, ledger.path)
    writer.start()
    shared.mark_ticketed(F, "a", SIG, "fs-new")
    with pytest.raises(IllegalTransition):
        shared.mark_put(F, "a", "cd" * 32, file_store_id="fs-new")
    assert shared.get(F, "a").file_store_id == "fs-old"  # type: ignore[union-attr]
    writer.stop(5)
    shared.close()


def test_after_a_failed_commit_every_later_write_fails_too(ledger: Ledger) -> None:
    """A ticket handed over without waiting may have been lost with the failed commit: the
    put that follows must not be refused as a mere illegal transition (that would loop
    upload after upload on a full disk); it fails with the storage error, and so does every
    later write, so the daemon stops."""

    class FullDiskOnce:
        failed = False

        @contextlib.contextmanager
        def batch(self, *, durable: bool = False) -> Iterator[None]:
            with ledger.batch(durable=durable):
                yield
                if not FullDiskOnce.failed:
                    FullDiskOnce.failed = True
                    raise LedgerError("ledger: database or disk is full")

        def __getattr__(self, name: str) -> object:
            return getattr(ledger, name)

    writer = LedgerWriter(FullDiskOnce())  # type: ignore[arg-type]
    ticket = writer.submit(lambda led: led.mark_ticketed(F, "a", SIG, "fs-a"))
    writer.start()
    with pytest.raises(LedgerError, match="disk is full"):
        ticket.wait()
    put = writer.submit(lambda led: led.mark_put(F, "a", "ab" * 32), durable=True)
    with pytest.raises(LedgerError, match="disk is full") as info:
        put.wait()
    assert not isinstance(info.value, IllegalTransition)
    writer.stop(5)
