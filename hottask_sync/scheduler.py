"""The scheduler: every decision about which file is uploaded when, as a pure state machine.

It owns settling, the ready queue, retries waiting for their time, jobs parked while the
API key is refused, the in-flight and "changed while in flight" sets, the auth pause and
its probe, and what each worker result means. It takes plain events — a file seen (by an
event or a scan), a scan's listing, what a check of a settling file found, a result, a
reload — and :meth:`Scheduler.step` returns what to do now (files to check or look at
again, rows to record as pending, jobs to hand to workers); :meth:`wake_at` says when it
next needs a step.

No threads, no sleeping, no I/O of its own: time comes from the injected ``clock`` and
``wall``, a file's ledger row from ``lookup`` (a plain function, a dict in tests); every
look at the disk is asked for in a Step and answered by an event. The runtime serialises
every call.
"""

from __future__ import annotations

import enum
import heapq
import itertools
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from .backoff import AUTH_PROBE_CAP_SECONDS, AuthCircuit
from .config import FolderConfig
from .files import FileSig
from .jobs import Job, Key, Outcome, Result
from .ledger import Action, Entry, Known, State, plan
from .logs import get_logger
from .pool import REPORTERS_PER_SLOT
from .settle import Settler

log = get_logger("hottask_sync.scheduler")

Lookup = Callable[[Key], Entry | None]
#: Links and other non-files are named once each, up to this many (then once more).
SKIPPED_REMEMBERED = 10_000
#: What a scan knows of a folder from the ledger: relpath -> (state, sig, disposed).
KnownRows = Mapping[str, Known]


class Kind(enum.Enum):
    """What a path turned out to be when it was seen."""

    FILE = "file"
    LINK = "link"
    OTHER = "other"  # a FIFO, socket or device: never uploaded


class AuthChange(enum.Enum):
    """A change of the auth pause, for the runtime to log and show."""

    PAUSED = "paused"  # the key was refused: uploads wait for a probe
    RESUMED = "resumed"  # a call succeeded again


@dataclass(frozen=True)
class Step:
    """What the runtime does now: record ``pending`` rows (one transaction) before handing
    ``submit`` to the workers; stat each of ``check`` (a settling file whose quiet time is
    up: answer with :meth:`Scheduler.checked`), look at each of ``look`` again (answer
    with :meth:`Scheduler.seen`) and scan the folders in ``rescan``."""

    pending: tuple[tuple[str, str, FileSig], ...] = ()
    submit: tuple[Job, ...] = ()
    check: tuple[tuple[Key, int], ...] = ()
    look: tuple[Key, ...] = ()
    rescan: tuple[str, ...] = ()  # folders to scan: events were dropped while full


