"""``HotTaskClient`` on the wire, through httpx's connection pool (no test transport): what a
stdlib server on loopback receives, and answers the emulator cannot give."""

from __future__ import annotations

import gzip
import json
import os
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from hottask_sync.client import HotTaskClient
from hottask_sync.errors import PermanentError, TransientError

KEY = "wire-test-key"


class _Service(BaseHTTPRequestHandler):
    """The three calls, answered as the API page says; records what each request carried.
    With ``gzip`` set, the JSON answers come gzip-encoded (as a server may send them to a
    client that accepts gzip). ``broken`` lists how the next API answers go wrong, one
    per call: "truncated" (the connection closed half-way through the body) or
    "bad-gzip" (a body that says gzip and is not)."""

    protocol_version = "HTTP/1.1"
    seen: list[tuple[str, str, dict[str, str], bytes]]
    gzip = False
    broken: list[str]

    def do_POST(self) -> None:
        body = self._body()
        if self.broken:
            self._break(self.broken.pop(0))
            return
        if "PreUpload" in self.path:
            put_url = f"http://127.0.0.1:{self.server.server_address[1]}/bucket/a.txt?sig=abc"
            data: object = {"FileStoreId": "34317", "PreUploadUrl": put_url}
        else:
            data = True
        answer = json.dumps({"Data": data, "Success": True, "Code": 200, "Message": ""})
        self._answer(answer.encode(), body, encode=self.gzip)

    def do_PUT(self) -> None:
        self._answer(b"", self._body(), encode=False)

    def _break(self, how: str) -> None:
        self.send_response(200)
        if how == "truncated":
            self.send_header("Content-Length", "100")
            self.end_headers()
            self.wfile.write(b'{"Data": ')
            self.close_connection = True
        else:
            self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Length", "7")
            self.end_headers()
            self.wfile.write(b"not gz!")

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length", "0")))

    def _answer(self, answer: bytes, received: bytes, *, encode: bool) -> None:
        self.seen.append(
            (self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, received)
        )
        if encode:
            answer = gzip.compress(answer)
        self.send_response(200)
        if encode:
            self.send_header("Content-Encoding", "gzip")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args: object) -> None:
        pass


class _Server(ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a PUT the client aborted half-way: nothing to answer


def _serve(
    gzip_answers: bool, broken: list[str] | None = None
) -> Iterator[tuple[str, list[tuple[str, str, dict[str, str], bytes]]]]:
    seen: list[tuple[str, str, dict[str, str], bytes]] = []
    attrs = {"seen": seen, "gzip": gzip_answers, "broken": broken if broken is not None else []}
    server = _Server(("127.0.0.1", 0), type("Service", (_Service,), attrs))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def service() -> Iterator[tuple[str, list[tuple[str, str, dict[str, str], bytes]]]]:
    yield from _serve(gzip_answers=False)


@pytest.fixture
def gzip_service() -> Iterator[tuple[str, list[tuple[str, str, dict[str, str], bytes]]]]:
    yield from _serve(gzip_answers=True)


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)


def test_the_three_calls_carry_what_the_api_page_asks_for(
    tmp_path: Path, service: tuple[str, list[tuple[str, str, dict[str, str], bytes]]]
) -> None:
    base_url, seen = service
    path = tmp_path / "companyinfo.txt"
    path.write_bytes(b"hello wire")
    with HotTaskClient(base_url, KEY) as client:
        ticket = client.get_upload_url("companyinfo.txt")
        fd = os.open(path, os.O_RDONLY)
        try:
            client.put(ticket, fd, 10)
        finally:
            os.close(fd)
        assert client.report_success(ticket.file_store_id) is True
    host = base_url.removeprefix("http://")
    (m1, p1, h1, b1), (m2, p2, h2, b2), (m3, p3, h3, b3) = seen
    assert (m1, p1, json.loads(b1)) == (
        "POST",
        "/chat/User/GetPreUploadUrl",
        {"fileName": "companyinfo.txt"},
    )
    assert (m2, p2, b2) == ("PUT", "/bucket/a.txt?sig=abc", b"hello wire")
    assert (m3, p3, json.loads(b3)) == (
        "POST",
        "/chat/User/ReportUploadSuccess",
        {"fileStoreID": "34317"},
    )
    for headers, body in ((h1, b1), (h3, b3)):
        assert headers["authorization"] == KEY
        assert headers["content-type"] == "application/json"
        assert headers["content-length"] == str(len(body))
    assert "authorization" not in h2  # S3 refuses a presigned URL plus a key
    assert h2["content-length"] == "10" and "transfer-encoding" not in h2
    for headers in (h1, h2, h3):
        assert headers["host"] == host
        assert headers["user-agent"].startswith("hottask-sync/")


