"""Unit tests for hottask_sync.uploader: one file through the pipeline against a fake HotTask.

The fake speaks the three calls through ``httpx.MockTransport`` (streaming: the handler reads
the PUT body chunk by chunk, so a test can change the file while it is being sent). The
ledger is a real SQLite file in tmp_path; the clock is fake, so URL lifetimes and the auth
circuit are exercised without waiting. Every failure class is tried at every step.
"""

from __future__ import annotations

import json
import os
import random
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog
from prometheus_client import CollectorRegistry

from hottask_sync import cli
from hottask_sync.client import MAX_PUT_BYTES, URL_LIFETIME_SECONDS, HotTaskClient
from hottask_sync.config import FolderConfig
from hottask_sync.files import FileSig, lstat_regular
from hottask_sync.jobs import Job, Outcome, Result
from hottask_sync.ledger import Action, Ledger, State, plan
from hottask_sync.metrics import Metrics
from hottask_sync.scheduler import Kind, Scheduler
from hottask_sync.status import announce_auth
from hottask_sync.uploader import Uploader
from tests.fakes import FakeClock, StreamingMockTransport, envelope, s3_error
from tests.fakes import sha256 as sha

BASE = "https://api.hottask.test"
KEY = "unit-test-key"
KEY_SOURCE = "/etc/hottask/key"

# --- the fake service -------------------------------------------------------------------------

Fault = Callable[[httpx.Request], httpx.Response]


@dataclass
class FakeHotTask:
    """The three calls, with scripted faults: ``faults[endpoint]`` is consumed one per call.

    A fault is a function of the request returning the answer or raising an httpx error;
    ``ACTED_THEN_LOST`` does the real work first and then loses the answer.
    """

    faults: dict[str, list[Any]] = field(
        default_factory=lambda: {"pre": [], "put": [], "report": []}
    )
    calls: list[tuple[str, str]] = field(default_factory=list)  # (endpoint, name/url/id)
    stored: dict[str, bytes] = field(default_factory=dict)  # FileStoreId -> bytes
    reported: list[str] = field(default_factory=list)
    on_put_chunk: Callable[[int], None] | None = None  # called after each received chunk
    next_id: int = 500

    def handler(self, request: httpx.Request) -> httpx.Response:
        if request.method == "PUT":
            endpoint = "put"
            self.calls.append((endpoint, str(request.url)))
        else:
            endpoint = "pre" if request.url.path.endswith("GetPreUploadUrl") else "report"
            request.read()
            body = json.loads(request.content)
            self.calls.append((endpoint, body.get("fileName") or body.get("fileStoreID")))
        fault = self.faults[endpoint].pop(0) if self.faults[endpoint] else None
        if fault is not None and fault is not ACTED_THEN_LOST:
            if request.method == "PUT":
                request.read()
            response: httpx.Response = fault(request)
            return response
        response = getattr(self, f"_{endpoint}")(request)
        if fault is ACTED_THEN_LOST:
            raise httpx.RemoteProtocolError("Server disconnected without sending a response.")
        return response

    def _pre(self, request: httpx.Request) -> httpx.Response:
        fsid = str(self.next_id)
        self.next_id += 1
        url = f"https://s3.test/bucket/{fsid}/obj?X-Amz-Expires=300&X-Amz-Signature=sig{fsid}"
        return httpx.Response(200, json=envelope({"FileStoreId": fsid, "PreUploadUrl": url}))

    def _put(self, request: httpx.Request) -> httpx.Response:
        fsid = request.url.path.split("/")[2]
        received = bytearray()
        for chunk in request.stream:  # type: ignore[union-attr]
            received += chunk
            if self.on_put_chunk is not None:
                self.on_put_chunk(len(received))
        self.stored[fsid] = bytes(received)
        return httpx.Response(200, headers={"ETag": '"x"'})

    def _report(self, request: httpx.Request) -> httpx.Response:
        fsid = json.loads(request.content)["fileStoreID"]
        if fsid not in self.stored:
            return httpx.Response(200, json=envelope(code=400, message="file was not uploaded"))
        self.reported.append(fsid)
        return httpx.Response(200, json=envelope(True))

    def count(self, endpoint: str) -> int:
        return sum(1 for e, _ in self.calls if e == endpoint)

    def args(self, endpoint: str) -> list[str]:
        return [a for e, a in self.calls if e == endpoint]


def ACTED_THEN_LOST(request: httpx.Request) -> httpx.Response:
    raise AssertionError("marker, never called")


def status(code: int, headers: dict[str, str] | None = None) -> Fault:
    def fault(request: httpx.Request) -> httpx.Response:
        if request.method == "PUT":
            s3_code = "SlowDown" if code == 503 else "Error"
            return httpx.Response(code, content=s3_error(s3_code, "x"), headers=headers)
        return httpx.Response(code, json=envelope(code=code, message="x"), headers=headers)

    return fault


def business(code: int) -> Fault:
    return lambda request: httpx.Response(200, json=envelope(code=code, message="business"))


