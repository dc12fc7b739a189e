"""A presigned URL on plain http:// is refused unless insecure HTTP is allowed (issue 10,
item 10).

It used to be used as given, even with an https ``base_url`` and ``allow_insecure_http``
false: the file's bytes then travelled in clear. Now the client refuses it (a PermanentError
naming the problem, never the query string) unless the host is a loopback one (the local
emulator) or ``api.allow_insecure_http`` is set; the daemon and ``upload`` pass that setting.
"""

from __future__ import annotations

import argparse
import logging
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog

from hottask_sync import cli, logs, runtime
from hottask_sync.client import HotTaskClient, Ticket
from hottask_sync.config import ApiConfig, ApiKey, Config, FolderConfig, load_config
from hottask_sync.errors import PermanentError
from hottask_sync.jobs import Job, Outcome
from hottask_sync.ledger import Ledger, State
from hottask_sync.uploader import Uploader
from tests.fakes import envelope

BASE = "https://api.hottask.test"
KEY = "unit-test-key"
QUERY = "X-Amz-Expires=300&X-Amz-Signature=feedface"
HTTP_URL = f"http://bucket.s3.example.com/k/a.txt?{QUERY}"
HTTPS_URL = f"https://bucket.s3.example.com/k/a.txt?{QUERY}"


