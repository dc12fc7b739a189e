"""Scans: walking watched folders off the main loop, a batch of entries at a time.

Each batch is compared with the ledger by a query for just those paths (never a whole
folder's rows in memory) and handed back as one :class:`Batch`; the main loop gives it to
the scheduler. Between batches the scan waits while :attr:`Scanner.may_go` is clear: the
main loop clears it while the scheduler holds many files, so a scan of a million new files
never holds more than a bounded number of them at once.

After a scan, at most once an hour, the same thread prunes the ledger: rows of files that
are gone (moved or deleted after upload, or deleted by a user) and unchanged for the
retention period are forgotten, a page of rows at a time.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from . import folders as fs
from .config import FolderConfig
from .errors import LedgerError
from .ledger import Known, Ledger
from .logs import get_logger

log = get_logger("hottask_sync.scanner")

#: Entries per batch (one ledger query each), and ledger rows per page of a prune pass.
BATCH = 500
#: A prune pass runs after a scan at most this often.
PRUNE_EVERY_SECONDS = 3600.0


@dataclass(frozen=True)
class Batch:
    """Some entries of one folder, with what the ledger knows of them."""

    folder_key: str
    entries: tuple[fs.Sighting, ...]
    known: Mapping[str, Known]


@dataclass(frozen=True)
class Finished:
    """A requested scan of every folder asked for is done (and the prune pass after it)."""

    folders: int
    entries: int
    seconds: float


class Scanner:
    """One thread walking the folders it is asked to scan, in the order asked."""

    def __init__(
        self,
        ledger_path: Path,
        wake: Callable[[], None],
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        retention_days: float = 0.0,
    ) -> None:
        self._ledger_path = ledger_path
        self._wall = wall
        #: 0 keeps every row; a reload may set a new value (a float: swapped whole).
        self.retention_days = retention_days
        self._next_prune = float("-inf")
        self._wake = wake
        self._clock = clock
        self._requests: queue.SimpleQueue[tuple[FolderConfig, ...] | None] = queue.SimpleQueue()
        # Folders asked for and not started yet: asking again adds nothing (a flood of
        # overflows while a scan waits for the backlog to drain costs one scan).
        self._wanted: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.may_go = threading.Event()
        self.may_go.set()
        self.results: deque[Batch | Finished] = deque()
        self.scanning = False
        self._thread = threading.Thread(target=self._run, name="scanner", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float) -> None:
        self._stop.set()
        self.may_go.set()
        self._requests.put(None)
        self._thread.join(timeout)

    def alive(self) -> bool:
        return self._thread.is_alive()

    def request(self, folders: Iterable[FolderConfig]) -> None:
        """Asks for a scan of these folders (after those asked for before); a folder whose
        scan is asked for and not started yet is not scanned twice."""
        with self._lock:
            new = tuple(f for f in folders if f.key not in self._wanted)
            self._wanted.update(f.key for f in new)
        if new:
            self._requests.put(new)

    def _run(self) -> None:
        try:
            ledger = Ledger(self._ledger_path, readonly=True)
        except LedgerError as exc:
            log.critical("scanner.failed", error=str(exc))
            return
        with ledger:
            while (folders := self._requests.get()) is not None:
                with self._lock:
                    self._wanted.difference_update(f.key for f in folders)
                self.scanning = True
                try:
                    self._scan(ledger, folders)
                except LedgerError as exc:
                    log.error("scan.failed", error=str(exc), hint="tried again at the next scan")
                finally:
                    self.scanning = False

    def _scan(self, ledger: Ledger, folders: tuple[FolderConfig, ...]) -> None:
        started = self._clock()
        entries = 0
        for folder in folders:
            batch: list[fs.Sighting] = []
            for sighting in fs.walk(str(folder.path), "", folder):
                batch.append(sighting)
                if len(batch) >= BATCH:
                    if not self._hand_over(ledger, folder, batch):
                        return
                    entries += len(batch)
                    batch = []
            if batch and not self._hand_over(ledger, folder, batch):
                return
            entries += len(batch)
        seconds = self._clock() - started
        if self.retention_days > 0 and self._clock() >= self._next_prune:
            self._next_prune = self._clock() + PRUNE_EVERY_SECONDS
            self._prune(ledger, folders)
        self._answer(Finished(len(folders), entries, seconds))

    def _prune(self, reader: Ledger, folders: tuple[FolderConfig, ...]) -> None:
        cutoff = self._wall() - self.retention_days * 86400.0
        with Ledger(self._ledger_path) as writer:
            for folder in folders:
                if not folder.path.is_dir():
                    continue  # unmounted: its files are not gone, only out of sight
                pruned = writer.prune_disposed(folder.key, cutoff)
                after: str | None = None
                while not self._stop.is_set():
                    page = reader.idle_rows(folder.key, cutoff, after, BATCH)
                    if not page or not folder.path.is_dir():
                        break
                    gone = [r for r in page if not os.path.lexists(os.path.join(folder.path, r))]
                    pruned += writer.prune_gone(folder.key, gone, cutoff)
                    after = page[-1]
                if pruned:
                    log.info(
                        "ledger.pruned",
                        folder=folder.key,
                        rows=pruned,
                        retention_days=self.retention_days,
                    )

    def _hand_over(self, ledger: Ledger, folder: FolderConfig, batch: list[fs.Sighting]) -> bool:
        """Waits until the main loop may take more, then hands the batch over; returns False
        when the scanner is stopping."""
        while not self.may_go.wait(1.0):
            if self._stop.is_set():
                return False
        if self._stop.is_set():
            return False
        known = ledger.known(folder.key, [rel for rel, _kind, _sig in batch])
        self._answer(Batch(folder.key, tuple(batch), known))
        return True

    def _answer(self, item: Batch | Finished) -> None:
        self.results.append(item)
        self._wake()


__all__ = ["BATCH", "Batch", "Finished", "Scanner"]
