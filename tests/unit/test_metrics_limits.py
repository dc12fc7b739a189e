"""The metrics server stays bounded whatever its clients do (issue 11, item 4).

Idle connections beyond a small cap are closed at once and never lock a scraper out; an idle
connection is closed after the read timeout; accept() failing for lack of descriptors pauses,
growing and bounded, instead of spinning; a client's reset and a failing render are structlog
events, never a traceback printed on stderr.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

import httpx
import pytest
import structlog

from hottask_sync.metrics import (
    ACCEPT_PAUSE_FIRST,
    ACCEPT_PAUSE_MAX,
    Metrics,
    MetricsServer,
)
from tests.conftest import wait_for

HALF_REQUEST = b"GET /metrics HTTP/1.1\r\nHost: metrics\r\n"  # no blank line: never complete
REQUEST_THREAD = "hottask-sync-metrics-request"


@contextmanager
def serving(render: Callable[[], bytes] | None = None, **limits: Any) -> Iterator[MetricsServer]:
    """A MetricsServer on a free loopback port with the given limits, closed afterwards."""
    server = MetricsServer("127.0.0.1", 0, render or Metrics().render, **limits)
    try:
        yield server
    finally:
        server.close()


def connect(port: int, send: bytes = b"") -> socket.socket:
    """A client connection to port that has sent ``send`` (and reads with a 5 s timeout)."""
    conn = socket.create_connection(("127.0.0.1", port), timeout=5)
    if send:
        conn.sendall(send)
    return conn


def is_closed(conn: socket.socket) -> bool:
    """True once the server has closed conn (EOF or reset); never blocks."""
    readable, _, _ = select.select([conn], [], [], 0)
    if not readable:
        return False
    try:
        return conn.recv(1, socket.MSG_PEEK) == b""
    except ConnectionError:
        return True


def read_all(conn: socket.socket) -> bytes:
    """Reads conn until the server closes it."""
    chunks = []
    while chunk := conn.recv(4096):
        chunks.append(chunk)
    return b"".join(chunks)


def request_threads() -> int:
    return sum(t.name == REQUEST_THREAD for t in threading.enumerate())


# --- (1) the connection cap --------------------------------------------------------------


def test_idle_connections_beyond_the_cap_are_closed_and_a_scrape_still_answers() -> None:
    metrics, renders = Metrics(), list[str]()

    def render() -> bytes:
        renders.append(threading.current_thread().name)
        return metrics.render()

    # The read timeout is long on purpose: only the cap may close anything here.
    with serving(render, read_timeout=60, max_connections=4) as server:
        flood = [connect(server.port, HALF_REQUEST) for _ in range(20)]

        def closed() -> set[int]:
            return {i for i, conn in enumerate(flood) if is_closed(conn)}

        try:
            wait_for(lambda: len(closed()) >= 16, timeout=5, what="16 idle connections closed")
            # The oldest idle ones made room for newer ones: the 4 newest are still open.
            assert closed() == set(range(16))
            wait_for(lambda: request_threads() <= 4, timeout=5, what="at most 4 request threads")

            started = time.monotonic()
            response = httpx.get(f"http://127.0.0.1:{server.port}/metrics", timeout=1)
            assert response.status_code == 200
            assert b"hottask_sync_queue_depth" in response.content
            assert time.monotonic() - started < 1
            # The scrape took the slot of the oldest idle connection left.
            wait_for(lambda: 16 in closed(), timeout=5, what="connection 16 closed")
            assert closed() == set(range(17))
            assert renders == [REQUEST_THREAD]  # the evicted half-requests were not answered
        finally:
            for conn in flood:
                conn.close()


def test_a_connection_finding_every_slot_answering_is_closed_at_once() -> None:
    entered = threading.Semaphore(0)
    release = threading.Event()

    def slow_render() -> bytes:
        entered.release()
        release.wait(10)
        return b"slow 1\n"

    with serving(slow_render, read_timeout=60, max_connections=2) as server:
        busy = [connect(server.port, b"GET /metrics HTTP/1.0\r\n\r\n") for _ in range(2)]
        try:
            for _ in busy:
                assert entered.acquire(timeout=5), "a scrape never reached render()"
            extra = connect(server.port, HALF_REQUEST)
            wait_for(lambda: is_closed(extra), timeout=5, what="the extra connection closed")
            assert entered.acquire(timeout=0) is False  # it was never served
            release.set()
            for conn in busy:  # the busy ones were not disturbed
                answer = read_all(conn)
                assert answer.startswith(b"HTTP/1.0 200 ")
                assert answer.endswith(b"slow 1\n")
            extra.close()
        finally:
            release.set()
            for conn in busy:
                conn.close()


def test_limits_are_validated() -> None:
    with pytest.raises(ValueError, match="read_timeout"):
        MetricsServer("127.0.0.1", 0, Metrics().render, read_timeout=0)
    with pytest.raises(ValueError, match="max_connections"):
        MetricsServer("127.0.0.1", 0, Metrics().render, max_connections=0)


# --- (2) the read timeout ----------------------------------------------------------------


@pytest.mark.parametrize("sent", [b"", HALF_REQUEST], ids=["silent", "half-request"])
def test_an_idle_connection_is_closed_after_the_read_timeout(sent: bytes) -> None:
    with serving(read_timeout=0.2) as server:
        started = time.monotonic()
        with connect(server.port, sent) as conn:
            try:
                assert conn.recv(1) == b"", "the server answered an incomplete request"
            except TimeoutError:
                pytest.fail("the idle connection was still open after 5 s")
        elapsed = time.monotonic() - started
        assert 0.15 <= elapsed < 5, elapsed
        wait_for(lambda: request_threads() == 0, timeout=5, what="the request thread gone")


# --- (3) accept() out of descriptors -----------------------------------------------------


class FailingAccept:
    """Replaces socket.socket.accept: on the listening socket of ``port``, raises
    OSError(code) while ``failing``; counts those calls. Every other socket is untouched."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, code: int = errno.EMFILE) -> None:
        self.port = 0
        self.code = code
        self.failing = True
        self.calls = 0
        real = socket.socket.accept

        def accept(sock: socket.socket) -> tuple[socket.socket, Any]:
            if self.port and sock.getsockname()[1] == self.port:
                self.calls += 1
                if self.failing:
                    raise OSError(self.code, os.strerror(self.code))
            return real(sock)

        monkeypatch.setattr(socket.socket, "accept", accept)


