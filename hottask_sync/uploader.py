"""One file through the three calls, every step recorded in the ledger before the next.

The worker threads call :meth:`Uploader.run` with a :class:`Job`; it never sleeps and never
retries in place (except a new URL for an expired one): it returns a :class:`Result` that
tells the daemon what to do next (done, retry at a time, failed, wait for auth, ...).
"""

from __future__ import annotations

import errno
import hashlib
import os
import random
import stat as stat_mod
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from .backoff import AuthCircuit, Throttle, retry_delay
from .client import MAX_PUT_BYTES, HotTaskClient, Ticket
from .config import FolderConfig
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
from .ledger import Action, Entry, IllegalTransition, Ledger, State, plan
from .logs import get_logger, redact_text

#: Big files log an ``upload.progress`` event this often.
PROGRESS_MIN_BYTES = 64 * 1024 * 1024
PROGRESS_EVERY_SECONDS = 10.0
#: A PUT must move at least this fast on average, or it is cut off and retried: httpx
#: timeouts are per chunk, so a trickling upload would otherwise never end.
MIN_PUT_RATE = 16 * 1024
PUT_DEADLINE_SLACK_SECONDS = 120.0

log = get_logger("hottask_sync.uploader")


class Outcome(Enum):
    DONE = "done"  # reported (or the cut-off move/delete finished)
    SKIPPED = "skipped"  # nothing to do: already uploaded, failed, or not a regular file
    VANISHED = "vanished"  # deleted before its upload
    CHANGED = "changed"  # changed during the PUT: settle again
    RETRY = "retry"  # try again after `delay`
    FAILED = "failed"  # marked failed in the ledger
    AUTH = "auth"  # the auth circuit is open: park until it closes
    STOPPED = "stopped"  # cut off by shutdown


@dataclass
class Job:
    """A file to take through the pipeline; the daemon keeps it across retries."""

    folder: FolderConfig
    relpath: str
    failures: int = 0  # consecutive failures, for the backoff
    ticket: Ticket | None = field(default=None, repr=False)  # a URL we may PUT to again
    rehint: bool = False  # look at the file again afterwards (a resumed report)

    @property
    def key(self) -> tuple[str, str]:
        return (self.folder.key, self.relpath)

    @property
    def path(self) -> str:
        return os.path.join(self.folder.path, self.relpath)


@dataclass(frozen=True)
class Result:
    outcome: Outcome
    delay: float = 0.0
    error: str | None = None
    size: int = 0
    error_class: str | None = None


class Stopped(Exception):
    """Raised inside a PUT when the daemon's grace period is over."""


class NotRegular(Exception):
    """The path is a symlink, FIFO, device or folder: never uploaded."""


