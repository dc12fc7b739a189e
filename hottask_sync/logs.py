"""Structured logs: one writer for structlog and stdlib (httpx, watchdog), redacted last.

On a terminal, a readable console renderer; otherwise (systemd, pipes) one JSON object per
line with ``timestamp`` (ISO 8601 UTC), ``level`` and ``event``. The last processor before
rendering removes the API key and presigned query strings from every field.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from collections.abc import Iterable, MutableMapping
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


def redact(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> Any:
    """structlog processor: redacts every field of the event (runs after exception formatting)."""
    for key, value in event_dict.items():
        event_dict[key] = _redact_value(value)
    return event_dict


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


def configure(fmt: str = "auto", level: str = "info", stream: TextIO | None = None) -> None:
    """Sends every log line (structlog and stdlib) through one handler on ``stream``."""
    stream = stream or sys.stdout
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.ExtraAdder(),
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Any
    if resolve_format(fmt, stream) == "json":
        # format_exc_info renders a plain traceback string: no local variables in it.
        tail: list[Any] = [structlog.processors.format_exc_info, redact]
        renderer = structlog.processors.JSONRenderer()
    else:
        # The traceback is rendered to a string before redact, or the secret would leak.
        tail = [structlog.processors.format_exc_info, redact]
        renderer = structlog.dev.ConsoleRenderer(
            colors=False, exception_formatter=structlog.dev.plain_traceback
        )
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[_drop_stdlib_noise, *tail, renderer],
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
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
    logging.getLogger().setLevel(getattr(logging, level.upper(), logging.INFO))


def get_logger(name: str = "hottask_sync") -> Any:
    """Returns a structlog logger."""
    return structlog.get_logger(name)
