"""Unit tests for hottask_sync.client, against httpx.MockTransport (no network)."""

from __future__ import annotations

import email.utils
import hashlib
import json
import os
import re
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from hottask_sync.client import (
    CHUNK_SIZE,
    MAX_PUT_BYTES,
    HotTaskClient,
    Ticket,
    redact_url,
    upload_name,
)
from hottask_sync.errors import (
    ApiError,
    AuthError,
    FileTooLarge,
    PermanentError,
    TransientError,
    UrlExpired,
)
from tests.fakes import NO_DATA, StreamingMockTransport, envelope, s3_error

BASE = "https://api.hottask.test"
KEY = "hk_live_Zx81-S3CR3T-api-key"
SIGNATURE = "a237335d9b2e6fad1c648f753d393906647db5528eaaecf5e55dd114a22653db"
PRESIGNED = (
    "https://xxx.s3.us-west-1.amazonaws.com/xxx/3706/627855d5-ba01-4732-9dfd-b08a72744c77.txt"
    "?X-Amz-Expires=600&X-Amz-Algorithm=AWS4-HMAC-SHA256"
    "&X-Amz-Credential=AKIA5TS7CBKE4ZSWBI46%2F20250121%2Fus-west-1%2Fs3%2Faws4_request"
    "&X-Amz-Date=20250121T030214Z&X-Amz-SignedHeaders=host"
    f"&X-Amz-Signature={SIGNATURE}"
)
PRESIGNED_QUERY = PRESIGNED.split("?", 1)[1]

Handler = Callable[[httpx.Request], httpx.Response]


def make_client(handler: Handler, clock: Callable[[], float] = lambda: 1000.0) -> HotTaskClient:
    return HotTaskClient(BASE, KEY, transport=httpx.MockTransport(handler), clock=clock)


def answer(status: int = 200, **kwargs: object) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, **kwargs)  # type: ignore[arg-type]

    return handler


def ticket() -> Ticket:
    return Ticket("34317", PRESIGNED, 1000.0)


@pytest.fixture
def opened(tmp_path: Path) -> Iterator[Callable[[bytes], int]]:
    fds: list[int] = []

    def open_with(content: bytes) -> int:
        path = tmp_path / f"payload{len(fds)}.bin"
        path.write_bytes(content)
        fds.append(os.open(path, os.O_RDONLY))
        return fds[-1]

    yield open_with
    for fd in fds:
        os.close(fd)


# --- the three calls: success -----------------------------------------------------------------


def test_get_upload_url_success() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(
            200, json=envelope({"FileStoreId": "34317", "PreUploadUrl": PRESIGNED})
        )

    with make_client(handler, clock=lambda: 1234.5) as client:
        result = client.get_upload_url("companyinfo.txt")
    assert result.file_store_id == "34317"
    assert result.url == PRESIGNED
    assert result.issued_at == 1234.5
    (request,) = seen
    assert request.method == "POST"
    assert str(request.url) == BASE + "/chat/User/GetPreUploadUrl"
    assert request.headers["Authorization"] == KEY
    assert request.headers["Content-Type"] == "application/json"
    assert json.loads(request.content) == {"fileName": "companyinfo.txt"}


def test_get_upload_url_numeric_file_store_id() -> None:
    body = envelope({"FileStoreId": 34317, "PreUploadUrl": PRESIGNED})
    with make_client(answer(json=body)) as client:
        assert client.get_upload_url("a.txt").file_store_id == "34317"


def test_report_success() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=envelope(True))

    with make_client(handler) as client:
        client.report_success("123")
    (request,) = seen
    assert request.method == "POST"
    assert str(request.url) == BASE + "/chat/User/ReportUploadSuccess"
    assert request.headers["Authorization"] == KEY
    assert request.headers["Content-Type"] == "application/json"
    assert json.loads(request.content) == {"fileStoreID": "123"}


