#!/usr/bin/env python3
"""Row 1's daemon from several checkouts, in turn: what a change costs, told from drift.

``python bench/ab.py CHECKOUT [CHECKOUT ...] [--files N] [--reps R] [--json]`` runs, R times
in turn, the daemon of each checkout (its ``hottask_sync`` first on the path, its bytecode
compiled beforehand) on the same N 4 KiB files, and the bare httpx loop as row 1 runs it;
each against a fresh emulator in its bench mode. Per side it prints the median CPU per file
(the daemon's once the last file is reported, start-up included), every run's figure,
context switches per file and wall time, and the median over rounds of its CPU against
the first side's in the same round.

Why a tool of its own: on a shared VM a single run varies by a fifth and the machine drifts
within a run (rounds of one run of 3.4 ms and 4.9 ms per file for the same code), so a
change shows only against its parent measured in the same rounds (bench/README).
"""

from __future__ import annotations

import argparse
import compileall
import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
if str(BENCH.parent) not in sys.path:
    sys.path.insert(0, str(BENCH.parent))

from bench import run as bench  # noqa: E402

BARE = "bare httpx loop"


def one_daemon(
    checkout: Path, work: Path, folder: Path, n: int, name: str
) -> tuple[float, float, float]:
    """One run of ``checkout``'s daemon; returns (CPU ms per file, switches per file, wall)."""
    bench.REPO = checkout  # its working directory: `python -m hottask_sync.cli` from there
    with bench.emulator(work, f"{name}-emu") as emu:
        got = bench.run_daemon_batch(
            emu,
            work,
            folder,
            n,
            name=name,
            concurrency=bench.CONCURRENCY,
            env_extra={"PYTHONPATH": str(checkout)},
        )
        bench.check_reported(emu, None, n)
    return 1000 * got.cpu / n, got.extra["switches_per_file"], got.wall


def one_bare(work: Path, folder: Path, files: list[str]) -> tuple[float, float, float]:
    with bench.emulator(work, "bare-emu") as emu:
        got = bench.run_client(emu, work, "httpx", folder, files, bench.CONCURRENCY)
        bench.check_reported(emu, None, len(files))
    return 1000 * got.cpu / len(files), got.extra["switches_per_file"], got.wall


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkouts", nargs="+", type=Path, help="repository checkouts")
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    checkouts = [c.resolve() for c in args.checkouts]
    for c in checkouts:
        if not (c / "hottask_sync" / "cli.py").is_file():
            parser.error(f"{c}: not a checkout of hottask-sync (no hottask_sync/cli.py)")
    repo = bench.REPO
    bench.warm_bytecode()
    for c in checkouts:
        compileall.compile_dir(str(c / "hottask_sync"), quiet=1)
    sides = [str(c) for c in checkouts] + [BARE]
    runs: dict[str, list[tuple[float, float, float]]] = {side: [] for side in sides}
    work = Path(tempfile.mkdtemp(prefix="hottask-ab-"))
    try:
        folder = work / "in"
        files = bench.make_files(folder, args.files, 4096, age=60)
        for rep in range(args.reps):
            for i, c in enumerate(checkouts):
                runs[str(c)].append(one_daemon(c, work, folder, args.files, f"ab-{i}-{rep}"))
            runs[BARE].append(one_bare(work, folder, files))
    finally:
        bench.REPO = repo
        shutil.rmtree(work, ignore_errors=True)
    first = runs[sides[0]]
    report: dict[str, Any] = {}
    for side in sides:
        cpu = [r[0] for r in runs[side]]
        report[side] = {
            "cpu_ms_per_file": round(statistics.median(cpu), 3),
            "runs_cpu_ms_per_file": [round(x, 3) for x in cpu],
            "switches_per_file": round(statistics.median(r[1] for r in runs[side]), 1),
            "wall_s": round(statistics.median(r[2] for r in runs[side]), 3),
            "vs_first_side": round(
                statistics.median(r[0] / f[0] for r, f in zip(runs[side], first, strict=True)), 3
            ),
        }
    if args.json:
        print(json.dumps({"files": args.files, "reps": args.reps, "sides": report}, indent=1))
        return 0
    print(f"{args.files} x 4 KiB, concurrency {bench.CONCURRENCY}, {args.reps} rounds in turn")
    for side, r in report.items():
        runs_text = " ".join(f"{x:.2f}" for x in r["runs_cpu_ms_per_file"])
        print(
            f"{side}\n  CPU {r['cpu_ms_per_file']:.2f} ms/file ({runs_text}), "
            f"{r['switches_per_file']:.0f} switches/file, wall {r['wall_s']:.2f} s, "
            f"{r['vs_first_side']:.3f}x the first side round by round"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
