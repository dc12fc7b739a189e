"""The daemon's runtime: the main loop that moves events into the scheduler and jobs out to
the workers, around it the threads, signals, sd_notify, metrics server and watcher.

Threads: watchdog's observers append hints to a deque; the workers append results to
another; signal handlers set flags. Every decision is the scheduler's, called only from the
main thread; what crosses threads is frozen (Jobs, Results, the Uploader snapshot).
"""

from __future__ import annotations

import contextlib
import gc
import os
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

import httpx

from . import folders as fs
from . import logs
from .client import CHUNK_SIZE, HotTaskClient
from .config import (
    MAX_SHUTDOWN_GRACE_SECONDS,
    ApiKey,
    Config,
    load_config,
    resolve_api_key,
)
from .errors import ConfigError, LedgerError, UserError
from .intake import HINTS_MAX, Intake
from .jobs import Job, Outcome
from .keyring import KeyReader
from .ledger import Ledger, State
from .notify import Notifier
from .outage import wait_out
from .pool import WorkerPool
from .scanner import Scanner
from .scheduler import Scheduler
from .signals import Signals
from .statedir import LOCK_WAIT_SECONDS, check_filesystem, lock_state_dir
from .status import StatusBoard, announce_auth
from .uploader import Uploader
from .watcher import Watcher
from .writer import LedgerWriter, SharedLedger

if TYPE_CHECKING:
    from .metrics import Metrics

log = logs.get_logger("hottask_sync.daemon")

