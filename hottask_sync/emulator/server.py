"""The emulator's HTTP server: the :class:`Emulator` (lifecycle and state), the tickets and
files it stores, and the handling of every request on a real socket.

It speaks the three calls of the real service:

* ``POST /chat/User/GetPreUploadUrl`` issues a ticket (a FileStoreId and a presigned URL);
* ``PUT /hottask-bucket/<id>/<uuid><ext>?X-Amz-...`` stores the bytes, checked like S3 checks
  a presigned URL (signature, expiry, Content-Length, 5 GiB limit);
* ``POST /chat/User/ReportUploadSuccess`` marks the upload as done; a repeated report of the
  same FileStoreId is accepted again, or, with ``reject_repeat_reports``, refused with a
  business error (HTTP 200, ``Success`` false, :data:`REPEAT_REPORT_CODE`,
  :data:`REPEAT_REPORT_MESSAGE`): the API page does not say which the real service does.

Files land under ``data_dir/<FileStoreId>/<fileName>``. Two extra unauthenticated endpoints
serve tests that run the emulator as a subprocess: ``GET /_emulator/state`` and
``POST /_emulator/faults``.

Every response is sent as one ``sendall`` on a ``TCP_NODELAY`` socket: the stdlib's separate
header and body writes meet Nagle's algorithm and the peer's delayed ACK and stall each
keep-alive call for ~40 ms.

``Emulator(bench=True)`` serves the same calls on a lean request path for benchmarks
(:class:`_LeanHandler`, at the end of this module): uploads checked and counted, not stored.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import hmac
import ipaddress
import json
import math
import os
import re
import secrets
import socket
import socketserver
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, Final, cast
from xml.sax.saxutils import escape as xml_escape

from .faults import (
    NO_FAULT,
    FaultInjector,
    Faults,
    Outcome,
    Plan,
    faults_from_json,
    faults_to_json,
    is_number,
)
from .signing import BUCKET, UrlSigner, fmt_seconds

__all__ = ["Emulator", "TicketInfo"]

FIRST_FILE_STORE_ID: Final = 34317
MAX_PUT_SIZE: Final = 5 * 1024**3  # S3's limit for a single PUT
MAX_FILE_NAME_BYTES: Final = 1024
MAX_STORED_NAME_BYTES: Final = 255  # NAME_MAX of common filesystems
MAX_API_BODY: Final = 1024 * 1024
CHUNK: Final = 1024 * 1024
API_VERSION: Final = "1.0.0"
SERVER_HEADER: Final = "HotTaskEmulator/1.0"
JSON_TYPE: Final = "application/json; charset=utf-8"
XML_TYPE: Final = "application/xml"

#: The business error a repeated report gets with ``reject_repeat_reports``.
REPEAT_REPORT_CODE: Final = 409
REPEAT_REPORT_MESSAGE: Final = "file already reported"

_PRE_PATH: Final = "/chat/user/getpreuploadurl"
_REPORT_PATH: Final = "/chat/user/reportuploadsuccess"
_COUNTERS: Final = ("pre", "put", "report", "auth_failed", "faulted", "put_incomplete")
_HOST_RE: Final = re.compile(r"^(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?$")
_CHUNK_SIZE_RE: Final = re.compile(rb"^[0-9A-Fa-f]{1,16}$")
_QUERY_RE: Final = re.compile(r"\?[^\s'\"]*")
_IDLE_TIMEOUT: Final = 120.0  # seconds a keep-alive connection may sit idle or stall mid-body
_LINGER_SECONDS: Final = 2.0
_LINGER_QUIET: Final = 0.25
_STOP_JOIN_SECONDS: Final = 1.5


# --- tickets and storage ----------------------------------------------------------------


@dataclass(frozen=True)
class TicketInfo:
    """A snapshot of one issued FileStoreId and what happened to it."""

    file_store_id: str
    file_name: str
    created_at: float
    put_count: int
    size: int | None
    sha256: str | None
    stored_path: Path | None
    reported_count: int
    #: Seconds the body of the last complete PUT took to arrive, as this server saw it (from
    #: starting to read it to its last byte); None before a PUT completed.
    put_seconds: float | None = None


@dataclass
class _Ticket:
    file_store_id: str
    file_name: str
    created_at: float
    object_key: str  # "<uuid4><ext>": the last path segment of the presigned URL
    stored_name: str
    put_count: int = 0
    size: int | None = None
    sha256: str | None = None
    stored_path: Path | None = None
    reported_count: int = 0
    put_seconds: float | None = None

    def info(self) -> TicketInfo:
        return TicketInfo(
            file_store_id=self.file_store_id,
            file_name=self.file_name,
            created_at=self.created_at,
            put_count=self.put_count,
            size=self.size,
            sha256=self.sha256,
            stored_path=self.stored_path,
            reported_count=self.reported_count,
            put_seconds=self.put_seconds,
        )

    def state_json(self) -> dict[str, Any]:
        return {
            "file_name": self.file_name,
            "created_at": self.created_at,
            "put_count": self.put_count,
            "size": self.size,
            "sha256": self.sha256,
            "stored_path": None if self.stored_path is None else str(self.stored_path),
            "reported_count": self.reported_count,
        }


def _file_name_problem(name: str) -> str | None:
    """Returns why HotTask would refuse ``name`` as a fileName, or None if it is fine."""
    if not name:
        return "fileName is required"
    if "/" in name:
        return "fileName must not contain '/'"
    if "\x00" in name:
        return "fileName must not contain NUL"
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError:
        return "fileName is not valid Unicode"
    if len(encoded) > MAX_FILE_NAME_BYTES:
        return f"fileName is longer than {MAX_FILE_NAME_BYTES} bytes"
    return None


def _stored_name(name: str) -> str:
    """Returns the on-disk name for a fileName: itself, unless the filesystem cannot take it.

    "." and ".." get a "_" prefix; a name over 255 bytes of UTF-8 is cut (keeping a short
    extension) at a character boundary so that it stays valid UTF-8.
    """
    if name in (".", ".."):
        return "_" + name
    if len(name.encode("utf-8")) <= MAX_STORED_NAME_BYTES:
        return name
    stem, ext = os.path.splitext(name)
    if len(ext.encode("utf-8")) > 32:
        stem, ext = name, ""
    budget = MAX_STORED_NAME_BYTES - len(ext.encode("utf-8"))
    # Cutting inside a multi-byte character leaves a partial sequence that "ignore" drops.
    return stem.encode("utf-8")[:budget].decode("utf-8", "ignore") + ext


def _first_free_id(data_dir: Path) -> int:
    """The first FileStoreId not already used by a directory in ``data_dir``.

    A restarted emulator continues the numbering instead of overwriting earlier files.
    """
    highest = FIRST_FILE_STORE_ID - 1
    for entry in data_dir.iterdir():
        if entry.name.isascii() and entry.name.isdigit() and entry.is_dir():
            highest = max(highest, int(entry.name))
    return highest + 1


class _Storage:
    """The tickets issued, the files stored under ``data_dir`` and the calls counted, all
    under one lock so that every snapshot is consistent."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self._lock = threading.Lock()
        self._tickets: dict[str, _Ticket] = {}
        self._calls: dict[str, int] = dict.fromkeys(_COUNTERS, 0)
        self._next_id = _first_free_id(data_dir)

    def count(self, name: str) -> None:
        with self._lock:
            self._calls[name] += 1

    def calls(self) -> dict[str, int]:
        with self._lock:
            return dict(self._calls)

    def tickets(self) -> dict[str, TicketInfo]:
        with self._lock:
            return {tid: t.info() for tid, t in self._tickets.items()}

    def state_json(self) -> tuple[dict[str, Any], dict[str, int]]:
        """(tickets, calls) as ``GET /_emulator/state`` shows them."""
        with self._lock:
            tickets = {tid: t.state_json() for tid, t in self._tickets.items()}
            return tickets, dict(self._calls)

    def issue(self, file_name: str, now: float) -> tuple[str, str]:
        """Records a new ticket for ``file_name``; returns (FileStoreId, object key)."""
        ext = os.path.splitext(file_name)[1]
        with self._lock:
            file_store_id = str(self._next_id)
            self._next_id += 1
            ticket = _Ticket(
                file_store_id=file_store_id,
                file_name=file_name,
                created_at=now,
                object_key=f"{uuid.uuid4()}{ext}",
                stored_name=_stored_name(file_name),
            )
            self._tickets[file_store_id] = ticket
        return file_store_id, ticket.object_key

    def knows(self, file_store_id: str, object_key: str) -> bool:
        """Whether ``object_key`` is the object of the ticket ``file_store_id``."""
        with self._lock:
            ticket = self._tickets.get(file_store_id)
            return ticket is not None and ticket.object_key == object_key

    def ticket_dir(self, file_store_id: str) -> Path:
        return self.data_dir / file_store_id

    def commit_put(
        self, file_store_id: str, tmp: Path, size: int, sha256: str, seconds: float | None = None
    ) -> None:
        """Moves a fully received upload into place and records it (``seconds``: how long
        its body took to arrive)."""
        # Renaming under the lock keeps the stored file and the recorded sha256 in step
        # when two PUTs to the same URL race.
        with self._lock:
            ticket = self._tickets[file_store_id]
            dest = self.ticket_dir(file_store_id) / ticket.stored_name
            os.replace(tmp, dest)
            ticket.put_count += 1
            ticket.size = size
            ticket.sha256 = sha256
            ticket.stored_path = dest
            ticket.put_seconds = seconds

    def count_put(self, file_store_id: str, size: int, seconds: float) -> None:
        """Records a fully received upload that was not stored (bench mode): its size and
        how long its body took to arrive; sha256 and stored_path stay None."""
        with self._lock:
            ticket = self._tickets[file_store_id]
            ticket.put_count += 1
            ticket.size = size
            ticket.put_seconds = seconds

    def report(
        self, file_store_id: str, *, reject_repeat: bool = False
    ) -> tuple[int, str, TicketInfo | None]:
        """Records a ReportUploadSuccess; returns (business Code, Message, the ticket as
        reported, or None when the report was refused). With ``reject_repeat``, a ticket
        reported before is refused (and its count stays as it was)."""
        with self._lock:
            ticket = self._tickets.get(file_store_id)
            if ticket is None:
                return 404, "file not found", None
            if ticket.put_count == 0:
                return 400, "file was not uploaded", None
            if reject_repeat and ticket.reported_count > 0:
                return REPEAT_REPORT_CODE, REPEAT_REPORT_MESSAGE, None
            ticket.reported_count += 1
            return 200, "", ticket.info()


