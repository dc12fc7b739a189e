"""What comes in from the disk, and the looks at it the scheduler asks for.

Watcher hints go to the lookups thread (beyond a bound, a flood is left to a rescan); its
answers and the scanner's batches go into the scheduler; the checks, looks and rescans a
scheduler step asks for go out to those threads. All of it is moving plain values on the
main loop; the disk itself is only touched on the lookups and scanner threads.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Collection

from .config import FolderConfig
from .logs import get_logger
from .lookups import Checked, Lookups
from .scanner import Batch, Scanner
from .scheduler import Scheduler, Step

log = get_logger("hottask_sync.daemon")

#: A scan pauses while the scheduler holds this many files, and goes on below the low mark.
BACKLOG_HIGH = 20_000
BACKLOG_LOW = 10_000
#: Watcher hints waiting for the main loop, and look-ups waiting for their thread, at most;
#: beyond, a flood of events is left to a rescan.
HINTS_MAX = 50_000
LOOKUPS_MAX = 5_000


class Intake:
    """The lookups thread and the scanner, and the hints between the watcher and them."""

    def __init__(self, wake: Callable[[], None], scanner: Scanner) -> None:
        self._wake = wake
        self._hints: deque[tuple[str, str, bool]] = deque()
        #: Set on watchdog's thread (an overflow, a flood): every folder is scanned.
        self.rescan_now = False
        self.lookups = Lookups(wake)
        self.scanner = scanner

    def start(self) -> None:
        self.lookups.start()
        self.scanner.start()

    def stop(self, timeout: float) -> None:
        self.lookups.stop(timeout / 2)
        self.scanner.stop(timeout / 2)

    # --- from watchdog's thread ---------------------------------------------------------------

    def hint(self, folder_key: str, path: str, is_dir: bool) -> None:
        """Queues an event's path and wakes the main loop. A flood beyond HINTS_MAX is
        dropped and left to a rescan, which keeps memory bounded."""
        if len(self._hints) < HINTS_MAX:
            self._hints.append((folder_key, path, is_dir))
        else:
            self.rescan_now = True
        self._wake()

    def overflowed(self) -> None:
        """The kernel dropped events: every folder is scanned."""
        self.rescan_now = True
        self._wake()

    # --- on the main loop ---------------------------------------------------------------------

    def drain(self, scheduler: Scheduler) -> None:
        """Moves hints to the lookups thread, and its answers and the scanner's batches into
        the scheduler; lets a scan go on or makes it wait, by the scheduler's backlog."""
        while self._hints and self.lookups.backlog() < LOOKUPS_MAX:
            folder_key, path, is_dir = self._hints.popleft()
            folder = scheduler.folders.get(folder_key)
            if folder is not None:
                self.lookups.hint(folder, path, is_dir)
        answers = self.lookups.answers
        while answers:
            answer = answers.popleft()
            if isinstance(answer, Checked):
                scheduler.checked(answer.key, answer.token, answer.sig)
                continue
            for rel, kind, sig in answer.sightings:
                scheduler.seen((answer.folder_key, rel), kind, sig, from_scan=False)
        self._drain_scans(scheduler)

    def _drain_scans(self, scheduler: Scheduler) -> None:
        results = self.scanner.results
        while results:
            item = results.popleft()
            if isinstance(item, Batch):
                scheduler.scanned(item.folder_key, item.entries, item.known)
            else:
                log.info(
                    "rescan.finished",
                    folders=item.folders,
                    entries=item.entries,
                    duration_ms=round(item.seconds * 1000, 1),
                    waiting=len(scheduler.settler),
                )
        queued = scheduler.queued
        if queued >= BACKLOG_HIGH:
            self.scanner.may_go.clear()
        elif queued <= BACKLOG_LOW:
            self.scanner.may_go.set()

    def ask(self, step: Step, scheduler: Scheduler) -> None:
        """Sends out the checks, looks and rescans a scheduler step asked for."""
        for key, token in step.check:
            self.lookups.check(key, token)
        for key in step.look:
            self.lookups.look(key)
        self.scan(*(f for k in step.rescan if (f := scheduler.folders.get(k))))

    def scan(self, *folders: FolderConfig) -> None:
        """Asks the scanner for a scan of these folders (thread-safe)."""
        if folders:
            self.scanner.request(folders)

    def scan_all(self, scheduler: Scheduler, missing: Collection[str]) -> None:
        self.scan(*(f for f in scheduler.folders.values() if f.key not in missing))
