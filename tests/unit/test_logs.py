"""Unit tests for hottask_sync.logs: one JSON writer for structlog and stdlib, redacted last."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import structlog

from hottask_sync import logs

SECRET = "hk_live_Q2w3-S3CR3T-key-value"
PRESIGNED = (
    "https://b.s3.us-west-1.amazonaws.com/k/a.txt?X-Amz-Credential=AK%2Fx&X-Amz-Signature=f00d"
)
QUERY = "X-Amz-Credential=AK%2Fx&X-Amz-Signature=f00d"
NOISY = ("httpx", "httpcore", "hpack", "watchdog", "watchdog.observers")
ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|\+00:00)$")


@pytest.fixture(autouse=True)
def reset_logging() -> Iterator[None]:
    root = logging.getLogger()
    saved_handlers = list(root.handlers)
    saved_level = root.level
    saved_levels = {name: logging.getLogger(name).level for name in NOISY}
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()
    logs.set_secrets(())
    yield
    for handler in list(root.handlers):
        if handler not in saved_handlers:
            root.removeHandler(handler)
    for handler in saved_handlers:
        if handler not in root.handlers:
            root.addHandler(handler)
    root.setLevel(saved_level)
    for name, level in saved_levels.items():
        logging.getLogger(name).setLevel(level)
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()
    logs.set_secrets(())


def json_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    lines = stream.getvalue().splitlines()
    return [json.loads(line) for line in lines]


def configured(fmt: str = "json", level: str = "info") -> io.StringIO:
    stream = io.StringIO()
    logs.configure(fmt=fmt, level=level, stream=stream)
    return stream


# --- the JSON writer ------------------------------------------------------------------------


def test_json_one_object_per_line() -> None:
    stream = configured()
    log = logs.get_logger("hottask_sync.test")
    log.info("upload.started", path="a/b.pdf", size=12)
    log.warning("upload.retry", attempt=2)
    records = json_lines(stream)
    assert len(records) == 2
    first, second = records
    assert first["event"] == "upload.started"
    assert first["level"] == "info"
    assert first["path"] == "a/b.pdf"
    assert first["size"] == 12
    assert first["logger"] == "hottask_sync.test"
    assert second["event"] == "upload.retry"
    assert second["level"] == "warning"
    assert second["attempt"] == 2
    for record in records:
        assert ISO_UTC.match(record["timestamp"]), record["timestamp"]
        when = datetime.fromisoformat(record["timestamp"].replace("Z", "+00:00"))
        assert when.utcoffset() is not None
        assert when.utcoffset().total_seconds() == 0  # type: ignore[union-attr]
        assert abs((datetime.now(UTC) - when).total_seconds()) < 60
        assert "_record" not in record
        assert "_from_structlog" not in record


def test_context_variables_are_merged() -> None:
    stream = configured()
    structlog.contextvars.bind_contextvars(folder="/srv/in")
    logs.get_logger().info("scan.done")
    assert json_lines(stream)[0]["folder"] == "/srv/in"


def test_stdlib_loggers_go_through_the_same_writer() -> None:
    stream = configured()
    logging.getLogger("watchdog.observers").warning("inotify watch limit %s reached", 8192)
    logging.getLogger("httpx").warning("pool is full")
    logging.getLogger("hottask_sync.other").error("plain stdlib")
    records = json_lines(stream)
    assert [r["event"] for r in records] == [
        "inotify watch limit 8192 reached",
        "pool is full",
        "plain stdlib",
    ]
    assert [r["level"] for r in records] == ["warning", "warning", "error"]
    assert [r["logger"] for r in records] == ["watchdog.observers", "httpx", "hottask_sync.other"]
    for record in records:
        assert ISO_UTC.match(record["timestamp"])


def test_stdlib_extra_fields_are_kept() -> None:
    stream = configured()
    logging.getLogger("watchdog").warning("overflow", extra={"queue": 17})
    (record,) = json_lines(stream)
    assert record["queue"] == 17


def test_httpx_info_lines_are_suppressed() -> None:
    stream = configured(level="debug")
    logging.getLogger("httpx").info("HTTP Request: PUT %s", PRESIGNED)
    logging.getLogger("httpcore.connection").debug("connect_tcp.started")
    # A real request through httpx logs "HTTP Request: ..." at INFO.
    transport = httpx.MockTransport(lambda request: httpx.Response(200))
    with httpx.Client(transport=transport) as client:
        assert client.put(PRESIGNED, content=b"x").status_code == 200
    logs.get_logger().debug("still.here")
    records = json_lines(stream)
    assert [r["event"] for r in records] == ["still.here"]


def test_level_filters_structlog_and_stdlib() -> None:
    stream = configured(level="warning")
    log = logs.get_logger()
    log.info("dropped")
    log.debug("dropped too")
    logging.getLogger("watchdog").info("dropped as well")
    log.warning("kept")
    logging.getLogger("watchdog").error("kept too")
    assert [r["event"] for r in json_lines(stream)] == ["kept", "kept too"]
    logs.set_level("debug")
    log.debug("now visible")
    assert json_lines(stream)[-1]["event"] == "now visible"


def test_a_line_below_the_level_runs_no_processor() -> None:
    """A filtered debug line costs a level check, not the processors' work (they redact
    and render every field): row 1 logs a debug line per file (bench/README)."""
    configured(level="info")
    seen: list[str] = []

    def spy(_logger: Any, _method: str, event_dict: Any) -> Any:
        seen.append(event_dict["event"])
        return event_dict

    structlog.get_config()["processors"].insert(0, spy)
    log = logs.get_logger("hottask_sync.test")
    log.debug("upload.started", path="a.pdf")
    log.info("upload.succeeded", path="a.pdf")
    assert seen == ["upload.succeeded"]
    logs.set_level("debug")
    log.debug("upload.started", path="b.pdf")
    assert seen == ["upload.succeeded", "upload.started"]


def test_configure_twice_keeps_one_handler() -> None:
    configured()
    stream = configured()
    logs.get_logger().info("once")
    assert [r["event"] for r in json_lines(stream)] == ["once"]
    ours = [h for h in logging.getLogger().handlers if getattr(h, "stream", None) is stream]
    assert len(ours) == 1


# --- redaction -------------------------------------------------------------------------------


def assert_clean(text: str) -> None:
    assert SECRET not in text
    assert QUERY not in text
    assert "X-Amz-Signature" not in text
    assert "f00d" not in text


def test_redacts_secret_and_query_from_event_and_fields() -> None:
    stream = configured()
    logs.set_secrets([SECRET])
    logs.get_logger().info(
        f"using key {SECRET} for {PRESIGNED}",
        url=PRESIGNED,
        key=SECRET,
        nested={"a": [SECRET, {"u": PRESIGNED, "n": 3}], "b": (SECRET, None, True)},
        error=ValueError(f"bad {SECRET}"),
    )
    text = stream.getvalue()
    assert_clean(text)
    (record,) = json_lines(stream)
    assert record["event"] == (
        "using key <redacted> for https://b.s3.us-west-1.amazonaws.com/k/a.txt"
    )
    assert record["url"] == "https://b.s3.us-west-1.amazonaws.com/k/a.txt"
    assert record["key"] == "<redacted>"
    assert record["nested"] == {
        "a": ["<redacted>", {"u": "https://b.s3.us-west-1.amazonaws.com/k/a.txt", "n": 3}],
        "b": ["<redacted>", None, True],
    }
    assert record["error"] == "bad <redacted>"


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_redacts_exception_tracebacks(fmt: str) -> None:
    stream = configured(fmt=fmt)
    logs.set_secrets([SECRET])
    log = logs.get_logger()
    try:
        raise RuntimeError(f"key {SECRET} refused at {PRESIGNED}")
    except RuntimeError:
        log.exception("upload.crashed")
    text = stream.getvalue()
    assert "upload.crashed" in text
    assert "Traceback (most recent call last)" in text
    assert "RuntimeError: key <redacted> refused at https://b.s3.us-west-1.amazonaws.com" in text
    assert_clean(text)
    if fmt == "json":
        (record,) = json_lines(stream)
        assert "RuntimeError" in record["exception"]


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_redacts_stdlib_records(fmt: str) -> None:
    stream = configured(fmt=fmt)
    logs.set_secrets([SECRET])
    other = logging.getLogger("watchdog.observers")
    other.warning("key %s url %s", SECRET, PRESIGNED)
    try:
        raise OSError(f"cannot use {SECRET}")
    except OSError:
        other.exception("stdlib crash")
    text = stream.getvalue()
    assert "key <redacted> url https://b.s3.us-west-1.amazonaws.com/k/a.txt" in text
    assert "OSError: cannot use <redacted>" in text
    assert_clean(text)


def test_several_secrets_and_empty_ones_ignored() -> None:
    stream = configured()
    logs.set_secrets(["", "old-key-1", "new-key-2"])
    logs.get_logger().info("rotated old-key-1 to new-key-2")
    (record,) = json_lines(stream)
    assert record["event"] == "rotated <redacted> to <redacted>"
    logs.set_secrets([""])
    logs.get_logger().info("plain")
    assert json_lines(stream)[-1]["event"] == "plain"


def test_redact_text() -> None:
    logs.set_secrets([SECRET])
    assert logs.redact_text(f"a {SECRET} b {PRESIGNED} c") == (
        "a <redacted> b https://b.s3.us-west-1.amazonaws.com/k/a.txt c"
    )
    assert logs.redact_text("nothing to hide") == "nothing to hide"
    logs.set_secrets(())
    assert logs.redact_text(SECRET) == SECRET


# --- console format ----------------------------------------------------------------------------


def test_console_format_is_not_json() -> None:
    stream = configured(fmt="console")
    logs.get_logger("hottask_sync.test").info("upload.succeeded", path="a.pdf", size=12)
    text = stream.getvalue()
    assert len(text.splitlines()) == 1
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)
    assert "upload.succeeded" in text
    assert "path=a.pdf" in text
    assert "size=12" in text
    assert "info" in text
    assert "\x1b[" not in text  # no colours
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", text)


def test_console_format_renders_stdlib_too() -> None:
    stream = configured(fmt="console")
    logging.getLogger("watchdog").warning("watch limit")
    text = stream.getvalue()
    assert "watch limit" in text
    assert "warning" in text
    assert not text.lstrip().startswith("{")


class FakeTty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_auto_format_follows_the_stream() -> None:
    assert logs.resolve_format("auto", io.StringIO()) == "json"
    assert logs.resolve_format("auto", FakeTty()) == "console"
    assert logs.resolve_format("json", FakeTty()) == "json"
    assert logs.resolve_format("console", io.StringIO()) == "console"

    tty = FakeTty()
    logs.configure(fmt="auto", stream=tty)
    logs.get_logger().info("hello")
    assert not tty.getvalue().startswith("{")
    assert "hello" in tty.getvalue()

    pipe = io.StringIO()
    logs.configure(fmt="auto", stream=pipe)
    logs.get_logger().info("hello")
    assert json_lines(pipe)[0]["event"] == "hello"


# --- a line that cannot be written ---------------------------------------------------------


def test_a_name_the_stream_cannot_encode_is_written_escaped() -> None:
    """A file name with bytes that are not UTF-8 (kept as surrogates by os.fsdecode), on a
    strict UTF-8 terminal in console format: the line is written, escaped; the call returns."""
    raw = io.BytesIO()
    stream = io.TextIOWrapper(raw, encoding="utf-8", errors="strict")
    logs.configure(fmt="console", stream=stream)
    logs.get_logger("hottask_sync.test").info("upload.succeeded", path="caf\udce9.pdf")
    logging.getLogger("watchdog").warning("event for caf\udce9.pdf")
    text = raw.getvalue().decode("utf-8")
    assert "upload.succeeded" in text and "path=caf\\udce9.pdf" in text
    assert "event for caf\\udce9.pdf" in text


class BrokenStream(io.StringIO):
    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")


def test_a_broken_stream_never_fails_the_caller(capsys: pytest.CaptureFixture[str]) -> None:
    """Output piped into a reader that went away: the work goes on, and stderr says which
    line was lost (redacted), as logging's own handler did."""
    logs.configure(fmt="json", stream=BrokenStream())
    logs.set_secrets([SECRET])
    logs.get_logger("hottask_sync.test").info("upload.succeeded", path="a.pdf")
    logging.getLogger("watchdog").warning("overflow %s", SECRET)
    err = capsys.readouterr().err
    assert "'upload.succeeded' not written" in err and "BrokenPipeError" in err
    assert "'overflow %s' not written" in err
    assert SECRET not in err and len(err.splitlines()) == 2