# --- the emulator -----------------------------------------------------------------------


class Emulator:
    """A HotTask-compatible server on a real socket, bound as soon as it is constructed."""

    def __init__(
        self,
        data_dir: Path,
        *,
        api_key: str = "emulator-key",
        host: str = "127.0.0.1",
        port: int = 0,
        url_ttl: float = 300.0,
        faults: Faults | None = None,
        clock: Callable[[], float] = time.time,
        quiet: bool = True,
        on_report: Callable[[TicketInfo], None] | None = None,
        on_put: Callable[[TicketInfo], None] | None = None,
        reject_repeat_reports: bool = False,
        bench: bool = False,
    ) -> None:
        """Creates ``data_dir`` and binds ``host:port`` (0 picks a free port).

        ``bench`` selects the lean request path for benchmarks (:class:`_LeanHandler`): the
        same three calls and checks, but PUT bodies are counted and discarded (neither
        stored nor hashed) and the only fault is ``delay_seconds``.

        Raises OSError when the address cannot be bound (``errno.EADDRINUSE`` if taken) and
        ValueError when ``url_ttl`` is not positive or, with ``bench``, ``faults`` holds
        anything but ``delay_seconds``.
        """
        if not (is_number(url_ttl) and math.isfinite(url_ttl) and url_ttl > 0):
            raise ValueError(f"url_ttl must be a positive number of seconds, got {url_ttl!r}")
        self.data_dir = Path(data_dir).resolve()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        #: The key the API calls must send in ``Authorization``; may be changed at runtime.
        self.api_key = api_key
        self.url_ttl = float(url_ttl)
        self.quiet = quiet
        #: Called with the ticket (as reported) on every accepted ReportUploadSuccess, in the
        #: handler's thread, after the report is recorded and before the answer is sent (even
        #: when a drop_after fault then loses that answer). It must be quick and must not
        #: raise; None (the default) for no hook. May be changed at runtime.
        self.on_report = on_report
        #: Called with the ticket on every PUT to a valid, unexpired URL, in the handler's
        #: thread, before its body is read (full mode only). Same rules as on_report; a
        #: test may hold it to keep an upload slot busy.
        self.on_put = on_put
        #: When True, a second ReportUploadSuccess of a FileStoreId gets the business error
        #: REPEAT_REPORT_CODE / REPEAT_REPORT_MESSAGE instead of being accepted again. May be
        #: changed at runtime.
        self.reject_repeat_reports = reject_repeat_reports
        #: Bench mode (read-only): the lean request path, see :class:`_LeanHandler`.
        self.bench = bench
        if bench:
            _check_bench_faults(faults)
        self._clock = clock
        self._injector = FaultInjector(faults)
        self._signer = UrlSigner()
        self._storage = _Storage(self.data_dir)
        self._stopping = threading.Event()
        self._run_lock = threading.Lock()
        self._serving = False
        self._stopped = False
        self._thread: threading.Thread | None = None
        self._server = _Server((host, port), self, _LeanHandler if bench else _Handler)

    # -- lifecycle --

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) the listening socket is bound to, as the kernel reports it."""
        return self._server.bound_host_port()

    @property
    def base_url(self) -> str:
        """``http://<host>:<port>`` of the bound socket (loopback if bound to all addresses)."""
        host, port = self.address
        if ipaddress.ip_address(host).is_unspecified:
            host = "::1" if ":" in host else "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{port}"

    def start(self) -> None:
        """Serves in a background daemon thread; returns at once."""
        self._claim_serving()
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="hottask-emulator",
            daemon=True,
        )
        self._thread.start()

    def serve_forever(self) -> None:
        """Serves in the calling thread until :meth:`stop` is called from another thread."""
        self._claim_serving()
        self._server.serve_forever(poll_interval=0.05)

    def _claim_serving(self) -> None:
        with self._run_lock:
            if self._stopped:
                raise RuntimeError("the emulator was stopped; create a new one")
            if self._serving:
                raise RuntimeError("the emulator is already serving")
            self._serving = True

    def stop(self) -> None:
        """Stops accepting, closes every connection (idle keep-alive ones too) and the
        listening socket, and waits briefly for in-flight handlers. Idempotent; returns in
        well under 2 s. An upload cut short by stop() leaves no file behind.
        """
        with self._run_lock:
            if self._stopped:
                return
            self._stopped = True
            serving = self._serving
        self._stopping.set()  # wakes handlers sleeping on a slow/delay fault
        if serving:
            self._server.shutdown()
        self._server.close_all_connections()
        self._server.server_close()
        self._server.join_handlers(_STOP_JOIN_SECONDS)
        if self._thread is not None:
            self._thread.join(timeout=_STOP_JOIN_SECONDS)

    def __enter__(self) -> Emulator:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- state --

    @property
    def faults(self) -> Faults:
        """The faults in force; assigning a new Faults also reseeds the RNG from its seed."""
        return self._injector.faults

    @faults.setter
    def faults(self, value: Faults) -> None:
        if self.bench:
            _check_bench_faults(value)
        self._injector.faults = value

    def tickets(self) -> dict[str, TicketInfo]:
        """A consistent snapshot of every ticket issued, by FileStoreId."""
        return self._storage.tickets()

    def reported(self) -> dict[str, TicketInfo]:
        """The tickets reported at least once through ReportUploadSuccess."""
        return {tid: t for tid, t in self.tickets().items() if t.reported_count >= 1}

    def calls(self) -> dict[str, int]:
        """Counters: "pre", "put", "report" (every request received on each call, whatever
        its fate), "auth_failed" (401s), "faulted" (calls that got an injected fault) and
        "put_incomplete" (PUTs whose client vanished before sending the whole body).
        """
        return self._storage.calls()

    def state_json(self) -> dict[str, Any]:
        """What ``GET /_emulator/state`` answers."""
        tickets, calls = self._storage.state_json()
        return {"tickets": tickets, "calls": calls, "faults": faults_to_json(self.faults)}

    # -- used by the handler --

    def _key_ok(self, header: str | None) -> bool:
        if header is None:
            return False
        # Header values arrive decoded as latin-1; re-encoding gives back the raw bytes.
        return hmac.compare_digest(header.encode("latin-1"), self.api_key.encode("utf-8"))

    def _issue(self, file_name: str, host: str) -> tuple[str, str]:
        """Issues a ticket for ``file_name``; returns (FileStoreId, presigned URL on host)."""
        now = self._clock()
        file_store_id, object_key = self._storage.issue(file_name, now)
        url = self._signer.presign(host, file_store_id, object_key, now, self.url_ttl)
        return file_store_id, url

    def _verify(self, target: str, host: str | None) -> tuple[str, float] | None:
        """Checks a presigned PUT target; returns (FileStoreId, expiry time) or None."""
        signed = self._signer.verify(target, host)
        if signed is None or not self._storage.knows(signed.file_store_id, signed.object_key):
            return None
        return signed.file_store_id, signed.expires_at

    def _report(self, file_store_id: str) -> tuple[int, str]:
        """Records a ReportUploadSuccess and calls :attr:`on_report` if it was accepted;
        returns (business Code, Message)."""
        code, message, info = self._storage.report(
            file_store_id, reject_repeat=self.reject_repeat_reports
        )
        hook = self.on_report
        if info is not None and hook is not None:
            hook(info)
        return code, message