class Uploader:
    """Runs jobs; shared by all workers (it holds no per-file state)."""

    def __init__(
        self,
        client: HotTaskClient,
        ledger: Ledger,
        circuit: AuthCircuit,
        *,
        max_attempts: int,
        throttle: Throttle | None = None,
        abort: threading.Event | None = None,
        metrics: Any = None,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        key_source: str = "",
    ) -> None:
        self.client = client
        self.ledger = ledger
        self.circuit = circuit
        self.max_attempts = max_attempts
        self.throttle = throttle
        self.abort = abort or threading.Event()
        self.metrics = metrics
        self.clock = clock
        self.rng = rng or random.Random()
        self.key_source = key_source
        self._rng_lock = threading.Lock()

    # --- the pipeline ----------------------------------------------------------------------

    def run(self, job: Job) -> Result:
        """Given a job, takes its file as far as it can go; returns what the daemon does next.

        Raises LedgerError when a step cannot be recorded (the daemon must stop).
        """
        try:
            return self._run(job)
        except IllegalTransition as exc:
            # The row moved under us (a newer version was recorded meanwhile): nothing was
            # reported for this attempt; look at the file afresh.
            log.info("file.changed", folder=job.folder.key, path=job.relpath, reason=str(exc))
            job.ticket = None
            return Result(Outcome.CHANGED)

    def _run(self, job: Job) -> Result:
        folder, relpath = job.folder, job.relpath
        ctx = {"folder": folder.key, "path": relpath}
        entry = self.ledger.get(folder.key, relpath)
        if entry is not None and entry.state is State.PUT:
            # The bytes are on S3 under this FileStoreId: finish by reporting it, even if
            # the file is gone or changed since. Never a second upload.
            return self._report_resumed(job, entry, ctx)
        try:
            fd = _open_regular(job.path, folder)
        except FileNotFoundError:
            self.ledger.forget(folder.key, relpath)
            log.info("file.vanished", **ctx)
            return Result(Outcome.VANISHED)
        except NotRegular as exc:
            log.info("file.skipped", reason=str(exc), **ctx)
            return Result(Outcome.SKIPPED)
        except PermissionError as exc:
            error = PermanentError(f"cannot read: {exc.strerror}", fail_now=True)
            return self._fail(job, error, ctx, _lstat(job.path))
        try:
            st = os.fstat(fd)
            sig = FileSig.from_stat(st)
            action = plan(entry, sig, dispose=folder.after_upload != "keep")
            if action in (Action.SKIP, Action.FAILED):
                return Result(Outcome.SKIPPED)
            if action is Action.DISPOSE:
                assert entry is not None
                self._dispose(job, entry, sig, ctx)
                return Result(Outcome.DONE)
            return self._upload(job, fd, st, sig, ctx)
        finally:
            os.close(fd)

    def _upload(
        self, job: Job, fd: int, st: os.stat_result, sig: FileSig, ctx: dict[str, Any]
    ) -> Result:
        folder, relpath = job.folder, job.relpath
        ctx = {**ctx, "size": sig.size, "attempt": job.failures + 1}
        if sig.size > MAX_PUT_BYTES:
            error = FileTooLarge(f"{sig.size} bytes is over the 5 GiB limit of one upload")
            return self._fail(job, error, ctx, sig)
        if not self.circuit.allow():
            return Result(Outcome.AUTH)
        started = self.clock()
        log.info("upload.started", **ctx)
        stage = "ticket"
        try:
            ticket = job.ticket if job.ticket and job.ticket.usable(self.clock()) else None
            if ticket is not None:
                # PUT again to the same URL (the last answer was lost): record the version
                # sent this time, which may differ from the one the ticket was taken for, or
                # the ledger would say a newer version was never uploaded (and upload it twice).
                self.ledger.mark_ticketed(folder.key, relpath, sig, ticket.file_store_id)
            for expired_once in (False, True):
                if ticket is None:
                    stage = "ticket"
                    ticket = self.client.get_upload_url(os.path.basename(relpath))
                    self._call_succeeded()
                    self.ledger.mark_ticketed(folder.key, relpath, sig, ticket.file_store_id)
                    job.ticket = ticket
                stage = "put"
                try:
                    digest = self._put(ticket, fd, sig.size, ctx)
                    break
                except UrlExpired as exc:
                    # The URL died before or during the PUT: one new URL, same attempt.
                    if expired_once:
                        # Two fresh URLs expired in a row (clock skew?): not the file's fault,
                        # so not a permanent failure; retry later with a new ticket.
                        job.ticket = None
                        raise TransientError(
                            f"{exc.args[0]} (twice in a row)", status=exc.status
                        ) from exc
                    log.info("upload.url_expired", file_store_id=ticket.file_store_id, **ctx)
                    if self.metrics is not None:
                        self.metrics.upload_failed("expired")
                    ticket = job.ticket = None
            assert ticket is not None
            if _changed(st, os.fstat(fd)) or not sig.same_version(_lstat(job.path)):
                # Never report bytes that may mix two versions: settle and start again.
                return self._changed_during_put(job, ctx)
            self.ledger.mark_put(folder.key, relpath, digest, file_store_id=ticket.file_store_id)
            job.ticket = None
            stage = "report"
            self.client.report_success(ticket.file_store_id)
            # The auth probe may have reused its URL (no ticket call): this closes it.
            self._call_succeeded()
            self.ledger.mark_reported(folder.key, relpath)
        except Stopped:
            log.info("upload.interrupted", stage=stage, **ctx)
            return Result(Outcome.STOPPED)
        except ApiError as exc:
            if stage == "put" and (
                _changed(st, os.fstat(fd)) or not sig.same_version(_lstat(job.path))
            ):
                # The file changed under the PUT (a file that shrank aborts it): not a failed
                # attempt; settle and start again.
                return self._changed_during_put(job, ctx)
            # job.ticket is kept after a failed PUT: the next try PUTs to the same URL while
            # it is valid (the bytes may have arrived even though the answer did not).
            return self._failed_call(job, exc, stage, ctx, sig)
        duration = self.clock() - started
        if self.metrics is not None:
            self.metrics.upload_succeeded(sig.size, duration)
        log.info(
            "upload.succeeded",
            file_store_id=ticket.file_store_id,
            duration_ms=round(duration * 1000, 1),
            sha256=digest,
            **ctx,
        )
        if job.folder.after_upload != "keep":
            entry = self.ledger.get(folder.key, relpath)
            if entry is not None:
                self._dispose(job, entry, sig, ctx)
        return Result(Outcome.DONE, size=sig.size)

    def _changed_during_put(self, job: Job, ctx: dict[str, Any]) -> Result:
        # A probe that reused its URL made no API call yet: it must not hold the circuit.
        self.circuit.inconclusive()
        self.ledger.mark_pending(job.folder.key, job.relpath, None)
        job.ticket = None
        log.info("file.changed", reason="changed during upload", **ctx)
        if self.metrics is not None:
            self.metrics.upload_failed("changed")
        return Result(Outcome.CHANGED)

    def _put(self, ticket: Ticket, fd: int, size: int, ctx: dict[str, Any]) -> str:
        """PUTs the file, hashing as it streams; returns the sha256 hex digest."""
        hasher = hashlib.sha256()
        started = self.clock()
        deadline = started + PUT_DEADLINE_SLACK_SECONDS + size / MIN_PUT_RATE
        progress = size >= PROGRESS_MIN_BYTES
        state = {"sent": 0, "next_progress": started + PROGRESS_EVERY_SECONDS}

        def on_chunk(chunk: bytes) -> None:
            if self.abort.is_set():
                raise Stopped()
            if self.throttle is not None:
                self.throttle.consume(len(chunk), self.abort.wait)
            now = self.clock()
            if now > deadline:
                raise TransientError(
                    f"PUT: slower than {MIN_PUT_RATE // 1024} KiB/s on average; cut off",
                    maybe_applied=True,
                )
            hasher.update(chunk)
            state["sent"] += len(chunk)
            if self.metrics is not None:
                self.metrics.bytes_sent(len(chunk))
            if progress and now >= state["next_progress"]:
                state["next_progress"] = now + PROGRESS_EVERY_SECONDS
                elapsed = max(now - started, 1e-9)
                log.info(
                    "upload.progress",
                    bytes_sent=state["sent"],
                    percent=round(100.0 * state["sent"] / size, 1),
                    rate_bytes_per_second=round(state["sent"] / elapsed),
                    file_store_id=ticket.file_store_id,
                    **ctx,
                )

        self.client.put(ticket, fd, size, on_chunk=on_chunk)
        return hasher.hexdigest()

    def _report_resumed(self, job: Job, entry: Entry, ctx: dict[str, Any]) -> Result:
        assert entry.file_store_id is not None
        if not self.circuit.allow():
            return Result(Outcome.AUTH)
        ctx = {**ctx, "file_store_id": entry.file_store_id, "attempt": job.failures + 1}
        try:
            self.client.report_success(entry.file_store_id)
        except ApiError as exc:
            return self._failed_call(job, exc, "report", ctx, entry.sig)
        self._call_succeeded()
        self.ledger.mark_reported(job.folder.key, job.relpath)
        log.info("upload.succeeded", resumed=True, **ctx)
        size = entry.sig.size if entry.sig else 0
        if self.metrics is not None:
            self.metrics.upload_succeeded(size, 0.0)
        job.rehint = True
        if job.folder.after_upload != "keep" and entry.sig is not None:
            current = _lstat(job.path)
            if entry.sig.same_version(current):
                reported = self.ledger.get(job.folder.key, job.relpath)
                if reported is not None:
                    self._dispose(job, reported, entry.sig, ctx)
        return Result(Outcome.DONE, size=size)

    # --- failures --------------------------------------------------------------------------

    def _delay(self, job: Job, retry_after: float | None = None) -> float:
        with self._rng_lock:
            return retry_delay(job.failures, self.rng, retry_after=retry_after)

    def _failed_call(
        self, job: Job, exc: ApiError, stage: str, ctx: dict[str, Any], sig: FileSig | None
    ) -> Result:
        job.failures += 1
        if isinstance(exc, AuthError):
            if self.circuit.trip():
                log.error(
                    "auth.failed",
                    error=str(exc),
                    key_source=self.key_source,
                    hint=f"the API key from {self.key_source} was refused; check it "
                    "(uploads are paused and retried with a growing delay; "
                    "fix the key and send SIGHUP or restart)",
                )
            if self.metrics is not None:
                self.metrics.upload_failed("auth")
            job.failures = 0  # an auth pause is not this file's fault
            return Result(Outcome.AUTH, error=str(exc), error_class="auth")
        self.circuit.inconclusive()  # if this was the auth probe, it must not wedge the circuit
        if isinstance(exc, TransientError):
            self.ledger.record_error(
                job.folder.key,
                job.relpath,
                redact_text(f"{stage}: {exc}"),
                permanent=False,
                max_attempts=self.max_attempts,
            )
            delay = self._delay(job, exc.retry_after)
            log.warning(
                "upload.retry", stage=stage, error=str(exc), retry_in_s=round(delay, 2), **ctx
            )
            if self.metrics is not None:
                self.metrics.upload_failed("transient")
            return Result(Outcome.RETRY, delay=delay, error=str(exc), error_class="transient")
        return self._fail(job, exc, {**ctx, "stage": stage}, sig)

    def _fail(self, job: Job, exc: ApiError, ctx: dict[str, Any], sig: FileSig | None) -> Result:
        fail_now = isinstance(exc, PermanentError) and exc.fail_now
        updated = self.ledger.record_error(
            job.folder.key,
            job.relpath,
            redact_text(str(exc)),
            permanent=True,
            max_attempts=self.max_attempts,
            fail_now=fail_now,
            sig=sig,
        )
        if self.metrics is not None:
            self.metrics.upload_failed("permanent")
        job.ticket = None
        if updated.state is State.FAILED:
            log.error("upload.failed", error=str(exc), attempts=updated.attempts, **ctx)
            return Result(Outcome.FAILED, error=str(exc), error_class="permanent")
        job.failures = max(job.failures, updated.attempts)
        delay = self._delay(job)
        log.warning(
            "upload.retry",
            error=str(exc),
            attempts=updated.attempts,
            max_attempts=self.max_attempts,
            retry_in_s=round(delay, 2),
            **ctx,
        )
        return Result(Outcome.RETRY, delay=delay, error=str(exc), error_class="permanent")

    def _call_succeeded(self) -> None:
        if self.circuit.succeed():
            log.info("auth.recovered", key_source=self.key_source)

    # --- after upload ----------------------------------------------------------------------

    def _dispose(self, job: Job, entry: Entry, sig: FileSig, ctx: dict[str, Any]) -> None:
        """Moves or deletes an uploaded file; on failure, logs an error and leaves it."""
        folder = job.folder
        path = job.path
        if not sig.same_version(_lstat(path)):
            return  # a newer version stands there now: it is uploaded, not removed
        try:
            if folder.after_upload == "delete":
                os.unlink(path)
                log.info("file.deleted", **ctx)
            else:
                assert folder.move_to is not None
                dest = _move(path, os.path.join(folder.move_to, job.relpath), entry.sha256)
                log.info("file.moved", to=dest, **ctx)
        except FileNotFoundError:
            pass  # already gone: nothing left to do
        except OSError as exc:
            error = f"after_upload {folder.after_upload} failed: {_os_error(exc)}"
            log.error("file.dispose_failed", action=folder.after_upload, error=error, **ctx)
            # Kept on the reported row for `status`; the next scan tries the move/delete again.
            self.ledger.record_error(
                folder.key, job.relpath, error, permanent=False, max_attempts=self.max_attempts
            )
            return
        self.ledger.mark_disposed(folder.key, job.relpath)


