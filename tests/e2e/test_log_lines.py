"""One info line per file: at the default log level, an upload says `upload.succeeded` (or
`upload.failed`) and nothing else about that file; detection, settling and the start of
the upload are debug lines."""

from __future__ import annotations

from pathlib import Path

from hottask_sync.emulator import Emulator
from tests.conftest import DaemonProcess, start_daemon, wait_for, write_config


def test_an_upload_logs_one_info_line_at_the_default_level(
    tmp_path: Path, emulator: Emulator, daemons: list[DaemonProcess]
) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    config = write_config(
        tmp_path / "c.toml",
        emulator.base_url,
        [{"path": str(inbox)}],
        logging={"format": "json", "level": "info"},
    )
    daemon = start_daemon(config)
    daemons.append(daemon)
    (inbox / "invoice-123.pdf").write_bytes(b"%PDF-1.7 an invoice")
    wait_for(lambda: daemon.events("upload.succeeded"), what="the upload")
    assert daemon.stop() == 0
    about = [line["event"] for line in daemon.lines if line.get("path") == "invoice-123.pdf"]
    assert about == ["upload.succeeded"]
