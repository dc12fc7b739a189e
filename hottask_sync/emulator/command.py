"""The emulator as a command: its options, and running it until SIGINT/SIGTERM, for
``hottask-sync emulator`` and ``python -m hottask_sync.emulator``.
"""

from __future__ import annotations

import argparse
import errno
import ipaddress
import math
import secrets
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from .faults import Faults, parse_faults
from .server import REPEAT_REPORT_CODE, REPEAT_REPORT_MESSAGE, Emulator

__all__ = ["add_arguments", "main", "run_from_args"]

DESCRIPTION = "A local HotTask-compatible server."


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 0-65535, got {port}")
    return port


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be > 0 seconds, got {text!r}")
    return value


def _faults_arg(text: str) -> Faults:
    try:
        return parse_faults(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the emulator's options: --host, --port, --data, --api-key, --url-ttl, --faults,
    --reject-repeat-reports, --bench, --quiet. ``--faults`` is parsed at once (argparse reports a bad spec), so
    ``args.faults`` is a :class:`Faults` or None.
    """
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: %(default)s)"
    )
    parser.add_argument(
        "--port",
        type=_port,
        default=8787,
        help="port to listen on, 0 for any (default: %(default)s)",
    )
    parser.add_argument(
        "--data",
        default="./emu",
        metavar="DIR",
        help="where uploaded files are stored (default: %(default)s)",
    )
    parser.add_argument(
        "--api-key",
        default=None,
        metavar="KEY",
        help="the key clients must send (default: a random one, printed at start)",
    )
    parser.add_argument(
        "--url-ttl",
        type=_positive_seconds,
        default=300.0,
        metavar="SECONDS",
        help="presigned URL lifetime (default: 300)",
    )
    parser.add_argument(
        "--faults",
        type=_faults_arg,
        default=None,
        metavar="SPEC",
        help="inject faults, e.g. '5xx=0.1,429=0.05,drop_after=0.1,endpoints=pre+put,seed=3'",
    )
    parser.add_argument(
        "--reject-repeat-reports",
        action="store_true",
        help=(
            "refuse a second ReportUploadSuccess of the same FileStoreId with a business error "
            f"(HTTP 200, Success false, Code {REPEAT_REPORT_CODE}, Message "
            f"'{REPEAT_REPORT_MESSAGE}') instead of accepting it again"
        ),
    )
    parser.add_argument(
        "--bench",
        action="store_true",
        help=(
            "the lean request path for benchmarks: uploads are checked and counted but not "
            "stored or hashed; no fault but delay"
        ),
    )
    parser.add_argument("--quiet", action="store_true", help="do not log each request to stderr")


def run_from_args(args: argparse.Namespace) -> int:
    """Runs the emulator from parsed :func:`add_arguments` options until SIGINT/SIGTERM.

    Prints the base URL, API key and data directory on stdout; returns 0 after a clean
    stop, 2 (with a one-line error on stderr) when the address cannot be bound or an
    option is invalid.
    """
    faults: Faults | None = args.faults
    if isinstance(faults, str):  # a Namespace built by hand rather than by add_arguments
        try:
            faults = parse_faults(faults)
        except ValueError as exc:
            print(f"error: --faults: {exc}", file=sys.stderr)
            return 2
    api_key: str = args.api_key or secrets.token_urlsafe(24)
    emulator = _bind(args, api_key, faults)
    if emulator is None:
        return 2
    if not ipaddress.ip_address(emulator.address[0]).is_loopback:
        print(
            f"warning: listening on {args.host}: anyone who can reach this machine can use "
            "the emulator, and /_emulator/* needs no key",
            file=sys.stderr,
        )
    _serve_until_signalled(emulator, api_key)
    return 0


def _bind(args: argparse.Namespace, api_key: str, faults: Faults | None) -> Emulator | None:
    """Creates the emulator (which binds its socket); None after a one-line error."""
    try:
        return Emulator(
            Path(args.data).expanduser().resolve(),
            api_key=api_key,
            host=args.host,
            port=args.port,
            url_ttl=args.url_ttl,
            faults=faults,
            quiet=bool(getattr(args, "quiet", False)),
            reject_repeat_reports=bool(getattr(args, "reject_repeat_reports", False)),
            bench=bool(getattr(args, "bench", False)),
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            print(f"error: port {args.port} on {args.host} is already in use", file=sys.stderr)
        else:
            print(
                f"error: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}",
                file=sys.stderr,
            )
    return None


def _serve_until_signalled(emulator: Emulator, api_key: str) -> None:
    """Serves, after printing the banner, until SIGINT or SIGTERM; then stops it."""
    done = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        done.set()

    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, on_signal)
    try:
        emulator.start()
        print(
            f"HotTask emulator on {emulator.base_url} — API key: {api_key} — "
            + (
                "bench mode: uploads are not stored"
                if emulator.bench
                else f"files stored under {emulator.data_dir}"
            ),
            flush=True,
        )
        # A timed wait so that the signal handler's set() is seen promptly on every platform.
        while not done.wait(0.5):
            pass
    finally:
        emulator.stop()
        for restored, handler in previous.items():
            signal.signal(restored, handler)


def main(
    argv: Sequence[str] | None = None,
    *,
    prog: str = "hottask_sync.emulator",
    description: str = DESCRIPTION,
) -> int:
    """Parses the emulator's options from ``argv`` (default: ``sys.argv[1:]``) and runs it:
    ``python -m hottask_sync.emulator [options]``, and ``hottask-sync emulator [options]``
    (with that ``prog``). ``--help`` and bad options exit through argparse, as usual.
    """
    parser = argparse.ArgumentParser(prog=prog, description=description)
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv))
