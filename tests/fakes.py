"""Test doubles shared by the unit and integration tests: a clock, S3 errors, a transport."""

from __future__ import annotations

import httpx


class FakeClock:
    """A clock the test moves by hand (monotonic or wall time, whichever is injected)."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def s3_error(code: str, message: str) -> bytes:
    """An S3 XML error body."""
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message></Error>"
    ).encode()


class StreamingMockTransport(httpx.MockTransport):
    """MockTransport without the upfront ``request.read()``: the handler reads the stream.

    httpx's MockTransport reads the whole body before calling the handler, which would hide
    whether a PUT streams in constant memory or paces its chunks.
    """

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.handler(request)
        assert isinstance(response, httpx.Response)
        return response