class Scheduler:
    """Decides, for every file seen, whether, when and how often it goes to a worker."""

    def __init__(
        self,
        folders: Iterable[FolderConfig],
        *,
        settle_seconds: float,
        concurrency: int,
        clock: Callable[[], float],
        wall: Callable[[], float],
        lookup: Lookup,
        auth_probe_seconds: float,
        max_tracked: int = 50_000,
    ) -> None:
        self.folders: dict[str, FolderConfig] = {f.key: f for f in folders}
        self.concurrency = concurrency
        self.max_tracked = max_tracked
        self._clock = clock
        self._wall = wall
        self._lookup = lookup
        self.settler: Settler[Key] = Settler(settle_seconds)
        self.circuit = AuthCircuit(clock, first=auth_probe_seconds, cap=AUTH_PROBE_CAP_SECONDS)
        self._ready: deque[Job] = deque()
        self._retries: list[tuple[float, int, Job]] = []
        self._parked: deque[Job] = deque()
        self._seq = itertools.count()
        self._active: set[Key] = set()  # ready, retrying, parked or in flight
        self._inflight: set[Key] = set()  # in an upload slot
        self._reporting: set[Key] = set()  # bytes sent, in the report stage
        self._dirty: set[Key] = set()  # seen to change while active: look again after
        self._skipped_logged: set[Key] = set()
        self._settled: list[tuple[Key, FileSig]] = []  # checked unchanged, not yet planned
        self._look: list[Key] = []
        self._rescan: set[str] = set()  # folders whose events were dropped while full

    # --- what the runtime asks ---------------------------------------------------------------

    @property
    def paused(self) -> bool:
        """True while uploads are paused because the API key was refused."""
        return self.circuit.is_open

    @property
    def in_flight(self) -> int:
        """Jobs handed out whose final result has not come back (uploading or reporting)."""
        return len(self._inflight) + len(self._reporting)

    @property
    def queued(self) -> int:
        """Files waiting to settle, ready, retrying or in flight."""
        return len(self.settler) + len(self._ready) + self.in_flight + len(self._retries)

    def wake_at(self) -> float | None:
        """Returns when the next :meth:`step` has work to do by itself, or None."""
        if self._settled or self._look or self._rescan:
            return self._clock()
        candidates = []
        if (d := self.settler.next_deadline()) is not None:
            candidates.append(d)
        if self._retries:
            candidates.append(self._retries[0][0])
        if (self._parked or self._ready) and (wait := self.circuit.seconds_until_probe()):
            candidates.append(self._clock() + wait)
        return min(candidates, default=None)

    # --- events ------------------------------------------------------------------------------

    def seen(self, key: Key, kind: Kind, sig: FileSig | None, *, from_scan: bool) -> None:
        """A file was noticed (an event, a scan, a folder moved in): settle it."""
        if kind is not Kind.FILE or sig is None:
            if kind is not Kind.FILE and key not in self._skipped_logged:
                if len(self._skipped_logged) >= SKIPPED_REMEMBERED:
                    self._skipped_logged.clear()  # bounded: some may be named again
                self._skipped_logged.add(key)
                what = "a symbolic link" if kind is Kind.LINK else "not a regular file"
                log.info(
                    "file.skipped", folder=key[0], path=key[1], reason=f"{what} (never uploaded)"
                )
            return
        if key not in self.settler:
            if not from_scan and self.queued >= self.max_tracked and key not in self._active:
                # Full: a new file is left to a scan of its folder, which waits for room.
                self._rescan.add(key[0])
                return
            log.debug("file.detected", folder=key[0], path=key[1], size=sig.size)
        # A file found by a scan whose mtime is already older than the settle time has
        # been quiet that long: no need to wait again (it is still re-checked once).
        quiet = from_scan and self._wall() - sig.mtime_ns / 1e9 >= self.settler.settle_seconds
        self.settler.hint(key, self._clock(), sig, ready_now=quiet)

    def scanned(
        self, folder_key: str, entries: Iterable[tuple[str, Kind, FileSig | None]], known: KnownRows
    ) -> None:
        """A scan listed a folder: every entry the ledger does not show as done is seen."""
        folder = self.folders.get(folder_key)
        if folder is None:
            return
        dispose = folder.after_upload != "keep"
        for rel, kind, sig in entries:
            row = known.get(rel)
            if row is not None and kind is Kind.FILE and sig is not None:
                state, recorded, disposed = row
                if state is State.FAILED and sig.same_version(recorded):
                    continue
                if (
                    state is State.REPORTED
                    and sig.same_version(recorded)
                    and (disposed or not dispose)
                ):
                    continue
            self.seen((folder_key, rel), kind, sig, from_scan=True)

    def resume(self, unfinished: Iterable[Entry]) -> None:
        """Queues every upload whose bytes are on S3 but whose report was cut off (rows in
        ``put``), unless already under way. The report needs only the FileStoreId: a row
        whose folder is no longer configured is reported too, and its file left alone."""
        for entry in unfinished:
            key = (entry.folder, entry.relpath)
            if key in self._active:
                continue
            folder = self.folders.get(entry.folder)
            if folder is None:
                log.warning(
                    "upload.orphaned",
                    folder=entry.folder,
                    path=entry.relpath,
                    hint="its folder is no longer configured; reporting the upload anyway "
                    "(its bytes are on S3), the file is left where it is",
                )
                self._enqueue(self._orphan(key))
                continue
            self._enqueue(Job(folder, entry.relpath))

    def finished(self, job: Job, result: Result) -> AuthChange | None:
        """A worker is done with ``job``; returns a change of the auth pause, if any."""
        key = job.key
        self._inflight.discard(key)
        if result.outcome is Outcome.REPORTING:
            # Its upload slot is free; the final result comes from the report stage.
            self._reporting.add(key)
            return None
        self._reporting.discard(key)
        change = self._judge_auth(job, result)
        outcome = result.outcome
        if outcome is Outcome.RETRY:
            heapq.heappush(
                self._retries, (self._clock() + result.delay, next(self._seq), job.after(result))
            )
        elif outcome in (Outcome.AUTH, Outcome.PAUSED):
            self._parked.append(job.after(result))
        else:
            self._active.discard(key)
            if outcome is Outcome.CHANGED or key in self._dirty or result.look_again:
                self._dirty.discard(key)
                self._look.append(key)
        return change

    def checked(self, key: Key, token: int, sig: FileSig | None) -> None:
        """A settling file's check (asked for in :attr:`Step.check`) found ``sig`` (None:
        gone, or no longer a regular file)."""
        verdict = self.settler.checked(key, token, sig, self._clock())
        if verdict == "ready" and sig is not None:
            self._settled.append((key, sig))
        elif verdict == "vanished":
            log.info("file.vanished", folder=key[0], path=key[1], hint="deleted before upload")

    def reload(
        self, folders: Iterable[FolderConfig], *, settle_seconds: float, concurrency: int
    ) -> None:
        """New settings: jobs of removed folders are dropped when they come up, jobs of
        changed folders go out with the new folder settings, a paused key is probed now."""
        self.folders = {f.key: f for f in folders}
        self.settler.settle_seconds = settle_seconds
        self.concurrency = concurrency
        self.circuit.probe_now()

    def forget_in_flight(self, job: Job) -> None:
        """A job handed out will not come back (taken off the queue at shutdown)."""
        self._inflight.discard(job.key)
        self._reporting.discard(job.key)

    # --- the step ----------------------------------------------------------------------------

    def step(self) -> Step:
        """Asks for the checks that are due, plans the files that settled, releases due
        retries, and hands out what may go now."""
        now = self._clock()
        check = tuple((key, token) for key, _sig, token in self.settler.due(now))
        pending = self._plan_settled()
        while self._retries and self._retries[0][0] <= now:
            self._ready.append(heapq.heappop(self._retries)[2])
        if self._parked and not self.circuit.is_open:
            self._ready.extend(self._parked)
            self._parked.clear()
        look, self._look = tuple(self._look), []
        rescan, self._rescan = tuple(sorted(self._rescan)), set()
        return Step(tuple(pending), tuple(self._feed()), check, look, rescan)

    def _plan_settled(self) -> list[tuple[str, str, FileSig]]:
        settled, self._settled = self._settled, []
        pending: list[tuple[str, str, FileSig]] = []
        for key, sig in settled:
            folder = self.folders.get(key[0])
            if folder is None:
                continue
            if key in self._active:
                self._dirty.add(key)
                continue
            row = self._lookup(key)
            action = plan(row, sig, dispose=folder.after_upload != "keep")
            if action in (Action.SKIP, Action.FAILED):
                continue
            log.debug("file.settled", folder=key[0], path=key[1], size=sig.size)
            if action is Action.UPLOAD:
                pending.append((key[0], key[1], sig))
            # The row goes along: the worker plans from it, not from a second read (the
            # pending row recorded first changes nothing plan() looks at for this version).
            self._enqueue(Job(folder, key[1], settled=sig, row=row, row_read=True))
        return pending

    def _enqueue(self, job: Job) -> None:
        self._active.add(job.key)
        self._ready.append(job)

    def _feed(self) -> list[Job]:
        """Jobs for the workers: never more than twice ``concurrency`` in (or queued for)
        an upload slot, nor more in flight in all than the slots and the report stage's
        threads take; while paused, one waiting job as the probe when its time has come and
        nothing is out."""
        out: list[Job] = []
        if self.circuit.is_open:
            if self.in_flight or self.circuit.seconds_until_probe() != 0.0:
                return out
            job = self._next_job()
            if job is not None and self.circuit.allow():
                out.append(self._hand_out(replace(job, probe=True)))
            return out
        # Each file handed to the report stage holds its descriptors until reported: a
        # report stage slower than the uploads (a slow disk, a slow report call) must hold
        # the uploads back, or descriptors pile up until the process runs out (EMFILE).
        most = self.concurrency * (2 + REPORTERS_PER_SLOT)
        while len(self._inflight) < self.concurrency * 2 and self.in_flight < most:
            job = self._next_job()
            if job is None:
                break
            out.append(self._hand_out(job))
        return out

    def _next_job(self) -> Job | None:
        """The next waiting job (parked first), with its folder's current settings; jobs of
        folders no longer configured are dropped on the way."""
        while self._parked or self._ready:
            job = self._parked.popleft() if self._parked else self._ready.popleft()
            folder = self.folders.get(job.folder.key)
            if job.orphan:
                return job  # a report owed, whatever the config says now
            if folder is None:
                if (row := self._lookup(job.key)) is not None and row.state is State.PUT:
                    return self._orphan(job.key)  # its folder went: the report is still owed
                self._active.discard(job.key)
                continue
            return job if folder is job.folder else replace(job, folder=folder)
        return None

    @staticmethod
    def _orphan(key: Key) -> Job:
        """The report owed for a file of a folder no longer configured."""
        return Job(FolderConfig(Path(key[0])), key[1], orphan=True)

    def _hand_out(self, job: Job) -> Job:
        self._inflight.add(job.key)
        return job

    def _judge_auth(self, job: Job, result: Result) -> AuthChange | None:
        if result.outcome is Outcome.AUTH:
            return AuthChange.PAUSED if self.circuit.trip() else None
        if result.key_accepted:
            return AuthChange.RESUMED if self.circuit.succeed() else None
        if job.probe:
            # The probe said nothing about the key (a 5xx, a changed file, no call at all):
            # another probe follows after the current delay, or the pause would never end.
            self.circuit.inconclusive()
        return None


__all__ = ["AuthChange", "Kind", "Scheduler", "Step"]
