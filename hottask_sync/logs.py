"""Structured logs: one writer for structlog and stdlib (httpx, watchdog), redacted last.

On a terminal, a readable console renderer; otherwise (systemd, pipes) one JSON object per
line with ``timestamp`` (ISO 8601 UTC), ``level`` and ``event``. The last processor before
rendering removes the API key and presigned query strings from every field.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import threading
from collections.abc import Callable, Iterable, MutableMapping
from typing import Any, TextIO

import structlog

from .client import redact_url

_secrets: tuple[str, ...] = ()
_secrets_lock = threading.Lock()
REDACTED = "<redacted>"
#: A line or word of a secret with whitespace inside is redacted on its own from this length.
MIN_SECRET_PART = 8


def set_secrets(secrets: Iterable[str]) -> None:
    """Registers values (the API key) that must never appear in a log line, in any form.

    Each value is registered with the forms a message may quote it in (see
    :func:`secret_forms`), longest first, so that :func:`redact_text` removes them all.
    """
    global _secrets
    forms = {form for secret in secrets if secret for form in secret_forms(secret)}
    with _secrets_lock:
        _secrets = tuple(sorted(forms, key=lambda form: (-len(form), form)))


def secret_forms(secret: str) -> set[str]:
    """Given a secret, returns every form a message may show it in.

    The literal; its ``repr()`` and the ``repr()`` of its bytes (what an HTTP library quotes
    when it refuses a header: ``b'sk-1\\nsk-2'``); backslash-escaped; JSON-escaped (ASCII
    or not); the same escapes applied twice (a repr of a message that quotes a repr); and each
    line or word of a secret that has whitespace in it, when long enough not to be a common
    word. For a plain key (printable ASCII, no quotes or backslashes) this is the key alone.
    """
    forms = {secret}
    for _ in range(2):
        forms |= {escaped for form in forms for escaped in _escapes(form)}
    forms |= {part for part in secret.split() if len(part) >= MIN_SECRET_PART}
    return {form for form in forms if form}


def _escapes(text: str) -> tuple[str, ...]:
    """The escaped forms of ``text`` without their quotes: str and bytes repr, backslash
    escapes, JSON."""
    raw = text.encode("utf-8", "surrogateescape")
    return (
        repr(text)[1:-1],
        repr(raw)[2:-1],
        text.encode("unicode_escape").decode("ascii"),
        json.dumps(text)[1:-1],
        json.dumps(text, ensure_ascii=False)[1:-1],
    )


def redact_text(text: str) -> str:
    """Given text, returns it without any registered secret (every occurrence, every form)
    or URL query string."""
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    return redact_url(text) if "://" in text else text


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {k: _redact_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_redact_value(v) for v in value]
    if isinstance(value, (int, float, bool)) or value is None:
        return value
    return redact_text(str(value))


#: Values that cannot hold a secret: left as they are without a look.
_PLAIN = frozenset({int, float, bool, type(None)})


def redact(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> Any:
    """structlog processor: redacts every field of the event (runs after exception formatting)."""
    for key, value in event_dict.items():
        kind = type(value)
        if kind is str:
            event_dict[key] = redact_text(value)
        elif kind not in _PLAIN:
            event_dict[key] = _redact_value(value)
    return event_dict


#: Made once: json.dumps with any argument builds an encoder per call. Every value is plain
#: by then (redact made the others text); repr is only a safety net.
_ENCODER = json.JSONEncoder(default=repr)


def _render_json(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> str:
    """structlog processor: the event as one JSON object."""
    return _ENCODER.encode(event_dict)


def _drop_stdlib_noise(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> Any:
    event_dict.pop("_record", None)
    event_dict.pop("_from_structlog", None)
    return event_dict


def resolve_format(fmt: str, stream: TextIO) -> str:
    """Returns "json" or "console" for a configured format ("auto" looks at the stream)."""
    if fmt == "auto":
        isatty = getattr(stream, "isatty", None)
        return "console" if isatty is not None and isatty() else "json"
    return fmt


#: Lines below this level are dropped before any processor runs (set by :func:`set_level`).
_min_level = logging.NOTSET


class _Output:
    """The stream every line goes to, one whole line at a time (structlog's and stdlib's
    alike, behind one lock)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self._lock = threading.Lock()

    def write(self, line: str) -> None:
        with self._lock:
            try:
                self.stream.write(line + "\n")
            except UnicodeEncodeError:
                # A name the stream's encoding cannot hold (bytes that are not UTF-8 in a
                # file name, kept by os.fsdecode as surrogates): escaped, not lost.
                encoding = getattr(self.stream, "encoding", None) or "utf-8"
                safe = line.encode(encoding, "backslashreplace").decode(encoding)
                self.stream.write(safe + "\n")
            self.stream.flush()


