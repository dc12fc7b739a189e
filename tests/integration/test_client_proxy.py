"""``HotTaskClient`` behind a proxy named in the environment, as httpx.Client honours it."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from hottask_sync.client import HotTaskClient


class _Proxy(BaseHTTPRequestHandler):
    """A forward proxy that answers for the hosts behind it: records each request line."""

    seen: list[str]

    def do_POST(self) -> None:
        self.seen.append(f"{self.command} {self.path}")
        self.rfile.read(int(self.headers["Content-Length"]))
        url = "http://s3.hottask.invalid/bucket/a.txt?X-Amz-Signature=abc"
        answer = {"FileStoreId": "7", "PreUploadUrl": url} if "PreUpload" in self.path else True
        body = json.dumps({"Data": answer, "Success": True, "Code": 200, "Message": ""})
        self._answer(body.encode())

    def do_PUT(self) -> None:
        self.seen.append(f"{self.command} {self.path}")
        self.rfile.read(int(self.headers["Content-Length"]))
        self._answer(b"")

    def _answer(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def proxy(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    seen: list[str] = []
    handler = type("Proxy", (_Proxy,), {"seen": seen})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy", "http_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{server.server_address[1]}")
    try:
        yield seen
    finally:
        server.shutdown()
        server.server_close()


def test_every_call_goes_through_the_proxy_named_in_the_environment(
    proxy: list[str], tmp_path: Path
) -> None:
    (tmp_path / "a.txt").write_bytes(b"hello")
    fd = os.open(tmp_path / "a.txt", os.O_RDONLY)
    with HotTaskClient("http://api.hottask.invalid", "k", allow_insecure_http=True) as client:
        try:
            ticket = client.get_upload_url("a.txt")
            client.put(ticket, fd, 5)
            assert client.report_success(ticket.file_store_id)
        finally:
            os.close(fd)
    assert proxy == [
        "POST http://api.hottask.invalid/chat/User/GetPreUploadUrl",
        "PUT http://s3.hottask.invalid/bucket/a.txt?X-Amz-Signature=abc",
        "POST http://api.hottask.invalid/chat/User/ReportUploadSuccess",
    ]