# --- filesystem adapters --------------------------------------------------------------------

_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def _open_regular(path: str, folder: FolderConfig) -> int:
    """Opens a regular file without following links; returns the descriptor.

    Raises NotRegular for links, FIFOs, devices and folders, and for a path that leads
    out of the folder through a linked parent folder; FileNotFoundError, PermissionError.
    """
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise NotRegular("a symbolic link (never followed)") from None
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            raise FileNotFoundError(path) from None
        if exc.errno in (errno.ENXIO, errno.EISDIR):
            raise NotRegular("not a regular file") from None
        raise
    try:
        mode = os.fstat(fd).st_mode
        if not stat_mod.S_ISREG(mode):
            raise NotRegular("not a regular file")
        parent = os.path.realpath(os.path.dirname(path))
        root = os.path.realpath(folder.path)
        if parent != root and not parent.startswith(root + os.sep):
            raise NotRegular("reached through a linked folder (never followed)")
    except BaseException:
        os.close(fd)
        raise
    return fd


def _lstat(path: str) -> FileSig | None:
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return FileSig.from_stat(st) if stat_mod.S_ISREG(st.st_mode) else None


def _changed(before: os.stat_result, after: os.stat_result) -> bool:
    return (
        before.st_size != after.st_size
        or before.st_mtime_ns != after.st_mtime_ns
        or before.st_ctime_ns != after.st_ctime_ns
        or before.st_ino != after.st_ino
    )


