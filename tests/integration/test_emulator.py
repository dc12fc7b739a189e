"""The HotTask emulator, exercised over real loopback sockets."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit

import httpx
import pytest

from hottask_sync.emulator import Emulator, Faults, TicketInfo, parse_faults
from tests.conftest import wait_for
from tests.fakes import FakeClock

KEY = "test-key"
PRE = "/chat/User/GetPreUploadUrl"
REPORT = "/chat/User/ReportUploadSuccess"
REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1_737_428_534.0)


@pytest.fixture
def emu(tmp_path: Path) -> Iterator[Emulator]:
    with Emulator(tmp_path / "data", api_key=KEY) as emulator:
        yield emulator


@pytest.fixture
def client(emu: Emulator) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=emu.base_url, timeout=5.0, trust_env=False) as c:
        yield c


def pre(client: httpx.Client, name: str = "a.txt", key: str = KEY) -> httpx.Response:
    return client.post(PRE, json={"fileName": name}, headers={"Authorization": key})


def report(client: httpx.Client, file_store_id: str, key: str = KEY) -> httpx.Response:
    return client.post(REPORT, json={"fileStoreID": file_store_id}, headers={"Authorization": key})


def ticket(client: httpx.Client, name: str = "a.txt") -> tuple[str, str]:
    data = pre(client, name).json()["Data"]
    return data["FileStoreId"], data["PreUploadUrl"]


def s3_code(response: httpx.Response) -> str:
    assert response.headers["content-type"] == "application/xml"
    text = response.text
    assert text.startswith('<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>')
    return text.split("<Code>", 1)[1].split("</Code>", 1)[0]


def raw_exchange(emu: Emulator, request: bytes) -> http.client.HTTPResponse:
    """Sends raw bytes on a fresh socket and parses the one response."""
    host, port = urlsplit(emu.base_url).hostname, urlsplit(emu.base_url).port
    assert host is not None and port is not None
    sock = socket.create_connection((host, port), timeout=5)
    try:
        sock.sendall(request)
        response = http.client.HTTPResponse(sock)
        response.begin()
        response.read()
        return response
    finally:
        sock.close()


def target_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}"


# --- the three calls ----------------------------------------------------------------------


def test_full_flow_stores_bytes_and_records_them(emu: Emulator, client: httpx.Client) -> None:
    payload = os.urandom(3 * 1024 * 1024 + 123)  # crosses the 1 MiB chunk boundary
    response = pre(client, "résumé & co.pdf")
    assert response.status_code == 200
    envelope = response.json()
    assert envelope["Success"] is True
    assert envelope["Code"] == 200
    assert envelope["Version"] == "1.0.0"
    assert envelope["Message"] == ""
    file_store_id = envelope["Data"]["FileStoreId"]
    url = envelope["Data"]["PreUploadUrl"]
    assert file_store_id == "34317"
    assert url.startswith(f"{emu.base_url}/hottask-bucket/34317/")
    assert urlsplit(url).path.endswith(".pdf")
    assert "X-Amz-Credential=EMULATOR%2F" in url

    put = client.put(url, content=payload)
    assert put.status_code == 200
    assert put.content == b""
    assert put.headers["etag"] == f'"{hashlib.md5(payload).hexdigest()}"'

    done = report(client, file_store_id)
    assert done.json() == {
        "Data": True,
        "Version": "1.0.0",
        "Success": True,
        "Code": 200,
        "Message": "",
    }

    stored = emu.data_dir / "34317" / "résumé & co.pdf"
    assert stored.read_bytes() == payload
    assert sorted(p.name for p in stored.parent.iterdir()) == ["résumé & co.pdf"]
    info = emu.tickets()["34317"]
    assert info.file_name == "résumé & co.pdf"
    assert info.sha256 == hashlib.sha256(payload).hexdigest()
    assert info.size == len(payload)
    assert info.put_count == 1
    assert info.reported_count == 1
    assert info.stored_path == stored
    assert set(emu.reported()) == {"34317"}
    assert ticket(client)[0] == "34318"  # ids increase
    assert emu.calls() | {"pre": 0} == {
        "pre": 0,
        "put": 1,
        "report": 1,
        "auth_failed": 0,
        "faulted": 0,
        "put_incomplete": 0,
    }


def test_ampersands_are_escaped_in_the_raw_json(client: httpx.Client) -> None:
    raw = pre(client).content
    assert b"\\u0026X-Amz-Algorithm=AWS4-HMAC-SHA256" in raw
    assert b"&" not in raw


def test_wrong_key_gets_401_until_the_key_is_fixed(emu: Emulator, client: httpx.Client) -> None:
    response = pre(client, key="wrong")
    assert response.status_code == 401
    assert response.json() == {
        "Data": None,
        "Version": "1.0.0",
        "Success": False,
        "Code": 401,
        "Message": "Unauthorized",
    }
    assert client.post(PRE, json={"fileName": "a"}).status_code == 401  # no header at all
    assert emu.calls()["auth_failed"] == 2
    emu.api_key = "wrong"
    assert pre(client, key="wrong").json()["Success"] is True


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "request body is not valid JSON"),
        (b"[]", "request body must be a JSON object"),
        (b"{}", "fileName is required"),
        (b'{"fileName": 5}', "fileName must be a string"),
        (b'{"fileName": ""}', "fileName is required"),
        (b'{"fileName": "a/b"}', "fileName must not contain '/'"),
        (b'{"fileName": "a\\u0000b"}', "fileName must not contain NUL"),
        (json.dumps({"fileName": "é" * 513}).encode(), "fileName is longer than 1024 bytes"),
    ],
)
def test_bad_pre_bodies_are_business_400s(client: httpx.Client, body: bytes, message: str) -> None:
    response = client.post(PRE, content=body, headers={"Authorization": KEY})
    assert response.status_code == 200
    assert response.json() == {
        "Data": None,
        "Version": "1.0.0",
        "Success": False,
        "Code": 400,
        "Message": message,
    }


def test_file_name_of_exactly_1024_bytes_is_accepted(client: httpx.Client) -> None:
    assert pre(client, "é" * 512).json()["Success"] is True


def test_long_name_is_stored_truncated_but_recorded_whole(
    emu: Emulator, client: httpx.Client
) -> None:
    name = "ü" * 200 + ".txt"  # 404 bytes of UTF-8
    file_store_id, url = ticket(client, name)
    assert client.put(url, content=b"data").status_code == 200
    info = emu.tickets()[file_store_id]
    assert info.file_name == name
    assert info.stored_path is not None
    stored = info.stored_path.name
    assert len(stored.encode()) <= 255
    assert stored.endswith(".txt")
    assert name.startswith(stored.removesuffix(".txt"))
    assert info.stored_path.read_bytes() == b"data"


def test_field_names_match_case_insensitively_like_aspnet(client: httpx.Client) -> None:
    response = client.post(PRE, json={"FileName": "x.txt"}, headers={"Authorization": KEY})
    assert response.json()["Success"] is True


def test_report_of_unknown_and_never_put_ids(client: httpx.Client) -> None:
    unknown = report(client, "999").json()
    assert (unknown["Success"], unknown["Code"]) == (False, 404)
    file_store_id, _ = ticket(client)
    not_put = report(client, file_store_id).json()
    assert not_put == {
        "Data": None,
        "Version": "1.0.0",
        "Success": False,
        "Code": 400,
        "Message": "file was not uploaded",
    }
    number = client.post(REPORT, json={"fileStoreID": 34317}, headers={"Authorization": KEY})
    assert number.json()["Code"] == 400


def test_repeated_report_is_idempotent_and_counted(emu: Emulator, client: httpx.Client) -> None:
    file_store_id, url = ticket(client)
    client.put(url, content=b"x")
    assert report(client, file_store_id).json()["Success"] is True
    assert report(client, file_store_id).json()["Success"] is True
    assert emu.tickets()[file_store_id].reported_count == 2


def test_on_report_hook_sees_every_accepted_report_and_only_those(
    emu: Emulator, client: httpx.Client
) -> None:
    seen: list[TicketInfo] = []
    emu.on_report = seen.append
    file_store_id, url = ticket(client, "hooked.txt")
    assert report(client, file_store_id).json()["Code"] == 400  # not put yet: refused
    assert report(client, "999").json()["Code"] == 404
    assert seen == []
    client.put(url, content=b"x")
    assert report(client, file_store_id).json()["Success"] is True
    assert report(client, file_store_id).json()["Success"] is True
    assert [(i.file_store_id, i.file_name, i.reported_count) for i in seen] == [
        (file_store_id, "hooked.txt", 1),
        (file_store_id, "hooked.txt", 2),
    ]
    assert seen[-1] == emu.tickets()[file_store_id]


def test_second_put_overwrites(emu: Emulator, client: httpx.Client) -> None:
    file_store_id, url = ticket(client)
    client.put(url, content=b"first version")
    client.put(url, content=b"second")
    info = emu.tickets()[file_store_id]
    assert info.put_count == 2
    assert info.size == 6
    assert info.stored_path is not None and info.stored_path.read_bytes() == b"second"


def test_ids_continue_after_those_already_in_the_data_dir(tmp_path: Path) -> None:
    (tmp_path / "40000").mkdir()
    with (
        Emulator(tmp_path, api_key=KEY) as emulator,
        httpx.Client(base_url=emulator.base_url, trust_env=False) as c,
    ):
        assert ticket(c)[0] == "40001"


def test_unknown_paths_and_methods(client: httpx.Client) -> None:
    assert client.get("/nope").status_code == 404
    assert client.post("/chat/User/Other", json={}).status_code == 404
    wrong_method = client.get(PRE)
    assert wrong_method.status_code == 405
    assert wrong_method.headers["allow"] == "POST"
    assert (
        client.post(
            "/chat/user/getpreuploadurl/", json={"fileName": "a"}, headers={"Authorization": KEY}
        ).json()["Success"]
        is True
    )


# --- the presigned PUT, checked like S3 ---------------------------------------------------


def test_chunked_put_is_501(emu: Emulator, client: httpx.Client) -> None:
    file_store_id, url = ticket(client)
    response = client.put(url, content=iter([b"abc", b"def"]))
    assert response.status_code == 501
    assert s3_code(response) == "NotImplemented"
    assert emu.tickets()[file_store_id].put_count == 0
    assert client.put(url, content=b"abcdef").status_code == 200  # connection still usable


def test_put_without_content_length_is_411(emu: Emulator, client: httpx.Client) -> None:
    _, url = ticket(client)
    host = urlsplit(url).netloc
    request = f"PUT {target_of(url)} HTTP/1.1\r\nHost: {host}\r\n\r\nstray body"
    response = raw_exchange(emu, request.encode())
    assert response.status == 411
    assert response.getheader("Connection") == "close"


def test_put_over_5_gib_is_entity_too_large(emu: Emulator, client: httpx.Client) -> None:
    _, url = ticket(client)
    host = urlsplit(url).netloc
    request = f"PUT {target_of(url)} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {5 * 1024**3 + 1}\r\n\r\n"
    response = raw_exchange(emu, request.encode())
    assert response.status == 400


def test_put_with_authorization_header_is_400(client: httpx.Client) -> None:
    _, url = ticket(client)
    response = client.put(url, content=b"x", headers={"Authorization": KEY})
    assert response.status_code == 400
    assert s3_code(response) == "InvalidArgument"


@pytest.mark.parametrize(
    "tamper",
    [
        lambda url: url[:-1] + ("0" if url[-1] != "0" else "1"),  # signature
        lambda url: url.replace("X-Amz-Expires=300", "X-Amz-Expires=3000"),
        lambda url: url.replace("/hottask-bucket/34317/", "/hottask-bucket/34317/0"),
        lambda url: url.replace("X-Amz-SignedHeaders=host&", ""),
        lambda url: url + "&extra=1",
        lambda url: url.split("?")[0],
    ],
    ids=["signature", "expires", "path", "missing-param", "extra-param", "no-query"],
)
def test_tampered_url_is_signature_mismatch(
    emu: Emulator, client: httpx.Client, tamper: Callable[[str], str]
) -> None:
    file_store_id, url = ticket(client)
    response = client.put(tamper(url), content=b"x")
    assert response.status_code == 403
    assert s3_code(response) == "SignatureDoesNotMatch"
    assert emu.tickets()[file_store_id].put_count == 0


def test_other_host_header_is_signature_mismatch(client: httpx.Client) -> None:
    _, url = ticket(client)
    response = client.put(url, content=b"x", headers={"Host": "localhost:1"})
    assert response.status_code == 403
    assert s3_code(response) == "SignatureDoesNotMatch"


def test_url_expires_after_its_ttl(tmp_path: Path, clock: FakeClock) -> None:
    with (
        Emulator(tmp_path, api_key=KEY, clock=clock, url_ttl=300) as emulator,
        httpx.Client(base_url=emulator.base_url, trust_env=False) as c,
    ):
        file_store_id, url = ticket(c)
        assert f"X-Amz-Date={time.strftime('%Y%m%dT%H%M%SZ', time.gmtime(clock.now))}" in url
        clock.now += 300
        assert c.put(url, content=b"on time").status_code == 200
        clock.now += 1
        late = c.put(url, content=b"late")
        assert late.status_code == 403
        assert s3_code(late) == "AccessDenied"
        assert "<Message>Request has expired</Message>" in late.text
        assert emulator.tickets()[file_store_id].put_count == 1


def test_client_vanishing_mid_put_leaves_nothing(emu: Emulator, client: httpx.Client) -> None:
    file_store_id, url = ticket(client)
    host = urlsplit(url).netloc
    head = f"PUT {target_of(url)} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 1000000\r\n\r\n"
    with socket.create_connection((urlsplit(url).hostname, urlsplit(url).port)) as sock:
        sock.sendall(head.encode() + b"x" * 1000)
    wait_for(lambda: emu.calls()["put_incomplete"] == 1)
    assert emu.tickets()[file_store_id].put_count == 0
    ticket_dir = emu.data_dir / file_store_id
    assert not ticket_dir.exists() or list(ticket_dir.iterdir()) == []


# --- faults -------------------------------------------------------------------------------


def test_5xx_fault_on_api_and_put(emu: Emulator, client: httpx.Client) -> None:
    _, url = ticket(client)
    emu.faults = Faults(error_5xx=1.0, seed=1)
    for _ in range(5):
        response = pre(client)
        assert response.status_code in (500, 502, 503)
        assert response.json()["Code"] == response.status_code
        assert response.json()["Success"] is False
        put = client.put(url, content=b"x")
        assert put.status_code in (500, 503)
        assert s3_code(put) == {500: "InternalError", 503: "SlowDown"}[put.status_code]
    assert emu.calls()["faulted"] == 10


def test_429_fault_sends_retry_after(emu: Emulator, client: httpx.Client) -> None:
    _, url = ticket(client)
    emu.faults = Faults(rate_429=1.0, retry_after=2)
    response = pre(client)
    assert response.status_code == 429
    assert response.headers["retry-after"] == "2"
    assert response.json()["Code"] == 429
    emu.faults = Faults(rate_429=1.0, retry_after=0.5)
    put = client.put(url, content=b"x")
    assert put.status_code == 429
    assert put.headers["retry-after"] == "0.5"


@pytest.mark.parametrize("endpoint", ["pre", "put", "report"])
def test_drop_before_closes_without_acting(
    emu: Emulator, client: httpx.Client, endpoint: str
) -> None:
    file_store_id, url = ticket(client)
    if endpoint == "report":
        client.put(url, content=b"x")
    emu.faults = Faults(drop_before=1.0, endpoints=frozenset({endpoint}))
    with pytest.raises(httpx.TransportError):
        if endpoint == "pre":
            pre(client)
        elif endpoint == "put":
            client.put(url, content=b"x")
        else:
            report(client, file_store_id)
    info = emu.tickets()
    assert list(info) == [file_store_id]  # no second ticket issued
    assert info[file_store_id].put_count == (1 if endpoint == "report" else 0)
    assert info[file_store_id].reported_count == 0
    assert emu.calls()["faulted"] == 1


@pytest.mark.parametrize("endpoint", ["pre", "put", "report"])
def test_drop_after_acts_but_loses_the_answer(
    emu: Emulator, client: httpx.Client, endpoint: str
) -> None:
    file_store_id, url = ticket(client)
    if endpoint == "report":
        client.put(url, content=b"x")
    emu.faults = Faults(drop_after=1.0, endpoints=frozenset({endpoint}))
    with pytest.raises(httpx.TransportError):
        if endpoint == "pre":
            pre(client, "b.txt")
        elif endpoint == "put":
            client.put(url, content=b"stored anyway")
        else:
            report(client, file_store_id)
    tickets = emu.tickets()
    if endpoint == "pre":
        assert tickets["34318"].file_name == "b.txt"
    elif endpoint == "put":
        assert tickets[file_store_id].put_count == 1
        path = tickets[file_store_id].stored_path
        assert path is not None and path.read_bytes() == b"stored anyway"
    else:
        assert tickets[file_store_id].reported_count == 1


def test_business_error_fault_spares_puts(emu: Emulator, client: httpx.Client) -> None:
    _, url = ticket(client)
    emu.faults = Faults(business_error=1.0)
    response = pre(client)
    assert response.status_code == 200
    assert response.json() == {
        "Data": None,
        "Version": "1.0.0",
        "Success": False,
        "Code": 500,
        "Message": "Internal business error",
    }
    assert client.put(url, content=b"x").status_code == 200


def test_expire_url_fault_rejects_fresh_urls(emu: Emulator, client: httpx.Client) -> None:
    file_store_id, url = ticket(client)
    emu.faults = Faults(expire_url=1.0)
    response = client.put(url, content=b"x")
    assert response.status_code == 403
    assert "<Message>Request has expired</Message>" in response.text
    assert emu.tickets()[file_store_id].put_count == 0
    assert emu.calls()["faulted"] == 1


def test_delay_and_slow_faults_delay_answers(emu: Emulator, client: httpx.Client) -> None:
    emu.faults = Faults(delay_seconds=0.2, endpoints=frozenset())  # delay ignores endpoints
    start = time.monotonic()
    assert pre(client).status_code == 200
    assert time.monotonic() - start >= 0.2
    emu.faults = Faults(slow=1.0, slow_seconds=0.2)
    start = time.monotonic()
    assert pre(client).status_code == 200
    assert time.monotonic() - start >= 0.2
    assert emu.calls()["faulted"] == 1
    emu.faults = Faults()
    start = time.monotonic()
    pre(client)
    assert time.monotonic() - start < 0.2


def test_faults_only_hit_selected_endpoints(emu: Emulator, client: httpx.Client) -> None:
    emu.faults = Faults(error_5xx=1.0, endpoints=frozenset({"put"}))
    file_store_id, url = ticket(client)
    assert client.put(url, content=b"x").status_code in (500, 503)
    assert report(client, file_store_id).json()["Code"] == 400  # not faulted; not uploaded


def test_seeded_faults_are_reproducible(tmp_path: Path) -> None:
    def statuses(seed: int) -> list[int]:
        faults = Faults(error_5xx=0.5, seed=seed)
        with (
            Emulator(
                tmp_path / str(seed) / str(time.monotonic_ns()), api_key=KEY, faults=faults
            ) as e,
            httpx.Client(base_url=e.base_url, trust_env=False) as c,
        ):
            return [pre(c).status_code for _ in range(30)]

    first = statuses(7)
    assert first == statuses(7)
    assert 200 in first and set(first) - {200}


def test_parse_faults_full_spec() -> None:
    spec = (
        "5xx=0.1,429=0.05,retry_after=1,drop_before=0.05,drop_after=0.1,business=0.05,"
        "slow=0.1,slow_seconds=1,expire=0.05,delay=0.025,endpoints=pre+put,seed=3"
    )
    assert parse_faults(spec) == Faults(
        error_5xx=0.1,
        rate_429=0.05,
        retry_after=1.0,
        drop_before=0.05,
        drop_after=0.1,
        business_error=0.05,
        slow=0.1,
        slow_seconds=1.0,
        expire_url=0.05,
        delay_seconds=0.025,
        endpoints=frozenset({"pre", "put"}),
        seed=3,
    )
    assert parse_faults("") == Faults()
    assert parse_faults(" error_5xx = 1 , ") == Faults(error_5xx=1.0)


@pytest.mark.parametrize(
    ("spec", "item"),
    [
        ("5xx=2", "5xx=2"),
        ("bogus=1", "bogus=1"),
        ("slow=0.1,5xx", "5xx"),
        ("endpoints=pre+nope", "endpoints=pre+nope"),
        ("endpoints=", "endpoints="),
        ("seed=x", "seed=x"),
        ("delay=-1", "delay=-1"),
        ("429=nan", "429=nan"),
        ("slow_seconds=inf", "slow_seconds=inf"),
        ("5xx=0.1,5xx=0.2", "5xx=0.2"),
    ],
)
def test_parse_faults_rejects_bad_items(spec: str, item: str) -> None:
    with pytest.raises(ValueError, match=re.escape(f"bad fault item '{item}'")):
        parse_faults(spec)


# --- test hooks, logging, lifecycle -------------------------------------------------------


def test_state_and_faults_endpoints(emu: Emulator, client: httpx.Client) -> None:
    file_store_id, url = ticket(client)
    client.put(url, content=b"hello")
    report(client, file_store_id)
    state = client.get("/_emulator/state").json()
    assert state["tickets"][file_store_id] == {
        "file_name": "a.txt",
        "created_at": emu.tickets()[file_store_id].created_at,
        "put_count": 1,
        "size": 5,
        "sha256": hashlib.sha256(b"hello").hexdigest(),
        "stored_path": str(emu.data_dir / file_store_id / "a.txt"),
        "reported_count": 1,
    }
    assert state["calls"]["pre"] == 1

    changed = client.post("/_emulator/faults", json={"error_5xx": 1.0, "endpoints": ["pre"]})
    assert changed.status_code == 200
    assert changed.json()["endpoints"] == ["pre"]
    assert emu.faults == Faults(error_5xx=1.0, endpoints=frozenset({"pre"}))
    assert pre(client).status_code >= 500
    assert client.get("/_emulator/state").status_code == 200  # hooks are never faulted
    for bad in ({"nope": 1}, {"error_5xx": 2}, {"endpoints": "pre"}, [1]):
        assert client.post("/_emulator/faults", json=bad).status_code == 400
    assert client.post("/_emulator/faults", json={}).json()["error_5xx"] == 0.0
    assert emu.faults == Faults()


def test_request_log_never_shows_the_query(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with (
        Emulator(tmp_path, api_key=KEY, quiet=False) as emulator,
        httpx.Client(base_url=emulator.base_url, trust_env=False) as c,
    ):
        _, url = ticket(c)
        c.put(url, content=b"x")
        c.put(url + "0", content=b"x")
    err = capsys.readouterr().err
    assert '"POST /chat/User/GetPreUploadUrl" 200' in err
    assert '"PUT /hottask-bucket/34317/' in err
    assert "X-Amz" not in err


def test_quiet_emulator_logs_nothing(
    emu: Emulator, client: httpx.Client, capsys: pytest.CaptureFixture[str]
) -> None:
    ticket(client)
    assert capsys.readouterr().err == ""


def test_keepalive_calls_are_fast(emu: Emulator) -> None:
    """Guards against the Nagle + delayed-ACK stall (40 ms a call) coming back."""
    parts = urlsplit(emu.base_url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=5)
    body = json.dumps({"fileName": "a.txt"})
    start = time.monotonic()
    for _ in range(200):
        conn.request("POST", PRE, body=body, headers={"Authorization": KEY})
        assert conn.getresponse().read()
    conn.close()
    assert time.monotonic() - start < 3.0


def test_stop_with_an_idle_keepalive_connection_is_prompt(tmp_path: Path) -> None:
    emulator = Emulator(tmp_path, api_key=KEY)
    emulator.start()
    parts = urlsplit(emulator.base_url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=5)
    conn.request("GET", "/_emulator/state")
    assert conn.getresponse().read()
    start = time.monotonic()
    emulator.stop()
    assert time.monotonic() - start < 2.0
    emulator.stop()  # idempotent
    with pytest.raises((OSError, http.client.HTTPException)):
        conn.request("GET", "/_emulator/state")
        conn.getresponse().read()
    conn.close()


def test_stop_without_start_releases_the_port(tmp_path: Path) -> None:
    emulator = Emulator(tmp_path)
    port = urlsplit(emulator.base_url).port
    assert emulator.address == ("127.0.0.1", port)
    emulator.stop()
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port or 0))


# --- command line -------------------------------------------------------------------------


def _read_line(stream: IO[str] | None, timeout: float = 10.0) -> str:
    """Reads one line from a subprocess pipe, failing instead of hanging past ``timeout``."""
    assert stream is not None
    with selectors.DefaultSelector() as selector:
        selector.register(stream, selectors.EVENT_READ)
        if not selector.select(timeout):
            raise AssertionError("no output from the emulator in time")
    return stream.readline()


def _spawn(*args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "hottask_sync.emulator", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def test_command_line_serves_until_sigterm(tmp_path: Path) -> None:
    proc = _spawn("--port", "0", "--data", str(tmp_path / "emu"), "--api-key", "cli-key", "--quiet")
    try:
        banner = _read_line(proc.stdout)
        assert banner.startswith("HotTask emulator on http://127.0.0.1:")
        assert "API key: cli-key" in banner
        assert f"files stored under {tmp_path / 'emu'}" in banner
        base_url = banner.split()[3]
        with httpx.Client(base_url=base_url, trust_env=False) as c:
            assert pre(c, key="cli-key").json()["Success"] is True
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0
    finally:
        proc.kill()
        proc.communicate()


def test_command_line_reports_a_busy_port(emu: Emulator, tmp_path: Path) -> None:
    port = str(urlsplit(emu.base_url).port)
    proc = _spawn("--port", port, "--data", str(tmp_path / "emu"))
    out, err = proc.communicate(timeout=10)
    assert proc.returncode == 2
    assert out == ""
    assert err.count("\n") == 1
    assert "already in use" in err
