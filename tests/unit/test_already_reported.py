"""A repeated ReportUploadSuccess answered "already reported" counts as reported (issue 10,
item 13).

The design assumed the report is idempotent; the API page does not say so. A repeat happens
whenever the answer to a report is lost after the service acted. Had the service refused the
repeat with a business error, the daemon took it for a failure: the row ended failed, and
``retry`` would have uploaded the file a second time. Now the client recognises "already
reported" (by its Message, see hottask_sync/client.py) and both report paths of the uploader
record the file as reported. The emulator can refuse repeats (``reject_repeat_reports``).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import structlog

from hottask_sync.client import HotTaskClient
from hottask_sync.config import FolderConfig
from hottask_sync.emulator import Emulator, add_arguments
from hottask_sync.emulator.server import REPEAT_REPORT_CODE, REPEAT_REPORT_MESSAGE
from hottask_sync.errors import AuthError, PermanentError, TransientError
from hottask_sync.files import FileSig
from hottask_sync.jobs import Job, Outcome
from hottask_sync.ledger import Ledger, State
from hottask_sync.uploader import Uploader
from tests.fakes import envelope

BASE = "https://api.hottask.test"
KEY = "unit-test-key"
PUT_URL = "https://s3.test/bucket/7/obj?X-Amz-Signature=abc"

Handler = Callable[[httpx.Request], httpx.Response]


def answering(status: int = 200, **body: object) -> Handler:
    return lambda request: httpx.Response(status, json=envelope(**body))  # type: ignore[arg-type]


def client_for(handler: Handler) -> HotTaskClient:
    return HotTaskClient(BASE, KEY, transport=httpx.MockTransport(handler))


# --- the client: what counts as "already reported" ----------------------------------------------


@pytest.mark.parametrize(
    ("code", "message"),
    [
        (REPEAT_REPORT_CODE, REPEAT_REPORT_MESSAGE),  # what the emulator says
        (409, "already reported"),
        (400, "File Already Reported"),
        (0, "this file has already been reported"),
        (208, "fileStoreID 7: ALREADY  REPORTED."),
    ],
)
def test_already_reported_is_a_success(code: int, message: str) -> None:
    with client_for(answering(code=code, message=message)) as client:
        assert client.report_success("7") is False


def test_already_reported_without_a_code_is_a_success() -> None:
    body = {"Data": None, "Success": False, "Message": "already reported"}
    with client_for(lambda request: httpx.Response(200, json=body)) as client:
        assert client.report_success("7") is False


def test_a_report_recorded_now_returns_true() -> None:
    with client_for(answering(data=True)) as client:
        assert client.report_success("7") is True


@pytest.mark.parametrize(
    "message",
    [
        "file not found",
        "file was not uploaded",
        "report refused",
        "already uploaded",  # not what we recognise: a refusal stays visible
        "not reported already",
        "reported",
        "",
    ],
)
def test_other_business_errors_stay_failures(message: str) -> None:
    with client_for(answering(code=400, message=message)) as client, pytest.raises(PermanentError):
        client.report_success("7")


def test_an_auth_code_wins_over_the_message() -> None:
    handler = answering(code=401, message="already reported")
    with client_for(handler) as client, pytest.raises(AuthError):
        client.report_success("7")


def test_a_server_code_wins_over_the_message() -> None:
    handler = answering(code=500, message="already reported")
    with client_for(handler) as client, pytest.raises(TransientError):
        client.report_success("7")


def test_only_a_business_error_counts_not_an_http_error() -> None:
    handler = answering(409, code=409, message="already reported")
    with client_for(handler) as client, pytest.raises(PermanentError):
        client.report_success("7")


def test_only_the_report_call_treats_it_so() -> None:
    handler = answering(code=409, message="already reported")
    with client_for(handler) as client, pytest.raises(PermanentError):
        client.get_upload_url("a.txt")


# --- the uploader: both report paths record the file as reported --------------------------------


@dataclass
class Service:
    """The three calls; ``report_answers`` are consumed one per report (then: accepted once,
    refused as a repeat after that, as the emulator with reject_repeat_reports does)."""

    report_answers: list[str] = field(default_factory=list)
    calls: list[str] = field(default_factory=list)
    accepted: list[str] = field(default_factory=list)

    def handler(self, request: httpx.Request) -> httpx.Response:
        request.read()
        if request.method == "PUT":
            self.calls.append("put")
            return httpx.Response(200)
        if request.url.path.endswith("GetPreUploadUrl"):
            self.calls.append("pre")
            data = {"FileStoreId": "7", "PreUploadUrl": PUT_URL}
            return httpx.Response(200, json=envelope(data))
        self.calls.append("report")
        fsid = json.loads(request.content)["fileStoreID"]
        how = self.report_answers.pop(0) if self.report_answers else "normal"
        if how == "normal" and fsid in self.accepted:
            how = "repeat"
        if how == "repeat":
            body = envelope(code=REPEAT_REPORT_CODE, message=REPEAT_REPORT_MESSAGE)
            return httpx.Response(200, json=body)
        self.accepted.append(fsid)
        if how == "lost":
            raise httpx.RemoteProtocolError("Server disconnected without sending a response.")
        return httpx.Response(200, json=envelope(True))


@dataclass
class Rig:
    service: Service
    ledger: Ledger
    uploader: Uploader
    folder: FolderConfig

    def row_state(self) -> State:
        row = self.ledger.get(self.folder.key, "a.txt")
        assert row is not None
        return row.state


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "a.txt").write_bytes(b"hello")
    service = Service()
    with (
        client_for(service.handler) as client,
        Ledger(tmp_path / "ledger.sqlite3") as ledger,
    ):
        uploader = Uploader(client, ledger, max_attempts=2, rng=random.Random(3))
        yield Rig(service, ledger, uploader, FolderConfig(inbox))


def test_a_report_whose_answer_was_lost_is_finished_by_already_reported(rig: Rig) -> None:
    rig.service.report_answers = ["lost"]  # acted, then the answer never came
    job = Job(rig.folder, "a.txt")
    with structlog.testing.capture_logs() as logged:
        first = rig.uploader.run_through(job)
        assert first.outcome is Outcome.RETRY
        assert rig.row_state() is State.PUT
        second = rig.uploader.run_through(job.after(first))  # the resumed report: a repeat
    assert second.outcome is Outcome.DONE
    row = rig.ledger.get(rig.folder.key, "a.txt")
    assert row is not None
    assert row.state is State.REPORTED and row.file_store_id == "7"
    assert row.reported_at is not None
    assert rig.service.calls == ["pre", "put", "report", "report"]  # uploaded once
    assert rig.service.accepted == ["7"]  # reported once
    (seen,) = [e for e in logged if e["event"] == "upload.already_reported"]
    assert seen["file_store_id"] == "7"
    assert not [e for e in logged if e["event"] == "upload.failed"]
    # Nothing is owed any more: the next look at the file skips it.
    third = rig.uploader.run_through(Job(rig.folder, "a.txt"))
    assert third.outcome is Outcome.SKIPPED
    assert rig.service.calls.count("put") == 1


def test_the_resumed_report_after_a_restart_is_finished_by_already_reported(rig: Rig) -> None:
    # A previous run reported (the service has it), then crashed before recording it.
    sig = FileSig.from_stat((rig.folder.path / "a.txt").stat())
    rig.ledger.mark_ticketed(rig.folder.key, "a.txt", sig, "7")
    rig.ledger.mark_put(rig.folder.key, "a.txt", "0" * 64, file_store_id="7")
    rig.service.accepted.append("7")
    result = rig.uploader.run_through(Job(rig.folder, "a.txt"))
    assert result.outcome is Outcome.DONE
    assert rig.row_state() is State.REPORTED
    assert rig.service.calls == ["report"]


def test_the_first_report_answered_already_reported_is_recorded(rig: Rig) -> None:
    rig.service.report_answers = ["repeat"]
    with structlog.testing.capture_logs() as logged:
        result = rig.uploader.run_through(Job(rig.folder, "a.txt"))
    assert result.outcome is Outcome.DONE
    assert rig.row_state() is State.REPORTED
    assert rig.service.calls == ["pre", "put", "report"]
    assert [e["event"] for e in logged if e["event"].startswith("upload.")] == [
        "upload.started",
        "upload.already_reported",
        "upload.succeeded",
    ]


# --- the emulator's option ------------------------------------------------------------------------


@pytest.mark.parametrize("reject", [False, True])
def test_the_emulator_refuses_a_repeat_only_when_told_to(tmp_path: Path, reject: bool) -> None:
    with Emulator(tmp_path / "emu", api_key=KEY, reject_repeat_reports=reject) as emu:
        seen: list[dict[str, object]] = []

        def recording(request: httpx.Request) -> httpx.Response:
            response = transport.handle_request(request)
            if request.url.path.endswith("ReportUploadSuccess"):
                response.read()
                seen.append(response.json())
            return response

        transport = httpx.HTTPTransport()
        path = tmp_path / "a.txt"
        path.write_bytes(b"data")
        with (
            HotTaskClient(emu.base_url, KEY, transport=httpx.MockTransport(recording)) as client,
            path.open("rb") as fh,
        ):
            ticket = client.get_upload_url("a.txt")
            client.put(ticket, fh.fileno(), 4)
            assert client.report_success(ticket.file_store_id) is True
            assert client.report_success(ticket.file_store_id) is (not reject)
        info = emu.tickets()[ticket.file_store_id]
    assert info.reported_count == (1 if reject else 2)
    assert emu.calls()["report"] == 2
    if reject:
        assert seen[1] == {
            "Data": None,
            "Version": "1.0.0",
            "Success": False,
            "Code": REPEAT_REPORT_CODE,
            "Message": REPEAT_REPORT_MESSAGE,
        }


def test_the_emulator_command_has_the_option() -> None:
    import argparse

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert parser.parse_args([]).reject_repeat_reports is False
    assert parser.parse_args(["--reject-repeat-reports"]).reject_repeat_reports is True
    assert "already reported" in parser.format_help()
