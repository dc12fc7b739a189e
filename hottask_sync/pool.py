"""The upload workers: threads that take frozen Jobs from a queue and hand Results back,
and say whether they are getting anywhere."""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .errors import LedgerError
from .jobs import Job, Key, Outcome, Result
from .logs import get_logger

log = get_logger("hottask_sync.pool")

#: Report threads per upload slot (the scheduler bounds the report stage by it).
REPORTERS_PER_SLOT = 2
#: A job whose worker crashed (a bug) is tried again after this long, not lost.
CRASH_RETRY_SECONDS = 60.0


@dataclass(frozen=True)
class Stuck:
    """A worker that made no progress for too long: its thread, file, stage and silence."""

    thread: str
    key: Key
    stage: str
    seconds: float


class WorkerPool:
    """``size`` upload threads running ``run(job)``, and as many report threads running
    ``finish(handoff)`` for the jobs ``run`` handed off once their bytes were sent (an
    upload slot never waits for the durable commit or the report). Each result lands in
    :attr:`results`: a hand-off first as ``Outcome.REPORTING`` (the slot is free), then the
    final one. Every final result calls ``wake``; a hand-off calls it only when fewer jobs
    wait than there are slots (the main loop must hand out more). A LedgerError is handed
    back as is (the runtime must stop).

    Healthy means making progress: a worker calls :meth:`beat` at every step of a job and
    every chunk it sends; one that is busy but silent for longer than the bound is stuck.
    """

    def __init__(
        self,
        run: Callable[[Job], Any],
        wake: Callable[[], None],
        clock: Callable[[], float] = time.monotonic,
        finish: Callable[[Any], Result] | None = None,
    ) -> None:
        self._run = run
        self._finish = finish
        self._reports: queue.SimpleQueue[tuple[Job, Any]] = queue.SimpleQueue()
        self._reporters: list[threading.Thread] = []
        self._wake = wake
        self._clock = clock
        # Per worker thread, written only by it: [key or None when idle, stage, last beat].
        self._beats: dict[str, list[Any]] = {}
        self._local = threading.local()
        self._named: set[Key] = set()  # stuck workers' files, named once
        self._work: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self.target = 0
        self.results: deque[tuple[Job, Result | LedgerError]] = deque()

    def resize(self, size: int) -> None:
        """Starts or stops threads until ``size`` run (a stopped one finishes its job)."""
        self.target = size
        self._threads = [t for t in self._threads if t.is_alive()]
        while len(self._threads) < size:
            t = threading.Thread(
                target=self._worker, name=f"upload-{len(self._threads)}", daemon=True
            )
            t.start()
            self._threads.append(t)
        for _ in range(len(self._threads) - size):
            self._work.put(None)
        # Report threads mostly wait (for a commit, for the service): twice as many as
        # upload slots, so a slow disk or a far service never holds the slots up.
        while self._finish is not None and len(self._reporters) < REPORTERS_PER_SLOT * size:
            # Never fewer: a report handed over is always taken.
            t = threading.Thread(
                target=self._reporter, name=f"report-{len(self._reporters)}", daemon=True
            )
            t.start()
            self._reporters.append(t)

    def beat(self, stage: str) -> None:
        """Called by a worker (through the Uploader): it is still getting somewhere."""
        slot = getattr(self._local, "slot", None)
        if slot is not None:
            slot[1] = stage
            slot[2] = self._clock()

    def stuck(self, bound: float) -> list[Stuck]:
        """Returns the workers busy with a job but silent for more than ``bound`` seconds."""
        now = self._clock()
        found = []
        for name, (key, stage, at) in list(self._beats.items()):
            if key is not None and now - at > bound:
                found.append(Stuck(name, key, stage, now - at))
        return found

    def check_progress(self, bound: float) -> list[Stuck]:
        """Returns the stuck workers (see :meth:`stuck`), naming each newly stuck one in an
        error: which file, which stage, how long silent."""
        stuck = self.stuck(bound)
        for s in stuck:
            if s.key not in self._named:
                log.error(
                    "daemon.stuck",
                    thread=s.thread,
                    folder=s.key[0],
                    path=s.key[1],
                    stage=s.stage,
                    silent_s=round(s.seconds, 1),
                    hint="no progress in far longer than the timeouts allow; no more "
                    "watchdog pings (with WatchdogSec=, systemd restarts the service)",
                )
        self._named = {s.key for s in stuck}
        return stuck

    def alive(self) -> bool:
        """True while as many worker threads run as asked for."""
        return sum(t.is_alive() for t in self._threads) >= self.target

    def submit(self, job: Job) -> None:
        self._work.put(job)

    def close(self) -> list[Job]:
        """Takes back the jobs not started yet and tells every thread to end; returns them."""
        unstarted: list[Job] = []
        while True:
            try:
                item = self._work.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                unstarted.append(item)
        for _ in self._threads:
            self._work.put(None)
        return unstarted

    def _worker(self) -> None:
        slot = self._slot()
        while (job := self._work.get()) is not None:
            slot[0], slot[1], slot[2] = job.key, "start", self._clock()
            result = self._guarded(job, self._run, job)
            slot[0] = None
            if isinstance(result, (Result, LedgerError)):
                self.results.append((job, result))
            else:  # handed off: the report stage takes it, the slot is free
                self._reports.put((job, result))
                self.results.append((job, Result(Outcome.REPORTING, failures=job.failures)))
                if self._work.qsize() >= self.target:
                    # The slots have work waiting: the main loop takes this in at its next
                    # wake (a final result's). A wake costs thread switches, and every
                    # file has a final result (bench/README: 3 % of a file's CPU).
                    continue
            self._wake()

    def _reporter(self) -> None:
        slot = self._slot()
        assert self._finish is not None
        while True:
            job, handoff = self._reports.get()
            slot[0], slot[1], slot[2] = job.key, "report", self._clock()
            result = self._guarded(job, self._finish, handoff)
            slot[0] = None
            self.results.append((job, result))
            self._wake()

    def _slot(self) -> list[Any]:
        slot: list[Any] = [None, "idle", self._clock()]
        self._local.slot = slot
        self._beats[threading.current_thread().name] = slot
        return slot

    def _guarded(self, job: Job, step: Callable[[Any], Any], arg: Any) -> Any:
        """Runs one step of a job; a LedgerError is returned, a bug becomes a retry."""
        try:
            return step(arg)
        except LedgerError as exc:
            return exc
        except Exception:  # a bug must not kill the worker or lose the file
            log.exception("upload.crashed", folder=job.folder.key, path=job.relpath)
            return Result(
                Outcome.RETRY,
                delay=CRASH_RETRY_SECONDS,
                failures=job.failures,
                ticket=job.ticket,
            )
