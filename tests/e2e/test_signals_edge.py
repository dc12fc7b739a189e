"""The edges of a daemon's start: a SIGHUP right after it took its lock, a lock still held
by a previous instance, and a lock held for good ("already running", exit 3).

The interleavings are forced, not hoped for: a small launcher runs the real CLI with
``hottask_sync.runtime``'s lock call wrapped (to send the SIGHUP from inside the window)
or its wait shortened, and a helper process holds the lock until told to let go.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from hottask_sync.emulator import Emulator
from tests.conftest import API_KEY, DaemonProcess, let_go, write_config
from tests.fakes import clean_env

TRACEBACK = "Traceback (most recent call last)"

#: Runs ``hottask-sync ARGS`` after PATCH (Python run with ``runtime`` imported).
LAUNCHER = """\
import os
import signal
import sys

import hottask_sync.runtime as runtime

{patch}

from hottask_sync.cli import main

sys.exit(main(sys.argv[1:]))
"""

#: The lock call, and then a SIGHUP to this process: a `retry` whose signal arrives right
#: after the daemon took its lock (and wrote its PID, which `retry` reads).
HUP_AFTER_LOCK = """\
real_lock = runtime.lock_state_dir

def lock_then_hup(*args, **kwargs):
    fd = real_lock(*args, **kwargs)
    os.kill(os.getpid(), signal.SIGHUP)
    return fd

runtime.lock_state_dir = lock_then_hup
"""


def launch(tmp_path: Path, patch: str, *args: str) -> subprocess.Popen[bytes]:
    """Starts the launcher with ``patch`` applied, running ``hottask-sync ARGS``."""
    script = tmp_path / "launcher.py"
    script.write_text(LAUNCHER.format(patch=patch), encoding="utf-8")
    return subprocess.Popen(
        [sys.executable, str(script), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=clean_env(HOTTASK_API_KEY=API_KEY),
    )


@pytest.fixture
def config(tmp_path: Path, emulator: Emulator) -> Path:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    return write_config(tmp_path / "config.toml", emulator.base_url, [{"path": str(inbox)}])


def test_sighup_right_after_the_lock_does_not_kill_the_daemon(
    tmp_path: Path, config: Path, daemons: list[DaemonProcess]
) -> None:
    """Issue 10 item 12: a SIGHUP (`retry`) between the lock and the signal handlers took
    the default action and killed the daemon. The handlers now come first: the SIGHUP is
    a reload like any other, and the daemon gets ready."""
    daemon = DaemonProcess(launch(tmp_path, HUP_AFTER_LOCK, "run", "--config", str(config)))
    daemons.append(daemon)
    daemon.wait_event("daemon.ready")
    daemon.wait_event("config.reloaded")  # the early SIGHUP was kept, and acted on
    assert daemon.proc.poll() is None
    assert daemon.stop() == 0


def test_a_daemon_waits_for_a_previous_instance_to_let_go(
    tmp_path: Path,
    config: Path,
    holder: subprocess.Popen[str],
    daemons: list[DaemonProcess],
) -> None:
    """Issue 10 item 11: a daemon (re)started while its previous instance still holds the
    lock waits a few seconds for it instead of exiting at once."""
    # A long wait, so that how fast this test lets go cannot matter.
    patch = "runtime.LOCK_WAIT_SECONDS = 120"
    daemon = DaemonProcess(launch(tmp_path, patch, "run", "--config", str(config)))
    daemons.append(daemon)
    (busy,) = daemon.wait_event("state_dir.busy")
    assert busy["pid"] == str(holder.pid)
    assert busy["state_dir"] == str(tmp_path / "state")
    assert not daemon.events("daemon.ready")
    let_go(holder)
    daemon.wait_event("daemon.ready")
    assert len(daemon.events("state_dir.busy")) == 1  # logged once, not at every try
    assert daemon.stop() == 0


def test_already_running_exits_3_in_one_line(
    tmp_path: Path, config: Path, holder: subprocess.Popen[str]
) -> None:
    """Issue 10 item 11: "already running" exited 2, which the unit never restarts. It is
    exit 3 now, named in one line with the holder's PID (the wait is shortened here)."""
    proc = launch(tmp_path, "runtime.LOCK_WAIT_SECONDS = 0.3", "run", "--config", str(config))
    out, _ = proc.communicate(timeout=30)
    text = out.decode("utf-8", "replace")
    assert proc.returncode == 3, text
    assert TRACEBACK not in text
    errors = [line for line in text.splitlines() if line.startswith("hottask-sync: ")]
    assert errors == [
        f"hottask-sync: another hottask-sync (PID {holder.pid}) is already using "
        f"{tmp_path / 'state'}; stop it first or give this one its own sync.state_dir"
    ]
    assert holder.poll() is None  # the holder was left alone
