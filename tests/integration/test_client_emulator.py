"""``HotTaskClient`` against the real emulator over loopback sockets."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from hottask_sync.client import CHUNK_SIZE, HotTaskClient, Ticket
from hottask_sync.emulator import Emulator, Faults
from hottask_sync.errors import AuthError, TransientError, UrlExpired
from tests.fakes import FakeClock

KEY = "client-test-key"
REPO_ROOT = Path(__file__).resolve().parents[2]
MB = 1024 * 1024


class RecordingTransport(httpx.BaseTransport):
    """A real HTTP transport that remembers the headers of every request it sends."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.requests: list[tuple[str, httpx.Headers]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append((request.method, request.headers.copy()))
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()


@pytest.fixture
def emu(tmp_path: Path) -> Iterator[Emulator]:
    with Emulator(tmp_path / "emu", api_key=KEY) as emulator:
        yield emulator


def upload(client: HotTaskClient, path: Path) -> Ticket:
    """The three calls for one file; returns its ticket."""
    ticket = client.get_upload_url(path.name)
    fd = os.open(path, os.O_RDONLY)
    try:
        client.put(ticket, fd, os.fstat(fd).st_size)
    finally:
        os.close(fd)
    client.report_success(ticket.file_store_id)
    return ticket


@pytest.mark.parametrize("recorded", [False, True], ids=["pool", "recorded"])
@pytest.mark.parametrize("size", [0, 1, CHUNK_SIZE, 3 * CHUNK_SIZE + 17])
def test_full_upload_is_byte_for_byte_and_never_chunked(
    size: int, recorded: bool, tmp_path: Path, emu: Emulator
) -> None:
    """Through httpx's connection pool (the emulator refuses a chunked PUT, one without a
    Content-Length and one with an Authorization header, as S3 does), and through a
    transport that records the PUT's headers (httpx's own request models)."""
    data = os.urandom(size)
    path = tmp_path / "photo & co.jpg"
    path.write_bytes(data)
    put_transport = RecordingTransport() if recorded else None
    with HotTaskClient(emu.base_url, KEY, put_transport=put_transport) as client:
        ticket = upload(client, path)

    info = emu.tickets()[ticket.file_store_id]
    assert info.file_name == "photo & co.jpg"
    assert (info.put_count, info.reported_count) == (1, 1)
    assert info.size == size
    assert info.sha256 == hashlib.sha256(data).hexdigest()
    assert info.stored_path is not None and info.stored_path.read_bytes() == data
    if put_transport is None:
        return
    [(method, headers)] = put_transport.requests
    assert method == "PUT"
    assert "transfer-encoding" not in headers
    assert headers["content-length"] == str(size)
    assert "authorization" not in headers  # S3 refuses a presigned URL plus a key


def test_chunked_put_is_refused_with_501(tmp_path: Path, emu: Emulator) -> None:
    with HotTaskClient(emu.base_url, KEY) as client:
        ticket = client.get_upload_url("chunked.bin")

    def body() -> Iterator[bytes]:
        yield b"first part, "
        yield b"second part"

    with httpx.Client() as raw:
        response = raw.put(ticket.url, content=body())
    assert response.request.headers.get("transfer-encoding") == "chunked"
    assert "content-length" not in response.request.headers
    assert response.status_code == 501
    assert "<Code>NotImplemented</Code>" in response.text
    assert emu.tickets()[ticket.file_store_id].put_count == 0


def test_expired_url_raises_url_expired(tmp_path: Path) -> None:
    clock = FakeClock(1_767_225_600.0)
    path = tmp_path / "late.txt"
    path.write_bytes(b"too late")
    with (
        Emulator(tmp_path / "emu", api_key=KEY, url_ttl=60, clock=clock) as emu,
        HotTaskClient(emu.base_url, KEY) as client,
    ):
        fresh = client.get_upload_url("fresh.txt")
        stale = client.get_upload_url("late.txt")
        fd = os.open(path, os.O_RDONLY)
        try:
            clock.now += 59  # still valid
            client.put(fresh, fd, 8)
            clock.now += 2  # 61 s after issue: expired
            with pytest.raises(UrlExpired):
                client.put(stale, fd, 8)
        finally:
            os.close(fd)
        tickets = emu.tickets()
    assert tickets[fresh.file_store_id].put_count == 1
    assert tickets[stale.file_store_id].put_count == 0


