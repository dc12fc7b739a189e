"""Prometheus metrics of the daemon, and the small HTTP server that exposes them.

Every :class:`Metrics` owns its own ``CollectorRegistry`` (never prometheus_client's global
one), so tests and embedders can create as many as they like. The server answers
``GET /metrics`` with the text exposition format and 404 everywhere else.
"""

from __future__ import annotations

import errno
import socket
import socketserver
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from .errors import UserError

__all__ = ["DURATION_BUCKETS", "FAILURE_CLASSES", "FILE_STATES", "Metrics", "MetricsServer"]

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
        address not on this machine, privileged port), each chained to the OSError.
        """
        return MetricsServer(host, port, self.render)


class _Handler(BaseHTTPRequestHandler):
    """Answers GET (and HEAD) /metrics; 404 on other paths; 501 on other methods."""

    server: _HTTPServer
    protocol_version = "HTTP/1.0"

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

    def log_message(self, format: str, *args: Any) -> None:
        """Logs nothing: a scrape every 15 s must not fill the journal."""


class _HTTPServer(ThreadingHTTPServer):
    """A ThreadingHTTPServer for one address family that renders the metrics it serves."""

    daemon_threads = True  # a stuck scraper must not keep the process alive
    allow_reuse_address = True  # rebind at once after a restart despite TIME_WAIT connections

    def __init__(self, address: tuple[Any, ...], family: int, render: Callable[[], bytes]) -> None:
        self.address_family = family  # read by TCPServer.__init__ to create the socket
        self.render = render
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls socket.getfqdn(), a reverse DNS lookup that can
        # hang for seconds; the name is only used for CGI, so skip it.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)


def _display(host: str, port: int) -> str:
    """Returns host:port as a user writes it in the config ([::1]:9464 for IPv6)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class MetricsServer:
    """A running metrics HTTP server; close() stops it and frees the port."""

    port: int
    """The port actually bound (the chosen one when asked for port 0)."""

    def __init__(self, host: str, port: int, render: Callable[[], bytes]) -> None:
        """Binds host:port and starts serving render() from a daemon thread (see Metrics.serve)."""
        where = _display(host, port)
        try:
            infos = socket.getaddrinfo(
                host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )
            family, _, _, _, sockaddr = infos[0]
            self._httpd = _HTTPServer(sockaddr, family, render)
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
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()
