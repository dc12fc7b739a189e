"""The API key is redacted in every form a message may quote it in, every time (issue 10,
items 9 and 15).

A key with a line break inside was refused by h11 with a message quoting it escaped
(``b'sk-1\\nsk-2'``); redaction matched only the literal key, so both lines reached every
``upload.retry`` log line, the ledger's ``last_error`` and ``status``. Redaction now covers the
literal, ``repr()``, the bytes repr, backslash escapes and JSON escapes, and every occurrence.
"""

from __future__ import annotations

import io
import json
import logging
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import h11
import pytest
import structlog

from hottask_sync import logs
from hottask_sync.client import HotTaskClient
from hottask_sync.config import FolderConfig
from hottask_sync.jobs import Job, Outcome
from hottask_sync.ledger import Ledger
from hottask_sync.uploader import Uploader

LINE1 = "sk-live-FIRSTLINE-7Qz9"
LINE2 = "sk-live-SECONDLINE-3Pw2"
TWO_LINES = f"{LINE1}\n{LINE2}"
PLAIN = "hk_live_Q2w3-S3CR3T-key-value"

KEYS = {
    "plain": PLAIN,
    "two lines": TWO_LINES,
    "CRLF": f"{LINE1}\r\n{LINE2}",
    "tab and quotes": f"{LINE1}\t'\"{LINE2}",
    "backslash": f"{LINE1}\\{LINE2}",
    "non-ASCII": f"{LINE1}\u00e9\u65e5{LINE2}",
    "control": f"{LINE1}\x01\x7f{LINE2}",
}

#: How messages quote a value: each returns the text a message would contain.
FORMS: dict[str, Callable[[str], str]] = {
    "literal": lambda k: k,
    "repr": repr,
    "bytes repr": lambda k: repr(k.encode("utf-8")),
    "backslash-escaped": lambda k: k.encode("unicode_escape").decode("ascii"),
    "JSON": json.dumps,
    "JSON, not ASCII": lambda k: json.dumps(k, ensure_ascii=False),
    "repr of a repr": lambda k: repr(repr(k.encode("utf-8"))),
    "JSON of a bytes repr": lambda k: json.dumps(repr(k.encode("utf-8"))),
}


@pytest.fixture(autouse=True)
def no_secrets() -> Iterator[None]:
    logs.set_secrets(())
    yield
    logs.set_secrets(())


def pieces(key: str) -> list[str]:
    """The parts of ``key`` that must never show: itself and each of its lines."""
    return [key, *(part for part in (LINE1, LINE2) if part in key)]


def assert_hidden(text: str, key: str) -> None:
    for piece in pieces(key):
        assert piece not in text, f"{piece!r} leaked in {text!r}"
    for form in FORMS.values():
        assert form(key) not in text


# --- the forms --------------------------------------------------------------------------------


@pytest.mark.parametrize("form", sorted(FORMS))
@pytest.mark.parametrize("case", sorted(KEYS))
def test_every_form_of_the_key_is_redacted_every_time(case: str, form: str) -> None:
    key = KEYS[case]
    logs.set_secrets([key])
    quoted = FORMS[form](key)
    text = logs.redact_text(f"first {quoted}, second {quoted}, third {quoted}.")
    assert_hidden(text, key)
    assert text.startswith("first ") and text.endswith(".")


@pytest.mark.parametrize("times", [2, 3])
def test_a_message_quoting_the_key_twice_has_both_redacted(times: int) -> None:
    # Issue 10 item 15: "redacting only the first occurrence" went unnoticed.
    logs.set_secrets([PLAIN])
    text = logs.redact_text(" and ".join([f"key {PLAIN}"] * times))
    assert PLAIN not in text
    assert text == " and ".join(["key <redacted>"] * times)


def test_the_two_forms_of_a_key_in_one_message_are_both_redacted() -> None:
    logs.set_secrets([TWO_LINES])
    text = logs.redact_text(f"sent {TWO_LINES!r}, refused {TWO_LINES.encode()!r}")
    assert text == "sent '<redacted>', refused b'<redacted>'"