def raising(exc_type: type[httpx.HTTPError]) -> Fault:
    def fault(request: httpx.Request) -> httpx.Response:
        raise exc_type("injected", request=request)

    return fault


def expired(request: httpx.Request) -> httpx.Response:
    return httpx.Response(403, content=s3_error("AccessDenied", "Request has expired"))


# --- fixtures ---------------------------------------------------------------------------------


@dataclass
class Rig:
    inbox: Path
    done: Path
    server: FakeHotTask
    clock: FakeClock
    ledger: Ledger
    uploader: Uploader
    folder: FolderConfig
    paused: threading.Event
    #: The job each file runs as next: what the scheduler would make of its last result.
    next: dict[tuple[str, str], Job] = field(default_factory=dict)

    def job(self, relpath: str, folder: FolderConfig | None = None) -> Job:
        return Job(folder or self.folder, relpath)

    def run(self, job: Job) -> Result:
        """Runs ``job`` as the scheduler would hand it out again: with the ticket and the
        failure count its last result carried back."""
        current = self.next.get(job.key)
        if current is not None and current.folder == job.folder:
            job = replace(current, probe=job.probe, orphan=job.orphan)
        result = self.uploader.run_through(job)
        self.next[job.key] = job.after(result)
        return result

    def write(self, relpath: str, data: bytes) -> Path:
        path = self.inbox / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return path

    def row(self, relpath: str, folder: FolderConfig | None = None) -> Any:
        return self.ledger.get((folder or self.folder).key, relpath)


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    server = FakeHotTask()
    clock = FakeClock()
    client = HotTaskClient(BASE, KEY, transport=StreamingMockTransport(server.handler), clock=clock)
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    paused = threading.Event()
    uploader = Uploader(
        client,
        ledger,
        max_attempts=3,
        clock=clock,
        rng=random.Random(7),
        key_source=KEY_SOURCE,
        paused=paused,
    )
    yield Rig(
        inbox, tmp_path / "done", server, clock, ledger, uploader, FolderConfig(inbox), paused
    )
    client.close()
    ledger.close()


def moving(rig: Rig) -> FolderConfig:
    return FolderConfig(rig.inbox, after_upload="move", move_to=rig.done)


# --- transient errors: retried with backoff, never given up ---------------------------------

TRANSIENT: dict[str, Fault] = {
    "http500": status(500),
    "http502": status(502),
    "http503": status(503),
    "http429": status(429),
    "business500": business(500),
    "connect": raising(httpx.ConnectError),
    "timeout": raising(httpx.ReadTimeout),
    "dropped": raising(httpx.RemoteProtocolError),
}
PUT_TRANSIENT = {k: v for k, v in TRANSIENT.items() if not k.startswith("business")}


@pytest.mark.parametrize("kind", list(TRANSIENT))
def test_transient_at_ticket_retries_and_records_the_error(rig: Rig, kind: str) -> None:
    rig.write("a.txt", b"hello")
    rig.server.faults["pre"] = [TRANSIENT[kind]]
    job = rig.job("a.txt")
    result = rig.run(job)
    assert result.outcome is Outcome.RETRY
    assert 0.0 <= result.delay <= 1.0  # first failure: full jitter in [0, 1 s]
    row = rig.row("a.txt")
    assert row.state is State.PENDING
    assert row.file_store_id is None
    assert row.transient_errors == 1 and row.attempts == 0
    assert row.last_error.startswith("ticket: ")
    assert rig.server.count("put") == 0 and rig.server.count("report") == 0
    # The next try goes through: no attempt was used up.
    assert rig.run(job).outcome is Outcome.DONE
    assert rig.row("a.txt").state is State.REPORTED


@pytest.mark.parametrize("kind", list(PUT_TRANSIENT))
def test_transient_at_put_keeps_the_ticket(rig: Rig, kind: str) -> None:
    rig.write("a.txt", b"hello")
    rig.server.faults["put"] = [PUT_TRANSIENT[kind]]
    job = rig.job("a.txt")
    result = rig.run(job)
    assert result.outcome is Outcome.RETRY
    assert 0.0 <= result.delay <= 1.0
    row = rig.row("a.txt")
    assert row.state is State.TICKETED
    assert row.file_store_id == "500"
    assert row.last_error.startswith("put: ")
    assert row.attempts == 0
    assert rig.run(job).outcome is Outcome.DONE
    assert rig.server.reported == ["500"]


@pytest.mark.parametrize("kind", list(TRANSIENT))
def test_transient_at_report_stays_put(rig: Rig, kind: str) -> None:
    rig.write("a.txt", b"hello")
    rig.server.faults["report"] = [TRANSIENT[kind]]
    job = rig.job("a.txt")
    result = rig.run(job)
    assert result.outcome is Outcome.RETRY
    assert 0.0 <= result.delay <= 1.0
    row = rig.row("a.txt")
    assert row.state is State.PUT
    assert row.file_store_id == "500"
    assert row.sha256 == sha(b"hello")
    assert row.last_error.startswith("report: ")
    # The retry only reports: no second ticket, no second PUT.
    assert rig.run(job).outcome is Outcome.DONE
    assert rig.server.count("pre") == 1 and rig.server.count("put") == 1
    assert rig.server.args("report") == ["500", "500"]
    assert rig.server.reported == ["500"]


