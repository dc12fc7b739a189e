"""The upload workers: threads that take frozen Jobs from a queue and hand Results back."""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Callable

from .errors import LedgerError
from .jobs import Job, Outcome, Result
from .logs import get_logger

log = get_logger("hottask_sync.pool")

#: A job whose worker crashed (a bug) is tried again after this long, not lost.
CRASH_RETRY_SECONDS = 60.0


class WorkerPool:
    """``size`` threads running ``run(job)``; each result lands in :attr:`results` and
    calls ``wake``. A LedgerError is handed back as is (the runtime must stop)."""

    def __init__(self, run: Callable[[Job], Result], wake: Callable[[], None]) -> None:
        self._run = run
        self._wake = wake
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

    def healthy(self) -> bool:
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
        while (job := self._work.get()) is not None:
            result: Result | LedgerError
            try:
                result = self._run(job)
            except LedgerError as exc:
                result = exc
            except Exception:  # a bug must not kill the worker or lose the file
                log.exception("upload.crashed", folder=job.folder.key, path=job.relpath)
                result = Result(
                    Outcome.RETRY,
                    delay=CRASH_RETRY_SECONDS,
                    failures=job.failures,
                    ticket=job.ticket,
                )
            self.results.append((job, result))
            self._wake()