def test_the_lines_of_a_key_are_redacted_on_their_own() -> None:
    logs.set_secrets([TWO_LINES])
    assert logs.redact_text(f"header {LINE2} refused") == "header <redacted> refused"


def test_short_words_of_a_key_are_left_alone() -> None:
    # "Bearer sk-…": the word "Bearer" alone is no secret; redacting it would garble logs.
    logs.set_secrets([f"Bearer {LINE1}"])
    assert logs.redact_text(f"Bearer {LINE1}") == "<redacted>"
    assert logs.redact_text("scheme Bearer, then token") == "scheme Bearer, then token"


def test_a_plain_key_is_one_form_only() -> None:
    assert logs.secret_forms(PLAIN) == {PLAIN}


def test_rotated_keys_are_both_redacted_in_every_form() -> None:
    logs.set_secrets([PLAIN, TWO_LINES])
    text = logs.redact_text(f"{PLAIN} {TWO_LINES!r} {json.dumps(TWO_LINES)} {PLAIN}")
    assert_hidden(text, PLAIN)
    assert_hidden(text, TWO_LINES)


# --- the real message, through the real writer ----------------------------------------------------


def h11_refusal(key: str) -> str:
    """What h11 says when asked to send ``key`` as a header: the message that leaked."""
    try:
        h11.Request(method="POST", target="/", headers=[("Host", "h"), ("Authorization", key)])
    except h11.LocalProtocolError as exc:
        return str(exc)
    raise AssertionError("h11 accepted the header")


def test_h11s_refusal_is_redacted() -> None:
    message = h11_refusal(TWO_LINES)
    assert LINE1 in message and LINE2 in message  # what used to leak
    logs.set_secrets([TWO_LINES])
    assert logs.redact_text(message) == "Illegal header value b'<redacted>'"


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_the_log_writer_redacts_h11s_refusal(fmt: str) -> None:
    stream = io.StringIO()
    root = logging.getLogger()
    saved = list(root.handlers), root.level
    try:
        logs.configure(fmt=fmt, stream=stream)
        logs.set_secrets([TWO_LINES])
        message = h11_refusal(TWO_LINES)
        logs.get_logger().warning("upload.retry", error=message, again=[message, message])
        try:
            raise RuntimeError(message)
        except RuntimeError:
            logs.get_logger().exception("upload.crashed")
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        structlog.reset_defaults()
    text = stream.getvalue()
    assert "upload.retry" in text and "upload.crashed" in text
    assert_hidden(text, TWO_LINES)


@pytest.fixture
def listener() -> Iterator[str]:
    """A loopback socket that accepts connections (in its backlog) and never answers: the
    client connects, then h11 refuses to write the request."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


def test_the_ledger_and_the_retry_line_never_hold_the_key(tmp_path: Path, listener: str) -> None:
    """The path that leaked: a real client refused by h11, an upload.retry line, last_error."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "a.txt").write_bytes(b"data")
    logs.set_secrets([TWO_LINES])
    folder = FolderConfig(inbox)
    with (
        HotTaskClient(listener, TWO_LINES, timeout=5) as client,
        Ledger(tmp_path / "ledger.sqlite3") as ledger,
        structlog.testing.capture_logs(processors=[logs.redact]) as logged,
    ):
        result = Uploader(client, ledger, max_attempts=3).run_through(Job(folder, "a.txt"))
        row = ledger.get(folder.key, "a.txt")
    assert result.outcome is Outcome.RETRY
    assert row is not None and row.last_error is not None
    assert "Illegal header value" in row.last_error
    assert_hidden(row.last_error, TWO_LINES)
    assert result.error is not None
    assert_hidden(result.error, TWO_LINES)
    (retry,) = [e for e in logged if e["event"] == "upload.retry"]
    assert "Illegal header value" in retry["error"]
    assert_hidden(repr(logged), TWO_LINES)
