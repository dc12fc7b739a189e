"""One file through the three calls, every step recorded in the ledger before the next.

The worker threads call :meth:`Uploader.run` with a frozen :class:`~hottask_sync.jobs.Job`;
it never sleeps and never retries in place (except a new URL for an expired one): it returns a
frozen :class:`~hottask_sync.jobs.Result` saying what happened (done, retry after a delay,
failed, key refused, ...); the scheduler decides what follows.
"""

from __future__ import annotations

import hashlib
import os
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from . import beneath
from .after_upload import dispose
from .backoff import Throttle, retry_delay
from .beneath import Held, NotRegular
from .client import CHUNK_SIZE, MAX_PUT_BYTES, HotTaskClient, Ticket
from .config import ApiKey, SyncConfig
from .errors import (
    ApiError,
    AuthError,
    FileTooLarge,
    LedgerError,
    PermanentError,
    TransientError,
    UrlExpired,
)
from .files import FileSig
from .jobs import Job, Outcome, Result
from .ledger import Action, Entry, IllegalTransition, State, plan
from .logs import get_logger, redact_text
from .writer import LedgerOps

#: Big files log an ``upload.progress`` event this often.
PROGRESS_MIN_BYTES = 64 * 1024 * 1024
PROGRESS_EVERY_SECONDS = 10.0
#: A PUT must move at least this fast on average, or it is cut off and retried: httpx
#: timeouts are per chunk, so a trickling upload would otherwise never end.
MIN_PUT_RATE = 16 * 1024
PUT_DEADLINE_SLACK_SECONDS = 120.0

log = get_logger("hottask_sync.uploader")
#: random.Random is not documented as thread-safe; the backoff draws are rare.
_RNG_LOCK = threading.Lock()


class Stopped(Exception):
    """Raised inside a PUT when the daemon's grace period is over."""


def _moved_under_us(run: _Run, exc: IllegalTransition) -> Result:
    # The row moved under us (a newer version was recorded meanwhile): nothing was
    # reported for this attempt; look at the file afresh.
    log.info("file.changed", reason=str(exc), **run.ctx)
    return run.result(Outcome.CHANGED, ticket=None)


class _Run:
    """One run of one job: what it learns on the way (local to the worker thread)."""

    __slots__ = ("ctx", "failures", "job", "key_accepted", "stage", "ticket")

    def __init__(self, job: Job) -> None:
        self.job = job
        self.ticket = job.ticket
        self.failures = job.failures
        self.key_accepted = False
        self.stage = "ticket"
        self.ctx: dict[str, Any] = {"folder": job.folder.key, "path": job.relpath}

    def result(self, outcome: Outcome, **kw: Any) -> Result:
        kw.setdefault("ticket", self.ticket)
        return Result(outcome, failures=self.failures, key_accepted=self.key_accepted, **kw)


@dataclass(frozen=True)
class Handoff:
    """A file whose bytes are sent, handed from its upload slot to the report stage: the
    end of its hash, the durable ``put``, the report and the move/delete after it happen
    there, so the slot takes its next file without waiting for the hash, the sync or the
    service. ``held`` (the file's descriptors) now belongs to the report stage, which
    closes it."""

    job: Job
    ticket: Ticket
    hasher: Hasher  # a big file's hash may still be running
    sig: FileSig
    held: Held
    started: float
    failures: int
    key_accepted: bool