class Service:
    """GetPreUploadUrl answers ``url``; the PUTs and reports received are recorded."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.puts: list[str] = []
        self.reports: list[str] = []

    def handler(self, request: httpx.Request) -> httpx.Response:
        request.read()
        if request.method == "PUT":
            self.puts.append(str(request.url))
            return httpx.Response(200)
        if request.url.path.endswith("GetPreUploadUrl"):
            return httpx.Response(
                200, json=envelope({"FileStoreId": "7", "PreUploadUrl": self.url})
            )
        self.reports.append(request.content.decode())
        return httpx.Response(200, json=envelope(True))


def client_for(service: Service, **kw: Any) -> HotTaskClient:
    return HotTaskClient(BASE, KEY, transport=httpx.MockTransport(service.handler), **kw)


def assert_named_without_query(message: str) -> None:
    assert "plain http://" in message
    assert "bucket.s3.example.com" in message
    assert "allow_insecure_http" in message
    assert QUERY not in message and "feedface" not in message and "X-Amz" not in message


# --- the client ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        HTTP_URL,
        f"http://bucket.s3.example.com:80/k/a.txt?{QUERY}",
        f"http://10.0.0.5:9000/k/a.txt?{QUERY}",
        f"http://127.0.0.1.example.com/k/a.txt?{QUERY}",
    ],
)
def test_an_http_upload_url_is_refused_by_default(url: str) -> None:
    service = Service(url)
    with client_for(service) as client, pytest.raises(PermanentError) as info:
        client.get_upload_url("a.txt")
    message = str(info.value)
    assert message.startswith("GetPreUploadUrl: the upload URL is plain http://")
    assert QUERY not in message and "feedface" not in message


def test_the_refusal_names_the_problem_but_not_the_query() -> None:
    with client_for(Service(HTTP_URL)) as client, pytest.raises(PermanentError) as info:
        client.get_upload_url("a.txt")
    assert_named_without_query(str(info.value))
    assert not info.value.fail_now  # counted like any refusal: max_attempts, then failed


def test_put_refuses_an_http_ticket_before_sending_a_byte(tmp_path: Path) -> None:
    service = Service(HTTP_URL)
    path = tmp_path / "a.txt"
    path.write_bytes(b"secret bytes")
    with (
        path.open("rb") as fh,
        client_for(service) as client,
        pytest.raises(PermanentError) as info,
    ):
        client.put(Ticket("7", HTTP_URL, 0.0), fh.fileno(), 12)
    assert info.value.args[0].startswith("PUT: the upload URL is plain http://")
    assert_named_without_query(str(info.value))
    assert service.puts == []


@pytest.mark.parametrize(
    "url",
    [
        f"http://127.0.0.1:8787/hottask-bucket/1/x.txt?{QUERY}",
        f"http://localhost:8787/hottask-bucket/1/x.txt?{QUERY}",
        f"http://[::1]:8787/hottask-bucket/1/x.txt?{QUERY}",
        f"http://emu.localhost/hottask-bucket/1/x.txt?{QUERY}",
        HTTPS_URL,
    ],
)
def test_https_and_loopback_urls_are_used(tmp_path: Path, url: str) -> None:
    service = Service(url)
    path = tmp_path / "a.txt"
    path.write_bytes(b"data")
    with path.open("rb") as fh, client_for(service) as client:
        ticket = client.get_upload_url("a.txt")
        client.put(ticket, fh.fileno(), 4)
    assert service.puts == [url]


def test_allow_insecure_http_lets_an_http_url_through(tmp_path: Path) -> None:
    service = Service(HTTP_URL)
    path = tmp_path / "a.txt"
    path.write_bytes(b"data")
    with path.open("rb") as fh, client_for(service, allow_insecure_http=True) as client:
        ticket = client.get_upload_url("a.txt")
        client.put(ticket, fh.fileno(), 4)
    assert service.puts == [HTTP_URL]


# --- the uploader: nothing sent, the file not uploaded ---------------------------------------------


def test_the_uploader_never_sends_the_file_to_an_http_url(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "a.txt").write_bytes(b"secret bytes")
    service = Service(HTTP_URL)
    folder = FolderConfig(inbox)
    with client_for(service) as client, Ledger(tmp_path / "ledger.sqlite3") as ledger:
        uploader = Uploader(client, ledger, max_attempts=2, rng=random.Random(1))
        job = Job(folder, "a.txt")
        first = uploader.run_through(job)
        second = uploader.run_through(job.after(first))
        row = ledger.get(folder.key, "a.txt")
    assert first.outcome is Outcome.RETRY
    assert second.outcome is Outcome.FAILED
    assert second.error is not None
    assert_named_without_query(second.error)
    assert row is not None and row.state is State.FAILED
    assert row.last_error is not None
    assert_named_without_query(row.last_error)
    assert service.puts == [] and service.reports == []


# --- the daemon and `upload` pass the setting on ----------------------------------------------------


def config_file(tmp_path: Path, allow: bool) -> Path:
    inbox = tmp_path / "inbox"
    inbox.mkdir(exist_ok=True)
    path = tmp_path / "c.toml"
    path.write_text(
        f'[api]\nbase_url = "{BASE}"\nallow_insecure_http = {str(allow).lower()}\n'
        f'[sync]\nstate_dir = "{tmp_path / "state"}"\n'
        f'[[folders]]\npath = "{inbox}"\n',
        encoding="utf-8",
    )
    return path


@pytest.mark.parametrize("allow", [False, True])
def test_the_daemon_builds_its_client_with_the_setting(tmp_path: Path, allow: bool) -> None:
    config: Config = load_config(config_file(tmp_path, allow), environ={"HOME": str(tmp_path)})
    assert config.api.allow_insecure_http is allow
    client = runtime.client_for(config, ApiKey(KEY, "test"))
    try:
        assert client.allow_insecure_http is allow
    finally:
        client.close()


class _Built(Exception):
    pass


@pytest.fixture
def restored_logging() -> Iterator[None]:
    """``upload`` configures logging and registers the key: undone after the test."""
    root = logging.getLogger()
    saved = list(root.handlers), root.level
    yield
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])
    structlog.reset_defaults()
    logs.set_secrets(())


@pytest.mark.parametrize("allow", [False, True])
@pytest.mark.usefixtures("restored_logging")
def test_upload_builds_its_client_with_the_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, allow: bool
) -> None:
    seen: list[bool] = []

    def spy(*args: Any, **kwargs: Any) -> HotTaskClient:
        seen.append(HotTaskClient(*args, **kwargs).allow_insecure_http)
        raise _Built()

    monkeypatch.setattr(cli, "HotTaskClient", spy)
    monkeypatch.setenv("HOTTASK_API_KEY", KEY)
    args = argparse.Namespace(config=str(config_file(tmp_path, allow)), files=["x"])
    with pytest.raises(_Built):
        cli.cmd_upload(args)
    assert seen == [allow]


def test_the_default_is_to_refuse() -> None:
    assert ApiConfig().allow_insecure_http is False
    assert HotTaskClient(BASE, KEY).allow_insecure_http is False
