"""What the daemon shows of its state: the one-line status (sd_notify STATUS=) and the
metrics' file counts, counted from the ledger off the main loop at most once a second while
something changed, and the auth pause as it starts and ends."""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import LedgerError
from .jobs import Result
from .ledger import Ledger
from .logs import get_logger
from .notify import Notifier
from .scheduler import AuthChange, Scheduler

if TYPE_CHECKING:
    from .metrics import Metrics

log = get_logger("hottask_sync.daemon")

STATUS_EVERY_SECONDS = 1.0


class StatusBoard:
    """Counts files per state and shows them.

    Counting reads the whole ledger's index, which grows with it: after the first count
    (at start, before READY=1) it runs on a thread of its own, at most once a second and
    only after :meth:`mark_stale`; the main loop only formats what was last counted.
    """

    def __init__(self, notifier: Notifier, metrics: Metrics | None) -> None:
        self._notifier = notifier
        self._metrics = metrics
        self.line = ""
        self._counts: dict[str, int] | None = None
        self._stale = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, ledger: Ledger, wake: Callable[[], None]) -> None:
        """Counts once now, then keeps counting on a thread with its own read connection."""
        self._counts = ledger.counts()
        self._thread = threading.Thread(
            target=self._run, args=(ledger.path, wake), name="status", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float) -> None:
        self._stop.set()
        self._stale.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def mark_stale(self) -> None:
        """Something changed in the ledger: count again (within a second)."""
        self._stale.set()

    def _run(self, path: Path, wake: Callable[[], None]) -> None:
        try:
            ledger = Ledger(path, readonly=True)
        except LedgerError as exc:
            log.error("status.unavailable", error=str(exc))
            return
        with ledger:
            while not self._stop.is_set():
                self._stale.wait()
                self._stale.clear()
                if self._stop.is_set():
                    return
                try:
                    self._counts = ledger.counts()
                except LedgerError as exc:
                    log.warning("status.count_failed", error=str(exc))
                wake()
                self._stop.wait(STATUS_EVERY_SECONDS)

    def refresh(self, scheduler: Scheduler, missing: Collection[str]) -> None:
        """Shows the last counts with the scheduler's queue (sd_notify STATUS=, metrics)
        when the line changed. No I/O but the notification."""
        c = self._counts
        if c is None:
            return
        uploaded, failed = c["reported"], c["failed"]
        pending = c["pending"] + c["ticketed"] + c["put"]
        queued = scheduler.queued
        line = f"uploaded {uploaded}, pending {pending}, failed {failed}, queued {queued}"
        if scheduler.paused:
            line += "; paused: API key refused"
        if missing:
            line += f"; {len(missing)} folder(s) missing"
        if line != self.line:
            self.line = line
            if self._metrics is not None:
                self._metrics.set_counts(uploaded, pending, failed)
                self._metrics.set_queue_depth(queued)
            self._notifier.status(line)


def announce_auth(
    change: AuthChange, result: Result, key_source: str, metrics: Metrics | None
) -> None:
    """Logs and shows a change of the auth pause (``result`` is the one that caused it;
    ``metrics`` None when they are off)."""
    if change is AuthChange.PAUSED:
        if metrics is not None:
            metrics.set_auth_blocked(True)
        log.error(
            "auth.failed",
            error=result.error,
            key_source=key_source,
            hint=f"the API key from {key_source} was refused; check it "
            "(uploads are paused and retried with a growing delay; "
            "fix the key and send SIGHUP or restart)",
        )
    else:
        if metrics is not None:
            metrics.set_auth_blocked(False)
        log.info("auth.recovered", key_source=key_source)
