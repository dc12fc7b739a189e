"""Shared helpers: waiting on conditions (never sleeping) and running the real daemon."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from hottask_sync.emulator import Emulator
from tests.fakes import clean_env

API_KEY = "test-key-4f1c9a"


def wait_for(
    condition: Callable[[], Any],
    timeout: float = 20.0,
    interval: float = 0.02,
    what: str = "",
    *,
    fail: bool = True,
    give_up: Callable[[], object] | None = None,
) -> Any:
    """Polls ``condition`` until it returns something truthy, and returns that value.

    The one way tests wait: on a monotonic deadline ``timeout`` seconds away, checking
    every ``interval``, never sleeping past the deadline. When the deadline comes, or
    ``give_up()`` turns true first (the process that was to make the condition true has
    exited, say), the condition is checked a last time. Still falsy, the test fails naming
    ``what``; or, with ``fail=False``, that falsy value is returned: for waits whose point
    is to let time pass (the condition may be "the daemon exited", to stop early then),
    or for something that may well not come.
    """
    deadline = time.monotonic() + timeout
    tick = threading.Event()
    while True:
        value = condition()
        if value:
            return value
        left = deadline - time.monotonic()
        if left <= 0 or (give_up is not None and give_up()):
            value = condition()
            if value or not fail:
                return value
            why = f"timed out after {timeout}s" if left <= 0 else "gave up early"
            pytest.fail(f"{why} waiting for {what or condition}")
        tick.wait(min(interval, left))


@pytest.fixture
def emulator(tmp_path: Path) -> Iterator[Emulator]:
    """A real emulator on a free loopback port, storing under tmp_path/emu."""
    emu = Emulator(tmp_path / "emu", api_key=API_KEY)
    emu.start()
    try:
        yield emu
    finally:
        emu.stop()


def write_config(path: Path, base_url: str, folders: list[dict[str, Any]], **sections: Any) -> Path:
    """Writes a daemon config (JSON logs, fast settle and rescan unless overridden)."""
    sync = {"settle_seconds": 0.3, "state_dir": str(path.parent / "state"), "rescan_seconds": 0}
    sync.update(sections.pop("sync", {}))
    data: dict[str, Any] = {
        "api": {"base_url": base_url, "timeout_seconds": 10},
        "sync": sync,
        "logging": {"format": "json", "level": "debug"},
        "folders": folders,
    }
    data.update(sections)
    path.write_text(tomli_w.dumps(data), encoding="utf-8")
    return path


@dataclass
class DaemonProcess:
    """``hottask-sync run`` as a subprocess, its JSON log lines collected as they come."""

    proc: subprocess.Popen[bytes]
    lines: list[dict[str, Any]] = field(default_factory=list)
    raw: list[str] = field(default_factory=list)
    _reader: threading.Thread | None = None

    def __post_init__(self) -> None:
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            text = raw.decode("utf-8", "replace").rstrip("\n")
            self.raw.append(text)
            try:
                self.lines.append(json.loads(text))
            except ValueError:
                self.lines.append({"event": "<not json>", "text": text})

    def events(self, name: str) -> list[dict[str, Any]]:
        return [line for line in list(self.lines) if line.get("event") == name]

    def exited(self) -> bool:
        """True once the process has exited and every line it wrote has been read."""
        return self.proc.poll() is not None and (
            self._reader is None or not self._reader.is_alive()
        )

    def wait_event(self, name: str, timeout: float = 20.0, count: int = 1) -> list[dict[str, Any]]:
        """Waits for ``count`` lines of event ``name``; fails at once if the daemon exits."""
        return wait_for(
            lambda: (found := self.events(name)) and len(found) >= count and found,
            timeout,
            what=f"{count} x {name!r} in the daemon log",
            give_up=self.exited,
        )

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        if self._reader is not None:
            self._reader.join(timeout=5)
        self.assert_no_secrets()
        return code

    def assert_no_secrets(self) -> None:
        """Every log line of every e2e test is checked: no key, no presigned signature."""
        text = self.log_text()
        assert API_KEY not in text, "the API key leaked into the daemon's output"
        assert "X-Amz-Signature" not in text, "a presigned query string leaked into the output"

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def log_text(self) -> str:
        return "\n".join(self.raw)


def start_daemon(
    config: Path,
    env: dict[str, str] | None = None,
    key: str | None = API_KEY,
    wait_ready: bool = True,
) -> DaemonProcess:
    """Starts ``hottask-sync run --config CONFIG``; waits for daemon.ready unless told not to."""
    environ = clean_env()
    if key is not None:
        environ["HOTTASK_API_KEY"] = key
    environ.update(env or {})
    proc = subprocess.Popen(
        [sys.executable, "-m", "hottask_sync.cli", "run", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=environ,
    )
    daemon = DaemonProcess(proc)
    if wait_ready:
        try:
            daemon.wait_event("daemon.ready")
        except BaseException:
            daemon.stop(signal.SIGKILL)
            raise AssertionError("daemon did not get ready:\n" + daemon.log_text()) from None
    return daemon


@pytest.fixture
def daemons() -> Iterator[list[DaemonProcess]]:
    """Collects started daemons and kills any still running at the end of the test."""
    started: list[DaemonProcess] = []
    yield started
    for d in started:
        if d.proc.poll() is None:
            d.stop(signal.SIGKILL)


def reported_files(emu: Emulator) -> dict[str, list[str]]:
    """Returns file name → FileStoreIds reported for it (more than one would be a bug)."""
    out: dict[str, list[str]] = {}
    for fsid, info in emu.reported().items():
        out.setdefault(info.file_name, []).append(fsid)
    return out


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process holding the lock of tmp_path/state until :func:`let_go`."""
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from hottask_sync.statedir import lock_state_dir\n"
        "fd = lock_state_dir(Path(sys.argv[1]))\n"
        "print('locked', flush=True)\n"
        "sys.stdin.read()\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path / "state")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline() == "locked\n"
    try:
        yield proc
    finally:
        let_go(proc)


def let_go(proc: subprocess.Popen[str]) -> None:
    """Makes a holder exit (closing its stdin), which releases its lock."""
    if proc.stdin is not None and not proc.stdin.closed:
        proc.stdin.close()
    proc.wait(10)