def _os_error(exc: OSError) -> str:
    return f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else "")


def _move(src: str, dest: str, sha256: str | None) -> str:
    """Moves ``src`` to ``dest`` without overwriting; returns where it went.

    On a name collision, adds `` (1)``, `` (2)``... before the extension. Across file
    systems, copies to a temporary name, renames it into place, then removes the source.
    """
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    target = _free_name(dest, src, sha256)
    if target is None:
        # An identical copy is already there (a move cut off between copy and unlink).
        os.unlink(src)
        return dest
    try:
        os.rename(src, target)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        _copy_across(src, target)
    return target


def _free_name(dest: str, src: str, sha256: str | None) -> str | None:
    if not os.path.lexists(dest):
        return dest
    if sha256 is not None and _same_content(dest, src, sha256):
        return None
    stem, ext = os.path.splitext(dest)
    n = 1
    while os.path.lexists(f"{stem} ({n}){ext}"):
        n += 1
    return f"{stem} ({n}){ext}"


def _same_content(dest: str, src: str, sha256: str) -> bool:
    try:
        if os.path.getsize(dest) != os.path.getsize(src):
            return False
        h = hashlib.sha256()
        with open(dest, "rb") as fh:
            while chunk := fh.read(1024 * 1024):
                h.update(chunk)
        return h.hexdigest() == sha256
    except OSError:
        return False


def _copy_across(src: str, target: str) -> None:
    tmp = os.path.join(os.path.dirname(target), f".hottask-move-{os.getpid()}.tmp")
    with open(src, "rb") as fin, open(tmp, "wb") as fout:
        while chunk := fin.read(1024 * 1024):
            fout.write(chunk)
        fout.flush()
        os.fsync(fout.fileno())
    os.rename(tmp, target)
    os.unlink(src)


__all__ = ["Job", "LedgerError", "Outcome", "Result", "Uploader"]
