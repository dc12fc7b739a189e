#!/usr/bin/env python3
"""Profiling helpers for the bench (py-spy must be installed: ``.venv/bin/pip install py-spy``).

``bench/profile.py summary FILE [--top N] [--thread SUBSTR]``
    Summarises a py-spy ``raw`` (collapsed stacks) file: the functions with the most samples
    on their own (self %) and with their callees (total %), as % of all samples.

``bench/profile.py daemon ROW [--quick]``
    Runs ``bench/run.py --only ROW --profile DIR`` (every daemon under ``py-spy record``) and
    prints the summary of each daemon's profile.

``bench/profile.py emulator [--files N] [--threads T] [--full]``
    Profiles the emulator alone: runs it in this process under ``py-spy record --pid`` while
    the lean client (bench/clients.py) uploads N 4 KiB files on T keep-alive connections.
    The emulator runs in its bench mode, as in bench/run.py, unless ``--full``.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

_FRAME_RE = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def _short(frame: str) -> str:
    """``func (path/to/module.py:12)`` -> ``module.py:func``."""
    m = _FRAME_RE.match(frame)
    if m is None:
        return frame
    file = m.group("file")
    if "site-packages/" in file:
        file = file.split("site-packages/", 1)[1]
    elif "/lib/python3" in file:
        file = "stdlib/" + file.split("/lib/python3", 1)[1].split("/", 1)[-1]
    else:
        file = file.rsplit("/", 2)[-2] + "/" + file.rsplit("/", 1)[-1] if "/" in file else file
    return f"{file}:{m.group('func')}"


def summarize(path: Path, top: int = 25, thread: str | None = None) -> str:
    self_counts: collections.Counter[str] = collections.Counter()
    total_counts: collections.Counter[str] = collections.Counter()
    threads: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        if frames and frames[0].startswith("process "):
            frames = frames[1:]
        name = "?"
        if frames and frames[0].startswith("thread "):
            name = frames[0]
            frames = frames[1:]
        if thread is not None and thread not in name:
            continue
        threads[name] += count
        samples += count
        short = [_short(f) for f in frames]
        if short:
            self_counts[short[-1]] += count
        for f in set(short):
            total_counts[f] += count
    if not samples:
        return f"{path}: no samples"
    out = [f"{path.name}: {samples} samples"]
    out.append(
        "  by thread: "
        + ", ".join(f"{t} {100 * c / samples:.0f}%" for t, c in threads.most_common(8))
    )
    out.append(f"  top {top} self:")
    out += [f"    {100 * c / samples:5.1f}%  {f}" for f, c in self_counts.most_common(top)]
    out.append(f"  top {top} total (inclusive):")
    out += [f"    {100 * c / samples:5.1f}%  {f}" for f, c in total_counts.most_common(top)]
    return "\n".join(out)


def _spy() -> str:
    return shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))


SPY_ARGS = [_spy(), "record", "-r", "200", "-f", "raw", "--threads", "--nonblocking", "--gil"]


def cmd_daemon(args: argparse.Namespace) -> int:
    out = Path(args.out or tempfile.mkdtemp(prefix="hottask-profile-"))
    cmd = [sys.executable, str(BENCH / "run.py"), "--only", args.row, "--profile", str(out)]
    if args.quick:
        cmd.append("--quick")
    subprocess.run(cmd, check=False)
    for f in sorted(out.glob("*.txt")):
        print(summarize(f, args.top, args.thread))
    return 0


def cmd_emulator(args: argparse.Namespace) -> int:
    import json

    from bench.run import API_KEY, make_files
    from hottask_sync.emulator import Emulator

    work = Path(tempfile.mkdtemp(prefix="hottask-profile-emu-"))
    try:
        files = make_files(work / "in", args.files, 4096)
        emu = Emulator(work / "emu", api_key=API_KEY, bench=not args.full)
        emu.start()
        spec = {
            "mode": "lean",
            "base_url": emu.base_url,
            "api_key": API_KEY,
            "folder": str(work / "in"),
            "files": files,
            "threads": args.threads,
        }
        (work / "spec.json").write_text(json.dumps(spec))
        out = Path(args.out or work / "emulator.txt")
        spy = subprocess.Popen(
            [*SPY_ARGS, "-o", str(out), "--pid", str(os.getpid())],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(1.0)  # py-spy attaches
        t0 = time.monotonic()
        cpu0 = time.process_time()
        subprocess.run(
            [sys.executable, str(BENCH / "clients.py"), str(work / "spec.json")], check=True
        )
        wall, cpu = time.monotonic() - t0, time.process_time() - cpu0
        spy.send_signal(signal.SIGINT)
        spy.wait()
        emu.stop()
        print(
            f"lean x{args.threads}: {args.files} files in {wall:.2f} s "
            f"({args.files / wall:.0f}/s); emulator CPU {1000 * cpu / args.files:.2f} ms/file"
        )
        print(summarize(out, args.top, args.thread))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("summary")
    p.add_argument("file")
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--thread", default=None)
    p = sub.add_parser("daemon")
    p.add_argument("row")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default=None)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--thread", default=None)
    p = sub.add_parser("emulator")
    p.add_argument("--files", type=int, default=2000)
    p.add_argument("--threads", type=int, default=4)
    p.add_argument("--full", action="store_true", help="the full emulator, not its bench mode")
    p.add_argument("--out", default=None)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--thread", default=None)
    args = parser.parse_args()
    if args.cmd == "summary":
        print(summarize(Path(args.file), args.top, args.thread))
        return 0
    return {"daemon": cmd_daemon, "emulator": cmd_emulator}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