#: After the grace period, an aborted PUT needs a moment to unwind.
ABORT_WAIT_SECONDS = 5.0
#: Then every thread gets this long, all together, to end (they are daemon threads: one
#: that hangs on a dead mount is left behind, not waited for).
JOIN_SECONDS = 2.0
#: The main loop looks at its clock at least this often.
MAX_SLEEP_SECONDS = 5.0
#: Without a systemd watchdog, threads and workers are checked this often all the same.
HEALTH_CHECK_SECONDS = 5.0


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
        # Recorded only when served: with metrics off, prometheus_client is never imported.
        self.metrics = metrics_for(config)
        self.abort = threading.Event()
        self.paused = threading.Event()  # the scheduler's auth pause, as the workers see it
        self._wake = threading.Event()
        self._fatal: LedgerError | None = None
        self.signals = Signals(self._wake.set)
        self.pool = WorkerPool(
            lambda job: self.uploader.run(job),
            self._wake_up,
            finish=lambda handoff: self.uploader.finish(handoff),
        )
        self.watches = fs.FolderWatches(
            Watcher(lambda *hint: self.intake.hint(*hint), lambda: self.intake.overflowed())
        )
        self.keeper = fs.FolderKeeper(self.watches, lambda folders: self.intake.scan(*folders))
        self.keys = KeyReader(self._wake.set, self.clock)
        self._probe: Job | None = None  # held until the key is read again
        self._dead: set[str] = set()  # parts whose thread died, named once

    # --- start and stop ----------------------------------------------------------------------

    def run(self) -> int:
        """Runs the daemon in this thread until SIGTERM/SIGINT; returns the exit code.

        Raises UserError (config, key, lock, folder problems) before anything starts.
        """
        cfg = self.config
        problems = [p for p in fs.check_folders(cfg) if not p.endswith("does not exist")]
        if problems:
            raise ConfigError(problems)
        check_filesystem(cfg.sync.state_dir, allow_network=cfg.sync.allow_network_state_dir)
        self.key = resolve_api_key(cfg.api, self.environ)
        logs.set_secrets([self.key.value])
        with contextlib.ExitStack() as stack:
            # Handlers first: a SIGHUP (a `retry`) right after the lock must not kill us.
            self.signals.install()
            stack.callback(self.signals.restore)
            # A previous instance may still be exiting: wait a few seconds for its lock.
            lock_fd = lock_state_dir(cfg.sync.state_dir, wait_seconds=LOCK_WAIT_SECONDS)
            stack.callback(os.close, lock_fd)
            try:
                self.ledger = Ledger.in_dir(cfg.sync.state_dir)
            except LedgerError as exc:
                raise UserError(str(exc)) from exc
            stack.callback(self.ledger.close)
            # Every write goes through one writer (group commit); reads have a connection
            # of their own. Stopped after everything else (callbacks run last first), so
            # that what the workers handed in is committed.
            self.writer = LedgerWriter(self.ledger)
            stack.callback(self.writer.stop, JOIN_SECONDS)
            self.records = SharedLedger(self.writer, self.ledger.path)
            stack.callback(self.records.close)
            self._build(cfg)
            stack.callback(self.client.close)
            if self.metrics is not None and (address := cfg.metrics.address) is not None:
                stack.callback(self.metrics.serve(*address).close)
            self._start()
            self._loop()
            return self._shutdown()
        raise AssertionError("unreachable")

    def _build(self, cfg: Config) -> None:
        self.client = client_for(cfg, self.key, self.transport)
        self.uploader = Uploader(
            self.client,
            self.records,
            max_attempts=0,  # set from the config just below, as at a reload
            key_source=self.key.source,
            paused=self.paused,
            abort=self.abort,
            metrics=self.metrics,
            clock=self.clock,
            beat=self.pool.beat,
        ).with_settings(cfg.sync)
        self.scheduler = scheduler_for(cfg, self.records, self.clock)
        self.board = StatusBoard(self.notifier, self.metrics)
        scanner = Scanner(
            self.ledger.path,
            self._wake.set,
            clock=self.clock,
            retention_days=cfg.sync.ledger_retention_days,
        )
        self.intake = Intake(self._wake.set, scanner)

    def _start(self) -> None:
        cfg = self.config
        log.info("daemon.starting", key_source=self.key.source, **_starting(cfg))
        fs.adopt_spellings(self.ledger, cfg.folders)  # before anything reads the ledger
        self.intake.start()
        self.watches.watcher.start()
        self.scheduler.resume(self.ledger.in_state(State.PUT))
        # Watches, then their scans, on threads of their own: ready waits for neither.
        self.keeper.start(cfg.folders)
        self.pool.resize(cfg.sync.concurrency)
        self.board.start(self.ledger, self._wake.set)
        self.board.refresh(self.scheduler, self.keeper.missing)
        frozen = freeze_start_up()
        self.notifier.ready(self.board.line)
        log.info(
            "daemon.ready",
            waiting=len(self.scheduler.settler),
            queued=self.scheduler.queued,
            frozen_objects=frozen,
        )

    def _shutdown(self) -> int:
        """Stops within grace + ABORT_WAIT_SECONDS + JOIN_SECONDS, whatever hangs."""
        grace = min(self.config.sync.shutdown_grace_seconds, MAX_SHUTDOWN_GRACE_SECONDS)
        self.notifier.stopping()
        log.info("daemon.stopping", in_flight=self.scheduler.in_flight, grace_seconds=grace)
        # Jobs not yet started stay as they are in the ledger and resume at the next start.
        for job in self.pool.close():
            self.scheduler.forget_in_flight(job)
        if self._probe is not None:  # held for a key read: never started
            self.scheduler.forget_in_flight(self._probe)
        self._finish_in_flight(grace)
        deadline = self.clock() + JOIN_SECONDS
        self.watches.watcher.stop(timeout=max(0.0, deadline - self.clock()))
        for part in (self.keeper, self.intake, self.board):
            if part is not None:
                part.stop(timeout=max(0.0, deadline - self.clock()))
        self.notifier.close()
        if self._fatal is not None:
            log.critical("daemon.stopped", reason="ledger failure", error=str(self._fatal))
            return 1
        log.info("daemon.stopped")
        return 0

    def _finish_in_flight(self, grace: float) -> None:
        """Lets running uploads finish for ``grace`` seconds, then cuts them off and gives
        them ABORT_WAIT_SECONDS to unwind."""
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
            self._nap(min(0.5, max(0.0, deadline - now)))
            self._settle_results()

    # --- the main loop -----------------------------------------------------------------------

    def _loop(self) -> None:
        period = self.config.sync.rescan_seconds
        now = self.clock()
        next_rescan = now + period if period else float("inf")
        interval = self.notifier.watchdog_interval
        # Health is checked at every ping, or every HEALTH_CHECK_SECONDS without a watchdog
        # (dead parts and stuck workers are named all the same).
        check_every = interval if interval is not None else HEALTH_CHECK_SECONDS
        next_ping = now
        try:
            while not self.signals.stop_requested:
                now = self.clock()
                if self.signals.reload_requested:
                    self.signals.reload_requested = False
                    self._reload()  # the folder keeper then scans every folder again
                    period = self.config.sync.rescan_seconds
                    next_rescan = now + period if period else float("inf")
                self.intake.drain(self.scheduler)
                self._drain_results()
                if self.intake.rescan_now or now >= next_rescan:
                    self.intake.rescan_now = False
                    self.intake.scan_all(self.scheduler, self.keeper.missing)
                    period = self.config.sync.rescan_seconds
                    next_rescan = now + period if period else float("inf")
                self._step()
                self.board.refresh(self.scheduler, self.keeper.missing)
                if now >= next_ping:
                    if self._healthy() and interval is not None:
                        self.notifier.watchdog()
                    next_ping = now + check_every
                self._sleep(now, next_rescan, next_ping)
        except LedgerError as exc:
            # A worker's failed write or the main thread's own (pending rows): either way
            # nothing more can be recorded.
            log.critical(
                "ledger.failed",
                error=str(exc),
                hint="uploads stopped: the ledger cannot record progress (disk full or "
                "read-only?); waiting until it can, then exiting for a restart",
            )
            self._fatal = exc
            self._wait_out(exc, next_ping)

    def _wait_out(self, error: LedgerError, next_ping: float) -> None:
        """Keeps the watchdog fed while the ledger cannot be written; returns once it can
        (or on SIGTERM). Nothing is handed out meanwhile."""
        for job in self.pool.close():
            self.scheduler.forget_in_flight(job)
        self.notifier.status(f"waiting: the ledger cannot be written ({error})")
        wait_out(
            probe=self.ledger.probe_write,
            clock=self.clock,
            stopping=lambda: self.signals.stop_requested,
            ping=self.notifier.watchdog,
            interval=self.notifier.watchdog_interval,
            # Without a watchdog there is no ping to keep (a past deadline would spin).
            next_ping=next_ping if self.notifier.watchdog_interval is not None else float("inf"),
            nap=self._nap,
            meanwhile=self._settle_results,  # running uploads end (they cannot record)
        )

    def _nap(self, seconds: float) -> None:
        self._wake.wait(seconds)
        self._wake.clear()

    def _wake_up(self) -> None:
        """Wakes the main loop (a worker's result). An event still set is left as it is:
        set() takes the event's lock every time, two results a file from up to 24 threads;
        and the loop looks at every result after it clears the event (see _nap)."""
        if not self._wake.is_set():
            self._wake.set()

    def _settle_results(self) -> None:
        """While stopping: takes results in without acting on them (a hand-off to the report
        stage is still in flight; anything else is done, or resumes at the next start)."""
        while self.pool.results:
            job, result = self.pool.results.popleft()
            if isinstance(result, LedgerError) or result.outcome is not Outcome.REPORTING:
                self.scheduler.forget_in_flight(job)
            else:
                self.scheduler.finished(job, result)

    def _sleep(self, now: float, *deadlines: float) -> None:
        candidates = list(deadlines)
        if (key_deadline := self.keys.deadline()) is not None:
            candidates.append(key_deadline)
        if (wake := self.scheduler.wake_at()) is not None:
            candidates.append(wake)
        self._nap(min(max(0.0, min(candidates) - now), MAX_SLEEP_SECONDS))

    def _healthy(self) -> bool:
        """Every thread alive (a dead one would stall the pipeline quietly: each newly dead
        part is named in an error) and every busy worker making progress (the stuck are
        named too)."""
        stuck = self.pool.check_progress(progress_bound(self.config))
        parts: tuple[tuple[str, Callable[[], bool]], ...] = (
            ("watcher", self.watches.watcher.healthy),
            ("upload workers", self.pool.alive),
            ("folder keeper", self.keeper.alive),
            ("lookups", self.intake.lookups.alive),
            ("scanner", self.intake.scanner.alive),
        )
        dead = {name for name, alive in parts if not alive()}
        for name in sorted(dead - self._dead):
            log.error(
                "daemon.thread_died",
                part=name,
                hint="a bug stopped part of the pipeline; no more watchdog pings (with "
                "WatchdogSec=, systemd restarts the service)",
            )
        self._dead = dead
        return not dead and not stuck

    def _step(self) -> None:
        step = self.scheduler.step()
        self.intake.ask(step, self.scheduler)
        if step.pending:
            try:
                self.records.add_pending(step.pending)
            except LedgerError:
                for job in step.submit:  # never handed out: not in flight
                    self.scheduler.forget_in_flight(job)
                raise
            self.board.mark_stale()
        for job in step.submit:
            if job.probe:
                # The key may have been fixed on disk: the probe goes once it is read again.
                self._probe = job
                self.keys.start(self.config.api, self.environ)
            else:
                self.pool.submit(job)
        self._take_key()

    def _take_key(self) -> None:
        """Applies a key read that ended (a new key reaches the workers as a new Uploader
        snapshot), then lets a probe held for it go."""
        if (key := self.keys.take(self.key)) is not None:
            self.key = key
            self.uploader = self.uploader.with_key(key)
        if self._probe is not None and not self.keys.busy:
            self.pool.submit(self._probe)
            self._probe = None

    def _drain_results(self) -> None:
        results = self.pool.results
        while results:
            job, result = results.popleft()
            self.board.mark_stale()
            if isinstance(result, LedgerError):
                self.scheduler.forget_in_flight(job)  # its worker is done with it
                raise result  # handled once, in the main loop
            change = self.scheduler.finished(job, result)
            if change is not None:
                announce_auth(change, result, self.key.source, self.metrics)
        (self.paused.set if self.scheduler.paused else self.paused.clear)()

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
        self.keeper.reload(new.folders)
        self.scheduler.reload(
            new.folders, settle_seconds=new.sync.settle_seconds, concurrency=new.sync.concurrency
        )
        # A report owed in a folder added back is resumed (others are under way already).
        self.scheduler.resume(self.ledger.in_state(State.PUT))
        self.pool.resize(new.sync.concurrency)
        self.intake.scanner.retention_days = new.sync.ledger_retention_days
        logs.set_level(new.logging.level)
        self.uploader = self.uploader.with_settings(new.sync)
        self.keys.start(new.api if not restart else old.api, self.environ)
        log.info("config.reloaded", level=new.logging.level, **_starting(new))
        self.notifier.ready(self.board.line)