class GatedPause:
    """A pause hook that records each pause and returns only when the test lets it."""

    def __init__(self) -> None:
        self.pauses: list[float] = []
        self._gate = threading.Semaphore(0)

    def __call__(self, seconds: float) -> None:
        self.pauses.append(seconds)
        self._gate.acquire(timeout=10)

    def let_one_go(self) -> None:
        self._gate.release()

    def let_all_go(self) -> None:
        self._gate.release(1000)


def paused(pause: GatedPause, times: int) -> bool:
    return len(pause.pauses) >= times


def test_accept_out_of_descriptors_pauses_growing_and_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    accept, pause = FailingAccept(monkeypatch), GatedPause()
    with structlog.testing.capture_logs() as logged, serving(pause=pause) as server:
        accept.port = server.port
        try:
            pending = connect(server.port)  # waits in the listen queue: readable for ever
            wait_for(lambda: pause.pauses or accept.calls >= 20, timeout=5, what="an accept")
            assert accept.calls == 1, f"accept() retried {accept.calls} times without a pause"
            expected = [ACCEPT_PAUSE_FIRST]
            while expected[-1] < ACCEPT_PAUSE_MAX:
                expected.append(min(expected[-1] * 2, ACCEPT_PAUSE_MAX))
            expected.append(ACCEPT_PAUSE_MAX)  # and it stays there
            for n in range(2, len(expected) + 1):
                pause.let_one_go()
                wait_for(partial(paused, pause, n), timeout=5, what=f"pause {n}")
                assert accept.calls == n
            assert pause.pauses == pytest.approx(expected)

            # Descriptors are back: the waiting connection is served, the pause starts over.
            accept.failing = False
            pause.let_one_go()
            pending.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
            assert pending.recv(64).startswith(b"HTTP/1.0 200 ")
            accept.failing = True
            again = connect(server.port)
            wait_for(lambda: len(pause.pauses) > len(expected), timeout=5, what="a new pause")
            assert pause.pauses[len(expected)] == ACCEPT_PAUSE_FIRST
        finally:
            accept.failing = False
            pause.let_all_go()
    pending.close()
    again.close()
    events = [(e["event"], e["log_level"]) for e in logged if e["event"].startswith("metrics.")]
    assert events == [
        ("metrics.accept_failed", "warning"),  # once per episode, not once per failure
        ("metrics.accept_recovered", "info"),
        ("metrics.accept_failed", "warning"),
    ]
    assert logged[0]["errno"] == "EMFILE"