def test_backoff_doubles_and_is_capped(rig: Rig) -> None:
    rig.write("a.txt", b"hello")
    job = rig.job("a.txt")
    delays = []
    for _ in range(12):
        rig.server.faults["pre"] = [status(503)]
        result = rig.run(job)
        assert result.outcome is Outcome.RETRY
        delays.append(result.delay)
    for n, delay in enumerate(delays, start=1):
        assert 0.0 <= delay <= min(300.0, 2.0 ** (n - 1)), (n, delay)
    assert max(delays[8:]) > 16.0  # the ceiling did grow (seeded: deterministic)
    assert rig.row("a.txt").transient_errors == 12
    assert rig.row("a.txt").state is State.PENDING  # never given up


@pytest.mark.parametrize("stage", ["pre", "put", "report"])
def test_retry_after_is_honoured(rig: Rig, stage: str) -> None:
    rig.write("a.txt", b"hello")
    rig.server.faults[stage] = [status(429, {"Retry-After": "42"})]
    result = rig.run(rig.job("a.txt"))
    assert result.outcome is Outcome.RETRY
    assert result.delay == 42.0


# --- lost answers -----------------------------------------------------------------------------


def test_lost_report_answer_reports_the_same_id_again(rig: Rig) -> None:
    rig.write("a.txt", b"hello")
    rig.server.faults["report"] = [ACTED_THEN_LOST]
    job = rig.job("a.txt")
    assert rig.run(job).outcome is Outcome.RETRY
    assert rig.row("a.txt").state is State.PUT
    rig.clock.advance(1.0)
    assert rig.run(job).outcome is Outcome.DONE
    assert rig.server.args("report") == ["500", "500"]
    assert rig.server.count("pre") == 1
    assert rig.server.count("put") == 1
    assert rig.row("a.txt").state is State.REPORTED


def test_lost_put_answer_puts_again_to_the_same_url_while_valid(rig: Rig) -> None:
    rig.write("a.txt", b"hello")
    rig.server.faults["put"] = [ACTED_THEN_LOST]
    job = rig.job("a.txt")
    assert rig.run(job).outcome is Outcome.RETRY
    assert rig.row("a.txt").state is State.TICKETED
    rig.clock.advance(URL_LIFETIME_SECONDS - 60)  # still comfortably valid
    assert rig.run(job).outcome is Outcome.DONE
    first, second = rig.server.args("put")
    assert first == second
    assert rig.server.count("pre") == 1
    assert rig.server.reported == ["500"]


def test_lost_put_answer_takes_a_new_ticket_once_the_url_is_too_old(rig: Rig) -> None:
    rig.write("a.txt", b"hello")
    rig.server.faults["put"] = [ACTED_THEN_LOST]
    job = rig.job("a.txt")
    assert rig.run(job).outcome is Outcome.RETRY
    rig.clock.advance(URL_LIFETIME_SECONDS - 10)  # inside the safety margin: not trusted
    assert rig.run(job).outcome is Outcome.DONE
    first, second = rig.server.args("put")
    assert first != second and "/501/" in second
    assert rig.server.count("pre") == 2
    assert rig.server.reported == ["501"]  # the first ticket is an orphan, never reported
    assert rig.row("a.txt").file_store_id == "501"


def test_lost_ticket_answer_leaves_an_orphan_that_is_never_used(rig: Rig) -> None:
    rig.write("a.txt", b"hello")
    rig.server.faults["pre"] = [ACTED_THEN_LOST]
    job = rig.job("a.txt")
    assert rig.run(job).outcome is Outcome.RETRY
    assert rig.run(job).outcome is Outcome.DONE
    assert rig.server.count("pre") == 2
    assert rig.server.args("put") == [rig.server.args("put")[0]]
    assert "/501/" in rig.server.args("put")[0]
    assert rig.server.reported == ["501"]


def test_file_changed_between_a_lost_put_and_its_retry_is_recorded_as_uploaded(
    rig: Rig,
) -> None:
    """The retry PUTs the new version to the old URL: the ledger must record that version,
    or the next look at the file would upload (and report) it a second time."""
    path = rig.write("a.txt", b"version one")
    rig.server.faults["put"] = [ACTED_THEN_LOST]
    job = rig.job("a.txt")
    assert rig.run(job).outcome is Outcome.RETRY
    path.write_bytes(b"version two, longer")
    assert rig.run(job).outcome is Outcome.DONE
    (fsid,) = rig.server.reported
    assert rig.server.stored[fsid] == b"version two, longer"
    row = rig.row("a.txt")
    assert row.sha256 == sha(b"version two, longer")
    assert plan(row, FileSig.from_stat(os.lstat(path)), dispose=False) is Action.SKIP


# --- expired URL ------------------------------------------------------------------------------