# --- the HTTP server --------------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    """ThreadingHTTPServer that tracks its connections so stop() can close idle ones."""

    daemon_threads = True
    block_on_close = False  # stop() joins handlers itself, with a deadline
    request_queue_size = 128
    allow_reuse_address = True

    def __init__(
        self,
        address: tuple[str, int],
        emulator: Emulator,
        handler: type[socketserver.BaseRequestHandler],
    ) -> None:
        self.emulator = emulator
        self._conn_lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._handler_threads: set[threading.Thread] = set()
        self._closing = False
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls socket.getfqdn(), a reverse-DNS lookup that can
        # stall for seconds on a badly configured resolver; the name is never used here.
        socketserver.TCPServer.server_bind(self)
        host, port = self.bound_host_port()
        self.server_name = host
        self.server_port = port

    def bound_host_port(self) -> tuple[str, int]:
        address = cast(tuple[Any, ...], self.server_address)
        return str(address[0]), int(address[1])

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, address = super().get_request()
        with self._conn_lock:
            self._connections.add(sock)
            if self._closing:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        return sock, address

    def process_request(self, request: Any, client_address: Any) -> None:
        thread = threading.Thread(
            target=self._handle_in_thread,
            args=(request, client_address),
            name="hottask-emulator-conn",
            daemon=True,
        )
        with self._conn_lock:
            self._handler_threads.add(thread)
        thread.start()

    def _handle_in_thread(self, request: Any, client_address: Any) -> None:
        try:
            self.process_request_thread(request, client_address)
        finally:
            with self._conn_lock:
                self._handler_threads.discard(threading.current_thread())

    def shutdown_request(self, request: Any) -> None:
        sock = cast(socket.socket, request)
        try:
            sock.shutdown(socket.SHUT_WR)
            self._linger(sock)
        except OSError:
            pass
        finally:
            # Under the lock, so close_all_connections never shuts down a reused fd.
            with self._conn_lock:
                self._connections.discard(sock)
                sock.close()

    def _linger(self, sock: socket.socket) -> None:
        # Closing a socket with unread input makes the kernel send RST, and an RST can
        # destroy the answer we just sent before the client reads it. So, like Apache's
        # lingering close, read and discard until the client closes, goes quiet, or 2 s.
        sock.settimeout(_LINGER_QUIET)
        deadline = time.monotonic() + _LINGER_SECONDS
        while time.monotonic() < deadline and not self.emulator._stopping.is_set():
            try:
                if not sock.recv(65536):
                    return
            except (TimeoutError, OSError):
                return

    def close_all_connections(self) -> None:
        """Shuts down every open connection, which wakes handlers blocked reading it."""
        with self._conn_lock:
            self._closing = True
            for sock in self._connections:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def join_handlers(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self._conn_lock:
            threads = list(self._handler_threads)
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def handle_error(self, request: Any, client_address: Any) -> None:
        if self.emulator.quiet:
            return
        exc = sys.exc_info()[1]
        sys.stderr.write(f"emulator: error serving {client_address}: {exc!r}\n")


# --- request handling: HTTP plumbing ----------------------------------------------------


def _envelope(data: object, code: int, message: str) -> bytes:
    """Serializes a HotTask response envelope the way the real service does.

    The real service escapes ``&`` as ``\\u0026`` (and non-ASCII as ``\\uXXXX``); clients
    must cope, so the emulator does the same. ``&`` can only occur inside JSON strings,
    so a textual replace is exact.
    """
    text = json.dumps(
        {
            "Data": data,
            "Version": API_VERSION,
            "Success": code == 200,
            "Code": code,
            "Message": message,
        },
        separators=(",", ":"),
    )
    return text.replace("&", "\\u0026").encode("ascii")


def _s3_error(code: str, message: str) -> bytes:
    request_id = secrets.token_hex(8).upper()
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{xml_escape(message)}</Message>"
        f"<RequestId>{request_id}</RequestId></Error>"
    ).encode()


