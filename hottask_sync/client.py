"""The HotTask API client: the three calls, every answer checked twice, errors typed.

Two long-lived httpx clients: one for the JSON API (with the Authorization header) and one
for the presigned S3 PUT (without it: S3 rejects a request that carries both a presigned
signature and an Authorization header). Each request goes straight to the connection pool of
its client's transport (or to the proxy the environment names), with headers, URLs and
timeouts merged once, and its answer is read in full into an :class:`_Answer`. Transports
are injectable for tests.

Two answers get special care:

* A presigned URL on plain ``http://`` is refused (PermanentError) unless its host is a
  loopback one or insecure HTTP is allowed (``api.allow_insecure_http``): the file's bytes
  would otherwise travel in clear even though ``base_url`` is https.
* ReportUploadSuccess answered "already reported" counts as reported. The API page does not
  say whether a repeated report is accepted, and a repeat happens whenever an answer is lost
  after the service acted. The page documents no Code for this case, so the **Message**
  decides: a business error (HTTP 200, ``Success`` false) whose Message says "already
  reported" or "already been reported" (any case), whatever its Code, unless the Code is an
  auth (401/403) or server (>= 500) one. A Code alone is not trusted: the Codes seen for
  other business errors (400, 404, 500) are generic, and taking a real refusal for success
  would lose the file (never uploaded again); an unrecognised answer stays a visible failure.
"""

from __future__ import annotations

import copy
import email.utils
import json
import os
import re
import ssl
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpcore
import httpx

# httpcore's errors as httpx's, as the transport itself maps them. This and the two other
# private names _send uses (Client._transport_for_url, HTTPTransport._pool) exist in httpx
# 0.27 and 0.28, the pinned range; the import fails, or a wire test does, if one goes.
from httpx._transports.default import map_httpcore_exceptions

from . import __version__
from .config import is_loopback_host
from .errors import AuthError, FileTooLarge, PermanentError, TransientError, UrlExpired

PRE_UPLOAD_PATH = "/chat/User/GetPreUploadUrl"
REPORT_PATH = "/chat/User/ReportUploadSuccess"
REPORT_NAME = REPORT_PATH.rsplit("/", 1)[-1]

#: S3's limit for a single PUT.
MAX_PUT_BYTES = 5 * 1024**3
#: The vendor promises 5 minutes; we stop trusting a URL a little earlier so that a PUT
#: started just before the end is not refused halfway.
URL_LIFETIME_SECONDS = 300.0
URL_SAFETY_MARGIN_SECONDS = 30.0
CHUNK_SIZE = 1024 * 1024

_QUERY_RE = re.compile(r"(https?://[^\s?#\"'<>]+)\?[^\s#\"'<>]*")
#: The Message of a ReportUploadSuccess business error meaning "reported before" (see above).
_ALREADY_REPORTED_RE = re.compile(r"\balready\s+(?:been\s+)?reported\b", re.IGNORECASE)


def redact_url(text: str) -> str:
    """Given text, returns it with the query string of every URL in it removed.

    Presigned URLs carry their signature in the query string; it must never be logged.
    """
    return _QUERY_RE.sub(r"\1", text)


def upload_name(name: str) -> str:
    """Given a file's base name (surrogate-escaped bytes allowed), returns valid UTF-8 text.

    Bytes that are not UTF-8 become U+FFFD, so the JSON body is always valid.
    """
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


@dataclass(frozen=True)
class Ticket:
    """A FileStoreId and the presigned URL to PUT its bytes to."""

    file_store_id: str
    url: str = field(repr=False)
    issued_at: float = 0.0

    @property
    def safe_url(self) -> str:
        return redact_url(self.url)

    def usable(self, now: float) -> bool:
        """Returns True while the URL is comfortably within its lifetime (monotonic ``now``)."""
        return now < self.issued_at + URL_LIFETIME_SECONDS - URL_SAFETY_MARGIN_SECONDS


class AlreadyReported(PermanentError):
    """ReportUploadSuccess answered that this FileStoreId was reported before."""