def test_a_file_store_id_with_a_lone_surrogate_is_reported_escaped() -> None:
    """JSON may carry a lone surrogate ("\\udc80"); reported back, it is escaped, never
    a UnicodeEncodeError (a crashed upload, retried a minute later, for ever)."""
    bodies: list[bytes] = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(request.content)
        if request.url.path.endswith("GetPreUploadUrl"):
            data = b'{"FileStoreId": "7\\udc80", "PreUploadUrl": "%s"}' % PRESIGNED.encode()
            return httpx.Response(200, content=b'{"Success": true, "Code": 200, "Data": %s}' % data)
        return httpx.Response(200, json=envelope(True))

    with make_client(handler) as client:
        fsid = client.get_upload_url("a.txt").file_store_id
        assert fsid == "7\udc80"
        assert client.report_success(fsid) is True
    assert bodies[1] == b'{"fileStoreID":"7\\udc80"}'


def test_with_key_sends_the_new_key_and_leaves_the_old_client_alone() -> None:
    keys: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        keys.append(request.headers["Authorization"])
        return httpx.Response(200, json=envelope(True))

    with make_client(handler) as client:
        client.report_success("1")
        renewed = client.with_key("new-key")
        renewed.report_success("2")
        client.report_success("3")  # a call under way with the old client keeps its key
    assert keys == [KEY, "new-key", KEY]


def test_invalid_utf8_name_is_sent_as_valid_utf8() -> None:
    bodies: list[bytes] = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(request.content)
        return httpx.Response(200, json=envelope({"FileStoreId": "1", "PreUploadUrl": PRESIGNED}))

    name = os.fsdecode(b"bad\xff.txt")
    with make_client(handler) as client:
        client.get_upload_url(name)
    text = bodies[0].decode("utf-8")  # strict: raises if the body is not valid UTF-8
    assert json.loads(text) == {"fileName": "bad\ufffd.txt"}
    assert upload_name(name) == "bad\ufffd.txt"
    assert upload_name("résumé.pdf") == "résumé.pdf"


def test_put_success(opened: Callable[[bytes], int]) -> None:
    content = os.urandom(300_000)
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200)

    with make_client(handler) as client:
        client.put(ticket(), opened(content), len(content), chunk_size=64 * 1024)
    (request,) = seen
    assert request.method == "PUT"
    assert request.headers["Content-Length"] == str(len(content))
    assert "Transfer-Encoding" not in request.headers
    assert "Authorization" not in request.headers
    assert request.content == content
    # The presigned URL is sent exactly as received: %2F and & untouched.
    assert str(request.url) == PRESIGNED
    assert request.url.query == PRESIGNED_QUERY.encode("ascii")
    assert request.url.raw_path.split(b"?", 1)[1] == PRESIGNED_QUERY.encode("ascii")
    assert b"%2F" in request.url.query
    assert request.url.query.count(b"&") == 5


def test_put_uses_put_transport_when_given(opened: Callable[[bytes], int]) -> None:
    api_calls: list[str] = []
    put_calls: list[str] = []

    def api(request: httpx.Request) -> httpx.Response:
        api_calls.append(request.method)
        return httpx.Response(500)

    def s3(request: httpx.Request) -> httpx.Response:
        put_calls.append(request.method)
        return httpx.Response(200)

    client = HotTaskClient(
        BASE, KEY, transport=httpx.MockTransport(api), put_transport=httpx.MockTransport(s3)
    )
    with client:
        client.put(ticket(), opened(b"abc"), 3)
    assert (api_calls, put_calls) == ([], ["PUT"])


def test_put_empty_file(opened: Callable[[bytes], int]) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200)

    with make_client(handler) as client:
        client.put(ticket(), opened(b""), 0)
    assert seen[0].headers["Content-Length"] == "0"
    assert "Transfer-Encoding" not in seen[0].headers
    assert seen[0].content == b""


# --- answers checked: HTTP status ---------------------------------------------------------


@pytest.mark.parametrize("status", [500, 502, 503, 504, 408])
def test_http_5xx_is_transient(status: int) -> None:
    with make_client(answer(status, text="oops")) as client, pytest.raises(TransientError) as info:
        client.get_upload_url("a.txt")
    assert info.value.status == status
    assert f"HTTP {status}" in str(info.value)
    assert info.value.retry_after is None


def test_http_429_retry_after_seconds() -> None:
    with (
        make_client(answer(429, headers={"Retry-After": "17"})) as client,
        pytest.raises(TransientError) as info,
    ):
        client.report_success("1")
    assert info.value.status == 429
    assert info.value.retry_after == 17.0


