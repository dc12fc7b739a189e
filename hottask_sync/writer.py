"""The ledger writer: every write, many at a time, one commit each, without a thread of its own.

Workers no longer take turns on one connection behind one lock, each waiting through its
own fsync, and they no longer hand each write to a writer thread (two thread switches per
write, the largest cost of a file on a fast disk). They queue their transitions; whoever
finds no commit under way takes the turn and commits every write queued, in order, in one
transaction (each a savepoint of its own, so one refused transition undoes only itself).
While one thread syncs, the writes queued meanwhile wait for the next turn and share its
commit: group commit. A turn that ends hands the next one to the thread that has waited
longest, and wakes only the threads whose writes it committed. A batch holding a ``put``
commits with a full sync, which then covers every ``put`` in it; a file is reported only
once its ``put`` is durable (see :class:`Pending`). A write handed in without waiting
never runs a sync in the caller's thread. On a slow disk it never waits for one either: an
upload slot's ticket is left to the next commit (its rare waited writes, an error or a file
gone, may share a sync). On a quick disk (judged by the synced commits made) every write is
committed at once in the caller's thread as its own transaction (a ``put`` with its own
sync), after the writes queued before it: cheaper than handing it over or waiting for a
turn. Reads never wait for writes: they use a read-only connection of their own (SQLite's
WAL lets readers and the writer work at once).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from .errors import LedgerError
from .files import FileSig
from .ledger import Entry, IllegalTransition, Known, Ledger
from .logs import get_logger

T = TypeVar("T")
log = get_logger("hottask_sync.writer")

#: At most this many operations share one transaction.
MAX_BATCH = 256
#: The WAL is copied back into the database after about this many commits.
CHECKPOINT_EVERY = 256
#: A synced commit that took less than this is a quick disk's (an SSD: 0.1-3 ms); slow media
#: (an SD card, a busy NAS, a cloud volume) take 10-30 ms.
QUICK_SYNC_SECONDS = 0.005
#: ... judged by the quickest of this many last synced commits.
SYNC_WINDOW = 16


@dataclass(eq=False)
class Pending(Generic[T]):
    """A write handed to the writer: :meth:`wait` returns its result once committed, or
    raises what refused it (an IllegalTransition, a LedgerError of the commit)."""

    fn: Callable[[Ledger], T]
    durable: bool
    writer: LedgerWriter = field(repr=False)
    #: Handed in by a thread that waits for it (:meth:`LedgerWriter.call`): that thread
    #: commits it (and what is queued with it), never a thread that does not wait.
    waited: bool = False
    done: bool = False
    result: Any = None
    error: BaseException | None = None

    def wait(self) -> T:
        self.writer.wait_for(self)
        if self.error is not None:
            raise self.error
        return self.result  # type: ignore[no-any-return]


class LedgerWriter:
    """Commits the writes handed in, in the order handed in, in as few commits as the disk
    allows (see the module's docstring). Thread-safe.

    A write that its own thread commits on a quick disk (see :meth:`submit` and
    :meth:`call`) goes after every write queued before it; writes handed in at the same
    time by other threads are other files' (any order between them is one the ledger's
    transitions allow, as when every thread wrote in turn on one connection).

    On a quick disk each ``put`` is synced on its own, under the store's lock: at the
    threshold (5 ms a sync) at most 200 a second, somewhat below the 250 files a second
    this daemon uploads on loopback on a 2-core VM (bench row 1); a slower disk gets group
    commit."""

    def __init__(self, ledger: Ledger, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._ledger = ledger
        self._clock = clock
        # Whether synced commits are quick (see submit): the shortest of the last few, as
        # the time of one also holds the waits of its thread for the GIL, which only add.
        # Until one is measured, the disk is taken for a slow one.
        self._quick_syncs = False
        self._sync_times: deque[float] = deque(maxlen=SYNC_WINDOW)
        self._queue: deque[Pending[Any]] = deque()
        # _leading: one thread is committing. A waiter that finds the turn taken sleeps on
        # a lock of its own, held for it (in _sleepers, in the order they came); the end of
        # a turn wakes only the waiters whose writes it committed, and hands the turn to
        # the first of the others, if any: no waiter wakes just to find that its write is
        # still not done (a notify_all per commit woke every report thread each time, most
        # of them for nothing).
        self._mutex = threading.Lock()
        self._leading = False
        self._sleepers: list[tuple[Pending[Any], threading.Lock]] = []
        self.batches = 0  # commits made (for the bench and tests)
        self._checkpointed = 0  # self.batches at the last checkpoint
        ledger.stop_autocheckpoint()
        # Once a commit failed, writes handed over without waiting may be lost: every later
        # write fails with that error too (the daemon stops rather than go on unrecorded).
        self._broken: LedgerError | None = None

    def stop(self, timeout: float) -> None:
        """Commits what was handed in and not yet committed (waiting at most ``timeout``
        seconds for its turn: the turns of the threads that were waiting before it, and
        the one under way)."""
        # A turn of its own, as a waiter whose write (never queued) is never done: when its
        # turn comes, it commits everything queued.
        turn: Pending[None] = Pending(lambda led: None, True, self, waited=True)
        if not self._take_turn(turn, max(0.0, timeout)):
            log.warning("ledger.writes_left", count=len(self._queue))
            return
        try:
            self._drain(durable=True)
            self._checkpoint()  # a smaller WAL for the next start
        finally:
            self._end_turn()

    def submit(self, fn: Callable[[Ledger], T], *, durable: bool = False) -> Pending[T]:
        """Hands a write over without waiting for a sync. While the disk syncs quickly, it
        is committed now, in this thread, as its own transaction, after the writes queued
        before it (never more than quick commits' wait). On a slow disk it is committed
        now when no commit is under way and no write that another thread waits for (or
        that needs a sync) is queued before it; otherwise by the next thread to commit.
        A ``durable`` write handed in this way is committed by the next waiting one: wait
        for it (:meth:`Pending.wait`)."""
        pending: Pending[T] = Pending(fn, durable, self)
        if self._quick_syncs and not durable and self._commit_own(pending):
            # Queued, it would be committed by a thread waiting for its own turn, and the
            # hand-over costs more than this short wait (bench/layers.py: 0.7 ms of CPU
            # per file, a fifth of the bare httpx loop's). On a slow disk the wait could be
            # a sync's 20 ms in an upload slot: queued instead, as below.
            return pending
        self._queue.append(pending)
        self._lead_quick()
        return pending

    def call(self, fn: Callable[[Ledger], T], *, durable: bool = False) -> T:
        """Hands a write over and waits until it is committed; returns its result. While
        the disk syncs quickly, this thread commits it itself, as its own transaction
        (a ``put`` with its own sync), after the writes queued before it."""
        pending: Pending[T] = Pending(fn, durable, self, waited=True)
        if self._quick_syncs:
            # Waiting for a turn costs a sleep and a wake-up, and group commit saves little
            # where a sync takes a fraction of a millisecond (bench/README: 11-18 % fewer
            # context switches per file in row 1).
            self._commit_own(pending)
            self._checkpoint_if_due()
        else:
            self._queue.append(pending)
        return pending.wait()

    def _commit_own(self, p: Pending[Any]) -> bool:
        """Commits one write in this thread as its own transaction (synced when the
        operation is durable, as a ``put`` is), once every write queued before it is
        committed (by this thread, or by the thread whose turn it is). Returns False,
        committing nothing, for a write nobody waits for while writes are queued: queued
        behind them instead, it never runs their sync in this thread."""
        with self._mutex:
            last = self._queue[-1] if self._queue else None
        if last is not None:
            if not p.waited:
                return False
            self.wait_for(last)
        if self._broken is not None:
            p.error = self._broken
            p.done = True
            return True
        # Timed once this thread holds the ledger's lock, as a turn's batch is: the wait
        # for other threads' commits is not the disk's. Under row 1's load it was 20 ms a
        # put at the median, and a quick disk was taken for a slow one, on and off, for a
        # fifth of the writes (bench/README).
        with self._ledger.holding():
            started = self._clock() if p.durable else 0.0
            try:
                self._commit_one(p)
            except LedgerError as exc:  # as after a failed turn's commit: the daemon stops
                self._broken = p.error = exc
            took = self._clock() - started if p.durable else 0.0
        with self._mutex:
            if p.durable:
                self._judge(took)
            self.batches += 1
        p.done = True
        return True

    def _judge(self, seconds: float) -> None:
        """Takes a synced commit's time into the judgement of the disk (under _mutex)."""
        self._sync_times.append(seconds)
        self._quick_syncs = min(self._sync_times) < QUICK_SYNC_SECONDS

    def wait_for(self, pending: Pending[Any]) -> None:
        """Returns once ``pending`` is committed (or refused): committing it itself, with
        the writes queued before it, when the turn is free or handed to this thread."""
        if not self._take_turn(pending):
            return
        # Only as far as its own write: the writes queued behind it meanwhile have waiters
        # of their own (one of them is handed the next turn) or are taken by _lead_quick;
        # a thread that drained until the queue ran dry could be held committing for
        # others for as long as the load lasts, its own caller waiting all that time.
        self._lead(durable=True, until=pending, checkpoint=True)
        # Writes queued while this thread committed, by threads that did not wait.
        self._lead_quick()

    def _take_turn(self, pending: Pending[Any], timeout: float | None = None) -> bool:
        """Returns True once this thread leads (the turn was free, or handed to it), False
        once ``pending`` is done (committed by another thread) or ``timeout`` passed."""
        with self._mutex:
            if pending.done:
                return False
            if not self._leading:
                self._leading = True
                return True
            wake = threading.Lock()
            wake.acquire()
            sleeper = (pending, wake)
            self._sleepers.append(sleeper)
        try:
            woken = wake.acquire(timeout=-1 if timeout is None else timeout)
        except BaseException:  # interrupted (KeyboardInterrupt, say): never left behind
            if self._woken(sleeper) and not pending.done:
                self._end_turn()  # the turn was handed to it: passed on, or nobody ends it
            raise
        if not woken and not self._woken(sleeper):
            return False  # the time ran out
        return not pending.done

    def _woken(self, sleeper: tuple[Pending[Any], threading.Lock]) -> bool:
        """For a sleeper that stops waiting before it was seen to wake: True if a turn's
        end woke it meanwhile (its write done, or the turn handed to it), else False, and
        it is no longer a sleeper."""
        with self._mutex:
            if sleeper in self._sleepers:
                self._sleepers.remove(sleeper)
                return False
        return True

    def _end_turn(self) -> None:
        """Lets go of the turn: wakes the sleepers whose writes are done, and hands the turn
        to the one that has waited longest among the others (its first batch takes every
        write queued by then, theirs too, up to MAX_BATCH)."""
        with self._mutex:
            woken = [s for s in self._sleepers if s[0].done]
            self._sleepers = [s for s in self._sleepers if not s[0].done]
            if self._sleepers:
                woken.append(self._sleepers.pop(0))  # _leading stays set: handed over
            else:
                self._leading = False
        for _, wake in woken:
            wake.release()

    def _lead(
        self, *, durable: bool, until: Pending[Any] | None = None, checkpoint: bool = False
    ) -> None:
        """With the turn taken by this thread: commits (see :meth:`_drain`), then ends the
        turn (see :meth:`_end_turn`)."""
        try:
            self._drain(durable=durable, until=until)
            if checkpoint:
                self._checkpoint_if_due()
        finally:
            self._end_turn()

    def _checkpoint_if_due(self) -> None:
        """Copies the WAL back once CHECKPOINT_EVERY commits were made since the last time.
        The ledger's connection never checkpoints by itself (that would sync in whichever
        thread crossed the threshold, an upload slot too): only a thread that waits for a
        commit anyway calls this."""
        with self._mutex:
            due = self.batches - self._checkpointed >= CHECKPOINT_EVERY
            if due:
                self._checkpointed = self.batches
        if due:
            self._checkpoint()

    def _lead_quick(self) -> None:
        """Commits the writes queued, unless a commit is under way (its thread takes them
        or leaves them to the next) or the first one needs a sync or has a waiter (that
        waiter commits it, and what follows it)."""
        while self._head_is_quick():
            with self._mutex:
                if self._leading:
                    return
                self._leading = True
            self._lead(durable=False)

    def _commit_one(self, p: Pending[Any]) -> None:
        """One write as the operation's own transaction (durable when it is: a ``put``
        is), without a batch's savepoint and its two statements."""
        try:
            p.result = p.fn(self._ledger)
        except IllegalTransition as exc:  # refused: nothing else to undo
            p.error = exc

    def _head_is_quick(self) -> bool:
        try:
            head = self._queue[0]
        except IndexError:  # empty, or emptied by the thread committing just now
            return False
        return not (head.durable or head.waited)

    def _checkpoint(self) -> None:
        """Copies the WAL back into the database. A failure is logged, not raised: every
        write is committed already (a disk that is really failing fails the next commit)."""
        try:
            self._ledger.checkpoint()
        except LedgerError as exc:
            log.warning("ledger.checkpoint_failed", error=str(exc))

    def _drain(self, *, durable: bool, until: Pending[Any] | None = None) -> None:
        """While leading: commits the queued writes in order, in batches, until the queue
        is empty or ``until`` is committed; without ``durable``, stops before the first one
        that needs a sync or has a waiter."""
        while until is None or not until.done:
            # Taken off the queue under the ledger's lock, held until committed: a thread
            # that finds the queue empty and commits its own write (_commit_own) waits for
            # this batch, so its write never goes before one queued earlier.
            with self._ledger.holding():
                batch: list[Pending[Any]] = []
                while self._queue and len(batch) < MAX_BATCH:
                    if not durable and (self._queue[0].durable or self._queue[0].waited):
                        break
                    batch.append(self._queue.popleft())
                if not batch:
                    return
                self._commit(batch)

    def _commit(self, batch: list[Pending[Any]]) -> None:
        if self._broken is not None:
            for p in batch:
                p.error = self._broken
                p.done = True
            return
        durable = any(p.durable for p in batch)
        started = self._clock() if durable else 0.0
        try:
            if len(batch) == 1:
                self._commit_one(batch[0])
            else:
                with self._ledger.batch(durable=durable):
                    for p in batch:
                        try:
                            p.result = p.fn(self._ledger)
                        except IllegalTransition as exc:  # refused: undone alone (a savepoint)
                            p.error = exc
        except LedgerError as exc:  # the commit failed: nothing of the batch was written
            self._broken = exc
            for p in batch:
                p.error = exc
        except BaseException as exc:  # a bug: every waiter must still hear of it
            # and so must every later write (this batch may hold writes nobody waits for,
            # undone with it): as after a failed commit, the daemon stops.
            self._broken = LedgerError(f"ledger writer: {exc!r}")
            for p in batch:
                p.error = p.error or self._broken
        with self._mutex:
            if durable:
                self._judge(self._clock() - started)
            self.batches += 1
        for p in batch:
            p.done = True


class LedgerOps(Protocol):
    """What an upload needs of a ledger: a :class:`Ledger` itself (one-shot uploads, tests)
    or a :class:`SharedLedger` (the daemon)."""

    def get(self, folder: str, relpath: str) -> Entry | None: ...
    def forget(self, folder: str, relpath: str) -> bool: ...
    def mark_ticketed(
        self, folder: str, relpath: str, sig: FileSig, file_store_id: str
    ) -> None: ...
    def mark_put(
        self, folder: str, relpath: str, sha256: str, *, file_store_id: str | None = None
    ) -> None: ...
    def mark_reported(
        self, folder: str, relpath: str, *, file_store_id: str | None = None, wait: bool = True
    ) -> None: ...
    def mark_disposed(self, folder: str, relpath: str) -> None: ...
    def mark_verified(self, folder: str, relpath: str, sig: FileSig) -> None: ...
    def mark_pending(self, folder: str, relpath: str, sig: FileSig | None = None) -> None: ...
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
    ) -> Entry: ...


