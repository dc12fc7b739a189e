"""The report stage: once its bytes are sent, a file leaves its upload slot; the durable
`put`, the report and the move/delete happen in the report stage, which owns (and closes)
the file's descriptors. A file is reported only once its `put` is recorded."""

from __future__ import annotations

import os
import threading
from dataclasses import replace
from pathlib import Path

import httpx

from hottask_sync.config import FolderConfig
from hottask_sync.jobs import Job, Outcome, Result
from hottask_sync.ledger import State
from hottask_sync.pool import WorkerPool
from hottask_sync.uploader import Handoff
from tests.conftest import wait_for
from tests.unit.test_uploader import Rig, status


def test_the_upload_slot_hands_off_once_the_bytes_are_sent(rig: Rig) -> None:
    rig.write("a.txt", b"hello")
    handoff = rig.uploader.run(rig.job("a.txt"))
    assert isinstance(handoff, Handoff)
    assert rig.server.count("put") == 1 and rig.server.count("report") == 0
    assert rig.row("a.txt").state is State.TICKETED  # the put is the report stage's
    os.fstat(handoff.held.fd)  # still open: the report stage owns it
    result = rig.uploader.finish(handoff)
    assert result.outcome is Outcome.DONE
    assert rig.row("a.txt").state is State.REPORTED
    assert rig.server.reported == [handoff.ticket.file_store_id]


def test_the_report_waits_for_the_durable_put(rig: Rig) -> None:
    """Reported only after mark_put returned: a report whose put could be lost to a power
    cut would make the file upload twice after the restart."""
    rig.write("a.txt", b"hello")
    order: list[str] = []

    class Watching:
        def __getattr__(self, name: str) -> object:
            return getattr(rig.ledger, name)

        def mark_put(self, *args: object, **kw: object) -> None:
            rig.ledger.mark_put(*args, **kw)  # type: ignore[arg-type]
            order.append("put durable")

    answer = rig.server.handler

    def report(request: httpx.Request) -> httpx.Response:
        order.append("report sent")
        return answer(request)

    rig.server.faults["report"] = [report]
    uploader = replace(rig.uploader, ledger=Watching())  # type: ignore[arg-type]
    assert uploader.run_through(rig.job("a.txt")).outcome is Outcome.DONE
    assert order == ["put durable", "report sent"]


def test_a_failed_report_is_retried_as_a_report_never_a_second_put(rig: Rig) -> None:
    rig.write("a.txt", b"hello")
    rig.server.faults["report"] = [status(503)]
    handoff = rig.uploader.run(rig.job("a.txt"))
    assert isinstance(handoff, Handoff)
    result = rig.uploader.finish(handoff)
    assert result.outcome is Outcome.RETRY and result.ticket is None
    assert rig.row("a.txt").state is State.PUT
    assert rig.uploader.run_through(rig.job("a.txt").after(result)).outcome is Outcome.DONE
    assert rig.server.count("put") == 1 and rig.server.count("pre") == 1


def test_the_pool_frees_the_upload_slot_while_the_report_stage_works(tmp_path: Path) -> None:
    folder = FolderConfig(tmp_path)
    reporting = threading.Event()
    release = threading.Event()

    def run(job: Job) -> Result | str:
        return "handoff" if job.relpath == "a" else Result(Outcome.DONE)

    def finish(handoff: str) -> Result:
        reporting.set()
        release.wait(10)  # a slow sync, a far service
        return Result(Outcome.DONE)

    pool = WorkerPool(run, lambda: None, finish=finish)
    pool.resize(1)  # one upload slot
    pool.submit(Job(folder, "a"))
    pool.submit(Job(folder, "b"))
    assert reporting.wait(10)
    # b went through the only upload slot while a was still being reported.
    wait_for(
        lambda: (
            [(j.relpath, r.outcome) for j, r in pool.results][:2]
            == [
                ("a", Outcome.REPORTING),
                ("b", Outcome.DONE),
            ]
        ),
        what="b done while a reports",
    )
    release.set()
    wait_for(lambda: len(pool.results) == 3, what="a's final result")
    assert pool.results[2][1].outcome is Outcome.DONE  # type: ignore[union-attr]
    pool.close()
