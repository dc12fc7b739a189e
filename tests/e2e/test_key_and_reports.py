"""The real daemon and CLI with a malformed key (issue 10, item 9) and a service that refuses a
repeated report (item 13).

A two-line key file used to be taken as is: the daemon ran, every call was refused by h11
with a message quoting both lines, which were logged, stored and retried forever. Now every
command that reads the key exits 2 with one line naming the file, and neither line shows.

A report whose answer is lost after the service acted is sent again; a service that refuses
the repeat ("already reported") used to leave the file failed, for ``retry`` to upload again.
Now it is recorded as reported: one upload, one report.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from hottask_sync.emulator import Emulator, Faults, TicketInfo
from tests.conftest import API_KEY, DaemonProcess, start_daemon, wait_for, write_config
from tests.e2e.support import status
from tests.fakes import clean_env, sha256

LINE1 = "sk-live-FIRSTLINE-7Qz9"
LINE2 = "sk-live-SECONDLINE-3Pw2"


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``hottask-sync ARGS``, stderr folded into stdout; a command that hangs fails the test
    (the old daemon never exited with a malformed key)."""
    return subprocess.run(
        [sys.executable, "-m", "hottask_sync.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        timeout=20,
        check=False,
    )


def config_with_key_file(tmp_path: Path, emulator: Emulator, key_file: Path) -> Path:
    inbox = tmp_path / "inbox"
    inbox.mkdir(exist_ok=True)
    (inbox / "a.txt").write_bytes(b"would be uploaded\n")
    api = {"base_url": emulator.base_url, "timeout_seconds": 10, "api_key_file": str(key_file)}
    return write_config(tmp_path / "c.toml", emulator.base_url, [{"path": str(inbox)}], api=api)


# --- a malformed key --------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["run", "check", "upload"])
def test_a_two_line_key_file_exits_2_naming_the_file_never_the_key(
    tmp_path: Path, emulator: Emulator, command: str
) -> None:
    key_file = tmp_path / "api-key"
    key_file.write_text(f"{LINE1}\n{LINE2}\n")
    key_file.chmod(0o600)
    config = config_with_key_file(tmp_path, emulator, key_file)
    extra = [str(tmp_path / "inbox" / "a.txt")] if command == "upload" else []
    done = run_cli(command, "--config", str(config), *extra, env=clean_env())
    assert done.returncode == 2, done.stdout
    lines = done.stdout.splitlines()
    assert len(lines) == 1, done.stdout
    (line,) = lines
    assert str(key_file) in line
    assert "more than one line" in line
    assert LINE1 not in done.stdout and LINE2 not in done.stdout
    assert "FIRSTLINE" not in done.stdout and "SECONDLINE" not in done.stdout
    # Nothing reached the service: no call was made with the key.
    assert emulator.calls()["pre"] == 0 and emulator.calls()["auth_failed"] == 0


def test_a_key_variable_with_a_line_break_exits_2_naming_it(
    tmp_path: Path, emulator: Emulator
) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    config = write_config(tmp_path / "c.toml", emulator.base_url, [{"path": str(inbox)}])
    env = clean_env()
    env["HOTTASK_API_KEY"] = f"{LINE1}\n{LINE2}"
    done = run_cli("run", "--config", str(config), env=env)
    assert done.returncode == 2, done.stdout
    assert done.stdout.splitlines() == [
        "hottask-sync: $HOTTASK_API_KEY: the key must be one line of printable ASCII with no "
        "spaces inside; it has more than one line"
    ]


# --- a service that refuses a repeated report ----------------------------------------------------


def settled(daemon: DaemonProcess) -> bool:
    """The upload ended one way or another: reported, failed, or refused a second time."""
    return bool(
        daemon.events("upload.succeeded")
        or daemon.events("upload.failed")
        or len(daemon.events("upload.retry")) >= 2
    )


def test_a_lost_report_answered_already_reported_ends_reported_once(
    tmp_path: Path, emulator: Emulator, daemons: list[DaemonProcess]
) -> None:
    emulator.reject_repeat_reports = True
    # The first report is recorded, then its answer is lost (the connection dropped); the
    # hook, run after recording and before answering, lets every later call through.
    emulator.faults = Faults(drop_after=1.0, endpoints=frozenset({"report"}))

    def after_first_report(_info: TicketInfo) -> None:
        emulator.faults = Faults()

    emulator.on_report = after_first_report
    key_file = tmp_path / "api-key"
    key_file.write_text(API_KEY + "\n")
    key_file.chmod(0o644)  # readable by others: warned about, once
    config = config_with_key_file(tmp_path, emulator, key_file)
    daemon = start_daemon(config, key=None)
    daemons.append(daemon)
    wait_for(lambda: settled(daemon), what="the upload to end", give_up=daemon.exited)

    refused = [e for e in daemon.events("upload.retry") if "already reported" in e["error"]]
    assert not refused, "a repeated report answered 'already reported' was taken for a failure"
    (retry,) = daemon.events("upload.retry")  # the lost answer, and nothing else
    assert retry["stage"] == "report"
    (already,) = daemon.events("upload.already_reported")
    (succeeded,) = daemon.events("upload.succeeded")
    assert succeeded.get("resumed") is True
    assert not daemon.events("upload.failed")
    [ticket] = emulator.tickets().values()
    assert already["file_store_id"] == succeeded["file_store_id"] == ticket.file_store_id
    assert ticket.file_name == "a.txt" and ticket.sha256 == sha256(b"would be uploaded\n")
    assert (ticket.put_count, ticket.reported_count) == (1, 1)  # uploaded once, reported once
    assert {k: emulator.calls()[k] for k in ("pre", "put", "report")} == {
        "pre": 1,
        "put": 1,
        "report": 2,
    }
    summary = status(config)
    assert (summary["uploaded"], summary["pending"], summary["failed"]) == (1, 0, 0)

    (exposed,) = daemon.events("key.file_exposed")
    assert exposed["path"] == str(key_file)
    assert exposed["mode"] == "0644"
    assert exposed["level"] == "warning"
    assert daemon.stop() == 0