def test_a_429_through_the_pool_is_transient_with_its_retry_after(
    tmp_path: Path, emu: Emulator
) -> None:
    path = tmp_path / "busy.txt"
    path.write_bytes(b"busy")
    with HotTaskClient(emu.base_url, KEY) as client:
        ticket = client.get_upload_url("busy.txt")
        emu.faults = Faults(rate_429=1.0, retry_after=2)
        with pytest.raises(TransientError, match="HTTP 429") as api:
            client.get_upload_url("busy.txt")
        emu.faults = Faults(rate_429=1.0, retry_after=0.5)
        fd = os.open(path, os.O_RDONLY)
        try:
            with pytest.raises(TransientError, match="HTTP 429") as put:
                client.put(ticket, fd, 4)
        finally:
            os.close(fd)
    assert (api.value.retry_after, put.value.retry_after) == (2.0, 0.5)


def test_wrong_key_raises_auth_error(tmp_path: Path, emu: Emulator) -> None:
    with HotTaskClient(emu.base_url, KEY) as good:
        ticket = good.get_upload_url("ok.txt")
    with HotTaskClient(emu.base_url, "not-the-key") as bad:
        with pytest.raises(AuthError):
            bad.get_upload_url("x.txt")
        with pytest.raises(AuthError):
            bad.report_success(ticket.file_store_id)
    calls = emu.calls()
    assert calls["auth_failed"] == 2
    assert [t.file_name for t in emu.tickets().values()] == ["ok.txt"]


_CHILD = """
import json, os, resource, sys
from hottask_sync.client import HotTaskClient

base_url, key, path = sys.argv[1:4]
with HotTaskClient(base_url, key, timeout=120) as client:
    ticket = client.get_upload_url(os.path.basename(path))
    fd = os.open(path, os.O_RDONLY)
    try:
        client.put(ticket, fd, os.fstat(fd).st_size)
    finally:
        os.close(fd)
    client.report_success(ticket.file_store_id)
# VmHWM is the peak RSS of this process's own address space. ru_maxrss is not: Linux
# carries the parent's high-water mark across vfork/exec into it, so a big pytest process
# would inflate it. Both are reported; VmHWM is the one asserted.
with open("/proc/self/status") as fh:
    hwm_kib = next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:"))
usage = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({
    "file_store_id": ticket.file_store_id,
    "vmhwm_kib": hwm_kib,
    "maxrss_kib": usage.ru_maxrss,
}))
"""


def test_300_mb_upload_streams_with_peak_rss_under_100_mb(tmp_path: Path, emu: Emulator) -> None:
    size = 300 * MB
    path = tmp_path / "big.bin"
    hasher = hashlib.sha256()
    block = os.urandom(MB)
    with open(path, "wb") as fh:
        for i in range(size // MB):
            chunk = i.to_bytes(8, "big") + block[8:]  # every MiB different
            hasher.update(chunk)
            fh.write(chunk)
    expected = hasher.hexdigest()
    try:
        child = subprocess.run(
            [sys.executable, "-c", _CHILD, emu.base_url, KEY, str(path)],
            capture_output=True,
            text=True,
            timeout=180,
            cwd=REPO_ROOT,
            check=False,
        )
        assert child.returncode == 0, child.stderr
        result = json.loads(child.stdout)
        peak = result["vmhwm_kib"] * 1024
        assert 0 < peak < 100 * MB, (
            f"peak RSS {peak / MB:.1f} MiB (ru_maxrss {result['maxrss_kib'] / 1024:.1f} MiB)"
        )
        info = emu.tickets()[result["file_store_id"]]
        assert info.reported_count == 1
        assert info.size == size
        assert info.sha256 == expected
        assert info.stored_path is not None and info.stored_path.stat().st_size == size
    finally:
        path.unlink(missing_ok=True)
        for info in emu.tickets().values():
            if info.stored_path is not None:
                info.stored_path.unlink(missing_ok=True)