class _Abort(Exception):
    """Carries an exception raised by a PUT's chunk callback out through httpx."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


@dataclass(frozen=True)
class _Answer:
    """An answer read in full: what the checks look at."""

    status_code: int
    raw_headers: Sequence[tuple[bytes, bytes]]
    #: The body, decoded from any Content-Encoding.
    content: bytes

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")

    def json(self) -> Any:
        """The body as JSON; raises ValueError when it is not."""
        return json.loads(self.content)

    def header(self, name: str) -> str | None:
        """The first value of the header ``name`` (any case), or None."""
        wanted = name.lower().encode("ascii")
        for key, value in self.raw_headers:
            if key.lower() == wanted:
                return value.decode("latin-1")
        return None


def _decoded(headers: Sequence[tuple[bytes, bytes]], body: bytes) -> bytes:
    """Given a body as received, returns it decoded from its Content-Encoding (gzip, deflate,
    ... as httpx decodes them; the clients ask for them as httpx does); raises
    httpx.DecodingError when it cannot be."""
    for key, value in headers:
        if key.lower() == b"content-encoding" and value.strip().lower() not in (b"", b"identity"):
            return httpx.Response(200, headers=headers, stream=httpx.ByteStream(body)).read()
    return body


class HotTaskClient:
    """Speaks the HotTask upload API over two pooled connections.

    Given ``base_url`` and the secret ``api_key``, each method performs one call and returns
    its checked result; raises AuthError, UrlExpired, TransientError or PermanentError.
    ``allow_insecure_http`` lets file bytes go to a presigned ``http://`` URL on a host that is
    not a loopback one (``api.allow_insecure_http``); by default such a URL is refused.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float = 30.0,
        max_connections: int = 8,
        transport: httpx.BaseTransport | None = None,
        put_transport: httpx.BaseTransport | None = None,
        clock: Callable[[], float] = time.monotonic,
        allow_insecure_http: bool = False,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.allow_insecure_http = allow_insecure_http
        self._clock = clock
        timeouts = httpx.Timeout(timeout, connect=min(timeout, 10.0))
        limits = httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections
        )
        ua = {"User-Agent": f"hottask-sync/{__version__}"}
        # One TLS context (what httpx builds by default) for both clients: each build loads
        # the CA bundle, ~20 ms of start-up.
        verify: ssl.SSLContext | bool = httpx.create_ssl_context() if transport is None else True
        self._api = httpx.Client(
            base_url=self.base_url,
            headers={**ua, "Content-Type": "application/json"},
            timeout=timeouts,
            limits=limits,
            transport=transport,
            verify=verify,
        )
        self._s3 = httpx.Client(
            headers=ua,
            timeout=timeouts,
            limits=limits,
            transport=put_transport or transport,
            verify=verify,
        )
        # What httpx.Client.build_request would merge into every request, merged once: the
        # endpoints joined with base_url, the clients' headers, the timeouts.
        self._endpoints = {
            path: self._api.build_request("POST", path).url
            for path in (PRE_UPLOAD_PATH, REPORT_PATH)
        }
        self._extensions = {"timeout": timeouts.as_dict()}
        self._s3_headers = self._s3.headers.raw
        self._api_headers = self._keyed(api_key)

    def __repr__(self) -> str:
        return f"HotTaskClient({self.base_url!r})"

    def with_key(self, api_key: str) -> HotTaskClient:
        """Returns a client that sends ``api_key`` and shares this one's connections.

        The key travels per request, never in shared headers: calls already under way
        with this client keep the key they started with.
        """
        other = copy.copy(self)
        other._api_headers = self._keyed(api_key)
        return other

    def _keyed(self, api_key: str) -> list[tuple[bytes, bytes]]:
        return [*self._api.headers.raw, (b"Authorization", api_key.encode("ascii"))]

    def close(self) -> None:
        self._api.close()
        self._s3.close()

    def __enter__(self) -> HotTaskClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the three calls -------------------------------------------------------------------

    def get_upload_url(self, file_name: str) -> Ticket:
        """Given a base name, returns a Ticket (FileStoreId and presigned URL)."""
        data = self._call(PRE_UPLOAD_PATH, {"fileName": upload_name(file_name)})
        if not isinstance(data, dict):
            raise PermanentError(f"GetPreUploadUrl: Data is {_kind(data)}, expected an object")
        missing = [k for k in ("FileStoreId", "PreUploadUrl") if data.get(k) in (None, "")]
        if missing:
            raise PermanentError(f"GetPreUploadUrl: Data lacks {', '.join(missing)}")
        fsid, url = data["FileStoreId"], data["PreUploadUrl"]
        if not isinstance(fsid, (str, int)) or isinstance(fsid, bool):
            raise PermanentError(f"GetPreUploadUrl: Data.FileStoreId is {_kind(fsid)}")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise PermanentError("GetPreUploadUrl: Data.PreUploadUrl is not an http(s) URL")
        self._check_upload_url("GetPreUploadUrl", url)
        return Ticket(str(fsid), url, self._clock())

    def report_success(self, file_store_id: str) -> bool:
        """Marks the upload of ``file_store_id`` successful; returns when the service agreed:
        True when it recorded the report now, False when it answered that this FileStoreId
        was already reported (a repeat after a lost answer: reported all the same)."""
        try:
            data = self._call(REPORT_PATH, {"fileStoreID": file_store_id})
        except AlreadyReported:
            return False
        if data is not True:
            raise PermanentError(
                f"ReportUploadSuccess for {file_store_id}: Data is {_kind(data)}, expected true"
            )
        return True

    def put(
        self,
        ticket: Ticket,
        fd: int,
        size: int,
        *,
        on_chunk: Callable[[bytes], None] | None = None,
        chunk_size: int = CHUNK_SIZE,
    ) -> None:
        """Streams ``size`` bytes of the open file ``fd`` (from offset 0) to the ticket's URL.

        Sends an explicit Content-Length and never chunked encoding; memory use is one chunk.
        ``on_chunk`` sees every chunk before it is sent (hashing, throttling, progress); an
        exception it raises aborts the PUT and is re-raised as is. Raises FileTooLarge before
        any I/O for files over 5 GiB, PermanentError when the file is shorter than ``size``,
        UrlExpired on S3's "Request has expired", TransientError for network faults and 5xx,
        and PermanentError before any I/O for a plain-http URL this client may not use.
        """
        if size > MAX_PUT_BYTES:
            raise FileTooLarge(f"{size} bytes is over the 5 GiB limit of one upload")
        self._check_upload_url("PUT", ticket.url)

        def body() -> Iterator[bytes]:
            offset = 0
            while offset < size:
                chunk = os.pread(fd, min(chunk_size, size - offset), offset)
                if not chunk:
                    # Sending fewer bytes than promised would hang the server; abort instead.
                    raise _Abort(PermanentError(f"file shrank to {offset} bytes while being read"))
                if on_chunk is not None:
                    try:
                        on_chunk(chunk)
                    except BaseException as exc:
                        raise _Abort(exc) from exc
                offset += len(chunk)
                yield chunk

        content: bytes | Iterator[bytes]
        if size <= chunk_size:
            # One chunk: read and checked before the request, sent in one piece (a
            # stream costs a generator and a write more per file).
            content = os.pread(fd, size, 0)
            if len(content) < size:
                raise PermanentError(f"file shrank to {len(content)} bytes while being read")
            if on_chunk is not None:
                on_chunk(content)
        else:
            content = body()
        # An explicit Content-Length makes httpx stream the generator without chunked
        # encoding, which S3 refuses (501) on presigned PUTs.
        headers = [*self._s3_headers, (b"Content-Length", str(size).encode())]
        try:
            response = self._send(self._s3, "PUT", httpx.URL(ticket.url), headers, content)
        except _Abort as abort:
            raise abort.error from None
        except httpx.HTTPError as exc:
            raise _network_error("PUT", exc) from exc
        self._check_put(response)

    # --- checking answers ------------------------------------------------------------------

    def _check_upload_url(self, name: str, url: str) -> None:
        """Raises PermanentError (naming the host, never the query string) for a presigned URL
        on plain http:// to a host that is not a loopback one, unless insecure HTTP is allowed:
        the file's bytes would travel in clear."""
        if self.allow_insecure_http or not url.lower().startswith("http://"):
            return
        try:
            host = urlsplit(url).hostname or ""
        except ValueError:
            host = ""
        if host and is_loopback_host(host):
            return
        raise PermanentError(
            f"{name}: the upload URL is plain http:// (host {host or '?'}): refusing to send "
            "the file unencrypted; set api.allow_insecure_http = true to allow it"
        )

    def _call(self, path: str, payload: dict[str, Any]) -> Any:
        name = path.rsplit("/", 1)[-1]
        url = self._endpoints[path]
        # Compact, and ASCII: a FileStoreId the service sent with a lone surrogate in it
        # is escaped rather than failing to encode.
        content = json.dumps(payload, separators=(",", ":"), allow_nan=False).encode("ascii")
        headers = [*self._api_headers, (b"Content-Length", str(len(content)).encode())]
        try:
            response = self._send(self._api, "POST", url, headers, content)
        except httpx.HTTPError as exc:
            raise _network_error(name, exc) from exc
        _check_status(name, response)
        try:
            envelope = response.json()
        except ValueError as exc:
            raise PermanentError(
                f"{name}: answer is not JSON (HTTP {response.status_code})",
                status=response.status_code,
            ) from exc
        return _check_envelope(name, envelope)

    def _send(
        self,
        client: httpx.Client,
        method: str,
        url: httpx.URL,
        headers: list[tuple[bytes, bytes]],
        content: bytes | Iterator[bytes],
    ) -> _Answer:
        """Sends one request through ``client``'s connection pool (or the proxy it mounts
        for the URL); returns the answer, read in full, its connection handed back.
        ``headers`` are sent as given (Content-Length among them), after Host.

        The request goes to the transport's connection pool itself: httpx.Client.send's
        own work per call (auth flow, redirects, cookies, hooks), none of which this API
        uses, costs a quarter of the CPU of a call on loopback, and building httpx's
        Request and Response around httpcore's a quarter of the rest (bench/README,
        "httpx's transport", "httpcore's pool").
        """
        if client.is_closed:
            raise RuntimeError("the HotTask client is closed")
        headers = [(b"Host", url.netloc), *headers]
        transport = client._transport_for_url(url)  # private: see the imports
        if type(transport) is not httpx.HTTPTransport:
            # Another transport (a test's MockTransport, a subclass with a handle_request of
            # its own): through httpx's own models.
            request = httpx.Request(
                method, url, headers=headers, content=content, extensions=self._extensions
            )
            response = transport.handle_request(request)
            try:
                response.read()
            finally:
                response.close()
            return _Answer(response.status_code, response.headers.raw, response.content)
        target = httpcore.URL(
            scheme=url.raw_scheme, host=url.raw_host, port=url.port, target=url.raw_path
        )
        sent = httpcore.Request(
            method, target, headers=headers, content=content, extensions=self._extensions
        )
        with map_httpcore_exceptions():
            answer = transport._pool.handle_request(sent)  # private: see the imports
            try:
                body = answer.read()
            finally:
                answer.close()
            return _Answer(answer.status, answer.headers, _decoded(answer.headers, body))

    def _check_put(self, response: _Answer) -> None:
        status = response.status_code
        if 200 <= status < 300:
            return
        code, message = _s3_error(response.text)
        what = f"PUT: HTTP {status} {code or ''}".rstrip()
        if message:
            what += f": {message}"
        if status == 403 and "expired" in message.lower():
            raise UrlExpired(what, status=status)
        if status in (408, 429) or status >= 500:
            raise TransientError(what, status=status, retry_after=_retry_after(response))
        if status == 400 and code == "EntityTooLarge":
            raise PermanentError(what, status=status, fail_now=True)
        raise PermanentError(what, status=status)