def test_a_gzip_encoded_answer_is_decoded(
    gzip_service: tuple[str, list[tuple[str, str, dict[str, str], bytes]]],
) -> None:
    base_url, seen = gzip_service
    with HotTaskClient(base_url, KEY) as client:
        ticket = client.get_upload_url("a.txt")
        assert client.report_success(ticket.file_store_id) is True
    assert ticket.file_store_id == "34317"
    assert "gzip" in seen[0][2]["accept-encoding"]  # asked for, as httpx asks


def test_a_refused_connection_is_transient_and_never_sent() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    with (
        HotTaskClient(f"http://127.0.0.1:{port}", KEY) as client,
        pytest.raises(TransientError, match="ConnectError") as caught,
    ):
        client.get_upload_url("a.txt")
    assert caught.value.maybe_applied is False


def test_broken_answers_are_transient_and_every_connection_goes_back_to_the_pool() -> None:
    """Errors while an answer is read are httpx's (so transient), and every call, failed or
    not, hands its connection back: with two connections, the calls after them still go
    (a connection kept would leave the daemon waiting for the pool, then failing)."""
    broken = ["truncated", "bad-gzip", "truncated"]
    served = _serve(gzip_answers=False, broken=broken)
    base_url, seen = next(served)
    try:
        with HotTaskClient(base_url, KEY, max_connections=2, timeout=5) as client:
            for cause in ("RemoteProtocolError", "DecodingError", "RemoteProtocolError"):
                with pytest.raises(TransientError, match=cause):
                    client.get_upload_url("a.txt")
            for _ in range(5):
                assert client.report_success("34317") is True
    finally:
        served.close()
    assert broken == [] and len(seen) == 5


class Refused(Exception):
    """Raised by a chunk callback (the daemon's shutdown, its bandwidth cut-off)."""


def test_a_put_cut_short_raises_its_own_error_and_hands_its_connection_back(
    tmp_path: Path, service: tuple[str, list[tuple[str, str, dict[str, str], bytes]]]
) -> None:
    base_url, seen = service
    path = tmp_path / "three-chunks.bin"
    path.write_bytes(os.urandom(3000))
    sent: list[int] = []

    def refuse_second(chunk: bytes) -> None:
        sent.append(len(chunk))
        if len(sent) == 2:
            raise Refused()

    with HotTaskClient(base_url, KEY, max_connections=1, timeout=5) as client:
        ticket = client.get_upload_url("three-chunks.bin")
        fd = os.open(path, os.O_RDONLY)
        try:
            with pytest.raises(Refused):
                client.put(ticket, fd, 3000, on_chunk=refuse_second, chunk_size=1000)
            with pytest.raises(PermanentError, match="shrank to 3000 bytes"):
                client.put(ticket, fd, 4500, chunk_size=1000)  # the file is shorter
            client.put(ticket, fd, 3000, chunk_size=1000)
        finally:
            os.close(fd)
        assert client.report_success(ticket.file_store_id) is True
    assert [(method, body) for method, _, _, body in seen[-2:]] == [
        ("PUT", path.read_bytes()),
        ("POST", b'{"fileStoreID":"34317"}'),
    ]
