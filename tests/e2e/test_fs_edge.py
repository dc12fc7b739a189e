"""The real daemon at the file system's edge: a file is uploaded only in a version that
settled, even when it changes while its job waits for a worker.

The interleaving is forced, not hoped for: with one worker, the emulator's ``on_report``
hook holds that worker inside another file's report until the test has rewritten the file
whose job is queued behind it.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from hottask_sync.emulator import Emulator, TicketInfo
from tests.conftest import DaemonProcess, reported_files, start_daemon, wait_for, write_config
from tests.e2e.support import tree


def about(daemon: DaemonProcess, path: str, *names: str) -> list[dict[str, Any]]:
    """The daemon's log lines of the given events about ``path``, in order."""
    return [e for e in list(daemon.lines) if e.get("event") in names and e.get("path") == path]


def test_a_file_rewritten_while_its_job_waits_is_not_sent_until_it_settles_again(
    tmp_path: Path, emulator: Emulator, daemons: list[DaemonProcess]
) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    config = write_config(
        tmp_path / "config.toml",
        emulator.base_url,
        [{"path": str(inbox), "after_upload": "delete"}],
        sync={"concurrency": 1},
    )
    busy, release = threading.Event(), threading.Event()

    def hold_the_worker(info: TicketInfo) -> None:
        if info.file_name == "first.txt":
            busy.set()
            release.wait(8)  # under the daemon's 10 s call timeout

    # The PUT holds the upload slot (a report would not: it has a stage of its own).
    emulator.on_put = hold_the_worker
    daemon = start_daemon(config)
    daemons.append(daemon)
    doc = inbox / "doc.txt"
    try:
        (inbox / "first.txt").write_bytes(b"keeps the only worker busy")
        wait_for(busy.is_set, what="the only upload slot held in first.txt's PUT")
        doc.write_bytes(b"the version that settled")
        wait_for(
            lambda: about(daemon, "doc.txt", "file.settled"),
            what="doc.txt settled and queued behind the busy worker",
            give_up=daemon.exited,
        )
        doc.write_bytes(b"PART")  # rewritten while its job waits for the worker ...
        doc.write_bytes(b"PART, and then the final text")  # ... quiet for far less than settle
    finally:
        release.set()

    # The worker frees and takes doc.txt's job: the file is not the version that settled.
    first = wait_for(
        lambda: about(daemon, "doc.txt", "file.changed", "upload.started"),
        what="the worker to take doc.txt's job",
        give_up=daemon.exited,
    )[0]
    assert first["event"] == "file.changed", "doc.txt was sent without settling again"
    assert first["reason"] == "changed since it settled"

    wait_for(lambda: "doc.txt" in reported_files(emulator), what="doc.txt reported")
    events = [e["event"] for e in about(daemon, "doc.txt", "file.settled", "upload.started")]
    assert events == ["file.settled", "file.settled", "upload.started"]  # settled again first
    assert len(reported_files(emulator)["doc.txt"]) == 1
    (ticket,) = [t for t in emulator.reported().values() if t.file_name == "doc.txt"]
    stored = tree(emulator.data_dir / ticket.file_store_id)
    assert stored == {"doc.txt": b"PART, and then the final text"}
    wait_for(lambda: not doc.exists(), what="doc.txt deleted after its upload")
