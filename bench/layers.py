#!/usr/bin/env python3
"""Where a file's CPU goes, layer by layer: row 1's work rebuilt in one process, one layer
added at a time, at the daemon's concurrency.

``python bench/layers.py [--files N] [--concurrency C] [--reps R]`` starts the emulator in
its bench mode (a subprocess: its CPU is not counted), writes N 4 KiB files, and uploads
them once per layer, the layers interleaved R times; it prints the median CPU per file
(user + system of this process) and wall time of each:

* ``bare``: row 1's bare httpx loop (``bench/clients.py``: C threads sharing one
  ``httpx.Client``, the three calls per file, nothing else);
* ``client``: the same threads through the project's ``HotTaskClient`` (checked answers,
  the PUT from the open file);
* ``uploader``: ``Uploader.run`` in C upload slots and ``Uploader.finish`` in 2C report
  threads, as in the daemon's pool, with a ledger that records nothing;
* ``ledger``: the same with a real ledger written inline (each write its own commit, under
  the ledger's lock: the design before issue 12);
* ``writer``: the same with the daemon's ledger writer (group commit, reads on their own
  connection): the daemon's whole per-file path, without its main loop (settling,
  scheduling, scans and watches), which row 1 adds.

The differences between neighbouring layers are what each layer costs; the difference
between ``writer`` and row 1's daemon is the main loop's share.
"""

from __future__ import annotations

import argparse
import os
import queue
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


from bench.clients import _in_threads as in_threads  # noqa: E402
from bench.clients import bare_httpx  # noqa: E402
from bench.writer import in_stages  # noqa: E402
from hottask_sync import logs  # noqa: E402
from hottask_sync.client import HotTaskClient  # noqa: E402
from hottask_sync.config import FolderConfig  # noqa: E402
from hottask_sync.files import FileSig  # noqa: E402
from hottask_sync.jobs import Job, Outcome, Result  # noqa: E402
from hottask_sync.ledger import Ledger  # noqa: E402
from hottask_sync.uploader import Handoff, Uploader  # noqa: E402
from hottask_sync.writer import LedgerWriter, SharedLedger  # noqa: E402

API_KEY = "bench-layers-key"
LAYERS = ("bare", "client", "uploader", "ledger", "writer")


class NoLedger:
    """A ledger that records nothing (the ``uploader`` layer)."""

    def get(self, folder: str, relpath: str) -> None:
        return None

    def mark_ticketed(self, *args: Any, **kwargs: Any) -> None:
        pass

    def mark_put(self, *args: Any, **kwargs: Any) -> None:
        pass

    def mark_reported(self, *args: Any, **kwargs: Any) -> None:
        pass


class Layers:
    def __init__(self, base_url: str, folder: Path, names: list[str], concurrency: int) -> None:
        self.base_url, self.folder, self.names, self.c = base_url, folder, names, concurrency
        self.runs = 0

    def bare(self) -> None:
        """Row 1's bare httpx loop itself (bench/clients.py), in this process."""
        spec = {"base_url": self.base_url, "api_key": API_KEY, "folder": str(self.folder)}
        assert bare_httpx({**spec, "files": self.names, "threads": self.c}) == len(self.names)

    def client(self) -> None:
        with HotTaskClient(self.base_url, API_KEY, max_connections=64) as client:

            def work(next_index: Callable[[], int | None]) -> int:
                n = 0
                while (i := next_index()) is not None:
                    fd = os.open(self.folder / self.names[i], os.O_RDONLY)
                    try:
                        ticket = client.get_upload_url(self.names[i])
                        client.put(ticket, fd, os.fstat(fd).st_size)
                        n += client.report_success(ticket.file_store_id)
                    finally:
                        os.close(fd)
                return n

            assert in_threads(self.c, len(self.names), work) == len(self.names)

    def pipeline(self, layer: str) -> None:
        """The daemon's pool: C upload slots handing off to 2C report threads."""
        self.runs += 1
        folder = FolderConfig(path=self.folder)
        sigs = [FileSig.from_stat(os.stat(self.folder / n)) for n in self.names]
        writer: LedgerWriter | None = None
        ledger: Any
        if layer == "uploader":
            ledger = NoLedger()
        else:
            path = self.folder.parent / f"ledger-{layer}-{self.runs}.db"
            if layer == "ledger":
                ledger = Ledger(path)
            else:
                writer = LedgerWriter(Ledger(path))
                ledger = SharedLedger(writer, path)
            ledger.add_pending((folder.key, n, s) for n, s in zip(self.names, sigs, strict=True))
        jobs = [Job(folder, n, settled=s) for n, s in zip(self.names, sigs, strict=True)]
        reports: queue.SimpleQueue[Handoff | None] = queue.SimpleQueue()
        results: list[Result] = []
        with HotTaskClient(self.base_url, API_KEY, max_connections=64) as client:
            uploader = Uploader(client, ledger, max_attempts=5)

            def upload(next_index: Callable[[], int | None]) -> int:
                while (i := next_index()) is not None:
                    got = uploader.run(jobs[i])
                    if isinstance(got, Handoff):
                        reports.put(got)
                    else:
                        results.append(got)
                return 0

            def report() -> None:
                while (handoff := reports.get()) is not None:
                    results.append(uploader.finish(handoff))

            in_stages(self.c, len(jobs), upload, report, reports)
        if writer is not None:
            writer.stop(10)
        if layer != "uploader":
            ledger.close()
        bad = [r for r in results if r.outcome is not Outcome.DONE]
        assert len(results) == len(self.names) and not bad, bad[:3]


