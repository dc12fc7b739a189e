"""The daemon as a subprocess against the emulator on loopback: the basic path."""

from __future__ import annotations

import hashlib
from pathlib import Path

from hottask_sync.emulator import Emulator
from tests.conftest import DaemonProcess, reported_files, start_daemon, write_config


def test_file_dropped_into_running_daemon_is_uploaded_once(
    tmp_path: Path, emulator: Emulator, daemons: list[DaemonProcess]
) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    config = write_config(tmp_path / "c.toml", emulator.base_url, [{"path": str(inbox)}])
    daemon = start_daemon(config)
    daemons.append(daemon)
    data = b"hello hottask\n" * 1000
    (inbox / "report.pdf").write_bytes(data)
    done = daemon.wait_event("upload.succeeded")
    assert done[0]["path"] == "report.pdf"
    assert reported_files(emulator) == {"report.pdf": [done[0]["file_store_id"]]}
    info = emulator.reported()[done[0]["file_store_id"]]
    assert info.sha256 == hashlib.sha256(data).hexdigest()
    assert daemon.stop() == 0