def test_expired_url_takes_one_new_ticket_in_the_same_attempt(rig: Rig) -> None:
    rig.write("a.txt", b"hello")
    rig.server.faults["put"] = [expired]
    job = rig.job("a.txt")
    result = rig.run(job)
    assert result.outcome is Outcome.DONE
    assert rig.next[job.key].failures == 0
    assert rig.server.count("pre") == 2
    assert rig.server.reported == ["501"]
    row = rig.row("a.txt")
    assert row.state is State.REPORTED and row.file_store_id == "501" and row.attempts == 0


def test_url_expired_twice_in_one_attempt_is_not_a_permanent_failure(rig: Rig) -> None:
    """Two expired URLs in a row say nothing about the file: retried, never failed."""
    rig.write("a.txt", b"hello")
    job = rig.job("a.txt")
    for _ in range(4):  # more than max_attempts (3)
        rig.server.faults["put"] = [expired, expired]
        result = rig.run(job)
        assert result.outcome is Outcome.RETRY
    assert rig.row("a.txt").state is not State.FAILED
    assert rig.run(job).outcome is Outcome.DONE


# --- auth -------------------------------------------------------------------------------------

AUTH: dict[str, tuple[str, Fault]] = {
    "pre-http401": ("pre", status(401)),
    "pre-http403": ("pre", status(403)),
    "pre-code401": ("pre", business(401)),
    "report-code403": ("report", business(403)),
    "report-http401": ("report", status(401)),
}


@dataclass
class Pipeline:
    """The scheduler and the uploader wired as the runtime wires them, run in this thread:
    each :meth:`pump` is one main-loop turn (step, run every job handed out, hand each
    result back, mirror the auth pause into the workers' gate)."""

    rig: Rig
    sched: Scheduler = field(init=False)

    def __post_init__(self) -> None:
        rig = self.rig
        self.sched = Scheduler(
            [rig.folder],
            settle_seconds=0.0,
            concurrency=2,
            clock=rig.clock,
            wall=rig.clock,
            lookup=lambda key: rig.ledger.get(*key),
            auth_probe_seconds=30.0,
        )

    def add(self, *names: str) -> None:
        for name in names:
            key = (self.rig.folder.key, name)
            sig = lstat_regular(os.path.join(*key))
            self.sched.seen(key, Kind.FILE, sig, from_scan=False)

    def pump(self) -> list[tuple[Job, Result]]:
        step = self.sched.step()
        for key, token in step.check:  # the lookups thread's answers, at once
            self.sched.checked(key, token, lstat_regular(os.path.join(*key)))
        if step.check:
            step = self.sched.step()
        if step.pending:
            self.rig.ledger.add_pending(step.pending)
        ran = []
        for job in step.submit:
            result = self.rig.uploader.run_through(job)
            change = self.sched.finished(job, result)
            if change is not None:
                announce_auth(change, result, KEY_SOURCE, Metrics(CollectorRegistry()))
            if self.sched.paused:
                self.rig.paused.set()
            else:
                self.rig.paused.clear()
            ran.append((job, result))
        return ran

    def outcomes(self) -> list[tuple[str, Outcome]]:
        return [(job.relpath, result.outcome) for job, result in self.pump()]


@pytest.mark.parametrize("kind", list(AUTH))
def test_auth_error_pauses_every_file(rig: Rig, kind: str) -> None:
    stage, fault = AUTH[kind]
    rig.write("a.txt", b"hello")
    rig.write("b.txt", b"world")
    rig.server.faults[stage] = [fault]
    line = Pipeline(rig)
    line.add("a.txt", "b.txt")
    with structlog.testing.capture_logs() as logs:
        # b follows a refused call: held back without a call of its own.
        assert line.outcomes() == [("a.txt", Outcome.AUTH), ("b.txt", Outcome.PAUSED)]
        assert line.sched.paused and rig.paused.is_set()
        calls = len(rig.server.calls)
        # No other call is made while paused: other files wait too.
        rig.clock.advance(29.0)
        assert line.pump() == []
        assert len(rig.server.calls) == calls
    failed = [e for e in logs if e["event"] == "auth.failed"]
    assert len(failed) == 1
    assert failed[0]["log_level"] == "error"
    assert failed[0]["key_source"] == KEY_SOURCE
    assert KEY_SOURCE in failed[0]["hint"]
    assert "check the API key" in failed[0]["error"]
    # The files are still pending (nothing failed), a report owed is still owed.
    assert rig.row("b.txt").state is State.PENDING
    a = rig.row("a.txt")
    assert a.state in (State.PENDING, State.TICKETED, State.PUT)
    if stage == "report":
        assert a.state is State.PUT


