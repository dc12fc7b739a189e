"""The uploader's sign of progress: a beat at every step and every chunk it sends."""

from __future__ import annotations

from dataclasses import replace

from hottask_sync.client import CHUNK_SIZE
from hottask_sync.jobs import Outcome
from tests.unit.test_uploader import Rig


def test_the_uploader_beats_at_every_stage_and_every_chunk(rig: Rig) -> None:
    rig.write("big.bin", b"x" * (4 * CHUNK_SIZE))
    beats: list[str] = []
    uploader = replace(rig.uploader, beat=beats.append)
    assert uploader.run_through(rig.job("big.bin")).outcome is Outcome.DONE
    assert beats[0] == "ticket"
    assert beats.count("put") >= 4  # one per chunk at least
    assert beats[-1] == "report"