class _FailureRules:
    """What a failed call or an unreadable file means for the file: a pause for auth, a
    retry after a backoff delay, or (permanent errors past ``max_attempts``) failed. A part
    of :class:`Uploader`, apart for its size."""

    ledger: LedgerOps
    max_attempts: int
    metrics: Any
    rng: random.Random

    def _delay(self, failures: int, retry_after: float | None = None) -> float:
        with _RNG_LOCK:
            return retry_delay(failures, self.rng, retry_after=retry_after)

    def _failed_call(
        self, run: _Run, exc: ApiError, ctx: dict[str, Any], sig: FileSig | None
    ) -> Result:
        stage = run.stage
        run.failures += 1
        if isinstance(exc, AuthError):
            if self.metrics is not None:
                self.metrics.upload_failed("auth")
            run.failures = 0  # an auth pause is not this file's fault
            return run.result(Outcome.AUTH, error=redact_text(str(exc)))
        if isinstance(exc, TransientError):
            self.ledger.record_error(
                run.job.folder.key,
                run.job.relpath,
                redact_text(f"{stage}: {exc}"),
                permanent=False,
                max_attempts=self.max_attempts,
            )
            delay = self._delay(run.failures, exc.retry_after)
            log.warning(
                "upload.retry", stage=stage, error=str(exc), retry_in_s=round(delay, 2), **ctx
            )
            if self.metrics is not None:
                self.metrics.upload_failed("transient")
            return run.result(Outcome.RETRY, delay=delay, error=redact_text(str(exc)))
        return self._fail(run, exc, {**ctx, "stage": stage}, sig)

    def _fail(self, run: _Run, exc: ApiError, ctx: dict[str, Any], sig: FileSig | None) -> Result:
        fail_now = isinstance(exc, PermanentError) and exc.fail_now
        error = redact_text(str(exc))
        updated = self.ledger.record_error(
            run.job.folder.key,
            run.job.relpath,
            error,
            permanent=True,
            max_attempts=self.max_attempts,
            fail_now=fail_now,
            sig=sig,
        )
        if self.metrics is not None:
            self.metrics.upload_failed("permanent")
        if updated.state is State.FAILED:
            log.error("upload.failed", error=str(exc), attempts=updated.attempts, **ctx)
            return run.result(Outcome.FAILED, ticket=None, error=error)
        run.failures = max(run.failures, updated.attempts)
        delay = self._delay(run.failures)
        log.warning(
            "upload.retry",
            error=str(exc),
            attempts=updated.attempts,
            max_attempts=self.max_attempts,
            retry_in_s=round(delay, 2),
            **ctx,
        )
        return run.result(Outcome.RETRY, ticket=None, delay=delay, error=error)


