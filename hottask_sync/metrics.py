"""Prometheus metrics of the daemon, and the small HTTP server that exposes them.

Every :class:`Metrics` owns its own ``CollectorRegistry`` (never prometheus_client's global
one), so tests and embedders can create as many as they like. The server answers
``GET /metrics`` with the text exposition format and 404 everywhere else, and stays bounded
whatever its clients do (a few connections at a time, a read timeout, an accept loop that
pauses when descriptors run out, errors as log events: see :class:`MetricsServer`).
"""

from __future__ import annotations

import contextlib
import errno
import socket
import socketserver
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from .errors import UserError
from .logs import get_logger

__all__ = ["DURATION_BUCKETS", "FAILURE_CLASSES", "FILE_STATES", "Metrics", "MetricsServer"]

log = get_logger("hottask_sync.metrics")

#: Seconds a metrics client gets for each read or write (a scraper sends its request at once).
READ_TIMEOUT_SECONDS = 3.0

#: Connections served at once: a scraper needs one, a handful covers a few of them.
MAX_CONNECTIONS = 4

#: The first pause of the accept loop after accept() failed for lack of descriptors or
#: memory, doubled on each failure in a row up to ACCEPT_PAUSE_MAX.
ACCEPT_PAUSE_FIRST = 0.05
ACCEPT_PAUSE_MAX = 1.0

# accept() errors that last until something else frees resources: retrying at once spins.
_OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})

# What generate_latest() produces: the classic text format (prometheus_client's own
# CONTENT_TYPE_LATEST names a newer version in recent releases).
_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: The values of the ``class`` label of ``hottask_sync_upload_failures_total``.
FAILURE_CLASSES = ("transient", "auth", "permanent", "expired", "changed")

#: The values of the ``state`` label of ``hottask_sync_files``.
FILE_STATES = ("uploaded", "pending", "failed")

#: Upload duration buckets in seconds: 10 ms for a tiny file on a LAN up to 1 h for 5 GiB.
DURATION_BUCKETS = (
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
    1800.0,
    3600.0,
)


