#!/usr/bin/env python3
"""The ledger's share of a file alone: the writes of row 1's pipeline, without HTTP.

``python bench/writer.py [--files N] [--concurrency C] [--reps R]`` runs, R times
interleaved, each way of writing the ledger with the daemon's threads: C upload slots that
read a row and hand in its ticket, then "send" (a 0.5 ms sleep stands in for the PUT), and
2C report threads that record the durable ``put``, "report" (0.3 ms) and hand in the
report. It prints the median CPU per file of this process, commits per file and context
switches per file (voluntary and not, every thread of the process):

* ``inline``: one connection behind one lock, each write its own commit (before issue 12);
* ``writer``: the daemon's ledger writer (group commit, reads on their own connection).

The sleeps release the GIL as the network calls would; what is left is the ledger's own
cost and the thread crossings it makes.
"""

from __future__ import annotations

import argparse
import os
import queue
import resource
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.clients import _in_threads as in_threads  # noqa: E402
from hottask_sync import logs  # noqa: E402
from hottask_sync.files import FileSig  # noqa: E402
from hottask_sync.ledger import Ledger  # noqa: E402
from hottask_sync.pool import REPORTERS_PER_SLOT  # noqa: E402
from hottask_sync.writer import LedgerWriter, SharedLedger  # noqa: E402

FOLDER = "/srv/in"
SIG = FileSig(4096, 1, 1, 1, 1)
WAYS = ("inline", "writer")


def in_stages(
    slots: int,
    n: int,
    slot: Callable[[Callable[[], int | None]], int],
    reporter: Callable[[], None],
    reports: queue.SimpleQueue[Any],
) -> None:
    """The daemon pool's shape: ``slots`` threads run ``slot`` over n items (as
    ``bench/clients.py``'s ``_in_threads``) while REPORTERS_PER_SLOT times as many run
    ``reporter``, each until it takes a None from ``reports``; returns once all ended."""
    reporters = [threading.Thread(target=reporter) for _ in range(REPORTERS_PER_SLOT * slots)]
    for t in reporters:
        t.start()
    in_threads(slots, n, slot)
    for _ in reporters:
        reports.put(None)
    for t in reporters:
        t.join()


def run(way: str, work: Path, n: int, concurrency: int) -> tuple[float, float, float]:
    """One run; returns (CPU ms per file, commits per file, context switches per file)."""
    path = Path(tempfile.mkdtemp(dir=work)) / "ledger.sqlite3"
    base = Ledger(path)
    names = [f"f{i:06d}.bin" for i in range(n)]
    base.add_pending((FOLDER, name, SIG) for name in names)
    writer: LedgerWriter | None = None
    ledger: Any = base
    if way == "writer":
        writer = LedgerWriter(base)
        ledger = SharedLedger(writer, path)
    commits = [0]
    base._store.conn.set_trace_callback(  # type: ignore[union-attr]
        lambda sql: commits.__setitem__(0, commits[0] + (sql == "COMMIT"))
    )
    reports: queue.SimpleQueue[str | None] = queue.SimpleQueue()

    def slot(next_index: Callable[[], int | None]) -> int:
        while (i := next_index()) is not None:
            name = names[i]
            ledger.get(FOLDER, name)
            ledger.mark_ticketed(FOLDER, name, SIG, f"fs-{name}")
            time.sleep(0.0005)  # the PUT
            reports.put(name)
        return 0

    def reporter() -> None:
        while (name := reports.get()) is not None:
            ledger.mark_put(FOLDER, name, "ab" * 32)
            time.sleep(0.0003)  # the report
            ledger.mark_reported(FOLDER, name, wait=False)  # a Ledger commits it anyway

    usage0, cpu0 = resource.getrusage(resource.RUSAGE_SELF), time.process_time()
    in_stages(concurrency, n, slot, reporter, reports)
    if writer is not None:
        writer.stop(10)
        ledger.close()
    cpu, usage1 = time.process_time() - cpu0, resource.getrusage(resource.RUSAGE_SELF)
    switches = (usage1.ru_nvcsw - usage0.ru_nvcsw) + (usage1.ru_nivcsw - usage0.ru_nivcsw)
    base.close()
    return 1000 * cpu / n, commits[0] / n, switches / n


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args(argv)
    logs.configure("json", "info", open(os.devnull, "w"))  # noqa: SIM115 - for the whole run
    runs: dict[str, list[tuple[float, float, float]]] = {way: [] for way in WAYS}
    with tempfile.TemporaryDirectory(prefix="hottask-writer-") as work:
        for _ in range(args.reps):
            for way in WAYS:
                runs[way].append(run(way, Path(work), args.files, args.concurrency))
    print(
        f"{args.files} files, {args.concurrency} slots, "
        f"{REPORTERS_PER_SLOT * args.concurrency} report threads, median of {args.reps}"
    )
    for way in WAYS:
        cpu, commits, switches = (statistics.median(r[i] for r in runs[way]) for i in range(3))
        print(
            f"  {way:7s} {cpu:5.3f} ms CPU/file  {commits:4.2f} commits/file  "
            f"{switches:5.1f} context switches/file"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