def test_auth_probe_after_delay_ends_the_pause(rig: Rig) -> None:
    rig.write("a.txt", b"hello")
    rig.server.faults["pre"] = [status(401), status(401)]
    line = Pipeline(rig)
    line.add("a.txt")
    with structlog.testing.capture_logs() as logs:
        assert line.outcomes() == [("a.txt", Outcome.AUTH)]
        rig.clock.advance(29.0)
        assert line.pump() == []
        assert rig.server.count("pre") == 1
        rig.clock.advance(1.0)  # 30 s: the first probe, refused
        assert line.outcomes() == [("a.txt", Outcome.AUTH)]
        assert rig.server.count("pre") == 2
        rig.clock.advance(59.0)  # the next probe waits 60 s
        assert line.pump() == []
        assert rig.server.count("pre") == 2
        rig.clock.advance(1.0)
        assert line.outcomes() == [("a.txt", Outcome.DONE)]  # key accepted: resumes
    assert not line.sched.paused and not rig.paused.is_set()
    events = [e["event"] for e in logs if e["event"].startswith("auth.")]
    assert events == ["auth.failed", "auth.recovered"]


def test_auth_probe_that_meets_a_transient_error_does_not_wedge_the_pause(rig: Rig) -> None:
    """A probe answered by a 5xx says nothing about the key: another probe must follow."""
    rig.write("a.txt", b"hello")
    rig.server.faults["pre"] = [status(401), status(503)]
    line = Pipeline(rig)
    line.add("a.txt")
    assert line.outcomes() == [("a.txt", Outcome.AUTH)]
    rig.clock.advance(30.0)
    assert line.outcomes() == [("a.txt", Outcome.RETRY)]  # the probe met a 503
    assert line.sched.paused
    rig.clock.advance(600.0)
    assert line.outcomes() == [("a.txt", Outcome.DONE)]
    assert not line.sched.paused


def test_paused_jobs_make_no_call_but_the_probe_does(rig: Rig) -> None:
    rig.write("a.txt", b"hello")
    rig.paused.set()
    assert rig.run(rig.job("a.txt")).outcome is Outcome.PAUSED
    assert rig.server.calls == []
    result = rig.run(replace(rig.job("a.txt"), probe=True))
    assert result.outcome is Outcome.DONE and result.key_accepted


def test_auth_probe_that_reuses_its_url_says_the_key_was_accepted(rig: Rig) -> None:
    """The probe may need no new ticket (its last PUT answer was lost, the URL is still
    valid): its successful report must end the pause all the same."""
    rig.write("a.txt", b"hello")
    a = rig.job("a.txt")
    rig.server.faults["put"] = [ACTED_THEN_LOST]
    assert rig.run(a).outcome is Outcome.RETRY  # a keeps its URL
    rig.paused.set()
    result = rig.run(replace(a, probe=True))
    assert result.outcome is Outcome.DONE  # the probe: PUT + report, no ticket
    assert rig.server.count("pre") == 1
    assert result.key_accepted


def test_auth_probe_whose_file_changes_during_its_put_says_nothing_about_the_key(
    rig: Rig,
) -> None:
    path = rig.write("a.txt", b"hello")
    a = rig.job("a.txt")
    rig.server.faults["put"] = [ACTED_THEN_LOST]
    assert rig.run(a).outcome is Outcome.RETRY  # a keeps its URL
    rig.paused.set()
    rig.server.on_put_chunk = lambda received: path.write_bytes(b"hello again")
    result = rig.run(replace(a, probe=True))
    assert result.outcome is Outcome.CHANGED  # the probe made no API call
    assert not result.key_accepted  # so the scheduler lets another probe follow
    rig.server.on_put_chunk = None
    assert rig.run(replace(a, probe=True)).outcome is Outcome.DONE


# --- permanent errors -------------------------------------------------------------------------

PERMANENT: dict[str, tuple[str, Fault]] = {
    "pre-http400": ("pre", status(400)),
    "pre-http404": ("pre", status(404)),
    "pre-code400": ("pre", business(400)),
    "put-http400": ("put", status(400)),
    "report-code404": ("report", business(404)),
}


@pytest.mark.parametrize("kind", list(PERMANENT))
def test_permanent_error_retries_until_max_attempts_then_fails(rig: Rig, kind: str) -> None:
    stage, fault = PERMANENT[kind]
    path = rig.write("a.txt", b"hello")
    job = rig.job("a.txt")
    outcomes = []
    for _ in range(3):
        rig.server.faults[stage] = [fault]
        outcomes.append(rig.run(job))
    assert [r.outcome for r in outcomes] == [Outcome.RETRY, Outcome.RETRY, Outcome.FAILED]
    assert all(r.delay > 0 or r.outcome is Outcome.FAILED for r in outcomes)
    row = rig.row("a.txt")
    assert row.state is State.FAILED
    assert row.attempts == 3
    assert row.last_error
    assert path.exists()  # left in place
    calls = len(rig.server.calls)
    assert rig.run(job).outcome is Outcome.SKIPPED  # unchanged: left alone
    assert len(rig.server.calls) == calls
    assert rig.server.reported == []


