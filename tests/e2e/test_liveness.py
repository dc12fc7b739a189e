"""Liveness never waits on work: READY=1 and the watchdog pings go on while every look at
the disk hangs (a scan of a huge tree, a folder check on a dead network mount).

The hang is forced, not hoped for: a small launcher runs the real CLI with the scan's walk
and the folder check made to block until the test lets them go, and the daemon reports to
a $NOTIFY_SOCKET of the test's with a short $WATCHDOG_USEC.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import time
from pathlib import Path

from hottask_sync.emulator import Emulator
from tests.conftest import API_KEY, wait_for, write_config
from tests.e2e.test_service import NotifySocket
from tests.fakes import clean_env

#: Runs ``hottask-sync run`` with every scan and every folder check hanging until the file
#: named by argv[1] exists.
LAUNCHER = """\
import os
import sys
import time

import hottask_sync.folders as fs

RELEASE = sys.argv.pop(1)


def hang():
    while not os.path.exists(RELEASE):
        time.sleep(0.01)


real_walk = fs.walk


def walk(*args, **kwargs):
    hang()
    yield from real_walk(*args, **kwargs)


real_check = fs.FolderWatches.check


def check(self, folders):
    hang()
    return real_check(self, folders)


fs.walk = walk
fs.FolderWatches.check = check

from hottask_sync.cli import main

sys.exit(main(sys.argv[1:]))
"""

WATCHDOG_USEC = 400_000  # a ping every 0.2 s


def test_ready_and_pings_go_on_while_scans_and_folder_checks_hang(
    tmp_path: Path, emulator: Emulator
) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "waiting.txt").write_bytes(b"found by the startup scan, once it may run")
    config = write_config(
        tmp_path / "c.toml", emulator.base_url, [{"path": str(inbox)}], sync={"rescan_seconds": 1}
    )
    script = tmp_path / "launcher.py"
    script.write_text(LAUNCHER, encoding="utf-8")
    release = tmp_path / "release"
    notify = NotifySocket(tmp_path / "n.sock")
    env = clean_env(
        HOTTASK_API_KEY=API_KEY,
        NOTIFY_SOCKET=str(notify.path),
        WATCHDOG_USEC=str(WATCHDOG_USEC),
    )
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, str(script), str(release), "run", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        notify.receive_until(lambda ms: any("READY" in m for m in ms), 10, "READY=1")
        ready_after = time.monotonic() - started
        hang_started = time.monotonic()
        notify.receive_until(lambda ms: time.monotonic() - hang_started > 3.0, 5, "3 s")
        pings = [t for t, f in notify.messages if "WATCHDOG" in f and t >= hang_started]
        gaps = [b - a for a, b in itertools.pairwise(pings)]
        release.touch()
        wait_for(lambda: emulator.reported(), what="the waiting file reported once let go")
    finally:
        release.touch()  # a failing test must not leave the daemon hanging
        proc.terminate()
        try:
            _, err = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        notify.close()
    assert ready_after < 2.0 + 1.5  # READY within 2 s of start (interpreter start-up aside)
    assert len(pings) >= 10, f"only {len(pings)} pings in 3 s while the scan hung"
    assert max(gaps) < WATCHDOG_USEC / 2e6 + 0.3, gaps
    assert proc.returncode == 0, err.decode()


#: Runs ``hottask-sync run`` with the scanner's thread dead before the main loop starts
#: (a bug in it, forced: it raises at once, its message quoting the key).
DEAD_SCANNER = """\
import os
import sys

import hottask_sync.scanner as scanner


def crash(self):
    raise RuntimeError("a bug, near " + os.environ["HOTTASK_API_KEY"])


real_start = scanner.Scanner.start


def start(self):
    real_start(self)
    self._thread.join()  # dead before anything else runs


scanner.Scanner._run = crash
scanner.Scanner.start = start

from hottask_sync.cli import main

sys.exit(main(sys.argv[1:]))
"""


def test_a_dead_thread_stops_the_pings_and_is_named_once(
    tmp_path: Path, emulator: Emulator
) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    config = write_config(tmp_path / "c.toml", emulator.base_url, [{"path": str(inbox)}])
    script = tmp_path / "launcher.py"
    script.write_text(DEAD_SCANNER, encoding="utf-8")
    notify = NotifySocket(tmp_path / "n.sock")
    env = clean_env(
        HOTTASK_API_KEY=API_KEY, NOTIFY_SOCKET=str(notify.path), WATCHDOG_USEC=str(WATCHDOG_USEC)
    )
    proc = subprocess.Popen(
        [sys.executable, str(script), "run", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        notify.receive_until(lambda ms: any("READY" in m for m in ms), 10, "READY=1")
        ready_at = time.monotonic()
        # Ten ping intervals: a healthy daemon pings five times a second here.
        notify.receive_until(lambda ms: time.monotonic() - ready_at > 2.0, 5, "2 s")
    finally:
        proc.terminate()
        try:
            out, err = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        notify.close()
    pings = [f for _, f in notify.messages if "WATCHDOG" in f]
    assert pings == [], "a daemon with a dead part must not tell systemd it is fine"
    lines = [json.loads(line) for line in out.decode().splitlines() if line.startswith("{")]
    died = [ln for ln in lines if ln["event"] == "daemon.thread_died"]
    assert [d["part"] for d in died] == ["scanner"]  # named once, not at every check
    crashed = [ln for ln in lines if ln["event"] == "thread.crashed"]
    assert len(crashed) == 1 and crashed[0]["thread"] == "scanner"
    assert "RuntimeError" in crashed[0]["exception"]
    whole = (out + err).decode()
    assert API_KEY not in whole
    assert "Traceback" not in err.decode()  # the crash went to the log, not raw to stderr


def test_a_dead_thread_is_named_without_a_watchdog_too(tmp_path: Path, emulator: Emulator) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    config = write_config(tmp_path / "c.toml", emulator.base_url, [{"path": str(inbox)}])
    script = tmp_path / "launcher.py"
    script.write_text(DEAD_SCANNER, encoding="utf-8")
    log_path = tmp_path / "out.log"
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, str(script), "run", "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=clean_env(HOTTASK_API_KEY=API_KEY),
        )
    try:
        wait_for(
            lambda: b"daemon.thread_died" in log_path.read_bytes(),
            timeout=20,
            what="the dead scanner named (health checked every 5 s without a watchdog)",
        )
    finally:
        proc.terminate()
        proc.wait(20)
    assert API_KEY not in log_path.read_text()
