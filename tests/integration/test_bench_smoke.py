"""A smoke test of the benchmark suite (bench/run.py): its row functions run and give numbers.

Only that they produce finite figures is checked, never the timing targets: those depend on
the machine and on what else runs on it (``bench/run.py`` is the place to judge them).
"""

from __future__ import annotations

import math
from pathlib import Path

from bench import run as bench


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_throughput_row_measures_all_three_uploaders(tmp_path: Path) -> None:
    rows = bench.row_throughput(tmp_path, n_files=20)
    assert [r.row for r in rows] == ["1a", "1b", "1c"]
    assert all(_number(r.measured) for r in rows)
    details = rows[0].details
    for who in ("daemon", "naive", "lean_1", "lean_4"):
        assert details[who]["files"] == 20
        assert _number(details[who]["wall_s"])
        assert _number(details[who]["cpu_s"])


def test_latency_row_measures_each_file(tmp_path: Path) -> None:
    (row,) = bench.row_latency(tmp_path, samples=2)
    assert row.row == "3"
    assert _number(row.measured)
    latencies = row.details["latencies_ms"]
    assert len(latencies) == 2
    assert all(_number(x) for x in latencies)
