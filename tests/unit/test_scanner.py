"""Unit tests for hottask_sync.scanner: batches compared with the ledger a batch at a time,
a scan that waits while the main loop is full, and requests that coalesce."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hottask_sync import scanner as scanner_module
from hottask_sync.config import FolderConfig
from hottask_sync.files import FileSig
from hottask_sync.ledger import Ledger, State
from hottask_sync.scanner import Batch, Finished, Scanner
from tests.conftest import wait_for


def _tree(root: Path, n: int) -> None:
    for i in range(n):
        sub = root / f"d{i % 3}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"f{i}.txt").write_bytes(b"x" * i)


def _collect(sc: Scanner) -> tuple[list[Batch], list[Finished]]:
    batches = [r for r in sc.results if isinstance(r, Batch)]
    done = [r for r in sc.results if isinstance(r, Finished)]
    return batches, done


def test_a_scan_hands_over_every_entry_with_what_the_ledger_knows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(scanner_module, "BATCH", 4)
    inbox = tmp_path / "in"
    _tree(inbox, 10)
    folder = FolderConfig(inbox)
    with Ledger.in_dir(tmp_path / "state") as ledger:
        sig = FileSig.from_stat(os.lstat(inbox / "d1" / "f1.txt"))
        ledger.add_pending([(folder.key, "d1/f1.txt", sig)])
    sc = Scanner(tmp_path / "state" / "ledger.sqlite3", lambda: None)
    sc.start()
    sc.request([folder])
    wait_for(lambda: _collect(sc)[1], what="the scan finished")
    sc.stop(5)
    batches, (done,) = _collect(sc)
    assert all(len(b.entries) <= 4 for b in batches)  # never the whole folder at once
    seen = sorted(rel for b in batches for rel, _kind, _sig in b.entries)
    assert seen == sorted(f"d{i % 3}/f{i}.txt" for i in range(10))
    known = {rel: row for b in batches for rel, row in b.known.items()}
    assert known == {"d1/f1.txt": (State.PENDING, sig, False)}
    assert (done.folders, done.entries) == (1, 10)


def test_a_scan_waits_while_the_main_loop_is_full(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(scanner_module, "BATCH", 2)
    inbox = tmp_path / "in"
    _tree(inbox, 9)
    Ledger.in_dir(tmp_path / "state").close()
    sc = Scanner(tmp_path / "state" / "ledger.sqlite3", lambda: None)
    sc.may_go.clear()
    sc.start()
    sc.request([FolderConfig(inbox)])
    wait_for(lambda: sc.scanning, what="the scan started")
    assert list(sc.results) == []  # nothing handed over while full
    sc.may_go.set()
    wait_for(lambda: _collect(sc)[1], what="the scan finished")
    sc.stop(5)


def test_asking_again_for_a_scan_not_started_yet_adds_nothing(tmp_path: Path) -> None:
    inbox = tmp_path / "in"
    _tree(inbox, 2)
    Ledger.in_dir(tmp_path / "state").close()
    sc = Scanner(tmp_path / "state" / "ledger.sqlite3", lambda: None)
    folder = FolderConfig(inbox)
    for _ in range(5):
        sc.request([folder])  # not started: one scan
    sc.start()
    wait_for(lambda: _collect(sc)[1], what="the scan finished")
    sc.stop(5)
    assert len(_collect(sc)[1]) == 1


def _reported(ledger: Ledger, folder: FolderConfig, rel: str, sig: FileSig) -> None:
    ledger.mark_ticketed(folder.key, rel, sig, f"fs-{rel}")
    ledger.mark_put(folder.key, rel, "ab" * 32)
    ledger.mark_reported(folder.key, rel)


def test_after_a_scan_rows_of_files_gone_for_the_retention_period_are_pruned(
    tmp_path: Path,
) -> None:
    inbox = tmp_path / "in"
    inbox.mkdir()
    (inbox / "still-here.txt").write_bytes(b"x")
    folder = FolderConfig(inbox)
    sig = FileSig(1, 1, 1, 1, 1)
    day = 86400.0
    with Ledger.in_dir(tmp_path / "state", clock=lambda: 100 * day) as ledger:
        for rel in ("still-here.txt", "deleted-by-user.txt", "moved-away.txt"):
            _reported(ledger, folder, rel, sig)
        ledger.mark_disposed(folder.key, "moved-away.txt")
    with Ledger.in_dir(tmp_path / "state", clock=lambda: 125 * day) as ledger:
        _reported(ledger, folder, "deleted-recently.txt", sig)
    sc = Scanner(
        tmp_path / "state" / "ledger.sqlite3",
        lambda: None,
        wall=lambda: 131 * day,
        retention_days=30,
    )
    sc.start()
    sc.request([folder])
    wait_for(lambda: _collect(sc)[1], what="the scan finished")
    sc.stop(5)
    with Ledger.in_dir(tmp_path / "state", readonly=True) as ledger:
        rels = ("still-here.txt", "deleted-by-user.txt", "moved-away.txt", "deleted-recently.txt")
        assert {r for r in rels if ledger.get(folder.key, r)} == {
            "still-here.txt",  # its file is there
            "deleted-recently.txt",  # gone for less than 30 days
        }


def test_an_unmounted_folder_is_never_pruned(tmp_path: Path) -> None:
    folder = FolderConfig(tmp_path / "gone")
    day = 86400.0
    with Ledger.in_dir(tmp_path / "state", clock=lambda: day) as ledger:
        _reported(ledger, folder, "a.txt", FileSig(1, 1, 1, 1, 1))
    sc = Scanner(
        tmp_path / "state" / "ledger.sqlite3", lambda: None, wall=lambda: 90 * day, retention_days=1
    )
    sc.start()
    sc.request([folder])
    wait_for(lambda: _collect(sc)[1], what="the scan finished")
    sc.stop(5)
    with Ledger.in_dir(tmp_path / "state", readonly=True) as ledger:
        assert ledger.get(folder.key, "a.txt") is not None
