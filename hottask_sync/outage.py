"""Waiting out a ledger that cannot be written (a full disk, a read-only remount).

Exiting at once would have the service manager restart the daemon every few seconds, each
start a full rescan, forever. Instead the daemon stays up and keeps its watchdog fed,
probes the ledger with a growing pause, says so at most once an hour, and exits (for one
cheap restart) only once the ledger can be written again. :class:`Outage` is the pure
schedule (when to probe, when to speak); :func:`wait_out` is the wait, over the runtime's
parts handed in as plain functions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .errors import LedgerError
from .logs import get_logger

log = get_logger("hottask_sync.daemon")

FIRST_PROBE_SECONDS = 0.5
PROBE_CAP_SECONDS = 30.0
REMIND_EVERY_SECONDS = 3600.0


@dataclass
class Outage:
    """The schedule of one outage, from ``since`` (a monotonic time)."""

    since: float
    next_probe: float = 0.0
    pause: float = FIRST_PROBE_SECONDS
    next_remind: float = 0.0

    def __post_init__(self) -> None:
        self.next_probe = self.since + self.pause
        self.next_remind = self.since + REMIND_EVERY_SECONDS

    def probe_due(self, now: float) -> bool:
        """True when the ledger should be probed now; the next pause then doubles."""
        if now < self.next_probe:
            return False
        self.pause = min(self.pause * 2, PROBE_CAP_SECONDS)
        self.next_probe = now + self.pause
        return True

    def remind_due(self, now: float) -> bool:
        """True at most once an hour while the outage lasts."""
        if now < self.next_remind:
            return False
        self.next_remind = now + REMIND_EVERY_SECONDS
        return True


def wait_out(
    *,
    probe: Callable[[], None],
    clock: Callable[[], float],
    stopping: Callable[[], bool],
    ping: Callable[[], object],
    interval: float | None,
    next_ping: float,
    nap: Callable[[float], None],
    meanwhile: Callable[[], None],
) -> None:
    """Waits until ``probe`` (a write of the ledger) stops raising LedgerError, or until
    ``stopping``; feeds the watchdog (``ping`` every ``interval``) all along, ``nap``-ing in
    between and taking in what ``meanwhile`` takes."""
    outage = Outage(clock())
    while not stopping():
        now = clock()
        if interval is not None and now >= next_ping:
            ping()
            next_ping = now + interval
        if outage.probe_due(now):
            try:
                probe()
            except LedgerError as exc:
                if outage.remind_due(now):
                    log.error("ledger.still_failing", error=str(exc))
            else:
                log.info("ledger.writable", hint="exiting for a restart that resumes")
                return
        nap(max(0.0, min(outage.next_probe, next_ping) - now))
        meanwhile()
