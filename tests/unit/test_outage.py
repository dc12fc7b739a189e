"""Waiting out a ledger that cannot be written: probes with a growing pause, a reminder at
most once an hour (the pure schedule; the runtime's waiting is tested end to end)."""

from __future__ import annotations

import itertools

from hottask_sync.outage import FIRST_PROBE_SECONDS, PROBE_CAP_SECONDS, Outage


def test_probes_come_with_a_growing_pause_up_to_the_cap() -> None:
    outage = Outage(since=100.0)
    now, probes = 100.0, []
    while now < 100.0 + 600:
        if outage.probe_due(now):
            probes.append(now)
        now += 0.25
    gaps = [b - a for a, b in itertools.pairwise(probes)]
    assert probes[0] == 100.0 + FIRST_PROBE_SECONDS
    assert gaps[:4] == [1.0, 2.0, 4.0, 8.0]
    assert max(gaps) == PROBE_CAP_SECONDS
    assert len(probes) < 30  # not a loop hammering the disk


def test_it_speaks_at_most_once_an_hour() -> None:
    outage = Outage(since=0.0)
    said = [t for t in range(0, 4 * 3600, 10) if outage.remind_due(float(t))]
    assert said == [3600, 7200, 10800]
