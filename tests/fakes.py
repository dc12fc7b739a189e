"""Test doubles and builders shared by every kind of test.

A clock moved by hand, HotTask envelopes and S3 error bodies as the services send them, a
streaming mock transport, content hashes, and the environment the CLI is started with.
"""

from __future__ import annotations

import hashlib
import os
from typing import Final
from xml.sax.saxutils import escape

import httpx


class FakeClock:
    """A clock the test moves by hand (monotonic or wall time, whichever is injected)."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


#: ``envelope(NO_DATA)``: an answer without its "Data" key (the real service always sends one).
NO_DATA: Final = object()


def envelope(
    data: object = None, *, code: int = 200, message: str = "", success: bool | None = None
) -> dict[str, object]:
    """A HotTask JSON answer: ``{"Data", "Version", "Success", "Code", "Message"}``.

    As the real service sends it, Success is ``code == 200`` unless ``success`` says
    otherwise, and Data is there (null on errors) unless it is ``NO_DATA``.
    """
    body: dict[str, object] = {} if data is NO_DATA else {"Data": data}
    body.update(
        {
            "Version": "1.0.0",
            "Success": code == 200 if success is None else success,
            "Code": code,
            "Message": message,
        }
    )
    return body


def s3_error(code: str, message: str) -> bytes:
    """An S3 XML error body, as S3 sends it (Code, Message, then a RequestId)."""
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{escape(code)}</Code><Message>{escape(message)}</Message>"
        "<RequestId>4442587FB7D0A2F9</RequestId></Error>"
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


def sha256(data: bytes) -> str:
    """The hex SHA-256 of ``data`` (what the emulator records for each upload)."""
    return hashlib.sha256(data).hexdigest()


#: Variables that would give a started CLI or daemon a key, a notify socket, a watchdog
#: interval or credentials from the environment running the tests.
STRIPPED_ENV: Final = ("HOTTASK_", "NOTIFY_", "WATCHDOG_", "CREDENTIALS_")


def clean_env(**extra: str) -> dict[str, str]:
    """The test's environment without the ``STRIPPED_ENV`` variables, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(STRIPPED_ENV)}
    env.update(extra)
    return env
