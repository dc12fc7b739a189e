"""What the daemon shows of its state: the one-line status (sd_notify STATUS=) and the
metrics' file counts, refreshed from the ledger at most once a second while something
changed, and the auth pause as it starts and ends."""

from __future__ import annotations

from collections.abc import Callable, Collection

from .jobs import Result
from .ledger import Ledger
from .logs import get_logger
from .metrics import Metrics
from .notify import Notifier
from .scheduler import AuthChange, Scheduler

log = get_logger("hottask_sync.daemon")

STATUS_EVERY_SECONDS = 1.0


class StatusBoard:
    """Counts files per state and shows them; :attr:`stale` asks for a refresh."""

    def __init__(self, notifier: Notifier, metrics: Metrics, clock: Callable[[], float]) -> None:
        self._notifier = notifier
        self._metrics = metrics
        self._clock = clock
        self.stale = True
        self.line = ""
        self._next = 0.0

    def next_refresh(self) -> float:
        """When the main loop must wake for a due refresh (never, while nothing changed)."""
        return self._next if self.stale else float("inf")

    def refresh(
        self,
        ledger: Ledger,
        scheduler: Scheduler,
        missing: Collection[str],
        *,
        force: bool = False,
    ) -> None:
        """Reads the counts again when they are stale and the last refresh is a second old."""
        now = self._clock()
        if not force and (not self.stale or now < self._next):
            return
        self._next = now + STATUS_EVERY_SECONDS
        self.stale = False
        c = ledger.counts()
        uploaded, failed = c["reported"], c["failed"]
        pending = c["pending"] + c["ticketed"] + c["put"]
        queued = scheduler.queued
        self._metrics.set_counts(uploaded, pending, failed)
        self._metrics.set_queue_depth(queued)
        line = f"uploaded {uploaded}, pending {pending}, failed {failed}, queued {queued}"
        if scheduler.paused:
            line += "; paused: API key refused"
        if missing:
            line += f"; {len(missing)} folder(s) missing"
        if line != self.line:
            self.line = line
            self._notifier.status(line)


def announce_auth(change: AuthChange, result: Result, key_source: str, metrics: Metrics) -> None:
    """Logs and shows a change of the auth pause (``result`` is the one that caused it)."""
    if change is AuthChange.PAUSED:
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
        metrics.set_auth_blocked(False)
        log.info("auth.recovered", key_source=key_source)