@dataclass(frozen=True)
class Uploader(_FailureRules):
    """Runs jobs; shared by all workers, never changed (a reload makes a new one).

    ``paused`` is the scheduler's auth pause as the workers see it: while it is set, only a
    probe job may call the API; any other returns PAUSED without a call.
    """

    client: HotTaskClient
    ledger: LedgerOps
    max_attempts: int
    key_source: str = ""
    paused: threading.Event = field(default_factory=threading.Event)
    throttle: Throttle | None = None
    abort: threading.Event = field(default_factory=threading.Event)
    metrics: Any = None
    clock: Callable[[], float] = time.monotonic
    rng: random.Random = field(default_factory=random.Random)
    #: Called with the stage at every step and every chunk: the pool's sign of progress.
    beat: Callable[[str], None] = field(default=lambda stage: None, repr=False)

    # --- the pipeline ----------------------------------------------------------------------

    def run(self, job: Job) -> Result | Handoff:
        """Given a job, takes its file as far as its upload slot goes: what happened, or a
        Handoff to :meth:`finish` once the bytes are sent.

        Raises LedgerError when a step cannot be recorded (the daemon must stop).
        """
        run = _Run(job)
        try:
            return self._run(run)
        except IllegalTransition as exc:
            return _moved_under_us(run, exc)

    def finish(self, handoff: Handoff) -> Result:
        """The report stage: waits for the file's hash, records the ``put`` durably (the
        writer's group commit), reports it, records the report, moves or deletes the file;
        returns what happened. Raises LedgerError when a step cannot be recorded."""
        run = _Run(handoff.job)
        run.failures, run.key_accepted, run.stage = handoff.failures, handoff.key_accepted, "report"
        run.ticket = None  # the bytes are sent: a retry reports, never PUTs again
        try:
            return self._report(run, handoff)
        except IllegalTransition as exc:
            return _moved_under_us(run, exc)
        finally:
            handoff.held.close()

    def with_key(self, key: ApiKey) -> Uploader:
        """This uploader with another API key: a client sharing the connections, the key
        sent per request (calls under way keep theirs)."""
        return replace(self, client=self.client.with_key(key.value), key_source=key.source)

    def with_settings(self, sync: SyncConfig) -> Uploader:
        """This uploader with reloaded settings (attempts, bandwidth)."""
        clock = self.clock
        return replace(
            self, max_attempts=sync.max_attempts, throttle=Throttle(sync.bandwidth_limit, clock)
        )

    def run_through(self, job: Job) -> Result:
        """:meth:`run`, then :meth:`finish` in this thread (one-shot uploads)."""
        result = self.run(job)
        return self.finish(result) if isinstance(result, Handoff) else result

    def _paused_for(self, run: _Run) -> bool:
        return self.paused.is_set() and not run.job.probe

    def _run(self, run: _Run) -> Result | Handoff:
        job = run.job
        folder, relpath = job.folder, job.relpath
        entry = job.row if job.row_read else self.ledger.get(folder.key, relpath)
        if entry is not None and entry.state is State.PUT and job.row_read:
            # A report owed: its row may have become ``reported`` since it was planned (a
            # report's record is handed over without waiting): read it again.
            entry = self.ledger.get(folder.key, relpath)
        if job.orphan and (entry is None or entry.state is not State.PUT):
            return run.result(Outcome.SKIPPED)  # reported meanwhile: nothing owed
        if entry is not None and entry.state is State.PUT:
            # The bytes are on S3 under this FileStoreId: finish by reporting it, even if
            # the file is gone or changed since. Never a second upload.
            return self._report_resumed(run, entry)
        try:
            # Resolved beneath the folder's descriptor: no link is followed, not even one
            # swapped in for a folder on the way while we resolve.
            held = beneath.open_regular(folder.path, relpath)
        except FileNotFoundError:
            self.ledger.forget(folder.key, relpath)
            log.info("file.vanished", **run.ctx)
            return run.result(Outcome.VANISHED)
        except NotRegular as exc:
            log.info("file.skipped", reason=str(exc), **run.ctx)
            return run.result(Outcome.SKIPPED)
        except PermissionError as exc:
            error = PermanentError(f"cannot read: {exc.strerror}", fail_now=True)
            return self._fail(run, error, run.ctx, beneath.folder_sig(folder.path, relpath))
        try:
            result = self._with_file(run, held, entry)
        except BaseException:
            held.close()
            raise
        if not isinstance(result, Handoff):  # else the report stage closes it
            held.close()
        return result

    def _with_file(self, run: _Run, held: Held, entry: Entry | None) -> Result | Handoff:
        job = run.job
        folder = job.folder
        st = held.st
        sig = FileSig.from_stat(st)
        if job.settled is not None and not job.settled.same_version(sig):
            # Changed since it settled (a writer still writing, say): never uploaded,
            # moved or deleted in this state; the scheduler lets it settle again.
            log.info("file.changed", reason="changed since it settled", **run.ctx)
            return run.result(Outcome.CHANGED, ticket=None)
        action = plan(entry, sig, dispose=folder.after_upload != "keep")
        if action in (Action.SKIP, Action.FAILED):
            return run.result(Outcome.SKIPPED)
        if action is Action.VERIFY and self._verified(run, held, sig, entry):
            return run.result(Outcome.SKIPPED)
        if action is Action.DISPOSE:
            assert entry is not None
            dispose(job, entry, sig, self.ledger, run.ctx, held=held)
            return run.result(Outcome.DONE)
        return self._upload(run, held, st, sig)

    def _verified(self, run: _Run, held: Held, sig: FileSig, entry: Entry | None) -> bool:
        """A reported file whose ctime alone changed: True (and the row takes the new sig)
        when its bytes are still the ones uploaded; False when they are a new version."""
        assert entry is not None and entry.sha256 is not None
        hasher = hashlib.sha256()
        offset = 0
        while chunk := os.pread(held.fd, 1024 * 1024, offset):
            hasher.update(chunk)
            offset += len(chunk)
            self.beat("verify")
        if hasher.hexdigest() != entry.sha256:
            log.info("file.changed", reason="same size and mtime, other bytes", **run.ctx)
            return False
        self.ledger.mark_verified(run.job.folder.key, run.job.relpath, sig)
        if run.job.folder.after_upload != "keep" and not entry.disposed:
            dispose(run.job, entry, sig, self.ledger, run.ctx, held=held)
        return True

    def _upload(self, run: _Run, held: Held, st: os.stat_result, sig: FileSig) -> Result | Handoff:
        job, fd = run.job, held.fd
        folder, relpath = job.folder, job.relpath
        ctx = {**run.ctx, "size": sig.size, "attempt": run.failures + 1}
        if sig.size > MAX_PUT_BYTES:
            error = FileTooLarge(f"{sig.size} bytes is over the 5 GiB limit of one upload")
            return self._fail(run, error, ctx, sig)
        if self._paused_for(run):
            return run.result(Outcome.PAUSED)
        started = self.clock()
        log.debug("upload.started", **ctx)
        try:
            if run.ticket is not None and not run.ticket.usable(self.clock()):
                run.ticket = None
            if run.ticket is not None:
                # PUT again to the same URL (the last answer was lost): record the version
                # sent this time, which may differ from the one the ticket was taken for, or
                # the ledger would say a newer version was never uploaded (and upload it twice).
                self.ledger.mark_ticketed(folder.key, relpath, sig, run.ticket.file_store_id)
            hasher = self._ticket_and_put(run, fd, st, sig, ctx)
            ticket = run.ticket
            assert ticket is not None
            try:
                changed = _changed(st, os.fstat(fd)) or not sig.same_version(held.current_sig())
            except BaseException:
                hasher.cancel()
                raise
            if changed:
                # Never report bytes that may mix two versions: settle and start again.
                hasher.cancel()
                return self._changed_during_put(run, ctx)
        except Stopped:
            log.info("upload.interrupted", stage=run.stage, **ctx)
            return run.result(Outcome.STOPPED)
        except ApiError as exc:
            if run.stage == "put" and (
                _changed(st, os.fstat(fd)) or not sig.same_version(held.current_sig())
            ):
                # The file changed under the PUT (a file that shrank aborts it): not a failed
                # attempt; settle and start again.
                return self._changed_during_put(run, ctx)
            # The ticket is kept after a failed PUT: the next try PUTs to the same URL while
            # it is valid (the bytes may have arrived even though the answer did not).
            return self._failed_call(run, exc, ctx, sig)
        return Handoff(job, ticket, hasher, sig, held, started, run.failures, run.key_accepted)

    def _report(self, run: _Run, h: Handoff) -> Result:
        """The report stage's part of one upload (see :meth:`finish`)."""
        job, sig, ticket = h.job, h.sig, h.ticket
        folder, relpath = job.folder, job.relpath
        ctx = {**run.ctx, "size": sig.size, "attempt": run.failures + 1}
        run.stage = "hash"
        digest = h.hasher.digest(beat=lambda: self.beat("hash"))
        if digest is None:  # a big file's own reads could not vouch for the bytes sent
            if (error := h.hasher.error) is not None:
                reading = TransientError(f"cannot read the file to hash it: {error.strerror}")
                return self._failed_call(run, reading, ctx, sig)
            if self.abort.is_set():
                log.info("upload.interrupted", stage="hash", **ctx)
                return run.result(Outcome.STOPPED)
            return self._changed_during_put(run, ctx)
        run.stage = "report"
        # Durable before the report: a report whose put could be lost would upload twice.
        self.ledger.mark_put(folder.key, relpath, digest, file_store_id=ticket.file_store_id)
        self.beat("report")
        try:
            if not self.client.report_success(ticket.file_store_id):
                # The service had it already (a repeat): reported all the same.
                log.info("upload.already_reported", file_store_id=ticket.file_store_id, **ctx)
        except ApiError as exc:
            return self._failed_call(run, exc, ctx, sig)
        run.key_accepted = True
        # A move or delete must wait for the report's commit; with nothing after it, the
        # report stage goes on at once.
        self.ledger.mark_reported(folder.key, relpath, wait=folder.after_upload != "keep")
        duration = self.clock() - h.started
        if self.metrics is not None:
            self.metrics.upload_succeeded(sig.size, duration)
        log.info(
            "upload.succeeded",
            file_store_id=ticket.file_store_id,
            duration_ms=round(duration * 1000, 1),
            sha256=digest,
            **ctx,
        )
        if folder.after_upload != "keep":
            entry = self.ledger.get(folder.key, relpath)
            if entry is not None:
                dispose(job, entry, sig, self.ledger, ctx, held=h.held)
        return run.result(Outcome.DONE, ticket=None)

    def _ticket_and_put(
        self, run: _Run, fd: int, st: os.stat_result, sig: FileSig, ctx: dict[str, Any]
    ) -> Hasher:
        """PUTs the file to the run's URL, getting one first if it has none (and one new
        URL if it expires); returns the hash of what was sent (see :class:`Hasher`)."""
        job = run.job
        for expired_once in (False, True):
            if run.ticket is None:
                run.stage = "ticket"
                self.beat("ticket")
                run.ticket = self.client.get_upload_url(os.path.basename(job.relpath))
                run.key_accepted = True
                self.ledger.mark_ticketed(
                    job.folder.key, job.relpath, sig, run.ticket.file_store_id
                )
            run.stage = "put"
            self.beat("put")
            try:
                return self._put(run.ticket, fd, st, ctx)
            except UrlExpired as exc:
                # The URL died before or during the PUT: one new URL, same attempt.
                if expired_once:
                    # Two fresh URLs expired in a row (clock skew?): not the file's fault,
                    # so not a permanent failure; retry later with a new ticket.
                    run.ticket = None
                    raise TransientError(
                        f"{exc.args[0]} (twice in a row)", status=exc.status
                    ) from exc
                log.info("upload.url_expired", file_store_id=run.ticket.file_store_id, **ctx)
                if self.metrics is not None:
                    self.metrics.upload_failed("expired")
                run.ticket = None
        raise AssertionError("unreachable")

    def _changed_during_put(self, run: _Run, ctx: dict[str, Any]) -> Result:
        self.ledger.mark_pending(run.job.folder.key, run.job.relpath, None)
        log.info("file.changed", reason="changed during upload", **ctx)
        if self.metrics is not None:
            self.metrics.upload_failed("changed")
        return run.result(Outcome.CHANGED, ticket=None)

    def _put(self, ticket: Ticket, fd: int, st: os.stat_result, ctx: dict[str, Any]) -> Hasher:
        """PUTs the file, hashing beside the send; returns the hash, which may still run."""
        try:
            watch = _PutWatch(self, ticket, fd, st, ctx)
        except OSError as exc:  # no descriptor left to hash with (EMFILE): try again later
            raise TransientError(f"cannot open the file again to hash it: {exc.strerror}") from exc
        try:
            self.client.put(ticket, fd, st.st_size, on_chunk=watch)
            if watch.sent != st.st_size:
                # An answer to a body cut short (the server stopped reading): never
                # reported, and a hash waiting for the rest would wait for ever.
                raise TransientError(
                    f"PUT: answered after {watch.sent} of {st.st_size} bytes", maybe_applied=True
                )
        except BaseException:
            watch.hasher.cancel()
            raise
        return watch.hasher

    def _report_resumed(self, run: _Run, entry: Entry) -> Result:
        assert entry.file_store_id is not None
        job = run.job
        if self._paused_for(run):
            return run.result(Outcome.PAUSED)
        run.stage = "report"
        self.beat("report")
        ctx = {**run.ctx, "file_store_id": entry.file_store_id, "attempt": run.failures + 1}
        try:
            if not self.client.report_success(entry.file_store_id):
                # The last answer was lost after the service acted: reported all the same.
                log.info("upload.already_reported", **ctx)
        except ApiError as exc:
            return self._failed_call(run, exc, ctx, entry.sig)
        run.key_accepted = True
        self.ledger.mark_reported(job.folder.key, job.relpath)
        log.info("upload.succeeded", resumed=True, **ctx)
        size = entry.sig.size if entry.sig else 0
        if self.metrics is not None:
            self.metrics.upload_succeeded(size, 0.0)
        if job.folder.after_upload != "keep" and entry.sig is not None:
            _dispose_resumed(job, entry.sig, self.ledger, ctx)
        # A newer version may stand at the path now: the scheduler looks at it again.
        return run.result(Outcome.DONE, look_again=True)