def test_retry_command_makes_failed_files_pending_again(
    rig: Rig, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = rig.write("sub/a.txt", b"hello")
    rig.write("b.txt", b"world")
    for name in ("sub/a.txt", "b.txt"):
        rig.server.faults["pre"] = [business(400)] * 3
        for _ in range(3):
            rig.run(rig.job(name))
        assert rig.row(name).state is State.FAILED
    config = tmp_path / "c.toml"
    config.write_text(
        f'[api]\nbase_url = "{BASE}"\n[sync]\nstate_dir = "{tmp_path}"\n'
        f'[[folders]]\npath = "{rig.inbox}"\n',
        encoding="utf-8",
    )
    # `hottask-sync retry` opens state_dir/ledger.sqlite3: the rig's ledger is that file.
    assert cli.main(["retry", "--config", str(config), str(path)]) == 0
    assert "1 failed file(s) will be uploaded again" in capsys.readouterr().out
    assert rig.row("sub/a.txt").state is State.PENDING
    assert rig.row("sub/a.txt").attempts == 0
    assert rig.row("b.txt").state is State.FAILED
    assert rig.run(rig.job("sub/a.txt")).outcome is Outcome.DONE
    assert cli.main(["retry", "--config", str(config)]) == 0
    assert rig.row("b.txt").state is State.PENDING


def test_file_over_5_gib_fails_at_once_without_a_call(rig: Rig) -> None:
    path = rig.inbox / "huge.iso"
    path.touch()
    os.truncate(path, MAX_PUT_BYTES + 1)  # sparse: no disk space used
    result = rig.run(rig.job("huge.iso"))
    assert result.outcome is Outcome.FAILED
    assert rig.server.calls == []
    row = rig.row("huge.iso")
    assert row.state is State.FAILED and row.attempts == 1
    assert "5 GiB" in row.last_error
    assert path.exists()


def test_file_of_exactly_5_gib_is_not_refused_up_front(rig: Rig) -> None:
    path = rig.inbox / "edge.iso"
    path.touch()
    os.truncate(path, MAX_PUT_BYTES)
    rig.server.faults["pre"] = [status(503)]  # stop before streaming 5 GiB
    assert rig.run(rig.job("edge.iso")).outcome is Outcome.RETRY
    assert rig.server.count("pre") == 1


# --- not regular, unreadable ------------------------------------------------------------------


def test_fifo_is_skipped_without_blocking(rig: Rig) -> None:
    os.mkfifo(rig.inbox / "pipe")
    assert rig.run(rig.job("pipe")).outcome is Outcome.SKIPPED
    assert rig.server.calls == []
    assert rig.row("pipe") is None


def test_directory_is_skipped(rig: Rig) -> None:
    (rig.inbox / "dir").mkdir()
    assert rig.run(rig.job("dir")).outcome is Outcome.SKIPPED
    assert rig.server.calls == []


def test_symlinks_are_never_followed(
    rig: Rig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = tmp_path / "outside" / "secret.txt"
    secret.parent.mkdir()
    secret.write_bytes(b"not for upload")
    (rig.inbox / "link.txt").symlink_to(secret)
    (rig.inbox / "linked").symlink_to(secret.parent, target_is_directory=True)
    opened: list[tuple[str, int]] = []
    real_open = os.open

    def spy(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        opened.append((os.fsdecode(path), flags))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", spy)
    assert rig.run(rig.job("link.txt")).outcome is Outcome.SKIPPED
    assert rig.run(rig.job("linked/secret.txt")).outcome is Outcome.SKIPPED
    assert rig.server.calls == []
    assert opened and all(flags & os.O_NOFOLLOW for _, flags in opened)


# --- the file changes or goes away ----------------------------------------------------------


def test_file_appended_during_the_put_is_not_reported(rig: Rig) -> None:
    data = os.urandom(3 * 1024 * 1024 + 5)
    path = rig.write("big.bin", data)

    def append(received: int) -> None:
        if received == 1024 * 1024:  # after the first chunk
            with path.open("ab") as fh:
                fh.write(b"more")

    rig.server.on_put_chunk = append
    job = rig.job("big.bin")
    assert rig.run(job).outcome is Outcome.CHANGED
    assert rig.server.count("report") == 0
    row = rig.row("big.bin")
    assert row.state is State.PENDING and row.file_store_id is None
    rig.server.on_put_chunk = None
    assert rig.run(job).outcome is Outcome.DONE
    (fsid,) = rig.server.reported
    assert rig.server.stored[fsid] == data + b"more"


def test_file_rewritten_in_place_during_the_put_is_not_reported(rig: Rig) -> None:
    data = b"a" * (3 * 1024 * 1024)
    path = rig.write("big.bin", data)

    def rewrite(received: int) -> None:
        if received == 1024 * 1024:
            fd = os.open(path, os.O_WRONLY)
            os.pwrite(fd, b"b" * 1024 * 1024, 2 * 1024 * 1024)  # same size
            os.close(fd)

    rig.server.on_put_chunk = rewrite
    assert rig.run(rig.job("big.bin")).outcome is Outcome.CHANGED
    assert rig.server.count("report") == 0


def test_file_truncated_during_the_put_is_changed_not_failed(rig: Rig) -> None:
    data = os.urandom(3 * 1024 * 1024)
    path = rig.write("big.bin", data)

    def truncate(received: int) -> None:
        if received == 1024 * 1024:
            os.truncate(path, 10)

    rig.server.on_put_chunk = truncate
    uploader = replace(rig.uploader, max_attempts=1)  # a permanent error would fail at once
    job = rig.job("big.bin")
    assert uploader.run_through(job).outcome is Outcome.CHANGED
    assert rig.server.count("report") == 0
    assert rig.row("big.bin").state is State.PENDING
    rig.server.on_put_chunk = None
    assert uploader.run_through(job).outcome is Outcome.DONE
    (fsid,) = rig.server.reported
    assert rig.server.stored[fsid] == data[:10]


def test_file_vanished_before_upload_is_forgotten(rig: Rig) -> None:
    path = rig.write("gone.txt", b"bye")
    rig.ledger.add_pending([(rig.folder.key, "gone.txt", FileSig.from_stat(os.lstat(path)))])
    path.unlink()
    assert rig.run(rig.job("gone.txt")).outcome is Outcome.VANISHED
    assert rig.row("gone.txt") is None
    assert rig.server.calls == []


# --- crash resume -----------------------------------------------------------------------------


def _leave_put_row(rig: Rig, relpath: str, data: bytes) -> FileSig:
    path = rig.write(relpath, data)
    sig = FileSig.from_stat(os.lstat(path))
    rig.ledger.mark_ticketed(rig.folder.key, relpath, sig, "77")
    rig.server.stored["77"] = data
    rig.ledger.mark_put(rig.folder.key, relpath, sha(data))
    return sig


def test_resume_of_a_put_row_only_reports(rig: Rig) -> None:
    _leave_put_row(rig, "a.txt", b"hello")
    job = rig.job("a.txt")
    result = rig.run(job)
    assert result.outcome is Outcome.DONE
    assert [e for e, _ in rig.server.calls] == ["report"]
    assert rig.server.reported == ["77"]
    assert rig.row("a.txt").state is State.REPORTED
    assert result.look_again  # the scheduler looks at the file again afterwards


def test_resume_reports_even_when_the_file_is_gone_or_changed(rig: Rig) -> None:
    _leave_put_row(rig, "gone.txt", b"hello")
    _leave_put_row(rig, "changed.txt", b"old")
    (rig.inbox / "gone.txt").unlink()
    (rig.inbox / "changed.txt").write_bytes(b"new version")
    assert rig.run(rig.job("gone.txt")).outcome is Outcome.DONE
    assert rig.run(rig.job("changed.txt")).outcome is Outcome.DONE
    assert rig.server.count("pre") == 0 and rig.server.count("put") == 0
    assert rig.server.reported == ["77", "77"]
    # The new version is a new upload, seen by plan() when the daemon looks again.
    row = rig.row("changed.txt")
    current = FileSig.from_stat(os.lstat(rig.inbox / "changed.txt"))
    assert plan(row, current, dispose=False) is Action.UPLOAD


# --- after upload -----------------------------------------------------------------------------


def test_move_happens_only_after_the_report(rig: Rig) -> None:
    folder = moving(rig)
    rig.write("sub/a.txt", b"hello")
    rig.server.faults["report"] = [status(503)]
    job = rig.job("sub/a.txt", folder)
    assert rig.run(job).outcome is Outcome.RETRY
    assert (rig.inbox / "sub/a.txt").exists()
    assert not (rig.done / "sub/a.txt").exists()
    assert rig.run(job).outcome is Outcome.DONE
    assert not (rig.inbox / "sub/a.txt").exists()
    assert (rig.done / "sub/a.txt").read_bytes() == b"hello"
    row = rig.row("sub/a.txt", folder)
    assert row.state is State.REPORTED and row.disposed


def test_delete_happens_only_after_the_report(rig: Rig) -> None:
    folder = FolderConfig(rig.inbox, after_upload="delete")
    rig.write("a.txt", b"hello")
    rig.server.faults["report"] = [ACTED_THEN_LOST]
    job = rig.job("a.txt", folder)
    assert rig.run(job).outcome is Outcome.RETRY
    assert (rig.inbox / "a.txt").exists()  # reported, but we do not know it yet
    assert rig.run(job).outcome is Outcome.DONE
    assert not (rig.inbox / "a.txt").exists()
    assert rig.row("a.txt", folder).disposed


def test_failed_file_is_never_moved(rig: Rig) -> None:
    folder = moving(rig)
    rig.write("a.txt", b"hello")
    job = rig.job("a.txt", folder)
    for _ in range(3):
        rig.server.faults["pre"] = [business(400)]
        rig.run(job)
    assert rig.row("a.txt", folder).state is State.FAILED
    assert (rig.inbox / "a.txt").exists()
    assert not rig.done.exists()


def test_move_collision_gets_a_numbered_suffix(rig: Rig) -> None:
    folder = moving(rig)
    (rig.done / "sub").mkdir(parents=True)
    (rig.done / "sub/a.txt").write_bytes(b"someone else's")
    (rig.done / "sub/a (1).txt").write_bytes(b"another one")
    rig.write("sub/a.txt", b"mine")
    assert rig.run(rig.job("sub/a.txt", folder)).outcome is Outcome.DONE
    assert (rig.done / "sub/a (2).txt").read_bytes() == b"mine"
    assert (rig.done / "sub/a.txt").read_bytes() == b"someone else's"
    assert (rig.done / "sub/a (1).txt").read_bytes() == b"another one"
    assert not (rig.inbox / "sub/a.txt").exists()


def test_move_cut_off_after_the_report_is_finished_on_the_next_run(rig: Rig) -> None:
    folder = moving(rig)
    path = rig.write("a.txt", b"hello")
    sig = FileSig.from_stat(os.lstat(path))
    rig.ledger.mark_ticketed(folder.key, "a.txt", sig, "77")
    rig.ledger.mark_put(folder.key, "a.txt", sha(b"hello"))
    rig.ledger.mark_reported(folder.key, "a.txt")  # then the daemon was killed
    assert rig.run(rig.job("a.txt", folder)).outcome is Outcome.DONE
    assert rig.server.calls == []
    assert (rig.done / "a.txt").read_bytes() == b"hello"
    assert rig.row("a.txt", folder).disposed


def test_failed_move_keeps_the_file_shows_in_status_and_is_retried(rig: Rig) -> None:
    folder = moving(rig)
    rig.done.parent.mkdir(parents=True, exist_ok=True)
    rig.done.write_bytes(b"a file where the move_to folder should be")
    rig.write("sub/a.txt", b"hello")
    assert rig.run(rig.job("sub/a.txt", folder)).outcome is Outcome.DONE
    assert (rig.inbox / "sub/a.txt").read_bytes() == b"hello"  # nothing lost
    row = rig.row("sub/a.txt", folder)
    assert row.state is State.REPORTED and not row.disposed
    assert row.last_error is not None and "after_upload move failed" in row.last_error
    assert [(e.relpath, e.state) for e in rig.ledger.recent_failures()] == [
        ("sub/a.txt", State.REPORTED)
    ]
    calls = len(rig.server.calls)
    rig.done.unlink()  # fixed: the next look at the file finishes the move, no upload
    assert rig.run(rig.job("sub/a.txt", folder)).outcome is Outcome.DONE
    assert len(rig.server.calls) == calls
    assert (rig.done / "sub/a.txt").read_bytes() == b"hello"
    assert rig.row("sub/a.txt", folder).disposed
    assert rig.ledger.recent_failures() == []


# --- the row the scheduler read ---------------------------------------------------------------


def test_a_job_planned_from_its_row_is_not_read_again_and_its_retry_is(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The scheduler read the row to plan the job (issue 12: no second read in the worker);
    the job made for the next run after a failure reads it afresh (it changed meanwhile)."""
    path = rig.write("a.txt", b"planned")
    sig = lstat_regular(path)
    assert sig is not None
    rig.ledger.add_pending([(rig.folder.key, "a.txt", sig)])
    planned = Job(rig.folder, "a.txt", settled=sig, row=rig.row("a.txt"), row_read=True)
    reads: list[tuple[str, str]] = []
    real_get = rig.ledger.get

    def counting_get(folder: str, relpath: str) -> Any:
        reads.append((folder, relpath))
        return real_get(folder, relpath)

    monkeypatch.setattr(rig.ledger, "get", counting_get)
    rig.server.faults["report"].append(status(503))
    first = rig.uploader.run_through(planned)
    assert first.outcome is Outcome.RETRY
    assert reads == []  # planned: the worker did not read the row
    again = planned.after(first)
    assert not again.row_read
    second = rig.uploader.run_through(again)
    assert second.outcome is Outcome.DONE  # resumed from the row: put, so only the report
    assert reads[0] == (rig.folder.key, "a.txt")
    assert [endpoint for endpoint, _ in rig.server.calls] == ["pre", "put", "report", "report"]
    assert rig.row("a.txt").state is State.REPORTED


def test_a_report_planned_from_a_put_row_that_was_reported_since_is_not_sent_again(
    rig: Rig,
) -> None:
    """The scheduler planned a report from a ``put`` row whose report was recorded (handed
    over without waiting) just after: the worker reads the row again and reports nothing."""
    path = rig.write("a.txt", b"sent")
    sig = lstat_regular(path)
    assert sig is not None
    rig.ledger.mark_ticketed(rig.folder.key, "a.txt", sig, "fs-1")
    rig.ledger.mark_put(rig.folder.key, "a.txt", sha(b"sent"))
    planned_from = rig.row("a.txt")
    rig.ledger.mark_reported(rig.folder.key, "a.txt")
    job = Job(rig.folder, "a.txt", settled=sig, row=planned_from, row_read=True)
    result = rig.uploader.run_through(job)
    assert result.outcome is Outcome.SKIPPED
    assert rig.server.calls == []