@pytest.mark.parametrize("code", [errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM])
def test_each_resource_error_pauses(monkeypatch: pytest.MonkeyPatch, code: int) -> None:
    accept, pause = FailingAccept(monkeypatch, code), GatedPause()
    with serving(pause=pause) as server:
        accept.port = server.port
        try:
            with connect(server.port):
                wait_for(lambda: pause.pauses or accept.calls >= 20, timeout=5, what="accept")
                assert (accept.calls, pause.pauses) == (1, [ACCEPT_PAUSE_FIRST])
        finally:
            accept.failing = False
            pause.let_all_go()


def test_close_cuts_the_default_pause_short(monkeypatch: pytest.MonkeyPatch) -> None:
    accept = FailingAccept(monkeypatch)
    server = MetricsServer("127.0.0.1", 0, Metrics().render)
    accept.port = server.port
    with connect(server.port):
        wait_for(lambda: accept.calls >= 1, timeout=5, what="a failed accept")
        started = time.monotonic()
        server.close()
    # The pause may have grown to ACCEPT_PAUSE_MAX; close() must not wait it out. The
    # margin is the serve loop's own poll interval (0.1 s) plus scheduling noise.
    assert time.monotonic() - started < ACCEPT_PAUSE_MAX


# --- (4) errors go through structlog -----------------------------------------------------


def reset(conn: socket.socket) -> None:
    """Closes conn with a TCP reset (SO_LINGER 0) instead of an orderly FIN."""
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()


def test_a_reset_mid_request_prints_nothing_raw(capfd: pytest.CaptureFixture[str]) -> None:
    with structlog.testing.capture_logs() as logged, serving() as server:
        for _ in range(3):
            reset(connect(server.port, HALF_REQUEST))
        wait_for(
            lambda: sum(e["event"] == "metrics.connection_error" for e in logged) >= 3,
            timeout=5,
            what="3 metrics.connection_error events",
        )
        # The server is fine afterwards.
        assert httpx.get(f"http://127.0.0.1:{server.port}/metrics", timeout=5).status_code == 200
    errors = [e for e in logged if e["event"] == "metrics.connection_error"]
    assert {e["log_level"] for e in errors} == {"debug"}
    assert all("reset" in e["error"].lower() for e in errors), errors
    out, err = capfd.readouterr()
    assert err == ""
    assert "Traceback" not in out


def test_a_failing_render_is_a_warning_not_a_traceback_on_stderr(
    capfd: pytest.CaptureFixture[str],
) -> None:
    def broken() -> bytes:
        raise RuntimeError("collector broke")

    with structlog.testing.capture_logs() as logged, serving(broken) as server:
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{server.port}/metrics", timeout=5)
        wait_for(
            lambda: [e for e in logged if e["event"] == "metrics.request_failed"],
            timeout=5,
            what="metrics.request_failed",
        )
    failed = [e for e in logged if e["event"] == "metrics.request_failed"]
    assert failed[0]["log_level"] == "warning"
    assert "collector broke" in failed[0]["error"]
    assert failed[0]["exc_info"] is True  # the traceback goes into the structured line
    assert capfd.readouterr().err == ""