def measure(run: Callable[[], None], n: int) -> tuple[float, float]:
    """Runs ``run``; returns (CPU ms per file of this process, wall seconds)."""
    t0, w0 = os.times(), time.perf_counter()
    run()
    t1, w1 = os.times(), time.perf_counter()
    cpu = (t1.user - t0.user) + (t1.system - t0.system)
    return 1000 * cpu / n, w1 - w0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--port", type=int, default=0, help="the emulator's (0: any free)")
    parser.add_argument(
        "--layers",
        default=",".join(LAYERS),
        help="comma-separated, in this order (default: all): " + ", ".join(LAYERS),
    )
    args = parser.parse_args(argv)
    chosen = [layer for layer in LAYERS if layer in args.layers.split(",")]
    unknown = set(args.layers.split(",")) - set(LAYERS)
    if unknown or not chosen:
        parser.error(f"--layers: unknown {sorted(unknown)}; choose among {', '.join(LAYERS)}")
    logs.configure("json", "info", open(os.devnull, "w"))  # noqa: SIM115 - for the whole run
    work = Path(tempfile.mkdtemp(prefix="hottask-layers-"))
    folder = work / "in"
    folder.mkdir()
    names = [f"f{i:06d}.bin" for i in range(args.files)]
    for name in names:
        (folder / name).write_bytes(os.urandom(4096))
    command = [sys.executable, "-u", "-m", "hottask_sync.emulator", "--port", str(args.port)]
    command += ["--bench", "--quiet", "--api-key", API_KEY, "--data", str(work / "emu")]
    emu = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert emu.stdout is not None
        # "HotTask emulator on http://127.0.0.1:PORT — ...": once it is printed, it serves.
        base_url = emu.stdout.readline().split()[3]
        layers = Layers(base_url, folder, names, args.concurrency)
        runs: dict[str, list[tuple[float, float]]] = {layer: [] for layer in chosen}
        for _ in range(args.reps):
            for layer in chosen:
                run = getattr(layers, layer, None) or (lambda layer=layer: layers.pipeline(layer))
                runs[layer].append(measure(run, args.files))
    finally:
        emu.terminate()
        emu.wait()
        shutil.rmtree(work, ignore_errors=True)
    print(
        f"{args.files} x 4 KiB, concurrency {args.concurrency}, median of {args.reps} "
        f"interleaved runs (CPU of this process only; the emulator is another)"
    )
    previous = None
    for layer in chosen:
        cpu = statistics.median(c for c, _ in runs[layer])
        wall = statistics.median(w for _, w in runs[layer])
        step = "" if previous is None else f"  ({cpu - previous:+.2f} ms)"
        print(f"  {layer:9s} {cpu:5.2f} ms/file  {wall:5.2f} s{step}")
        previous = cpu
    return 0


if __name__ == "__main__":
    sys.exit(main())