# --- filesystem adapters --------------------------------------------------------------------


def _dispose_resumed(job: Job, sig: FileSig, ledger: LedgerOps, ctx: dict[str, Any]) -> None:
    """After a resumed report: moves or deletes the file if the version reported (``sig``)
    is the one at its path now; else leaves it (gone, or a newer version)."""
    try:
        held = beneath.open_regular(job.folder.path, job.relpath)
    except (OSError, NotRegular):
        return  # nothing of ours there to move or delete
    with held:
        if not sig.same_version(FileSig.from_stat(held.st)):
            return
        reported = ledger.get(job.folder.key, job.relpath)
        if reported is not None:
            dispose(job, reported, sig, ledger, ctx, held=held)


class _PutWatch:
    """What every chunk of one PUT goes through before it is sent: the shutdown's abort, the
    bandwidth throttle, the average-rate deadline, the hash, the metrics, the progress log
    and the pool's sign of progress."""

    def __init__(
        self, up: Uploader, ticket: Ticket, fd: int, st: os.stat_result, ctx: dict[str, Any]
    ) -> None:
        self.up, self.ticket, self.size, self.ctx = up, ticket, st.st_size, ctx
        self.hasher = Hasher(fd, st, up.abort)
        self.started = up.clock()
        self.deadline = self.started + PUT_DEADLINE_SLACK_SECONDS + self.size / MIN_PUT_RATE
        self.progress = self.size >= PROGRESS_MIN_BYTES
        self.sent = 0
        self.next_progress = self.started + PROGRESS_EVERY_SECONDS

    def __call__(self, chunk: bytes) -> None:
        up = self.up
        up.beat("put")
        if up.abort.is_set():
            raise Stopped()
        if up.throttle is not None:
            up.throttle.consume(len(chunk), up.abort.wait)
        now = up.clock()
        if now > self.deadline:
            raise TransientError(
                f"PUT: slower than {MIN_PUT_RATE // 1024} KiB/s on average; cut off",
                maybe_applied=True,
            )
        self.hasher.update(chunk)
        self.sent += len(chunk)
        if up.metrics is not None:
            up.metrics.bytes_sent(len(chunk))
        if self.progress and now >= self.next_progress:
            self.next_progress = now + PROGRESS_EVERY_SECONDS
            elapsed = max(now - self.started, 1e-9)
            log.info(
                "upload.progress",
                bytes_sent=self.sent,
                percent=round(100.0 * self.sent / self.size, 1),
                rate_bytes_per_second=round(self.sent / elapsed),
                file_store_id=self.ticket.file_store_id,
                **self.ctx,
            )


