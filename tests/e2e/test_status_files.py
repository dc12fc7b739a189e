"""`hottask-sync status --config … FILE…`: per named file, whether it went up in its current
version and as what (issue 10 item 14).

One daemon uploads three files (two in a folder that keeps them, one in a folder that
deletes them after upload) and is stopped; every question is then asked of a ledger that no
longer moves, so the answers are deterministic.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from hottask_sync.emulator import Emulator
from hottask_sync.files import FileSig
from hottask_sync.ledger import Entry, State
from hottask_sync.proof import Verdict, judge
from tests.conftest import API_KEY, start_daemon, wait_for, write_config
from tests.e2e.support import cli

TRACEBACK = "Traceback (most recent call last)"


@pytest.fixture(scope="module")
def uploaded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """keep/a.txt, keep/b.txt and drop/d.txt uploaded (d.txt then deleted), the daemon
    stopped. Shared by the module's tests: each names its own files (only
    test_a_file_changed_since_upload_is_not_uploaded changes one, b.txt)."""
    root = tmp_path_factory.mktemp("status-files")
    keep, drop = root / "keep", root / "drop"
    keep.mkdir()
    drop.mkdir()
    with Emulator(root / "emu", api_key=API_KEY) as emulator:
        config = write_config(
            root / "config.toml",
            emulator.base_url,
            [{"path": str(keep)}, {"path": str(drop), "after_upload": "delete"}],
        )
        (keep / "a.txt").write_bytes(b"invoice 123\n")
        (keep / "b.txt").write_bytes(b"invoice 124\n")
        (drop / "d.txt").write_bytes(b"deleted after upload\n")
        daemon = start_daemon(config)
        try:
            wait_for(
                lambda: len(emulator.reported()) == 3 and not (drop / "d.txt").exists(),
                what="three files reported and d.txt deleted",
            )
        finally:
            assert daemon.stop() == 0
        tickets = {info.file_name: info for info in emulator.reported().values()}
    yield {"root": root, "config": config, "keep": keep, "drop": drop, "tickets": tickets}


def status(config: Path, *names: Path | str, json_out: bool = False) -> tuple[int, str, str]:
    """Runs ``status --config CONFIG [--json] NAMES…``; returns (exit code, stdout, stderr)."""
    args = ["status", "--config", str(config), *(["--json"] if json_out else []), *map(str, names)]
    done = cli(*args)
    assert TRACEBACK not in done.stderr + done.stdout
    return done.returncode, done.stdout, done.stderr


def test_an_uploaded_file_names_its_filestoreid_and_the_bytes_sent(
    uploaded: dict[str, Any],
) -> None:
    ticket = uploaded["tickets"]["a.txt"]
    stored = ticket.stored_path.read_bytes()  # what the service really has
    code, out, err = status(uploaded["config"], uploaded["keep"] / "a.txt")
    assert code == 0, out + err
    (line,) = out.splitlines()
    assert line.startswith(f"{uploaded['keep'] / 'a.txt'}: uploaded (")
    assert f"folder {uploaded['keep']}, path a.txt" in line
    assert "state reported" in line
    assert f"FileStoreId {ticket.file_store_id}" in line
    assert re.search(r"reported \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", line)
    assert f"sent {len(stored)} bytes, sha256 {hashlib.sha256(stored).hexdigest()}" in line
    assert "last error" not in line


def test_a_file_deleted_after_upload_still_counts_as_uploaded(
    uploaded: dict[str, Any],
) -> None:
    ticket = uploaded["tickets"]["d.txt"]
    code, out, _ = status(uploaded["config"], uploaded["drop"] / "d.txt")
    assert code == 0, out
    assert "uploaded (moved or deleted after upload)" in out
    assert f"FileStoreId {ticket.file_store_id}" in out


def test_a_file_changed_since_upload_is_not_uploaded(uploaded: dict[str, Any]) -> None:
    path = uploaded["keep"] / "b.txt"
    path.write_bytes(b"invoice 124, corrected\n")  # while no daemon runs to upload it
    code, out, _ = status(uploaded["config"], path)
    assert code == 1
    assert "changed since upload" in out
    assert f"FileStoreId {uploaded['tickets']['b.txt'].file_store_id}" in out  # the old one


def test_unknown_and_outside_files_are_named_and_exit_1(uploaded: dict[str, Any]) -> None:
    keep = uploaded["keep"]
    (keep / "new.txt").write_text("never seen by the daemon")
    outside = uploaded["root"] / "elsewhere.txt"
    outside.write_text("not in any folder")
    names = [keep / "a.txt", keep / "new.txt", keep / "nope.txt", outside]
    code, out, err = status(uploaded["config"], *names)
    assert code == 1, out + err
    lines = out.splitlines()
    assert len(lines) == 4, out
    assert lines[0].startswith(f"{keep / 'a.txt'}: uploaded (")
    assert lines[1].startswith(f"{keep / 'new.txt'}: not in the ledger yet")
    assert lines[2].startswith(f"{keep / 'nope.txt'}: not in the ledger, and no such file")
    assert lines[3] == f"{outside}: not inside any configured folder"
    assert err == ""

    code, out, _ = status(uploaded["config"], outside)
    assert code == 1
    assert out == f"{outside}: not inside any configured folder\n"


def test_json_has_one_object_per_file(uploaded: dict[str, Any]) -> None:
    keep = uploaded["keep"]
    ticket = uploaded["tickets"]["a.txt"]
    stored = ticket.stored_path.read_bytes()
    outside = uploaded["root"] / "elsewhere.txt"
    code, out, _ = status(uploaded["config"], keep / "a.txt", outside, json_out=True)
    assert code == 1
    data = json.loads(out)
    assert list(data) == ["files"]
    first, second = data["files"]
    assert first["name"] == str(keep / "a.txt")
    assert first["folder"] == str(keep)
    assert first["path"] == "a.txt"
    assert first["verdict"] == "uploaded" and first["uploaded"] is True
    assert first["state"] == "reported"
    assert first["file_store_id"] == ticket.file_store_id
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", first["reported_at"])
    assert first["size"] == len(stored)
    assert first["sha256"] == hashlib.sha256(stored).hexdigest()
    assert first["last_error"] is None
    assert second["name"] == str(outside)
    assert second["verdict"] == "outside" and second["uploaded"] is False
    assert second["folder"] is None and second["file_store_id"] is None
    assert set(first) == set(second)

    code, out, _ = status(uploaded["config"], keep / "a.txt", json_out=True)
    assert code == 0
    assert json.loads(out)["files"][0]["uploaded"] is True


def test_status_without_files_is_the_summary(uploaded: dict[str, Any]) -> None:
    code, out, _ = status(uploaded["config"], json_out=True)
    assert code == 0
    summary = json.loads(out)
    assert summary["uploaded"] == 3 and "files" not in summary


# --- the verdicts, pure -----------------------------------------------------------------------

SIG = FileSig(size=12, mtime_ns=1_000, ino=7, dev=1)
ROW = Entry(
    folder="/in",
    relpath="a.txt",
    state=State.REPORTED,
    sig=SIG,
    sha256="ab" * 32,
    file_store_id="42",
    attempts=1,
    transient_errors=0,
    last_error=None,
    disposed=False,
    created_at=1.0,
    updated_at=2.0,
    reported_at=2.0,
)


@pytest.mark.parametrize(
    ("entry", "on_disk", "wanted", "verdict", "detail"),
    [
        (ROW, SIG, True, Verdict.UPLOADED, "uploaded"),
        (ROW, None, True, Verdict.UPLOADED, "no longer on disk"),
        (replace(ROW, disposed=True), None, True, Verdict.UPLOADED, "moved or deleted"),
        (ROW, replace(SIG, size=13), True, Verdict.CHANGED, "changed since upload"),
        (ROW, replace(SIG, ino=8), True, Verdict.CHANGED, "changed since upload"),
        (ROW, "symbolic link", True, Verdict.CHANGED, "changed since upload"),
        (replace(ROW, state=State.PENDING), SIG, True, Verdict.IN_PROGRESS, "pending"),
        (replace(ROW, state=State.TICKETED), SIG, True, Verdict.IN_PROGRESS, "ticketed"),
        (replace(ROW, state=State.PUT), SIG, True, Verdict.IN_PROGRESS, "report is owed"),
        (replace(ROW, state=State.FAILED, attempts=3), SIG, True, Verdict.FAILED, "3 attempt"),
        (None, SIG, True, Verdict.UNKNOWN, "not in the ledger yet"),
        (None, SIG, False, Verdict.UNKNOWN, "patterns leave it out"),
        (None, "symbolic link", True, Verdict.UNKNOWN, "a symbolic link, never uploaded"),
        (None, None, True, Verdict.UNKNOWN, "no such file"),
    ],
)
def test_verdicts(
    entry: Entry | None, on_disk: FileSig | str | None, wanted: bool, verdict: Verdict, detail: str
) -> None:
    got, text = judge(entry, on_disk, wanted=wanted)
    assert got is verdict
    assert detail in text