def _kind(value: object) -> str:
    if value is None:
        return "missing"
    return {bool: "a boolean", int: "a number", str: "a string", list: "a list"}.get(
        type(value), type(value).__name__
    )


def _network_error(what: str, exc: httpx.HTTPError) -> TransientError:
    # A refused or timed-out connection never reached the server; anything later may have.
    never_sent = isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout))
    detail = redact_url(str(exc)) or type(exc).__name__
    return TransientError(f"{what}: {type(exc).__name__}: {detail}", maybe_applied=not never_sent)


def _retry_after(response: _Answer) -> float | None:
    """Returns the Retry-After header in seconds (delta or HTTP date), or None."""
    value = response.header("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _check_status(name: str, response: _Answer) -> None:
    status = response.status_code
    if 200 <= status < 300:
        return
    detail = _envelope_message(response)
    what = f"{name}: HTTP {status}" + (f": {detail}" if detail else "")
    if status in (401, 403):
        raise AuthError(what, status=status)
    if status in (408, 429) or status >= 500:
        raise TransientError(what, status=status, retry_after=_retry_after(response))
    raise PermanentError(what, status=status)


def _envelope_message(response: _Answer) -> str:
    try:
        body = response.json()
    except ValueError:
        return ""
    if isinstance(body, dict) and isinstance(body.get("Message"), str):
        return redact_url(body["Message"])[:200]
    return ""


def _check_envelope(name: str, envelope: Any) -> Any:
    """Given a decoded API answer, returns its Data; raises a typed error for a business error."""
    if not isinstance(envelope, dict):
        raise PermanentError(f"{name}: answer is {_kind(envelope)}, expected an object")
    success = envelope.get("Success")
    if not isinstance(success, bool):
        raise PermanentError(f"{name}: answer lacks Success")
    if success:
        if "Data" not in envelope:
            raise PermanentError(f"{name}: answer lacks Data")
        return envelope["Data"]
    code = envelope.get("Code")
    code = code if isinstance(code, int) and not isinstance(code, bool) else None
    message = envelope.get("Message")
    text = redact_url(message)[:200] if isinstance(message, str) and message else "no message"
    what = f"{name}: Code {code if code is not None else '?'}: {text}"
    if code in (401, 403):
        raise AuthError(what, code=code)
    if code is not None and code >= 500:
        raise TransientError(what, code=code)
    if name == REPORT_NAME and isinstance(message, str) and _ALREADY_REPORTED_RE.search(message):
        raise AlreadyReported(what, code=code)
    raise PermanentError(what, code=code)


def _s3_error(body: str) -> tuple[str, str]:
    """Given an S3 XML error body, returns (Code, Message); empty strings when absent."""
    code = re.search(r"<Code>([^<]*)</Code>", body)
    message = re.search(r"<Message>([^<]*)</Message>", body)
    return (code.group(1) if code else "", message.group(1) if message else "")