class SharedLedger:
    """The ledger as the workers and the main loop see it: reads on a read-only connection
    of its own, writes through the single writer. The methods are the Ledger's."""

    def __init__(self, writer: LedgerWriter, path: Path) -> None:
        self.writer = writer
        self.path = path
        self._reader = Ledger(path, readonly=True)

    def close(self) -> None:
        self._reader.close()

    # --- reads --------------------------------------------------------------------------------

    def get(self, folder: str, relpath: str) -> Entry | None:
        return self._reader.get(folder, relpath)

    def known(self, folder: str, relpaths: Sequence[str]) -> dict[str, Known]:
        return self._reader.known(folder, relpaths)

    # --- writes -------------------------------------------------------------------------------

    def add_pending(self, items: Iterable[tuple[str, str, FileSig]]) -> None:
        rows = list(items)
        self.writer.call(lambda led: led.add_pending(rows))

    def mark_ticketed(self, folder: str, relpath: str, sig: FileSig, file_store_id: str) -> None:
        """Hands the ticket over without waiting: the PUT need not wait for a commit. The
        writer keeps the order, so the ``put`` of the same file comes after it; if the
        ticket was refused (or not committed), that ``put`` is refused too, and nothing is
        reported."""
        self.writer.submit(lambda led: led.mark_ticketed(folder, relpath, sig, file_store_id))

    def mark_put(
        self, folder: str, relpath: str, sha256: str, *, file_store_id: str | None = None
    ) -> None:
        """Records the ``put`` durably: returns once a synced commit holds it (on a slow
        disk, one sync for every ``put`` handed in meanwhile)."""
        self.writer.call(
            lambda led: led.mark_put(folder, relpath, sha256, file_store_id=file_store_id),
            durable=True,
        )

    def mark_reported(
        self, folder: str, relpath: str, *, file_store_id: str | None = None, wait: bool = True
    ) -> None:
        """Records the report; without ``wait``, hands it over and returns at once (fine
        when nothing follows that needs it committed: losing it only means the same
        FileStoreId is reported again after a restart)."""
        pending = self.writer.submit(
            lambda led: led.mark_reported(folder, relpath, file_store_id=file_store_id)
        )
        if wait:
            pending.wait()

    def mark_disposed(self, folder: str, relpath: str) -> None:
        self.writer.call(lambda led: led.mark_disposed(folder, relpath))

    def mark_verified(self, folder: str, relpath: str, sig: FileSig) -> None:
        self.writer.call(lambda led: led.mark_verified(folder, relpath, sig))

    def mark_pending(self, folder: str, relpath: str, sig: FileSig | None = None) -> None:
        self.writer.call(lambda led: led.mark_pending(folder, relpath, sig))

    def forget(self, folder: str, relpath: str) -> bool:
        return self.writer.call(lambda led: led.forget(folder, relpath))

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
        return self.writer.call(
            lambda led: led.record_error(
                folder,
                relpath,
                error,
                permanent=permanent,
                max_attempts=max_attempts,
                fail_now=fail_now,
                sig=sig,
            )
        )