def _not_written(event: object, exc: BaseException) -> None:
    """Says on stderr (redacted, one line) that a log line could not be written; never
    raises: a log call must not fail the work it reports on (as logging's handleError)."""
    with contextlib.suppress(Exception):  # stderr is broken too: nowhere left to say it
        print(
            redact_text(f"hottask-sync: log line {event!r} not written: {exc!r}"),
            file=sys.stderr,
            flush=True,
        )


class _LineLogger:
    """structlog's final logger: writes the rendered line, whatever the level's name."""

    __slots__ = ("critical", "debug", "error", "info", "msg", "name", "warning")

    def __init__(self, name: str, output: _Output) -> None:
        self.name = name  # for add_logger_name
        write = output.write
        self.msg = self.debug = self.info = self.warning = self.error = self.critical = write


class _LineLoggers:
    """structlog's logger factory: one :class:`_LineLogger` per name, made once."""

    def __init__(self, output: _Output) -> None:
        self._output = output
        self._made: dict[str, _LineLogger] = {}

    def __call__(self, *args: Any) -> _LineLogger:
        name = args[0] if args else "hottask_sync"
        made = self._made.get(name)
        if made is None:
            made = self._made.setdefault(name, _LineLogger(name, self._output))
        return made


def _at(level: int, method: str) -> Callable[..., Any]:
    def log_at(self: _BoundLogger, event: str | None = None, **kw: Any) -> Any:
        if level < _min_level:
            return None
        try:
            return self._proxy_to_logger(method, event, **kw)
        except Exception as exc:  # a closed or broken stream, a field whose str() fails
            _not_written(event, exc)
            return None

    log_at.__name__ = method
    return log_at


class _BoundLogger(structlog.BoundLoggerBase):
    """The loggers' methods, each dropping a line below the level before anything else."""

    debug = _at(logging.DEBUG, "debug")
    info = _at(logging.INFO, "info")
    warning = _at(logging.WARNING, "warning")
    error = _at(logging.ERROR, "error")
    critical = _at(logging.CRITICAL, "critical")

    def exception(self, event: str | None = None, **kw: Any) -> Any:
        kw.setdefault("exc_info", True)
        return self.error(event, **kw)


class _Handler(logging.Handler):
    """The stdlib's lines (httpx, watchdog) formatted as structlog's, on the same output."""

    def __init__(self, output: _Output, formatter: logging.Formatter) -> None:
        super().__init__()
        self.stream = output.stream
        self._output = output
        self.setFormatter(formatter)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._output.write(self.format(record))
        except Exception as exc:  # not handleError: it prints the record unredacted
            _not_written(record.msg, exc)


def configure(fmt: str = "auto", level: str = "info", stream: TextIO | None = None) -> None:
    """Sends every log line (structlog and stdlib) through one writer on ``stream``.

    structlog's lines go straight to it: no stdlib LogRecord, handler lock or logger
    lookup per line (bench/README: under row 1's load that path cost a tenth of a file's
    CPU). The stdlib's go through a handler to the same writer.
    """
    stream = stream or sys.stdout
    output = _Output(stream)
    stamp: list[Any] = [
        structlog.processors.add_log_level,
        structlog.stdlib.add_logger_name,
    ]
    stamp_time = structlog.processors.TimeStamper(fmt="iso", utc=True)
    renderer: Any
    if resolve_format(fmt, stream) == "json":
        renderer = _render_json
    else:
        renderer = structlog.dev.ConsoleRenderer(
            colors=False, exception_formatter=structlog.dev.plain_traceback
        )
    # format_exc_info renders a plain traceback string (no local variables in it), before
    # redact, or the secret would leak through it.
    tail: list[Any] = [structlog.processors.format_exc_info, redact, renderer]
    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars, *stamp, stamp_time, *tail],
        logger_factory=_LineLoggers(output),
        wrapper_class=_BoundLogger,
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            structlog.contextvars.merge_contextvars,
            *stamp,
            structlog.stdlib.ExtraAdder(),
            stamp_time,
        ],
        processors=[_drop_stdlib_noise, *tail],
    )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(_Handler(output, formatter))
    set_level(level)
    threading.excepthook = _log_thread_crash
    # httpx logs every request with its full URL at INFO: the presigned signature would leak.
    for name in ("httpx", "httpcore", "hpack"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _log_thread_crash(args: threading.ExceptHookArgs) -> None:
    """``threading.excepthook``: an exception that ends a thread (a bug) becomes one
    redacted log line with its traceback, not raw text on stderr."""
    if args.exc_type is SystemExit:
        return
    get_logger("hottask_sync").error(
        "thread.crashed",
        thread=args.thread.name if args.thread is not None else "?",
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback),
    )


def set_level(level: str) -> None:
    """Sets the level of every log line (on reload too)."""
    global _min_level
    _min_level = getattr(logging, level.upper(), logging.INFO)
    logging.getLogger().setLevel(_min_level)


def get_logger(name: str = "hottask_sync") -> Any:
    """Returns a structlog logger."""
    return structlog.get_logger(name)