def test_http_429_retry_after_http_date() -> None:
    when = email.utils.formatdate(time.time() + 120, usegmt=True)
    with (
        make_client(answer(429, headers={"Retry-After": when})) as client,
        pytest.raises(TransientError) as info,
    ):
        client.report_success("1")
    assert info.value.retry_after is not None
    assert 100.0 < info.value.retry_after <= 121.0


@pytest.mark.parametrize("value", ["soon", "", "-5"])
def test_http_429_odd_retry_after(value: str) -> None:
    with (
        make_client(answer(429, headers={"Retry-After": value})) as client,
        pytest.raises(TransientError) as info,
    ):
        client.report_success("1")
    assert info.value.retry_after in (None, 0.0)


@pytest.mark.parametrize("status", [401, 403])
def test_http_401_403_is_auth(status: int) -> None:
    body = envelope(success=False, code=status, message="bad key")
    with make_client(answer(status, json=body)) as client, pytest.raises(AuthError) as info:
        client.get_upload_url("a.txt")
    assert info.value.status == status
    assert "bad key" in str(info.value)
    assert "check the API key" in str(info.value)


@pytest.mark.parametrize("status", [400, 404, 405, 413])
def test_http_other_4xx_is_permanent(status: int) -> None:
    with make_client(answer(status, text="no")) as client, pytest.raises(ApiError) as info:
        client.get_upload_url("a.txt")
    assert type(info.value) is PermanentError
    assert info.value.status == status
    assert info.value.fail_now is False


# --- answers checked: the envelope ----------------------------------------------------------


def test_business_401_on_http_200_is_auth() -> None:
    body = envelope(success=False, code=401, message="Unauthorized")
    with make_client(answer(json=body)) as client, pytest.raises(AuthError) as info:
        client.get_upload_url("a.txt")
    assert info.value.code == 401
    assert info.value.status is None


def test_business_500_on_http_200_is_transient() -> None:
    body = envelope(success=False, code=500, message="internal")
    with make_client(answer(json=body)) as client, pytest.raises(TransientError) as info:
        client.report_success("1")
    assert info.value.code == 500
    assert info.value.maybe_applied is False


def test_business_400_is_permanent_with_message() -> None:
    body = envelope(success=False, code=400, message="fileName is required")
    with make_client(answer(json=body)) as client, pytest.raises(ApiError) as info:
        client.get_upload_url("a.txt")
    assert type(info.value) is PermanentError
    assert info.value.code == 400
    assert "fileName is required" in str(info.value)
    assert "GetPreUploadUrl" in str(info.value)


def test_business_error_without_code_or_message() -> None:
    with make_client(answer(json={"Success": False})) as client, pytest.raises(ApiError) as info:
        client.get_upload_url("a.txt")
    assert type(info.value) is PermanentError
    assert "Code ?: no message" in str(info.value)


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"<html>Bad gateway</html>", "not JSON"),
        (b'{"Success": true, "Data": ', "not JSON"),
        (b"[1, 2]", "answer is a list"),
        (b'"ok"', "answer is a string"),
        (b'{"Data": {}}', "lacks Success"),
        (b'{"Success": "true", "Data": {}}', "lacks Success"),
    ],
)
def test_malformed_answers(body: bytes, fragment: str) -> None:
    with make_client(answer(content=body)) as client, pytest.raises(ApiError) as info:
        client.get_upload_url("a.txt")
    assert type(info.value) is PermanentError
    assert fragment in str(info.value)


def test_missing_data() -> None:
    handler = answer(json=envelope(NO_DATA))
    with make_client(handler) as client, pytest.raises(PermanentError) as info:
        client.get_upload_url("a.txt")
    assert "GetPreUploadUrl: answer lacks Data" in str(info.value)


@pytest.mark.parametrize(
    ("data", "missing"),
    [
        ({"PreUploadUrl": PRESIGNED}, "FileStoreId"),
        ({"FileStoreId": "1"}, "PreUploadUrl"),
        ({"FileStoreId": "", "PreUploadUrl": PRESIGNED}, "FileStoreId"),
        ({"FileStoreId": "1", "PreUploadUrl": None}, "PreUploadUrl"),
        ({}, "FileStoreId, PreUploadUrl"),
    ],
)
def test_data_lacking_a_field_names_it(data: dict[str, object], missing: str) -> None:
    with make_client(answer(json=envelope(data))) as client, pytest.raises(PermanentError) as info:
        client.get_upload_url("a.txt")
    lacks = re.search(r"Data lacks (.*?) \(", str(info.value))
    assert lacks is not None, str(info.value)
    assert lacks.group(1) == missing


