"""A report owed for a folder no longer configured: reported by FileStoreId, file untouched."""

from __future__ import annotations

import os

from hottask_sync.files import FileSig
from hottask_sync.jobs import Job, Outcome
from hottask_sync.ledger import State
from tests.unit.test_uploader import Rig, sha


def test_an_orphan_report_is_made_without_touching_the_file(rig: Rig) -> None:
    path = rig.write("a.txt", b"hello")
    sig = FileSig.from_stat(os.lstat(path))
    rig.ledger.mark_ticketed(rig.folder.key, "a.txt", sig, "77")
    rig.server.stored["77"] = b"hello"
    rig.ledger.mark_put(rig.folder.key, "a.txt", sha(b"hello"))
    path.write_bytes(b"a new version nobody watches")
    result = rig.run(Job(rig.folder, "a.txt", orphan=True))
    assert result.outcome is Outcome.DONE
    assert [e for e, _ in rig.server.calls] == ["report"]
    assert rig.row("a.txt").state is State.REPORTED
    assert path.read_bytes() == b"a new version nobody watches"


def test_an_orphan_already_reported_is_left_alone(rig: Rig) -> None:
    rig.write("a.txt", b"hello")
    assert rig.run(rig.job("a.txt")).outcome is Outcome.DONE
    calls = len(rig.server.calls)
    (rig.inbox / "a.txt").write_bytes(b"changed")
    assert rig.run(Job(rig.folder, "a.txt", orphan=True)).outcome is Outcome.SKIPPED
    assert len(rig.server.calls) == calls  # never opened, never uploaded
