"""Progress of big uploads: Uploader against httpx.MockTransport with a clock moved per chunk.

The fake clock advances one second each time the mock S3 receives a 1 MiB chunk, so a
file of 64.5 MiB "takes" 65 seconds without the test waiting for anything. The API calls
go to an httpx.MockTransport; the PUT goes to a transport of our own, because MockTransport
reads the whole body before calling its handler (the clock could not move per chunk).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import httpx
import pytest
from structlog.testing import capture_logs

from hottask_sync.client import CHUNK_SIZE, HotTaskClient
from hottask_sync.config import FolderConfig
from hottask_sync.files import FileSig
from hottask_sync.jobs import Job, Outcome
from hottask_sync.ledger import Ledger, State
from hottask_sync.uploader import PROGRESS_EVERY_SECONDS, PROGRESS_MIN_BYTES, Uploader
from tests.fakes import FakeClock, envelope

BASE = "https://api.hottask.test"
PUT_URL = "https://s3.test/bucket/9001/obj.bin?X-Amz-Expires=300&X-Amz-Signature=abc"
SECONDS_PER_CHUNK = 1.0


class SlowS3(httpx.BaseTransport):
    """Takes a PUT chunk by chunk as it streams, moving the clock by each chunk's time."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.received = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        assert request.method == "PUT" and str(request.url) == PUT_URL
        assert isinstance(request.stream, httpx.SyncByteStream)
        for chunk in request.stream:
            self.received += len(chunk)
            self.clock.now += SECONDS_PER_CHUNK * len(chunk) / CHUNK_SIZE
        return httpx.Response(200)


def api(request: httpx.Request) -> httpx.Response:
    if request.url.path.endswith("/GetPreUploadUrl"):
        assert json.loads(request.content) == {"fileName": "big.bin"}
        return httpx.Response(200, json=envelope({"FileStoreId": 9001, "PreUploadUrl": PUT_URL}))
    if request.url.path.endswith("/ReportUploadSuccess"):
        assert json.loads(request.content) == {"fileStoreID": "9001"}
        return httpx.Response(200, json=envelope(True))
    return httpx.Response(404)


def run_upload(tmp_path: Path, size: int) -> tuple[Any, list[dict[str, Any]], int]:
    """Uploads a sparse file of ``size`` bytes; returns (result, log events, bytes received)."""
    clock = FakeClock()
    s3 = SlowS3(clock)

    inbox = tmp_path / "inbox"
    inbox.mkdir()
    path = inbox / "big.bin"
    with path.open("wb") as fh:
        fh.truncate(size)  # sparse: no 64 MiB written to disk
    folder = FolderConfig(path=inbox)
    ledger = Ledger.in_dir(tmp_path / "state")
    client = HotTaskClient(BASE, "unit-key", transport=httpx.MockTransport(api), put_transport=s3)
    try:
        ledger.add_pending([(folder.key, "big.bin", FileSig.from_stat(os.stat(path)))])
        uploader = Uploader(client, ledger, max_attempts=3, clock=clock)
        with capture_logs() as events:
            result = uploader.run_through(Job(folder, "big.bin"))
        entry = ledger.get(folder.key, "big.bin")
        assert entry is not None and entry.state is State.REPORTED
    finally:
        client.close()
        ledger.close()
    return result, events, s3.received


def test_big_upload_logs_progress_every_ten_seconds(tmp_path: Path) -> None:
    size = PROGRESS_MIN_BYTES + CHUNK_SIZE // 2  # 64.5 MiB: 65 chunks, the last one half
    result, events, received = run_upload(tmp_path, size)
    assert result.outcome is Outcome.DONE
    assert received == size

    progress = [e for e in events if e["event"] == "upload.progress"]
    # Chunk i is read at t0 + i s; it is counted before the check, so the event at
    # t0 + 10 s says 11 MiB sent. One event per 10 s: at chunks 10, 20, ... 60.
    assert len(progress) == 6
    step = int(PROGRESS_EVERY_SECONDS / SECONDS_PER_CHUNK)
    for n, event in enumerate(progress, start=1):
        sent = (n * step + 1) * CHUNK_SIZE
        elapsed = n * PROGRESS_EVERY_SECONDS
        assert event["log_level"] == "info"
        assert event["bytes_sent"] == sent
        assert event["percent"] == round(100.0 * sent / size, 1)
        assert event["rate_bytes_per_second"] == round(sent / elapsed)
        assert event["file_store_id"] == "9001"
        assert event["path"] == "big.bin"
        assert event["size"] == size
    assert [e["percent"] for e in progress] == sorted(e["percent"] for e in progress)
    assert 0 < progress[0]["percent"] < progress[-1]["percent"] < 100

    names = [e["event"] for e in events]
    assert names.index("upload.started") < names.index("upload.progress")
    assert names.index("upload.succeeded") > max(
        i for i, name in enumerate(names) if name == "upload.progress"
    )
    succeeded = next(e for e in events if e["event"] == "upload.succeeded")
    # 64.5 chunks of a second each on the fake clock.
    assert succeeded["duration_ms"] == pytest.approx(1000 * size / CHUNK_SIZE, abs=1)


def test_upload_below_the_threshold_logs_no_progress(tmp_path: Path) -> None:
    size = PROGRESS_MIN_BYTES - 1  # 64 chunks: 63 s on the fake clock, still no progress
    result, events, received = run_upload(tmp_path, size)
    assert result.outcome is Outcome.DONE
    assert received == size
    assert [e for e in events if e["event"] == "upload.progress"] == []
    assert any(e["event"] == "upload.succeeded" for e in events)