@pytest.mark.parametrize(
    "data",
    [
        ["FileStoreId"],
        {"FileStoreId": True, "PreUploadUrl": PRESIGNED},
        {"FileStoreId": "1", "PreUploadUrl": "ftp://x/y"},
        {"FileStoreId": "1", "PreUploadUrl": 12},
    ],
)
def test_data_of_the_wrong_shape(data: object) -> None:
    with make_client(answer(json=envelope(data))) as client, pytest.raises(ApiError) as info:
        client.get_upload_url("a.txt")
    assert type(info.value) is PermanentError


@pytest.mark.parametrize("data", [False, "true", 1, {"ok": True}])
def test_report_data_not_true(data: object) -> None:
    with make_client(answer(json=envelope(data))) as client, pytest.raises(ApiError) as info:
        client.report_success("77")
    assert type(info.value) is PermanentError
    assert "ReportUploadSuccess for 77" in str(info.value)
    assert "expected true" in str(info.value)


# --- PUT failures -----------------------------------------------------------------------------


def test_put_expired_url(opened: Callable[[bytes], int]) -> None:
    body = s3_error("AccessDenied", "Request has expired")
    with make_client(answer(403, content=body)) as client, pytest.raises(UrlExpired) as info:
        client.put(ticket(), opened(b"x" * 10), 10)
    assert info.value.status == 403
    assert "Request has expired" in str(info.value)


def test_put_signature_mismatch_is_permanent(opened: Callable[[bytes], int]) -> None:
    body = s3_error(
        "SignatureDoesNotMatch",
        "The request signature we calculated does not match the signature you provided.",
    )
    with make_client(answer(403, content=body)) as client, pytest.raises(ApiError) as info:
        client.put(ticket(), opened(b"x" * 10), 10)
    assert type(info.value) is PermanentError
    assert info.value.status == 403
    assert "SignatureDoesNotMatch" in str(info.value)


def test_put_slow_down_is_transient(opened: Callable[[bytes], int]) -> None:
    body = s3_error("SlowDown", "Please reduce your request rate.")
    handler = answer(503, content=body, headers={"Retry-After": "3"})
    with make_client(handler) as client, pytest.raises(TransientError) as info:
        client.put(ticket(), opened(b"x" * 10), 10)
    assert info.value.status == 503
    assert info.value.retry_after == 3.0
    assert "SlowDown" in str(info.value)


def test_put_entity_too_large_fails_now(opened: Callable[[bytes], int]) -> None:
    body = s3_error("EntityTooLarge", "Your proposed upload exceeds the maximum allowed size")
    with make_client(answer(400, content=body)) as client, pytest.raises(PermanentError) as info:
        client.put(ticket(), opened(b"x" * 10), 10)
    assert info.value.fail_now is True


# --- network errors -------------------------------------------------------------------------


def raising(exc_type: type[httpx.TransportError]) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc_type(f"failed talking to {request.url}", request=request)

    return handler


NETWORK_ERRORS = [
    (httpx.ConnectError, False),
    (httpx.ConnectTimeout, False),
    (httpx.ReadTimeout, True),
    (httpx.RemoteProtocolError, True),
    (httpx.ReadError, True),
    (httpx.WriteError, True),
]


@pytest.mark.parametrize(("exc_type", "maybe_applied"), NETWORK_ERRORS)
def test_put_network_error(
    opened: Callable[[bytes], int], exc_type: type[httpx.TransportError], maybe_applied: bool
) -> None:
    with make_client(raising(exc_type)) as client, pytest.raises(TransientError) as info:
        client.put(ticket(), opened(b"x" * 10), 10)
    assert info.value.maybe_applied is maybe_applied
    assert str(info.value).startswith(f"PUT: {exc_type.__name__}: ")
    assert isinstance(info.value.__cause__, exc_type)
    assert PRESIGNED_QUERY not in str(info.value)
    assert SIGNATURE not in str(info.value)