class Hasher:
    """SHA-256 of the bytes one PUT sends, as a future the report stage waits on.

    A small file's chunks are hashed inline as the send reads them. A big file is hashed by
    a thread of its own reading the file through its own descriptor (one buffer, reused:
    memory stays flat), beside the send and never pacing it: on loopback, hashing is as
    slow as the wire (bench/README), and the upload slot is free once the bytes are sent.
    The thread keeps at most ``AHEAD`` bytes ahead of the send, so that while it is ahead
    the send finds the bytes in the page cache (when it lags, nothing holds it back).

    The hash's bytes are the ones sent when the file is still the version opened both after
    the send (size, mtime, ctime, and the inode at its path: the upload slot checks) and
    after the hash (size, mtime, ctime: the thread checks its descriptor); any write(2)
    changes the ctime. A write through a shared memory map to a page already dirty changes
    no timestamp until later: invisible to settling and to the checks of the send as well.
    """

    #: Files at least this big are hashed by a thread of their own; smaller ones inline (a
    #: thread costs more than hashing a few chunks).
    THREADED_FROM = 8 * 1024 * 1024
    #: A big file's thread reads at most this far ahead of the send.
    AHEAD = 64 * 1024 * 1024
    #: While the report stage waits for a big file's hash, it shows progress this often.
    BEAT_SECONDS = 1.0

    def __init__(self, fd: int, st: os.stat_result, stop: threading.Event) -> None:
        """Raises OSError when a big file's descriptor cannot be duplicated (EMFILE)."""
        self._hash = hashlib.sha256()
        self._thread: threading.Thread | None = None
        self._digest: str | None = None
        #: Why a big file's hash has no digest, when a read failed (else None).
        self.error: OSError | None = None
        #: Bytes a big file's thread has hashed so far (read by the waiting report stage).
        self.hashed = 0
        if st.st_size < self.THREADED_FROM:
            return
        self._cond = threading.Condition()
        self._sent = 0  # bytes the send has read so far
        self._cancelled = False
        #: True while the thread waits for the send to catch up: only then does the send
        #: notify it (under ``_cond``).
        self.waiting = False
        # Its own descriptor: the thread may outlive the upload's (a cancelled hash ends
        # before its next chunk and closes it), and never reads a reused descriptor number.
        own = os.dup(fd)
        try:
            self._thread = threading.Thread(
                target=self._run, args=(own, st, stop), name="sha256", daemon=True
            )
            self._thread.start()
        except BaseException:
            os.close(own)
            raise

    def update(self, chunk: bytes) -> None:
        """The send read ``chunk``, the file's next bytes: hashed now (a small file), or the
        send's progress noted (a big one, whose thread reads the file itself)."""
        if self._thread is None:
            self._hash.update(chunk)
            return
        with self._cond:
            self._sent += len(chunk)
            if self.waiting:
                self._cond.notify()

    def digest(self, beat: Callable[[], None] = lambda: None) -> str | None:
        """The hex digest of the file's bytes, once they are all hashed: waits for a big
        file's thread (the send is over: it no longer waits for it), calling ``beat`` every
        BEAT_SECONDS in which the hash went on. None for a big file whose hash was cancelled
        or stopped, or whose own reads cannot vouch for the bytes sent: it shrank or changed
        meanwhile, or a read failed (:attr:`error` says how)."""
        thread = self._thread
        if thread is None:
            return self._hash.hexdigest()
        with self._cond:
            self._sent = 1 << 62  # sent all it will: never wait for more of it
            self._cond.notify()
        seen = self.hashed
        while True:
            thread.join(self.BEAT_SECONDS)
            if not thread.is_alive():
                return self._digest
            if self.hashed != seen:  # a read that hangs is not progress
                seen = self.hashed
                beat()

    def cancel(self) -> None:
        """Ends a big file's hash thread before its next chunk, without waiting for it: the
        PUT failed, or the file changed."""
        if self._thread is not None:
            with self._cond:
                self._cancelled = True
                self._cond.notify()

    def _run(self, fd: int, st: os.stat_result, stop: threading.Event) -> None:
        size, offset = st.st_size, 0
        try:
            buffer = memoryview(bytearray(CHUNK_SIZE))
            while offset < size:
                with self._cond:
                    while offset >= self._sent + self.AHEAD and not self._cancelled:
                        self.waiting = True
                        self._cond.wait()
                    self.waiting = False
                    if self._cancelled:
                        return
                if stop.is_set():
                    return
                got = os.preadv(fd, [buffer[: min(CHUNK_SIZE, size - offset)]], offset)
                if got == 0:
                    return  # shrank
                self._hash.update(buffer[:got])  # lets go of the GIL
                offset += got
                self.hashed = offset
            if not _changed(st, os.fstat(fd)):
                self._digest = self._hash.hexdigest()
        except OSError as exc:
            self.error = exc
        finally:
            os.close(fd)


def _changed(before: os.stat_result, after: os.stat_result) -> bool:
    return (
        before.st_size != after.st_size
        or before.st_mtime_ns != after.st_mtime_ns
        or before.st_ctime_ns != after.st_ctime_ns
        or before.st_ino != after.st_ino
    )


__all__ = ["Job", "LedgerError", "Outcome", "Result", "Uploader"]
