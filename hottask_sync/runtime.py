"""The daemon's runtime: the main loop that moves events into the scheduler and jobs out to
the workers, around it the threads, signals, sd_notify, metrics server and watcher.

Threads: watchdog's observers append hints to a deque; the workers append results to
another; signal handlers set flags. Every decision is the scheduler's, called only from the
main thread; what crosses threads is frozen (Jobs, Results, the Uploader snapshot).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import replace

import httpx

from . import folders as fs
from . import logs
from .backoff import Throttle
from .client import HotTaskClient
from .config import ApiConfig, ApiKey, Config, FolderConfig, load_config, resolve_api_key
from .errors import ConfigError, KeyNotFoundError, LedgerError, UserError
from .files import FileSig, lstat_regular
from .jobs import Key
from .ledger import Ledger, State
from .metrics import Metrics
from .notify import Notifier
from .pool import WorkerPool
from .scheduler import Scheduler
from .signals import Signals
from .statedir import lock_state_dir
from .status import StatusBoard, announce_auth
from .uploader import Uploader
from .watcher import Watcher

log = logs.get_logger("hottask_sync.daemon")

FOLDER_CHECK_SECONDS = 2.0
#: After the grace period, an aborted PUT needs a moment to unwind.
ABORT_WAIT_SECONDS = 5.0
#: The main loop looks at its clock at least this often.
MAX_SLEEP_SECONDS = 5.0


class Runtime:
    """Runs the daemon until stopped; :meth:`run` returns the process exit code."""

    def __init__(
        self,
        config: Config,
        environ: Mapping[str, str] | None = None,
        *,
        transport: httpx.BaseTransport | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.environ = dict(os.environ if environ is None else environ)
        self.transport = transport
        self.clock = clock
        self.notifier = Notifier(self.environ)
        self.metrics = Metrics()
        self.abort = threading.Event()
        self.paused = threading.Event()  # the scheduler's auth pause, as the workers see it
        self._wake = threading.Event()
        self._hints: deque[tuple[str, str, bool]] = deque()
        self._rescan_now = False
        self._fatal: LedgerError | None = None
        self.signals = Signals(self._wake.set)
        self.pool = WorkerPool(lambda job: self.uploader.run(job), self._wake.set)
        self.watches = fs.FolderWatches(Watcher(self._hint, self._overflowed))

    # --- start and stop ----------------------------------------------------------------------

    def run(self) -> int:
        """Runs the daemon in this thread until SIGTERM/SIGINT; returns the exit code.

        Raises UserError (config, key, lock, folder problems) before anything starts.
        """
        cfg = self.config
        problems = [p for p in fs.check_folders(cfg) if not p.endswith("does not exist")]
        if problems:
            raise ConfigError(problems)
        self.key = resolve_api_key(cfg.api, self.environ)
        logs.set_secrets([self.key.value])
        with contextlib.ExitStack() as stack:
            # Handlers first: a SIGHUP (a `retry`) right after the lock must not kill us.
            self.signals.install()
            stack.callback(self.signals.restore)
            lock_fd = lock_state_dir(cfg.sync.state_dir)
            stack.callback(os.close, lock_fd)
            try:
                self.ledger = Ledger.in_dir(cfg.sync.state_dir)
            except LedgerError as exc:
                raise UserError(str(exc)) from exc
            stack.callback(self.ledger.close)
            self._build(cfg)
            stack.callback(self.client.close)
            if (address := cfg.metrics.address) is not None:
                stack.callback(self.metrics.serve(*address).close)
            self._start()
            self._loop()
            return self._shutdown()
        raise AssertionError("unreachable")

    def _build(self, cfg: Config) -> None:
        self.client = HotTaskClient(
            cfg.api.base_url,
            self.key.value,
            timeout=cfg.api.timeout_seconds,
            max_connections=max(64, cfg.sync.concurrency),
            transport=self.transport,
        )
        self.uploader = Uploader(
            self.client,
            self.ledger,
            max_attempts=cfg.sync.max_attempts,
            key_source=self.key.source,
            paused=self.paused,
            throttle=Throttle(cfg.sync.bandwidth_limit, self.clock),
            abort=self.abort,
            metrics=self.metrics,
            clock=self.clock,
        )
        self.scheduler = Scheduler(
            cfg.folders,
            settle_seconds=cfg.sync.settle_seconds,
            concurrency=cfg.sync.concurrency,
            clock=self.clock,
            wall=time.time,
            stat=self._stat,
            lookup=lambda key: self.ledger.get(*key),
            auth_probe_seconds=cfg.api.auth_probe_seconds,
        )
        self.board = StatusBoard(self.notifier, self.metrics, self.clock)

    def _start(self) -> None:
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
        self.watches.watcher.start()
        for folder in cfg.folders:
            self.watches.watch(folder)
        self.scheduler.resume(self.ledger.in_state(State.PUT))
        for folder in cfg.folders:
            if folder.key not in self.watches.missing:
                self._scan(folder)
        self.pool.resize(cfg.sync.concurrency)
        self.board.refresh(self.ledger, self.scheduler, self.watches.missing, force=True)
        self.notifier.ready(self.board.line)
        log.info("daemon.ready", waiting=len(self.scheduler.settler), queued=self.scheduler.queued)

    def _shutdown(self) -> int:
        grace = self.config.sync.shutdown_grace_seconds
        self.notifier.stopping()
        log.info("daemon.stopping", in_flight=self.scheduler.in_flight, grace_seconds=grace)
        self.watches.watcher.stop()
        # Jobs not yet started stay as they are in the ledger and resume at the next start.
        for job in self.pool.close():
            self.scheduler.forget_in_flight(job)
        deadline = self.clock() + grace
        aborted = False
        while self.scheduler.in_flight:
            now = self.clock()
            if now >= deadline:
                if aborted:
                    break
                aborted = True
                self.abort.set()
                log.warning("daemon.cutting_off", in_flight=self.scheduler.in_flight)
                deadline = now + ABORT_WAIT_SECONDS
            self._wake.wait(min(0.5, max(0.0, deadline - now)))
            self._wake.clear()
            while self.pool.results:
                self.scheduler.forget_in_flight(self.pool.results.popleft()[0])
        self.notifier.close()
        if self._fatal is not None:
            log.critical("daemon.stopped", reason="ledger failure", error=str(self._fatal))
            return 1
        log.info("daemon.stopped")
        return 0

    # --- the main loop -----------------------------------------------------------------------

    def _loop(self) -> None:
        period = self.config.sync.rescan_seconds
        now = self.clock()
        next_rescan = now + period if period else float("inf")
        next_check = now + FOLDER_CHECK_SECONDS
        interval = self.notifier.watchdog_interval
        # No watchdog: no ping deadline (a past one would make every wait time out at once).
        next_ping = now if interval is not None else float("inf")
        try:
            while not self.signals.stop_requested:
                now = self.clock()
                if self.signals.reload_requested:
                    self.signals.reload_requested = False
                    self._reload()
                    next_rescan = now  # a reload (and `retry`) looks at every folder again
                self._drain_hints()
                self._drain_results()
                if self._rescan_now or now >= next_rescan:
                    self._rescan_now = False
                    self._scan_all()
                    period = self.config.sync.rescan_seconds
                    next_rescan = now + period if period else float("inf")
                if now >= next_check:
                    for folder in self.watches.check(self.scheduler.folders.values()):
                        self._scan(folder)
                    next_check = now + FOLDER_CHECK_SECONDS
                self._step()
                self.board.refresh(self.ledger, self.scheduler, self.watches.missing)
                if interval is not None and now >= next_ping:
                    if self.watches.watcher.healthy() and self.pool.healthy():
                        self.notifier.watchdog()
                    next_ping = now + interval
                self._sleep(now, next_rescan, next_check, next_ping)
        except LedgerError as exc:
            # A worker's failed write or the main thread's own (pending rows): either way
            # nothing more can be recorded.
            log.critical(
                "ledger.failed",
                error=str(exc),
                hint="uploads stopped: the ledger cannot record progress (disk full or "
                "read-only?); exiting so the service manager restarts it",
            )
            self._fatal = exc

    def _sleep(self, now: float, *deadlines: float) -> None:
        candidates = [*deadlines, self.board.next_refresh()]
        if (wake := self.scheduler.wake_at()) is not None:
            candidates.append(wake)
        self._wake.wait(min(max(0.0, min(candidates) - now), MAX_SLEEP_SECONDS))
        self._wake.clear()

    def _step(self) -> None:
        step = self.scheduler.step()
        if step.pending:
            self.ledger.add_pending(step.pending)
            self.board.stale = True
        for job in step.submit:
            if job.probe:
                self._refresh_key()  # it may have been fixed on disk
            self.pool.submit(job)

    # --- events in ---------------------------------------------------------------------------

    def _hint(self, folder_key: str, path: str, is_dir: bool) -> None:
        """Called on watchdog's thread: queue the path and wake the main loop."""
        self._hints.append((folder_key, path, is_dir))
        self._wake.set()

    def _overflowed(self) -> None:
        self._rescan_now = True
        self._wake.set()

    def _drain_hints(self) -> None:
        while self._hints:
            folder_key, path, is_dir = self._hints.popleft()
            folder = self.scheduler.folders.get(folder_key)
            if folder is not None:
                for rel, kind, sig in fs.hint_sightings(folder, path, is_dir):
                    self.scheduler.seen((folder_key, rel), kind, sig, from_scan=False)

    def _drain_results(self) -> None:
        results = self.pool.results
        while results:
            job, result = results.popleft()
            self.board.stale = True
            if isinstance(result, LedgerError):
                raise result  # handled once, in the main loop
            change = self.scheduler.finished(job, result)
            if change is not None:
                announce_auth(change, result, self.key.source, self.metrics)
        (self.paused.set if self.scheduler.paused else self.paused.clear)()

    def _stat(self, key: Key) -> FileSig | None:
        folder = self.scheduler.folders.get(key[0])
        return None if folder is None else lstat_regular(os.path.join(folder.path, key[1]))

    def _scan_all(self) -> None:
        started = self.clock()
        for folder in self.scheduler.folders.values():
            if folder.key not in self.watches.missing:
                self._scan(folder)
        log.info(
            "rescan.finished",
            duration_ms=round((self.clock() - started) * 1000, 1),
            waiting=len(self.scheduler.settler),
        )

    def _scan(self, folder: FolderConfig) -> None:
        known = self.ledger.snapshot(folder.key)
        self.scheduler.scanned(folder.key, fs.walk(str(folder.path), "", folder), known)

    # --- reload ------------------------------------------------------------------------------

    def _reload(self) -> None:
        self.notifier.reloading()
        try:
            new = load_config(self.config.source, self.environ)
        except ConfigError as exc:
            log.error("config.invalid", problems=exc.problems, hint="keeping the running config")
            self.notifier.ready(self.board.line)
            return
        old, self.config = self.config, new
        restart = _restart_needed(old, new)
        if restart:
            log.warning("config.restart_needed", keys=restart, hint="these take effect on restart")
        self.watches.reconcile(self.scheduler.folders.values(), new.folders)
        self.scheduler.reload(
            new.folders, settle_seconds=new.sync.settle_seconds, concurrency=new.sync.concurrency
        )
        self.pool.resize(new.sync.concurrency)
        logs.set_level(new.logging.level)
        self.uploader = replace(
            self.uploader,
            max_attempts=new.sync.max_attempts,
            throttle=Throttle(new.sync.bandwidth_limit, self.clock),
        )
        self._refresh_key(new.api if not restart else old.api, hint="keeping the running key")
        log.info(
            "config.reloaded",
            folders=[f.key for f in new.folders],
            settle_seconds=new.sync.settle_seconds,
            concurrency=new.sync.concurrency,
            level=new.logging.level,
        )
        self.notifier.ready(self.board.line)

    def _refresh_key(self, api: ApiConfig | None = None, hint: str | None = None) -> None:
        """Reads the key again; a new one reaches the workers as a new Uploader snapshot."""
        key = _reread_key(api or self.config.api, self.environ, self.key, hint)
        if key is not None:
            self.key = key
            self.uploader = replace(
                self.uploader, client=self.client.with_key(key.value), key_source=key.source
            )


def _reread_key(
    api: ApiConfig, environ: Mapping[str, str], current: ApiKey, hint: str | None
) -> ApiKey | None:
    """Returns the key read again when it differs from ``current``; None when it is the same
    or cannot be read (logged, with ``hint``)."""
    try:
        key = resolve_api_key(api, environ)
    except KeyNotFoundError as exc:
        log.error("auth.key_unreadable", error=str(exc), **({"hint": hint} if hint else {}))
        return None
    if key.value == current.value:
        return None
    logs.set_secrets([key.value, current.value])
    log.info("auth.key_reloaded", key_source=key.source)
    return key


def _restart_needed(old: Config, new: Config) -> list[str]:
    """Names the settings that changed but only take effect on restart."""
    return [
        name
        for name, a, b in (
            ("api", old.api, new.api),
            ("sync.state_dir", old.sync.state_dir, new.sync.state_dir),
            ("logging.format", old.logging.format, new.logging.format),
            ("metrics", old.metrics, new.metrics),
        )
        if a != b
    ]


def run_daemon(config: Config, environ: Mapping[str, str] | None = None) -> int:
    """Runs the daemon for ``config`` in this thread; returns the exit code."""
    return Runtime(config, environ).run()


__all__ = ["Runtime", "run_daemon"]