@pytest.mark.parametrize(("exc_type", "maybe_applied"), NETWORK_ERRORS)
def test_api_network_error(exc_type: type[httpx.TransportError], maybe_applied: bool) -> None:
    with make_client(raising(exc_type)) as client, pytest.raises(TransientError) as info:
        client.report_success("5")
    assert info.value.maybe_applied is maybe_applied
    assert str(info.value).startswith(f"ReportUploadSuccess: {exc_type.__name__}: ")


# --- PUT: size limits, shrinking files, on_chunk --------------------------------------------


def test_file_over_5_gib_is_refused_before_any_request(tmp_path: Path) -> None:
    path = tmp_path / "huge.bin"
    with path.open("wb") as fh:
        fh.truncate(MAX_PUT_BYTES + 1)  # sparse: no disk used
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200)

    chunks: list[bytes] = []
    fd = os.open(path, os.O_RDONLY)
    try:
        with make_client(handler) as client, pytest.raises(FileTooLarge) as info:
            client.put(ticket(), fd, os.fstat(fd).st_size, on_chunk=chunks.append)
    finally:
        os.close(fd)
    assert seen == []
    assert chunks == []
    assert info.value.fail_now is True
    assert isinstance(info.value, PermanentError)
    assert MAX_PUT_BYTES == 5 * 1024**3


def test_file_that_shrank_is_permanent_not_a_hang(opened: Callable[[bytes], int]) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200)

    fd = opened(b"y" * 1000)
    with make_client(handler) as client, pytest.raises(PermanentError) as info:
        client.put(ticket(), fd, 4096, chunk_size=512)
    assert "file shrank to 1000 bytes" in str(info.value)
    assert seen == []  # the PUT never completed


def test_on_chunk_sees_every_byte(opened: Callable[[bytes], int]) -> None:
    content = os.urandom(5 * 65536 + 123)
    hasher = hashlib.sha256()
    sizes: list[int] = []
    received: list[bytes] = []

    def on_chunk(chunk: bytes) -> None:
        hasher.update(chunk)
        sizes.append(len(chunk))

    def handler(request: httpx.Request) -> httpx.Response:
        received.append(request.content)
        return httpx.Response(200)

    with make_client(handler) as client:
        client.put(ticket(), opened(content), len(content), on_chunk=on_chunk, chunk_size=65536)
    assert hasher.hexdigest() == hashlib.sha256(content).hexdigest()
    assert sizes == [65536] * 5 + [123]
    assert received == [content]


def test_on_chunk_exception_aborts_and_is_reraised(opened: Callable[[bytes], int]) -> None:
    class Stop(Exception):
        pass

    stop = Stop("shutting down")
    calls: list[int] = []
    seen: list[httpx.Request] = []

    def on_chunk(chunk: bytes) -> None:
        calls.append(len(chunk))
        if len(calls) == 2:
            raise stop

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200)

    with make_client(handler) as client, pytest.raises(Stop) as info:
        client.put(ticket(), opened(b"z" * 4096), 4096, on_chunk=on_chunk, chunk_size=1024)
    assert info.value is stop
    assert calls == [1024, 1024]
    assert seen == []


def test_on_chunk_transient_error_passes_through(opened: Callable[[bytes], int]) -> None:
    error = TransientError("too slow", maybe_applied=True)

    def on_chunk(chunk: bytes) -> None:
        raise error

    with make_client(answer(200)) as client, pytest.raises(TransientError) as info:
        client.put(ticket(), opened(b"z" * 10), 10, on_chunk=on_chunk)
    assert info.value is error