def _parse_length(raw: str) -> int | None:
    text = raw.strip()
    return int(text) if text.isascii() and text.isdigit() else None


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


class _Stop(Exception):
    """The request is finished (answered, or dropped with close_connection set)."""


class _Connection(BaseHTTPRequestHandler):
    """The HTTP/1.1 plumbing of one client connection: reading or discarding request bodies,
    sending each answer in a single write, logging without query strings. :class:`_Handler`
    adds what the requests mean."""

    protocol_version = "HTTP/1.1"
    server_version = SERVER_HEADER
    sys_version = ""
    disable_nagle_algorithm = True  # StreamRequestHandler.setup() sets TCP_NODELAY
    timeout = _IDLE_TIMEOUT

    _plan: Plan = NO_FAULT
    _faulted = False
    _answered_status: int | None = None

    @property
    def emu(self) -> Emulator:
        return cast(_Server, self.server).emulator

    def _drop(self) -> _Stop:
        """Marks the connection for closing without an answer; raise the result."""
        self.close_connection = True
        return _Stop()

    def _fault(self) -> None:
        if not self._faulted:
            self._faulted = True
            self.emu._storage.count("faulted")

    # -- bodies --

    def _discard_body(self) -> None:
        """Reads and drops the request body so the connection can serve the next request;
        marks the connection for closing when the body cannot (or should not) be read.
        """
        encoding = self.headers.get("Transfer-Encoding")
        if encoding is not None:
            if (
                encoding.strip().lower() != "chunked"
                or self._read_chunked(MAX_PUT_SIZE, keep=False) is None
            ):
                self.close_connection = True
            return
        raw_length = self.headers.get("Content-Length")
        if raw_length is None:
            return
        length = _parse_length(raw_length)
        if length is None or length > MAX_PUT_SIZE:
            self.close_connection = True
            return
        remaining = length
        while remaining:
            data = self.rfile.read(min(remaining, CHUNK))
            if not data:
                self.close_connection = True
                return
            remaining -= len(data)

    def _read_chunked(self, limit: int, *, keep: bool) -> bytes | None:
        """Reads a chunked body (at most ``limit`` bytes); None if malformed or too long."""
        parts: list[bytes] = []
        total = 0
        while True:
            line = self.rfile.readline(1024)
            size_text = line.split(b";", 1)[0].strip()
            if not line.endswith(b"\n") or not _CHUNK_SIZE_RE.match(size_text):
                return None
            size = int(size_text, 16)
            if size == 0:
                break
            total += size
            if total > limit:
                return None
            remaining = size
            while remaining:
                data = self.rfile.read(min(remaining, CHUNK))
                if not data:
                    return None
                if keep:
                    parts.append(data)
                remaining -= len(data)
            if self.rfile.readline(3) not in (b"\r\n", b"\n"):
                return None
        while True:  # trailer section, ended by an empty line
            line = self.rfile.readline(8192)
            if not line.endswith(b"\n"):
                return None
            if line in (b"\r\n", b"\n"):
                return b"".join(parts)

    def _read_api_body(self) -> bytes:
        """Reads the (small) body of an API call; answers and raises _Stop if it cannot."""
        encoding = self.headers.get("Transfer-Encoding")
        if encoding is not None:
            body = None
            if encoding.strip().lower() == "chunked":
                body = self._read_chunked(MAX_API_BODY, keep=True)
            if body is None:
                self.close_connection = True
                self._send_json(400, _envelope(None, 400, "Bad Request"))
                raise _Stop
            return body
        raw_length = self.headers.get("Content-Length")
        if raw_length is None:
            return b""
        length = _parse_length(raw_length)
        if length is None or length > MAX_API_BODY:
            self.close_connection = True
            status = 400 if length is None else 413
            self._send_json(status, _envelope(None, status, _phrase(status)))
            raise _Stop
        body = self.rfile.read(length)
        if len(body) < length:
            raise self._drop()
        return body

    def _receive(self, directory: Path, length: int) -> tuple[Path, str, str] | None:
        """Streams ``length`` body bytes to a temp file in ``directory``, 1 MiB at a time.

        Returns (temp path, sha256 hex, md5 hex), or None, leaving no file, if the client
        disconnected first.
        """
        directory.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=".upload-", suffix=".part", dir=directory)
        tmp = Path(name)
        sha256 = hashlib.sha256()
        md5 = hashlib.md5(usedforsecurity=False)
        buffer = memoryview(bytearray(CHUNK))
        complete = False
        try:
            with os.fdopen(fd, "wb") as out:
                remaining = length
                while remaining:
                    n = self.rfile.readinto(buffer[: min(remaining, CHUNK)])
                    if not n:
                        return None
                    chunk = buffer[:n]
                    sha256.update(chunk)
                    md5.update(chunk)
                    out.write(chunk)
                    remaining -= n
            complete = True
            return tmp, sha256.hexdigest(), md5.hexdigest()
        except OSError:
            return None  # a reset or timeout mid-body is the client going away
        finally:
            if not complete:
                tmp.unlink(missing_ok=True)

    # -- answers --

    def _send_json(self, status: int, body: bytes, headers: Sequence[tuple[str, str]] = ()) -> None:
        self._send(status, body, headers, content_type=JSON_TYPE)

    def _send_xml(
        self, status: int, code: str, message: str, headers: Sequence[tuple[str, str]] = ()
    ) -> None:
        request_headers = [("x-amz-request-id", secrets.token_hex(8).upper()), *headers]
        self._send(status, _s3_error(code, message), request_headers, content_type=XML_TYPE)

    def _send(
        self,
        status: int,
        body: bytes = b"",
        headers: Sequence[tuple[str, str]] = (),
        *,
        content_type: str | None = None,
    ) -> None:
        """Sends the whole response, head and body, in a single write, after any delay."""
        plan = self._plan
        if plan.slow:
            self._fault()
        if plan.delay > 0:
            self.emu._stopping.wait(plan.delay)
        lines = [
            f"HTTP/1.1 {status} {_phrase(status)}",
            f"Server: {SERVER_HEADER}",
            f"Date: {formatdate(usegmt=True)}",
        ]
        if content_type is not None:
            lines.append(f"Content-Type: {content_type}")
        lines.extend(f"{name}: {value}" for name, value in headers)
        lines.append(f"Content-Length: {len(body)}")
        if self.close_connection:
            lines.append("Connection: close")
        elif self.request_version == "HTTP/1.0":
            lines.append("Connection: keep-alive")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        self._answered_status = status
        self.wfile.write(head + body)
        self.log_request(status, len(body))

    # -- logging --

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """Logs one line per answer when not quiet, never with a query string (which
        holds the presigned URL's signature)."""
        path = getattr(self, "path", "").partition("?")[0]
        method = getattr(self, "command", None) or "-"
        self._log(f'"{method} {path}" {code} {size}')

    def log_message(self, format: str, *args: Any) -> None:
        self._log(format % args)

    def _log(self, message: str) -> None:
        if self.emu.quiet:
            return
        text = _QUERY_RE.sub("?...", message)
        sys.stderr.write(f"{self.address_string()} - [{self.log_date_time_string()}] {text}\n")