class Metrics:
    """The daemon's counters and gauges, in a registry of their own."""

    registry: CollectorRegistry
    """The registry every metric of this instance is registered in."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        """Registers all metrics in registry (a new CollectorRegistry by default).

        Every label value is created up front, so each series is exported as 0 from the
        first scrape (a rate() over a series that appears late misses its first increment).
        """
        self.registry = CollectorRegistry() if registry is None else registry
        r = self.registry
        self._uploads = Counter("hottask_sync_uploads", "Files uploaded successfully.", registry=r)
        self._uploaded_bytes = Counter(
            "hottask_sync_uploaded_bytes", "Size of the files uploaded successfully.", registry=r
        )
        self._duration = Histogram(
            "hottask_sync_upload_duration_seconds",
            "Time to upload one file, from the first request to success.",
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self._last_success = Gauge(
            "hottask_sync_last_success_timestamp_seconds",
            "Unix time of the last successful upload (0 before the first one).",
            registry=r,
        )
        self._failures = Counter(
            "hottask_sync_upload_failures",
            "Failed upload attempts, by class of error.",
            ["class"],
            registry=r,
        )
        for error_class in FAILURE_CLASSES:
            self._failures.labels(error_class)
        self._sent_bytes = Counter(
            "hottask_sync_sent_bytes",
            "Bytes of file content sent to storage, including retried attempts.",
            registry=r,
        )
        self._queue_depth = Gauge(
            "hottask_sync_queue_depth",
            "Files waiting to settle or to be uploaded.",
            registry=r,
        )
        self._files = Gauge(
            "hottask_sync_files", "Files in the ledger, by state.", ["state"], registry=r
        )
        for state in FILE_STATES:
            self._files.labels(state)
        self._auth_blocked = Gauge(
            "hottask_sync_auth_blocked",
            "1 while uploads are paused because HotTask rejected the API key, else 0.",
            registry=r,
        )

    def upload_succeeded(self, size: int, seconds: float) -> None:
        """Records one uploaded file of size bytes that took seconds, at the current time.

        Raises ValueError if size is negative (counters only go up).
        """
        self._uploads.inc()
        self._uploaded_bytes.inc(size)
        self._duration.observe(seconds)
        self._last_success.set(time.time())

    def upload_failed(self, error_class: str) -> None:
        """Counts one failed attempt; error_class is one of FAILURE_CLASSES.

        Raises ValueError for any other class (a bug in the caller, kept out of the labels
        so the number of series stays bounded).
        """
        if error_class not in FAILURE_CLASSES:
            raise ValueError(f"unknown upload failure class {error_class!r}")
        self._failures.labels(error_class).inc()

    def bytes_sent(self, n: int) -> None:
        """Adds n bytes sent to storage (counted again when an attempt is retried).

        Raises ValueError if n is negative.
        """
        self._sent_bytes.inc(n)

    def set_queue_depth(self, n: int) -> None:
        """Sets the number of files waiting to settle or to be uploaded."""
        self._queue_depth.set(n)

    def set_counts(self, uploaded: int, pending: int, failed: int) -> None:
        """Sets the number of files in the ledger in each state."""
        self._files.labels("uploaded").set(uploaded)
        self._files.labels("pending").set(pending)
        self._files.labels("failed").set(failed)

    def set_auth_blocked(self, blocked: bool) -> None:
        """Sets whether uploads are paused on a rejected API key (exported as 1 or 0)."""
        self._auth_blocked.set(1 if blocked else 0)

    def render(self) -> bytes:
        """Returns every metric in the Prometheus text exposition format."""
        return generate_latest(self.registry)

    def serve(self, host: str, port: int) -> MetricsServer:
        """Serves GET /metrics on host:port from a daemon thread, and returns the server.

        port 0 picks a free port (see ``MetricsServer.port``). An IPv6 host is given without
        brackets. Raises UserError("metrics.listen HOST:PORT: address already in use") when
        the port is taken, and UserError for any other failure to listen (unknown host,
        address not on this machine, privileged port), each chained to the OSError. The
        server's limits are MetricsServer's defaults (READ_TIMEOUT_SECONDS, MAX_CONNECTIONS).
        """
        return MetricsServer(host, port, self.render)


@dataclass(frozen=True, slots=True)
class _Limits:
    """What MetricsServer grants its clients (see its constructor)."""

    read_timeout: float
    max_connections: int
    pause: Callable[[float], object]

    def __post_init__(self) -> None:
        if not self.read_timeout > 0:
            raise ValueError(f"read_timeout must be positive, not {self.read_timeout!r}")
        if self.max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, not {self.max_connections!r}")


class _Slot:
    """One admitted connection: who it is from, and whether its request has been read."""

    __slots__ = ("answering", "peer")

    def __init__(self, peer: str) -> None:
        self.peer = peer
        self.answering = False


class _Slots:
    """The connections being served: at most ``limit`` at a time, whatever clients do.

    A connection still waiting for its request (an idle or trickling client) holds its slot
    only until a newer connection needs one: then the oldest such connection is shut down,
    so idle connections can never lock a scraper out. A new connection finding every slot
    busy answering is refused. All methods are thread-safe.
    """

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._lock = threading.Lock()
        self._open: dict[socket.socket, _Slot] = {}  # in admission order: oldest first

    def admit(self, conn: socket.socket, peer: str) -> tuple[bool, str | None]:
        """Takes a slot for conn if one is free or can be freed; returns (admitted, the peer
        of the connection shut down to make room, if any)."""
        with self._lock:
            evicted = None
            if len(self._open) >= self._limit:
                victim = next((c for c, slot in self._open.items() if not slot.answering), None)
                if victim is None:
                    return False, None
                evicted = self._open.pop(victim).peer
                # Under the lock: its thread closes it only after release(), so this can
                # never shut down a reused descriptor. Its blocked read returns EOF at once.
                with contextlib.suppress(OSError):
                    victim.shutdown(socket.SHUT_RDWR)
            self._open[conn] = _Slot(peer)
            return True, evicted

    def answering(self, conn: socket.socket) -> bool:
        """Marks conn's request as read: from now on it is never shut down for a newcomer.

        Returns False if conn was shut down for a newcomer already: its "request" is
        whatever came before the shutdown, and must not be answered.
        """
        with self._lock:
            if (slot := self._open.get(conn)) is None:
                return False
            slot.answering = True
            return True

    def release(self, conn: socket.socket) -> None:
        """Frees conn's slot (a no-op for a connection never admitted or already evicted);
        called before conn is closed."""
        with self._lock:
            self._open.pop(conn, None)


class _AcceptBackoff:
    """Paces accept() while it fails for lack of descriptors or memory.

    The pending connection stays in the listen queue, so the listening socket stays readable
    and an unpaced loop would retry at once, forever, on a whole core. Each failure in a row
    pauses twice as long as the one before, from ACCEPT_PAUSE_FIRST up to ACCEPT_PAUSE_MAX; a
    successful accept starts over. One warning per episode, one info line when it ends.
    """

    def __init__(self, pause: Callable[[float], object]) -> None:
        self._pause = pause
        self._failures = 0

    def failed(self, exc: OSError) -> None:
        """Records a failed accept, logs it (the first of an episode) and pauses."""
        delay = min(ACCEPT_PAUSE_FIRST * 2**self._failures, ACCEPT_PAUSE_MAX)
        if self._failures == 0:
            log.warning(
                "metrics.accept_failed",
                error=exc.strerror or str(exc),
                errno=errno.errorcode.get(exc.errno or 0, str(exc.errno)),
                pause_seconds=delay,
            )
        self._failures += 1
        self._pause(delay)

    def succeeded(self) -> None:
        """Records a successful accept: the next failure pauses briefly again."""
        if self._failures:
            log.info("metrics.accept_recovered", failures=self._failures)
            self._failures = 0


class _Handler(BaseHTTPRequestHandler):
    """Answers GET (and HEAD) /metrics; 404 on other paths; 501 on other methods."""

    server: _HTTPServer
    protocol_version = "HTTP/1.0"

    def parse_request(self) -> bool:
        """Reads the request's headers, then takes its slot for good (see _Slots); returns
        whether to answer it (not when evicted while reading: the headers end early there)."""
        ok = super().parse_request()
        if not self.server.slots.answering(self.request):
            self.close_connection = True
            return False
        return ok

    def do_GET(self) -> None:
        self._answer(with_body=True)

    def do_HEAD(self) -> None:
        self._answer(with_body=False)

    def _answer(self, *, with_body: bool) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            body, status, content_type = self.server.render(), 200, _CONTENT_TYPE
        else:
            body, status, content_type = b"404 not found: try /metrics\n", 404, "text/plain"
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if with_body:
            self.wfile.write(body)

    def log_error(self, format: str, *args: Any) -> None:
        """Logs a request refused or timed out (400, 501, ...) as a debug event, never to
        stderr: a client's mistake is not the daemon's problem."""
        log.debug("metrics.bad_request", peer=_peer(self.client_address), detail=format % args)

    def log_message(self, format: str, *args: Any) -> None:
        """Logs nothing: a scrape every 15 s must not fill the journal."""


class _HTTPServer(ThreadingHTTPServer):
    """A ThreadingHTTPServer for one address family that renders the metrics it serves,
    with bounded connections (see _Slots), a read timeout, a paced accept (see
    _AcceptBackoff) and errors logged through structlog instead of printed on stderr."""

    daemon_threads = True  # a stuck scraper must not keep the process alive
    allow_reuse_address = True  # rebind at once after a restart despite TIME_WAIT connections
    # Connections wait in the kernel, costing no descriptor, until accepted: a burst of
    # connections is accepted (and refused or admitted) instead of SYNs being dropped.
    request_queue_size = 64

    def __init__(
        self,
        address: tuple[Any, ...],
        family: int,
        render: Callable[[], bytes],
        limits: _Limits,
    ) -> None:
        self.address_family = family  # read by TCPServer.__init__ to create the socket
        self.render = render
        self.read_timeout = limits.read_timeout
        self.slots = _Slots(limits.max_connections)
        self._backoff = _AcceptBackoff(limits.pause)
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls socket.getfqdn(), a reverse DNS lookup that can
        # hang for seconds; the name is only used for CGI, so skip it.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def get_request(self) -> tuple[socket.socket, Any]:
        """Accepts a connection; out of descriptors or memory, pauses before raising (the
        caller, serve_forever, then skips this round)."""
        try:
            conn, address = self.socket.accept()
        except OSError as exc:
            if exc.errno in _OUT_OF_RESOURCES:
                self._backoff.failed(exc)
            raise
        self._backoff.succeeded()
        return conn, address

    def process_request(self, request: Any, client_address: Any) -> None:
        """Serves request on a thread of its own if it gets a slot; else closes it at once."""
        peer = _peer(client_address)
        admitted, evicted = self.slots.admit(request, peer)
        if evicted is not None:
            log.debug("metrics.connection_evicted", peer=evicted, reason="idle, slot needed")
        if not admitted:
            log.debug("metrics.connection_refused", peer=peer, reason="too many connections")
            self.shutdown_request(request)
            return
        request.settimeout(self.read_timeout)  # every read and write, not just the first
        threading.Thread(
            target=self.process_request_thread,
            args=(request, client_address),
            name="hottask-sync-metrics-request",
            daemon=True,
        ).start()

    def shutdown_request(self, request: Any) -> None:
        """Frees request's slot, then closes it."""
        self.slots.release(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Logs the exception being handled: a client's reset, broken pipe or timeout at
        debug level, anything else as a warning with its traceback; never prints."""
        exc = sys.exc_info()[1]
        peer = _peer(client_address)
        if isinstance(exc, OSError):
            log.debug("metrics.connection_error", peer=peer, error=str(exc) or repr(exc))
        else:
            log.warning("metrics.request_failed", peer=peer, error=repr(exc), exc_info=True)


def _display(host: str, port: int) -> str:
    """Returns host:port as a user writes it in the config ([::1]:9464 for IPv6)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _peer(address: Any) -> str:
    """Returns a client's address for a log line (host:port, or as given if unusual)."""
    if isinstance(address, tuple) and len(address) >= 2:
        return _display(str(address[0]), int(address[1]))
    return str(address)


class MetricsServer:
    """A running metrics HTTP server; close() stops it and frees the port.

    Bounded whatever clients do: at most ``max_connections`` connections served at a time
    (see _Slots), each read or write on one given ``read_timeout`` seconds, and accept()
    paced when descriptors run out; no error is ever printed, each is a structlog event.
    """

    port: int
    """The port actually bound (the chosen one when asked for port 0)."""

    def __init__(
        self,
        host: str,
        port: int,
        render: Callable[[], bytes],
        *,
        read_timeout: float = READ_TIMEOUT_SECONDS,
        max_connections: int = MAX_CONNECTIONS,
        pause: Callable[[float], object] | None = None,
    ) -> None:
        """Binds host:port and starts serving render() from a daemon thread (see Metrics.serve).

        read_timeout bounds every read and write on a connection; max_connections the
        connections served at once; pause(seconds) is how the accept loop waits after
        running out of descriptors (by default, a wait that close() cuts short). Raises
        ValueError for a read_timeout not above 0 or max_connections below 1.
        """
        self._stopping = threading.Event()
        limits = _Limits(read_timeout, max_connections, pause or self._stopping.wait)
        where = _display(host, port)
        try:
            infos = socket.getaddrinfo(
                host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )
            family, _, _, _, sockaddr = infos[0]
            self._httpd = _HTTPServer(sockaddr, family, render, limits)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise UserError(f"metrics.listen {where}: address already in use") from exc
            reason = exc.strerror or str(exc)
            raise UserError(f"metrics.listen {where}: {reason}") from exc
        self.port = int(self._httpd.server_address[1])
        self._closed = False
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.1},
            name="hottask-sync-metrics",
            daemon=True,
        )
        self._thread.start()

    def close(self) -> None:
        """Stops serving, waits for the serving thread to end and closes the socket.

        Safe to call more than once. Scrapes in progress finish on their own threads.
        """
        if self._closed:
            return
        self._closed = True
        self._stopping.set()  # cuts short an accept backoff pause
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()