def test_put_streams_in_constant_memory(tmp_path: Path) -> None:
    size = 64 * 1024 * 1024
    path = tmp_path / "big.bin"
    block = bytes(range(256)) * 4096  # 1 MiB
    with path.open("wb") as fh:
        for _ in range(64):
            fh.write(block)
    expected = hashlib.sha256()
    for _ in range(64):
        expected.update(block)
    stats = {"bytes": 0, "chunks": 0, "largest": 0}
    received = hashlib.sha256()
    headers: dict[str, str] = {}

    def handler(request: httpx.Request) -> httpx.Response:
        headers.update(request.headers)
        for chunk in request.stream:  # type: ignore[union-attr]
            stats["bytes"] += len(chunk)
            stats["chunks"] += 1
            stats["largest"] = max(stats["largest"], len(chunk))
            received.update(chunk)
        return httpx.Response(200)

    client = HotTaskClient(BASE, KEY, transport=StreamingMockTransport(handler))
    fd = os.open(path, os.O_RDONLY)
    try:
        tracemalloc.start()
        try:
            client.put(ticket(), fd, size)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    finally:
        os.close(fd)
        client.close()
    assert stats["bytes"] == size
    assert stats["chunks"] == size // CHUNK_SIZE
    assert stats["largest"] <= CHUNK_SIZE
    assert received.hexdigest() == expected.hexdigest()
    assert headers["content-length"] == str(size)
    assert "transfer-encoding" not in headers
    assert peak < 8 * 1024 * 1024, f"peak {peak / 2**20:.1f} MiB"


# --- redaction --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            f"PUT {PRESIGNED} failed",
            "PUT https://xxx.s3.us-west-1.amazonaws.com/xxx/3706/"
            "627855d5-ba01-4732-9dfd-b08a72744c77.txt failed",
        ),
        (
            "see 'http://h.example/p?q=1&r=2' and \"https://a/b?c\"",
            "see 'http://h.example/p' and \"https://a/b\"",
        ),
        ("<https://a/b?sig=1>", "<https://a/b>"),
        ("two: https://a/x?1 https://b/y?2\nend", "two: https://a/x https://b/y\nend"),
        ("fragment stays: https://a/b?q=1#top", "fragment stays: https://a/b#top"),
        ("no query: https://a/b/c.txt", "no query: https://a/b/c.txt"),
        ("not a url? x=1&y=2", "not a url? x=1&y=2"),
        ("", ""),
    ],
)
def test_redact_url(text: str, expected: str) -> None:
    assert redact_url(text) == expected


def test_ticket_hides_url() -> None:
    t = ticket()
    assert SIGNATURE not in repr(t)
    assert t.safe_url == PRESIGNED.split("?", 1)[0]
    assert t.usable(1000.0 + 269.0)
    assert not t.usable(1000.0 + 270.0)


def test_client_repr_hides_key() -> None:
    with make_client(answer(200)) as client:
        assert KEY not in repr(client)
        assert BASE in repr(client)


def test_error_messages_never_contain_the_query_or_the_key(opened: Callable[[bytes], int]) -> None:
    """Every kind of failure, with the URL echoed back by the server or by httpx."""
    echo = f"cannot fetch {PRESIGNED}"
    failures: list[tuple[Handler, str]] = [
        (answer(400, json=envelope(success=False, code=400, message=echo)), "api"),
        (answer(401, json=envelope(success=False, code=401, message=echo)), "api"),
        (answer(503, json=envelope(success=False, code=503, message=echo)), "api"),
        (answer(200, json=envelope(success=False, code=400, message=echo)), "api"),
        (answer(200, json=envelope(success=False, code=500, message=echo)), "api"),
        (raising(httpx.ReadTimeout), "api"),
        (raising(httpx.ConnectError), "put"),
        (raising(httpx.ReadTimeout), "put"),
        (raising(httpx.RemoteProtocolError), "put"),
        (answer(403, content=s3_error("AccessDenied", "Request has expired")), "put"),
        (answer(403, content=s3_error("SignatureDoesNotMatch", "no match")), "put"),
        (answer(503, content=s3_error("SlowDown", "reduce")), "put"),
        (answer(500, text=echo), "put"),
    ]
    messages: list[str] = []
    for handler, call in failures:
        with make_client(handler) as client, pytest.raises(ApiError) as info:
            if call == "api":
                client.get_upload_url("a.txt")
            else:
                client.put(ticket(), opened(b"q" * 8), 8)
        messages += [str(info.value), repr(info.value), *map(str, info.value.args)]
    assert len(messages) >= 3 * len(failures)
    assert any("https://xxx.s3.us-west-1.amazonaws.com/" in m for m in messages)
    for message in messages:
        assert PRESIGNED_QUERY not in message
        assert SIGNATURE not in message
        assert "X-Amz-Credential" not in message
        assert KEY not in message