def freeze_start_up() -> int:
    """Collects start-up's garbage, then moves every object left (modules, config, pools:
    they live as long as the daemon) into the cyclic collector's permanent generation,
    never walked again; returns how many. Each full pass of the collector walked them all
    again: 4 % of row 1's CPU per file (bench/README)."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def _starting(cfg: Config) -> dict[str, object]:
    """What daemon.starting says of the config."""
    return {
        "folders": [f.key for f in cfg.folders],
        "state_dir": str(cfg.sync.state_dir),
        "base_url": cfg.api.base_url,
        "concurrency": cfg.sync.concurrency,
        "settle_seconds": cfg.sync.settle_seconds,
    }


def metrics_for(config: Config) -> Metrics | None:
    """The daemon's metrics when the config serves them, else None (nothing recorded)."""
    if config.metrics.address is None:
        return None
    from .metrics import Metrics  # prometheus_client: start-up CPU only when used

    return Metrics()


def client_for(
    config: Config, key: ApiKey, transport: httpx.BaseTransport | None = None
) -> HotTaskClient:
    """The daemon's one HTTP client, as the config says."""
    return HotTaskClient(
        config.api.base_url,
        key.value,
        timeout=config.api.timeout_seconds,
        max_connections=max(64, config.sync.concurrency),
        transport=transport,
        allow_insecure_http=config.api.allow_insecure_http,
    )


def scheduler_for(config: Config, records: SharedLedger, clock: Callable[[], float]) -> Scheduler:
    """The daemon's scheduler, as the config says (ledger rows read through ``records``)."""
    return Scheduler(
        config.folders,
        settle_seconds=config.sync.settle_seconds,
        concurrency=config.sync.concurrency,
        clock=clock,
        wall=time.time,
        lookup=lambda key: records.get(*key),
        auth_probe_seconds=config.api.auth_probe_seconds,
        max_tracked=HINTS_MAX,
    )


def progress_bound(config: Config) -> float:
    """Seconds a busy worker may go without progress before it counts as stuck: every
    network wait ends within the timeout, and a throttled chunk within its share."""
    rate = config.sync.bandwidth_limit
    return 2 * config.api.timeout_seconds + 10.0 + (CHUNK_SIZE / rate if rate > 0 else 0.0)


def _restart_needed(old: Config, new: Config) -> list[str]:
    """Names (and logs) the settings that changed but only take effect on restart."""
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
    return restart


def run_daemon(config: Config, environ: Mapping[str, str] | None = None) -> int:
    """Runs the daemon for ``config`` in this thread; returns the exit code."""
    return Runtime(config, environ).run()


__all__ = ["Runtime", "run_daemon"]
