"""The daemon: watcher → settle → bounded worker pool → ledger, in one main loop.

Threads: watchdog's observer threads only append hints to a deque; ``concurrency`` worker
threads run uploads; the main thread owns every decision (settling, scheduling retries,
the auth pause, rescans, reloads, sd_notify), so there is no shared mutable state to lock
beyond the deques and the work queue.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import heapq
import itertools
import os
import queue
import signal
import stat as stat_mod
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import httpx

from . import logs
from .backoff import AuthCircuit, Throttle
from .client import HotTaskClient
from .config import ApiKey, Config, FolderConfig, load_config, resolve_api_key
from .errors import (
    ConfigError,
    KeyNotFoundError,
    LedgerError,
    LockedError,
    UserError,
)
from .files import FileSig, lstat_regular
from .ledger import Action, Ledger, State, plan
from .metrics import Metrics
from .notify import Notifier
from .settle import Settler
from .uploader import Job, Outcome, Result, Uploader
from .watcher import Watcher

log = logs.get_logger("hottask_sync.daemon")

Key = tuple[str, str]  # (folder key, relative path)

FOLDER_CHECK_SECONDS = 2.0
STATUS_EVERY_SECONDS = 1.0
#: After the grace period, an aborted PUT needs a moment to unwind.
ABORT_WAIT_SECONDS = 5.0


# --- the state directory lock ----------------------------------------------------------------


def lock_state_dir(state_dir: Path) -> int:
    """Takes the state directory's exclusive lock; returns its descriptor (keep it open).

    Raises LockedError naming the other daemon's PID when it is taken, UserError when the
    directory cannot be created or written.
    """
    try:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(state_dir / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise UserError(f"sync.state_dir {state_dir}: {exc.strerror}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        other = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise LockedError(
                f"another hottask-sync (PID {other}) is already using {state_dir}; "
                "stop it first or give this one its own sync.state_dir"
            ) from None
        raise UserError(f"sync.state_dir {state_dir}: cannot lock: {exc.strerror}") from exc
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def daemon_pid(state_dir: Path) -> int | None:
    """Returns the PID of the daemon holding the state directory's lock, or None."""
    try:
        fd = os.open(state_dir / "lock", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            text = os.pread(fd, 32, 0).decode(errors="replace").strip()
            return int(text) if text.isdigit() else None
        return None  # nobody holds it
    finally:
        os.close(fd)


def check_folders(config: Config) -> list[str]:
    """Returns one problem line per watched folder that is not a readable directory."""
    problems = []
    for i, folder in enumerate(config.folders):
        where = f"{config.source}: folders[{i}].path {folder.path}"
        try:
            st = os.stat(folder.path)
        except FileNotFoundError:
            problems.append(f"{where}: does not exist")
            continue
        except OSError as exc:
            problems.append(f"{where}: {exc.strerror}")
            continue
        if not stat_mod.S_ISDIR(st.st_mode):
            problems.append(f"{where}: is not a directory")
        elif not os.access(folder.path, os.R_OK | os.X_OK):
            problems.append(f"{where}: not readable by this user")
    return problems


# --- the daemon ------------------------------------------------------------------------------


@dataclass
class _Counts:
    uploaded: int = 0
    pending: int = 0
    failed: int = 0

    def line(self, queued: int) -> str:
        return (
            f"uploaded {self.uploaded}, pending {self.pending}, failed {self.failed}, "
            f"queued {queued}"
        )


@dataclass
class Daemon:
    """Runs until stopped; ``run`` returns the process exit code."""

    config: Config
    environ: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    transport: httpx.BaseTransport | None = None
    clock: Callable[[], float] = time.monotonic

    def __post_init__(self) -> None:
        self.folders: dict[str, FolderConfig] = {f.key: f for f in self.config.folders}
        self.missing: set[str] = set()
        self._folder_ids: dict[str, tuple[int, int] | None] = {}  # (st_dev, st_ino) watched
        self.notifier = Notifier(self.environ)
        self.metrics = Metrics()
        self.circuit = AuthCircuit(self.clock)
        self.throttle = Throttle(self.config.sync.bandwidth_limit, self.clock)
        self.abort = threading.Event()
        self.settler: Settler[Key] = Settler(self.config.sync.settle_seconds)
        self._wake = threading.Event()
        self._hints: deque[tuple[str, str, bool]] = deque()
        self._results: deque[tuple[Job, Result | BaseException]] = deque()
        self._ready: deque[Job] = deque()
        self._retries: list[tuple[float, int, Job]] = []
        self._parked: list[Job] = []
        self._seq = itertools.count()
        self._active: set[Key] = set()
        self._inflight: set[Key] = set()
        self._dirty: set[Key] = set()
        self._skipped_logged: set[Key] = set()
        self._work: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._workers: list[threading.Thread] = []
        self._target_workers = self.config.sync.concurrency
        self._stop = False
        self._reload = False
        self._rescan_now = False
        self._fatal: BaseException | None = None
        self._counts = _Counts()
        self._status_line = ""
        self._next_status = 0.0
        self._counts_stale = True

    # --- public ----------------------------------------------------------------------------

    def run(self) -> int:
        """Runs the daemon in this thread until SIGTERM/SIGINT; returns the exit code.

        Raises UserError (config, key, lock, folder problems) before anything starts.
        """
        cfg = self.config
        problems = [p for p in check_folders(cfg) if not p.endswith("does not exist")]
        if problems:
            raise ConfigError(problems)
        key = resolve_api_key(cfg.api, self.environ)
        logs.set_secrets([key.value])
        lock_fd = lock_state_dir(cfg.sync.state_dir)
        try:
            self.ledger = Ledger.in_dir(cfg.sync.state_dir)
        except LedgerError as exc:
            os.close(lock_fd)
            raise UserError(str(exc)) from exc
        self.key = key
        self.client = HotTaskClient(
            cfg.api.base_url,
            key.value,
            timeout=cfg.api.timeout_seconds,
            max_connections=max(64, cfg.sync.concurrency),
            transport=self.transport,
        )
        self.uploader = Uploader(
            self.client,
            self.ledger,
            self.circuit,
            max_attempts=cfg.sync.max_attempts,
            throttle=self.throttle,
            abort=self.abort,
            metrics=self.metrics,
            clock=self.clock,
            key_source=key.source,
        )
        self.watcher = Watcher(self._hint, self._overflowed)
        server = None
        old_handlers = self._install_signals()
        try:
            if (address := cfg.metrics.address) is not None:
                server = self.metrics.serve(*address)
            return self._main()
        finally:
            if server is not None:
                server.close()
            self._restore_signals(old_handlers)
            self.client.close()
            self.ledger.close()
            os.close(lock_fd)

    # --- main loop -------------------------------------------------------------------------

    def _main(self) -> int:
        cfg = self.config
        log.info(
            "daemon.starting",
            folders=[f.key for f in cfg.folders],
            state_dir=str(cfg.sync.state_dir),
            base_url=cfg.api.base_url,
            key_source=self.key.source,
            concurrency=cfg.sync.concurrency,
            settle_seconds=cfg.sync.settle_seconds,
        )
        self.watcher.start()
        for folder in cfg.folders:
            self._watch(folder)
        self._resume_unfinished()
        for folder in cfg.folders:
            if folder.key not in self.missing:
                self._scan(folder, self.clock())
        self._resize_pool()
        self._refresh_counts(force=True)
        self.notifier.ready(self._status())
        log.info("daemon.ready", waiting=len(self.settler), queued=len(self._ready))
        now = self.clock()
        next_rescan = now + cfg.sync.rescan_seconds if cfg.sync.rescan_seconds else float("inf")
        next_folder_check = now + FOLDER_CHECK_SECONDS
        interval = self.notifier.watchdog_interval
        # No watchdog: no ping deadline (a past one would make every wait time out at once).
        next_ping = now if interval is not None else float("inf")
        try:
            while not self._stop:
                now = self.clock()
                if self._reload:
                    self._reload = False
                    self._do_reload()
                    next_rescan = now  # a reload (and `retry`) looks at every folder again
                self._drain_hints(now)
                self._drain_results(now)
                if self._rescan_now or now >= next_rescan:
                    self._rescan_now = False
                    self._scan_all(now)
                    period = self.config.sync.rescan_seconds
                    next_rescan = now + period if period else float("inf")
                if now >= next_folder_check:
                    self._check_folders(now)
                    next_folder_check = now + FOLDER_CHECK_SECONDS
                self._settle(now)
                self._release_due(now)
                self._feed()
                self._refresh_counts()
                if interval is not None and now >= next_ping:
                    if self._healthy():
                        self.notifier.watchdog()
                    next_ping = now + interval
                timeout = self._timeout(now, next_rescan, next_folder_check, next_ping)
                self._wake.wait(timeout)
                self._wake.clear()
        except LedgerError as exc:
            # A worker's failed write (re-raised by _drain_results) or the main thread's own
            # (pending files, from settling): either way nothing more can be recorded.
            log.critical(
                "ledger.failed",
                error=str(exc),
                hint="uploads stopped: the ledger cannot record progress (disk full or "
                "read-only?); exiting so the service manager restarts it",
            )
            self._fatal = exc
        return self._shutdown()

    def _timeout(self, now: float, *deadlines: float) -> float:
        candidates = list(deadlines)
        if (d := self.settler.next_deadline()) is not None:
            candidates.append(d)
        if self._retries:
            candidates.append(self._retries[0][0])
        if self._counts_stale:
            # STATUS= and the metrics' file counts are rate-limited, not left stale.
            candidates.append(self._next_status)
        waiting = self._parked or self._ready
        if waiting and (wait := self.circuit.seconds_until_probe()) is not None:
            candidates.append(now + wait)
        return min(max(0.0, min(candidates) - now), 5.0)

    def _healthy(self) -> bool:
        alive = sum(t.is_alive() for t in self._workers)
        return self.watcher.healthy() and alive >= self._target_workers

    # --- noticing files --------------------------------------------------------------------

    def _hint(self, folder_key: str, path: str, is_dir: bool) -> None:
        """Called on watchdog's thread: queue the path and wake the main loop."""
        self._hints.append((folder_key, path, is_dir))
        self._wake.set()

    def _overflowed(self) -> None:
        self._rescan_now = True
        self._wake.set()

    def _watch(self, folder: FolderConfig) -> None:
        if not folder.path.is_dir():
            self.missing.add(folder.key)
            log.error("folder.missing", folder=folder.key, hint="will watch it when it appears")
            return
        folder_id = _dir_id(folder.path)
        try:
            how = self.watcher.add(folder)
        except OSError as exc:
            self.missing.add(folder.key)
            log.error("folder.unwatchable", folder=folder.key, error=exc.strerror)
            return
        self._folder_ids[folder.key] = folder_id
        log.info("folder.watching", folder=folder.key, mode=how, recursive=folder.recursive)

    def _relpath(self, folder: FolderConfig, path: str) -> str | None:
        root = str(folder.path)
        if not path.startswith(root + "/"):
            return None
        rel = path[len(root) + 1 :]
        if not folder.recursive and "/" in rel:
            return None
        return rel

    def _drain_hints(self, now: float) -> None:
        hints = self._hints
        while hints:
            folder_key, path, is_dir = hints.popleft()
            folder = self.folders.get(folder_key)
            if folder is None:
                continue
            if is_dir:
                rel = self._relpath(folder, path)
                if rel is not None and folder.recursive and folder.selector.may_descend(rel):
                    # A folder created or moved in may already hold files.
                    for rel_file, st in _walk(path, rel, folder):
                        self._consider(folder, rel_file, st, now, from_scan=False)
                continue
            rel = self._relpath(folder, path)
            if rel is None or not folder.selector.wants(rel):
                continue
            try:
                st = os.lstat(path)
            except OSError:
                continue  # gone again: nothing to do
            self._consider(folder, rel, st, now, from_scan=False)

    def _consider(
        self, folder: FolderConfig, rel: str, st: os.stat_result, now: float, *, from_scan: bool
    ) -> None:
        key = (folder.key, rel)
        if not stat_mod.S_ISREG(st.st_mode):
            if key not in self._skipped_logged and not stat_mod.S_ISDIR(st.st_mode):
                self._skipped_logged.add(key)
                kind = "a symbolic link" if stat_mod.S_ISLNK(st.st_mode) else "not a regular file"
                log.info(
                    "file.skipped", folder=folder.key, path=rel, reason=f"{kind} (never uploaded)"
                )
            return
        sig = FileSig.from_stat(st)
        if key not in self.settler:
            log.info("file.detected", folder=folder.key, path=rel, size=sig.size)
        # A file found by a scan whose mtime is already older than the settle time has
        # been quiet that long: no need to wait again (it is still re-checked once).
        quiet = from_scan and time.time() - st.st_mtime >= self.settler.settle_seconds
        self.settler.hint(key, now, sig, ready_now=quiet)

    def _scan_all(self, now: float) -> None:
        started = self.clock()
        for folder in self.folders.values():
            if folder.key not in self.missing:
                self._scan(folder, now)
        log.info(
            "rescan.finished",
            duration_ms=round((self.clock() - started) * 1000, 1),
            waiting=len(self.settler),
        )

    def _scan(self, folder: FolderConfig, now: float) -> None:
        """Walks the folder and hints every file the ledger does not show as done."""
        known = self.ledger.snapshot(folder.key)
        dispose = folder.after_upload != "keep"
        for rel, st in _walk(str(folder.path), "", folder):
            seen = known.get(rel)
            if seen is not None and stat_mod.S_ISREG(st.st_mode):
                state, sig, disposed = seen
                current = FileSig.from_stat(st)
                if state is State.FAILED and current.same_version(sig):
                    continue
                if (
                    state is State.REPORTED
                    and current.same_version(sig)
                    and (disposed or not dispose)
                ):
                    continue
            self._consider(folder, rel, st, now, from_scan=True)

    def _resume_unfinished(self) -> None:
        """Queues every upload whose bytes are on S3 but whose report was cut off."""
        for entry in self.ledger.in_state(State.PUT):
            folder = self.folders.get(entry.folder)
            if folder is None:
                log.warning(
                    "upload.orphaned",
                    folder=entry.folder,
                    path=entry.relpath,
                    hint="its folder is no longer configured; it will be reported if re-added",
                )
                continue
            self._enqueue(Job(folder, entry.relpath))

    def _check_folders(self, now: float) -> None:
        for folder in self.folders.values():
            present = folder.path.is_dir()
            if folder.key in self.missing and present:
                self.missing.discard(folder.key)
                log.info("folder.back", folder=folder.key)
                self._watch(folder)
                if folder.key not in self.missing:
                    self._scan(folder, now)
            elif folder.key not in self.missing and not present:
                # Unmounted or deleted: nothing is taken as deleted; wait for it to return.
                self.missing.add(folder.key)
                self.watcher.remove(folder.key)
                log.error("folder.missing", folder=folder.key, hint="will resume when it returns")
            elif present and self._folder_ids.get(folder.key) not in (None, _dir_id(folder.path)):
                # Replaced between two checks (moved away and created again, a restore): the
                # watch still follows the old folder. Watch the new one and look into it.
                log.warning("folder.replaced", folder=folder.key, hint="watching the new folder")
                self._watch(folder)
                if folder.key not in self.missing:
                    self._scan(folder, now)

    # --- settling and scheduling -----------------------------------------------------------

    def _stat(self, key: Key) -> FileSig | None:
        folder = self.folders.get(key[0])
        if folder is None:
            return None
        return lstat_regular(os.path.join(folder.path, key[1]))

    def _settle(self, now: float) -> None:
        result = self.settler.poll(now, self._stat)
        for key in result.vanished:
            log.info("file.vanished", folder=key[0], path=key[1], hint="deleted before upload")
        if not result.ready:
            return
        pending: list[tuple[str, str, FileSig]] = []
        for key, sig in result.ready:
            folder = self.folders.get(key[0])
            if folder is None:
                continue
            if key in self._active:
                self._dirty.add(key)
                continue
            action = plan(self.ledger.get(*key), sig, dispose=folder.after_upload != "keep")
            if action in (Action.SKIP, Action.FAILED):
                continue
            log.info("file.settled", folder=key[0], path=key[1], size=sig.size)
            if action is Action.UPLOAD:
                pending.append((key[0], key[1], sig))
            self._enqueue(Job(folder, key[1]))
        if pending:
            self.ledger.add_pending(pending)
            self._counts_stale = True

    def _enqueue(self, job: Job) -> None:
        self._active.add(job.key)
        self._ready.append(job)

    def _release_due(self, now: float) -> None:
        while self._retries and self._retries[0][0] <= now:
            self._ready.append(heapq.heappop(self._retries)[2])
        if self._parked and not self.circuit.is_open:
            self._ready.extend(self._parked)
            self._parked.clear()

    def _feed(self) -> None:
        """Hands ready jobs to the workers, never more than ``concurrency`` ahead."""
        if self._stop:
            return
        if self.circuit.is_open:
            # Paused: one waiting job goes out as the probe when its time comes: a parked
            # one, else one back from a retry (a probe that met a 5xx is no longer parked,
            # and the circuit must not wait for a probe that nobody will make).
            if (
                (self._parked or self._ready)
                and self.circuit.seconds_until_probe() == 0.0
                and not self._inflight
            ):
                self._refresh_key()
                self._submit(self._parked.pop(0) if self._parked else self._ready.popleft())
            return
        while self._ready and len(self._inflight) < self._target_workers * 2:
            job = self._ready.popleft()
            folder = self.folders.get(job.folder.key)
            if folder is None:
                self._active.discard(job.key)
                continue
            job.folder = folder
            self._submit(job)

    def _submit(self, job: Job) -> None:
        self._inflight.add(job.key)
        self._work.put(job)

    def _drain_results(self, now: float) -> None:
        while self._results:
            job, result = self._results.popleft()
            self._inflight.discard(job.key)
            self._counts_stale = True
            if isinstance(result, LedgerError):
                raise result  # handled once, in the main loop
            if isinstance(result, BaseException):
                log.error(
                    "upload.crashed", folder=job.folder.key, path=job.relpath, error=repr(result)
                )
                result = Result(Outcome.RETRY, delay=60.0)
            outcome = result.outcome
            if outcome is Outcome.RETRY:
                heapq.heappush(self._retries, (now + result.delay, next(self._seq), job))
                continue
            if outcome is Outcome.AUTH:
                self.metrics.set_auth_blocked(True)
                self._parked.append(job)
                continue
            if outcome is Outcome.DONE and not self.circuit.is_open:
                self.metrics.set_auth_blocked(False)
            self._active.discard(job.key)
            if outcome is Outcome.CHANGED or job.key in self._dirty or job.rehint:
                self._dirty.discard(job.key)
                path = os.path.join(job.folder.path, job.relpath)
                with contextlib.suppress(OSError):
                    self._consider(job.folder, job.relpath, os.lstat(path), now, from_scan=False)

    # --- workers ---------------------------------------------------------------------------

    def _resize_pool(self) -> None:
        alive = [t for t in self._workers if t.is_alive()]
        self._workers = alive
        while len(self._workers) < self._target_workers:
            t = threading.Thread(
                target=self._worker, name=f"upload-{len(self._workers)}", daemon=True
            )
            t.start()
            self._workers.append(t)
        for _ in range(len(self._workers) - self._target_workers):
            self._work.put(None)

    def _worker(self) -> None:
        while True:
            job = self._work.get()
            if job is None:
                return
            result: Result | BaseException
            try:
                result = self.uploader.run(job)
            except LedgerError as exc:
                result = exc
            except Exception as exc:  # a bug must not kill the worker or lose the file
                log.exception("upload.crashed", folder=job.folder.key, path=job.relpath)
                result = exc
            self._results.append((job, result))
            self._wake.set()

    # --- status ----------------------------------------------------------------------------

    def _refresh_counts(self, force: bool = False) -> None:
        now = self.clock()
        if not force and (not self._counts_stale or now < self._next_status):
            return
        self._next_status = now + STATUS_EVERY_SECONDS
        self._counts_stale = False
        c = self.ledger.counts()
        self._counts = _Counts(
            uploaded=c["reported"],
            pending=c["pending"] + c["ticketed"] + c["put"],
            failed=c["failed"],
        )
        queued = len(self.settler) + len(self._ready) + len(self._inflight) + len(self._retries)
        self.metrics.set_counts(self._counts.uploaded, self._counts.pending, self._counts.failed)
        self.metrics.set_queue_depth(queued)
        line = self._status()
        if line != self._status_line:
            self._status_line = line
            self.notifier.status(line)

    def _status(self) -> str:
        queued = len(self.settler) + len(self._ready) + len(self._inflight) + len(self._retries)
        text = self._counts.line(queued)
        if self.circuit.is_open:
            text += "; paused: API key refused"
        if self.missing:
            text += f"; {len(self.missing)} folder(s) missing"
        return text

    # --- reload ----------------------------------------------------------------------------

    def _refresh_key(self) -> None:
        """Reads the key again (it may have been fixed on disk) before an auth probe."""
        try:
            key = resolve_api_key(self.config.api, self.environ)
        except KeyNotFoundError as exc:
            log.error("auth.key_unreadable", error=str(exc))
            return
        if key.value != self.key.value:
            self._use_key(key)

    def _use_key(self, key: ApiKey) -> None:
        logs.set_secrets([key.value, self.key.value])
        self.key = key
        self.client.set_api_key(key.value)
        self.uploader.key_source = key.source
        log.info("auth.key_reloaded", key_source=key.source)

    def _do_reload(self) -> None:
        self.notifier.reloading()
        try:
            new = load_config(self.config.source, self.environ)
        except ConfigError as exc:
            log.error("config.invalid", problems=exc.problems, hint="keeping the running config")
            self.notifier.ready(self._status())
            return
        old = self.config
        restart = [
            name
            for name, a, b in (
                ("api", old.api, new.api),
                ("sync.state_dir", old.sync.state_dir, new.sync.state_dir),
                ("logging.format", old.logging.format, new.logging.format),
                ("metrics", old.metrics, new.metrics),
            )
            if a != b
        ]
        if restart:
            log.warning("config.restart_needed", keys=restart, hint="these take effect on restart")
        new_folders = {f.key: f for f in new.folders}
        for gone in set(self.folders) - set(new_folders):
            self.watcher.remove(gone)
            self.missing.discard(gone)
            log.info("folder.removed", folder=gone)
        changed = [f for k, f in new_folders.items() if self.folders.get(k) != f]
        self.folders = new_folders
        for folder in changed:
            self.missing.discard(folder.key)
            self._watch(folder)
        self.settler.settle_seconds = new.sync.settle_seconds
        self.uploader.max_attempts = new.sync.max_attempts
        self.throttle.rate = new.sync.bandwidth_limit
        self._target_workers = new.sync.concurrency
        self._resize_pool()
        logs.set_level(new.logging.level)
        try:
            key = resolve_api_key(new.api if not restart else old.api, self.environ)
        except KeyNotFoundError as exc:
            log.error("auth.key_unreadable", error=str(exc), hint="keeping the running key")
        else:
            if key.value != self.key.value:
                self._use_key(key)
        self.circuit.probe_now()
        self.config = new
        log.info(
            "config.reloaded",
            folders=list(new_folders),
            settle_seconds=new.sync.settle_seconds,
            concurrency=new.sync.concurrency,
            level=new.logging.level,
        )
        self.notifier.ready(self._status())

    # --- signals and shutdown --------------------------------------------------------------

    def _install_signals(self) -> dict[int, Any]:
        # A handler runs on the main thread between two bytecodes, possibly while that
        # thread holds self._wake's internal lock (inside wait() or clear()): calling
        # self._wake.set() there deadlocks. So a handler only sets its flag and writes a
        # byte to a pipe; a helper thread turns the byte into the wake-up.
        rfd, wfd = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        os.set_blocking(rfd, True)
        self._signal_wfd: int | None = wfd

        def waker() -> None:
            try:
                while os.read(rfd, 64):
                    self._wake.set()
            except OSError:
                pass
            finally:
                os.close(rfd)

        threading.Thread(target=waker, name="signal-waker", daemon=True).start()

        def poke() -> None:
            with contextlib.suppress(OSError):
                os.write(wfd, b"!")

        def stop(signum: int, _frame: FrameType | None) -> None:
            self._stop = True
            poke()

        def reload(signum: int, _frame: FrameType | None) -> None:
            self._reload = True
            poke()

        old: dict[int, Any] = {}
        for sig, handler in (
            (signal.SIGTERM, stop),
            (signal.SIGINT, stop),
            (signal.SIGHUP, reload),
        ):
            old[sig] = signal.signal(sig, handler)
        return old

    def _restore_signals(self, old: dict[int, Any]) -> None:
        for sig, handler in old.items():
            signal.signal(sig, handler)
        if (wfd := getattr(self, "_signal_wfd", None)) is not None:
            self._signal_wfd = None
            os.close(wfd)  # the waker thread reads EOF, closes its end and ends

    def _shutdown(self) -> int:
        grace = self.config.sync.shutdown_grace_seconds
        self.notifier.stopping()
        log.info("daemon.stopping", in_flight=len(self._inflight), grace_seconds=grace)
        self._stop = True
        self.watcher.stop()
        # Jobs not yet started stay as they are in the ledger and resume at the next start.
        drained: list[Job | None] = []
        while True:
            try:
                drained.append(self._work.get_nowait())
            except queue.Empty:
                break
        for job in drained:
            if job is not None:
                self._inflight.discard(job.key)
        for _ in self._workers:
            self._work.put(None)
        deadline = self.clock() + grace
        aborted = False
        while self._inflight:
            now = self.clock()
            if now >= deadline:
                if aborted:
                    break
                aborted = True
                self.abort.set()
                log.warning("daemon.cutting_off", in_flight=len(self._inflight))
                deadline = now + ABORT_WAIT_SECONDS
            self._wake.wait(min(0.5, max(0.0, deadline - now)))
            self._wake.clear()
            while self._results:
                job, _ = self._results.popleft()
                self._inflight.discard(job.key)
        self.notifier.close()
        if self._fatal is not None:
            log.critical("daemon.stopped", reason="ledger failure", error=str(self._fatal))
            return 1
        log.info("daemon.stopped")
        return 0


def _dir_id(path: Path) -> tuple[int, int] | None:
    """Returns (st_dev, st_ino) of a folder, None when it cannot be stat'ed."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def _walk(root: str, rel_root: str, folder: FolderConfig) -> Iterator[tuple[str, os.stat_result]]:
    """Yields (relative path, lstat) for every wanted entry below ``root``; never follows links.

    Unreadable subfolders are logged and skipped.
    """
    stack = [(root, rel_root)]
    while stack:
        path, rel = stack.pop()
        try:
            with os.scandir(path) as it:
                entries = list(it)
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                log.warning(
                    "folder.unreadable", folder=folder.key, path=rel or ".", error=exc.strerror
                )
            continue
        for entry in entries:
            child = f"{rel}/{entry.name}" if rel else entry.name
            try:
                is_dir = entry.is_dir(follow_symlinks=False)
                if is_dir:
                    if folder.recursive and folder.selector.may_descend(child):
                        stack.append((entry.path, child))
                    continue
                if not folder.selector.wants(child):
                    continue
                yield child, entry.stat(follow_symlinks=False)
            except OSError:
                continue