# --- request handling: the calls --------------------------------------------------------


def _string_field(raw: bytes, name: str) -> tuple[str | None, str]:
    """Extracts a required string field from a JSON body; returns (value, problem).

    Field names match case-insensitively, as ASP.NET Core's model binding does.
    """
    try:
        obj = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None, "request body is not valid JSON"
    if not isinstance(obj, dict):
        return None, "request body must be a JSON object"
    if name in obj:
        value = obj[name]
    else:
        value = next((v for k, v in obj.items() if k.lower() == name.lower()), None)
    if value is None:
        return None, f"{name} is required"
    if not isinstance(value, str):
        return None, f"{name} must be a string"
    return value, ""


class _Handler(_Connection):
    """Routes each request and answers the three HotTask calls and the test endpoints."""

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def do_PATCH(self) -> None:
        self._dispatch()

    def do_HEAD(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        self._plan = NO_FAULT
        self._faulted = False
        self._answered_status = None
        path = self.path.partition("?")[0]
        route = path.rstrip("/").lower()  # ASP.NET routing ignores case and a trailing "/"
        method = self.command
        try:
            if route in (_PRE_PATH, _REPORT_PATH):
                if method != "POST":
                    self._discard_body()
                    self._send(405, headers=[("Allow", "POST")])
                else:
                    self._api("pre" if route == _PRE_PATH else "report")
            elif path.startswith(f"/{BUCKET}/") and method == "PUT":
                self._put()
            elif route == "/_emulator/state" and method == "GET":
                self._discard_body()
                body = json.dumps(self.emu.state_json()).encode()
                self._send(200, body, content_type=JSON_TYPE)
            elif route == "/_emulator/faults" and method in ("GET", "POST"):
                self._faults_endpoint()
            else:
                self._discard_body()
                self._send(404)
        except _Stop:
            pass
        except OSError:
            # The client went away or stalled past the timeout: nothing left to answer.
            self.close_connection = True
        if self.close_connection and self._answered_status is None:
            self._log(f'"{method} {path}" dropped without an answer')

    def _early_fault(self, plan: Plan, *, s3: bool) -> bool:
        """Acts on a fault that strikes before the call is looked at: drops the connection
        (raises _Stop) or answers a 5xx or 429, as the API (JSON) or S3 (XML, ``s3``) would.
        Returns whether it answered; False when ``plan`` holds no such fault.
        """
        outcome = plan.outcome
        if outcome not in (Outcome.DROP_BEFORE, Outcome.ERROR_5XX, Outcome.RATE_429):
            return False
        self._fault()
        self._discard_body()
        if outcome is Outcome.DROP_BEFORE:
            raise self._drop()
        retry = [("Retry-After", fmt_seconds(plan.retry_after))]
        if not s3:
            if outcome is Outcome.ERROR_5XX:
                self._send_json(plan.status, _envelope(None, plan.status, _phrase(plan.status)))
            else:
                self._send_json(429, _envelope(None, 429, "Too Many Requests"), retry)
        elif outcome is Outcome.RATE_429:
            self._send_xml(429, "TooManyRequests", "Please reduce your request rate.", retry)
        elif plan.status == 503:
            self._send_xml(503, "SlowDown", "Please reduce your request rate.")
        else:
            self._send_xml(
                500, "InternalError", "We encountered an internal error. Please try again."
            )
        return True

    # -- the API calls --

    def _api(self, endpoint: str) -> None:
        emu = self.emu
        emu._storage.count(endpoint)
        plan = self._plan = emu._injector.plan(endpoint)
        if self._early_fault(plan, s3=False):
            return
        if not emu._key_ok(self.headers.get("Authorization")):
            emu._storage.count("auth_failed")
            self._discard_body()
            self._send_json(401, _envelope(None, 401, "Unauthorized"))
            return
        raw = self._read_api_body()
        if plan.outcome is Outcome.BUSINESS:
            self._fault()
            self._send_json(200, _envelope(None, 500, "Internal business error"))
            return
        field = "fileName" if endpoint == "pre" else "fileStoreID"
        value, problem = _string_field(raw, field)
        if value is None:
            self._send_json(200, _envelope(None, 400, problem))
            return
        data: object = None
        if endpoint == "pre":
            name_problem = _file_name_problem(value)
            if name_problem is not None:
                self._send_json(200, _envelope(None, 400, name_problem))
                return
            file_store_id, url = emu._issue(value, self._url_host())
            data, code, message = {"FileStoreId": file_store_id, "PreUploadUrl": url}, 200, ""
        else:
            code, message = emu._report(value)
            data = True if code == 200 else None
        if plan.outcome is Outcome.DROP_AFTER:
            self._fault()
            raise self._drop()
        self._send_json(200, _envelope(data, code, message))

    def _url_host(self) -> str:
        """The host:port to put in presigned URLs: the one this client used to reach us."""
        host = self.headers.get("Host")
        if host is not None and _HOST_RE.match(host.strip()):
            return host.strip()
        return self.emu.base_url.removeprefix("http://")

    # -- the presigned PUT --

    def _put(self) -> None:
        emu = self.emu
        emu._storage.count("put")
        plan = self._plan = emu._injector.plan("put")
        if self._early_fault(plan, s3=True):
            return
        length = self._put_length()
        if length is None:
            return
        verified = emu._verify(self.path, self.headers.get("Host"))
        if verified is None:
            self._discard_body()
            self._send_xml(
                403,
                "SignatureDoesNotMatch",
                "The request signature we calculated does not match the signature you provided. "
                "Check your key and signing method.",
            )
            return
        file_store_id, expires_at = verified
        expired = emu._clock() > expires_at
        if expired or plan.outcome is Outcome.EXPIRE:
            if not expired:
                self._fault()
            self._discard_body()
            self._send_xml(403, "AccessDenied", "Request has expired")
            return
        if (hook := emu.on_put) is not None and (info := emu.tickets().get(file_store_id)):
            hook(info)
        if length > MAX_PUT_SIZE:
            self.close_connection = True  # not worth reading 5 GiB to keep the connection
            self._send_xml(
                400, "EntityTooLarge", "Your proposed upload exceeds the maximum allowed size"
            )
            return
        self._store_put(file_store_id, length, plan)

    def _put_length(self) -> int | None:
        """Checks a PUT's headers in the order S3 does; returns its Content-Length, or None
        once it has answered the error."""
        if self.headers.get("Authorization") is not None:
            self._discard_body()
            self._send_xml(
                400,
                "InvalidArgument",
                "Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter, "
                "Signature query string parameter or the Authorization header should be specified",
            )
            return None
        if self.headers.get("Transfer-Encoding") is not None:
            self._discard_body()
            self._send_xml(
                501,
                "NotImplemented",
                "A header you provided implies functionality that is not implemented",
            )
            return None
        raw_length = self.headers.get("Content-Length")
        if raw_length is None:
            # Without a length the body cannot be delimited: the connection is unusable.
            self.close_connection = True
            self._send_xml(
                411, "MissingContentLength", "You must provide the Content-Length HTTP header."
            )
            return None
        length = _parse_length(raw_length)
        if length is None:
            self.close_connection = True
            self._send_xml(400, "InvalidArgument", "Content-Length is not a valid number.")
        return length

    def _store_put(self, file_store_id: str, length: int, plan: Plan) -> None:
        """Receives the body of a verified PUT, stores it, and answers with its ETag."""
        storage = self.emu._storage
        started = time.perf_counter()
        received = self._receive(storage.ticket_dir(file_store_id), length)
        seconds = time.perf_counter() - started
        if received is None:
            storage.count("put_incomplete")
            raise self._drop()
        tmp, sha256, md5 = received
        try:
            storage.commit_put(file_store_id, tmp, length, sha256, seconds)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()  # only still there if the rename failed
        if plan.outcome is Outcome.DROP_AFTER:
            self._fault()
            raise self._drop()
        self._send(200, headers=[("ETag", f'"{md5}"')])

    # -- test hooks --

    def _faults_endpoint(self) -> None:
        if self.command == "GET":
            self._discard_body()
        else:
            raw = self._read_api_body()
            try:
                self.emu.faults = faults_from_json(json.loads(raw))
            except (ValueError, TypeError) as exc:  # TypeError: a field of the wrong type
                body = json.dumps({"error": str(exc)}).encode()
                self._send(400, body, content_type=JSON_TYPE)
                return
        body = json.dumps(faults_to_json(self.emu.faults)).encode()
        self._send(200, body, content_type=JSON_TYPE)


# --- bench mode: the lean request path --------------------------------------------------

_LEAN_HEAD_LIMIT: Final = 64 * 1024  # a longer request head is refused (431)
_LEAN_RECV: Final = 4 * 1024 * 1024  # recv_into buffer of PUT bodies: few syscalls per MiB
_LEAN_JSON: Final = f"Content-Type: {JSON_TYPE}\r\n".encode("ascii")
_LEAN_XML: Final = f"Content-Type: {XML_TYPE}\r\n".encode("ascii")
# The Faults fields bench mode accepts at any value: the delay, and settings that inject
# nothing by themselves. Every other field must keep its default (no fault).
_BENCH_FAULT_SETTINGS: Final = frozenset(
    {"delay_seconds", "endpoints", "seed", "retry_after", "slow_seconds"}
)
_date_cache: tuple[int, bytes] = (0, b"")


def _check_bench_faults(faults: Faults | None) -> None:
    """Raises ValueError unless ``faults`` injects nothing but ``delay_seconds``."""
    if faults is None:
        return
    used = [
        f.name
        for f in dataclasses.fields(faults)
        if f.name not in _BENCH_FAULT_SETTINGS and getattr(faults, f.name) != f.default
    ]
    if used:
        raise ValueError(f"bench mode injects no faults but delay_seconds, got {used}")


def _http_date() -> bytes:
    """The Date header's value, formatted once per second rather than once per answer."""
    global _date_cache
    now = int(time.time())
    cached = _date_cache
    if cached[0] != now:
        cached = _date_cache = (now, formatdate(now, usegmt=True).encode("ascii"))
    return cached[1]


class _LeanHandler(socketserver.BaseRequestHandler):
    """Bench mode: one client connection, served with as little Python per request as the
    three calls allow, so that a benchmark measures its clients and not this server.

    The same routes, authentication, presigned-URL checks (signature, host, expiry, size),
    business answers, ``on_report`` hook and call counters as :class:`_Handler`; left out
    are what a benchmark does not need: PUT bodies are received into one large buffer with
    ``recv_into`` and dropped (not stored, not hashed: :attr:`TicketInfo.sha256` and
    ``stored_path`` stay None, ``size`` and ``put_seconds`` are set), no ETag, no request
    log, no chunked bodies (501), no fault but ``delay_seconds`` (the same wait before each
    answer of the three calls), no ``/_emulator/faults``. HTTP/1.0 connections are closed
    after one answer.
    """

    def setup(self) -> None:
        self.sock = cast(socket.socket, self.request)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
        self.sock.settimeout(_IDLE_TIMEOUT)
        self.emu = cast(_Server, self.server).emulator
        self.pending = b""  # bytes received after the current request head
        self.big: memoryview | None = None  # the body buffer, allocated on first need
        self.close = False
        self._expects_continue = False

    def handle(self) -> None:
        # OSError: the client went away, reset, or idled past the timeout.
        with contextlib.suppress(OSError, _Stop):
            while not self.close:
                head = self._read_head()
                if head is None:
                    return
                self._request(head)

    # -- reading --

    def _read_head(self) -> bytes | None:
        """The next request head (without its blank line); None when the client closed."""
        data = self.pending
        while True:
            end = data.find(b"\r\n\r\n")
            if end >= 0:
                self.pending = data[end + 4 :]
                return data[:end]
            if len(data) > _LEAN_HEAD_LIMIT:
                self.close = True
                self._send(431, delayed=False)
                return None
            chunk = self.sock.recv(65536)
            if not chunk:
                return None
            data += chunk

    def _body(self, length: int) -> bytes:
        """The next ``length`` bytes (a small body); raises _Stop if the client left."""
        data = self.pending
        while len(data) < length:
            chunk = self.sock.recv(max(65536, length - len(data)))
            if not chunk:
                raise _Stop
            data += chunk
        self.pending = data[length:]
        return data[:length]

    def _drain(self, length: int) -> bool:
        """Receives and drops ``length`` body bytes, in large ``recv_into`` calls; False if
        the client went away first."""
        take = min(len(self.pending), length)
        self.pending = self.pending[take:]
        remaining = length - take
        if not remaining:
            return True
        buf = self.big
        if buf is None or len(buf) < min(remaining, _LEAN_RECV):
            buf = self.big = memoryview(bytearray(min(max(remaining, 65536), _LEAN_RECV)))
        recv_into, size = self.sock.recv_into, len(buf)
        while remaining:
            n = recv_into(buf, min(remaining, size))  # never past this body
            if not n:
                return False
            remaining -= n
        return True

    # -- answering --

    def _send(
        self, status: int, body: bytes = b"", extra: bytes = b"", *, delayed: bool = True
    ) -> None:
        """Sends head and body in one write; the three calls' answers wait ``delay_seconds``
        first."""
        if delayed:
            delay = self.emu._injector.faults.delay_seconds
            if delay:
                self.emu._stopping.wait(delay)
        head = b"HTTP/1.1 %d %s\r\nServer: %s\r\nDate: %s\r\n%sContent-Length: %d\r\n%s\r\n" % (
            status,
            _phrase(status).encode("ascii"),
            SERVER_HEADER.encode("ascii"),
            _http_date(),
            extra,
            len(body),
            b"Connection: close\r\n" if self.close else b"",
        )
        self.sock.sendall(head + body)

    def _json(self, status: int, body: bytes) -> None:
        self._send(status, body, _LEAN_JSON)

    def _xml(self, status: int, code: str, message: str, length: int | None) -> None:
        """An S3 error answer to a PUT whose body (``length`` bytes) is not wanted."""
        self._skip(length)
        extra = b"x-amz-request-id: %s\r\n%s" % (secrets.token_hex(8).upper().encode(), _LEAN_XML)
        self._send(status, _s3_error(code, message), extra)

    def _skip(self, length: int | None) -> None:
        """Drops an unwanted body, or closes the connection after the answer when the
        client is waiting for ``100 Continue`` (it may never send the body) or sent no
        usable length."""
        if length is None or self._expects_continue:
            self.close = True
        elif not self._drain(length):
            raise _Stop

    # -- the requests --

    def _request(self, head: bytes) -> None:
        """Parses one request head and answers it."""
        try:
            request_line, *lines = head.decode("latin-1").split("\r\n")
            method, target, version = request_line.split(" ")
        except ValueError:
            self.close = True
            self._send(400, delayed=False)
            return
        headers: dict[str, str] = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if version != "HTTP/1.1" or headers.get("connection", "").lower() == "close":
            self.close = True
        self._expects_continue = headers.get("expect", "").lower() == "100-continue"
        length = _parse_length(headers.get("content-length", "0"))
        if "transfer-encoding" in headers or length is None:
            self.close = True
            self._send(501 if length is not None else 400, delayed=False)
            return
        path = target.partition("?")[0]
        route = path.rstrip("/").lower()
        if method == "POST" and route in (_PRE_PATH, _REPORT_PATH):
            self._api("pre" if route == _PRE_PATH else "report", headers, length)
        elif method == "PUT" and path.startswith(f"/{BUCKET}/"):
            self._put(target, headers, length)
        elif method == "GET" and route == "/_emulator/state":
            self._skip(length)
            self._send(200, json.dumps(self.emu.state_json()).encode(), _LEAN_JSON, delayed=False)
        else:
            self._skip(length)
            self._send(404, delayed=False)

    def _api(self, endpoint: str, headers: dict[str, str], length: int) -> None:
        """GetPreUploadUrl ("pre") or ReportUploadSuccess ("report")."""
        emu = self.emu
        emu._storage.count(endpoint)
        if length > MAX_API_BODY:
            self.close = True
            self._json(413, _envelope(None, 413, _phrase(413)))
            return
        if self._expects_continue:
            self.sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        raw = self._body(length)
        if not emu._key_ok(headers.get("authorization")):
            emu._storage.count("auth_failed")
            self._json(401, _envelope(None, 401, "Unauthorized"))
            return
        value, problem = _string_field(raw, "fileName" if endpoint == "pre" else "fileStoreID")
        if value is not None and endpoint == "pre":
            problem = _file_name_problem(value) or ""
        if value is None or problem:
            self._json(200, _envelope(None, 400, problem))
            return
        if endpoint == "pre":
            host = headers.get("host", "")
            if not _HOST_RE.match(host):
                host = emu.base_url.removeprefix("http://")
            file_store_id, url = emu._issue(value, host)
            self._json(200, _envelope({"FileStoreId": file_store_id, "PreUploadUrl": url}, 200, ""))
        else:
            code, message = emu._report(value)
            self._json(200, _envelope(True if code == 200 else None, code, message))

    def _put(self, target: str, headers: dict[str, str], length: int) -> None:
        """The presigned PUT: checked as :meth:`_Handler._put` checks it, body dropped."""
        emu = self.emu
        emu._storage.count("put")
        if "authorization" in headers:
            self._xml(400, "InvalidArgument", "Only one auth mechanism allowed", length)
            return
        if "content-length" not in headers:
            self._xml(411, "MissingContentLength", "You must provide the Content-Length.", None)
            return
        verified = emu._verify(target, headers.get("host"))
        if verified is None:
            message = "The request signature we calculated does not match the signature."
            self._xml(403, "SignatureDoesNotMatch", message, length)
            return
        file_store_id, expires_at = verified
        if emu._clock() > expires_at:
            self._xml(403, "AccessDenied", "Request has expired", length)
            return
        if length > MAX_PUT_SIZE:
            self._xml(400, "EntityTooLarge", "Your proposed upload exceeds the maximum", None)
            return
        if self._expects_continue:
            self.sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        started = time.perf_counter()
        if not self._drain(length):
            emu._storage.count("put_incomplete")
            raise _Stop
        emu._storage.count_put(file_store_id, length, time.perf_counter() - started)
        self._send(200)
