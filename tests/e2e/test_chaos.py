"""Chaos: the real daemon against the in-process emulator injecting every kind of fault,
SIGKILLed at random moments and restarted, must still upload every file exactly once.

Also the wrong API key: the daemon stays up, stays quiet (one error line, a handful of calls),
and uploads everything once the key is fixed on disk and SIGHUP is sent.
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections import Counter
from pathlib import Path

import pytest

from hottask_sync.emulator import Emulator, Faults
from tests.conftest import (
    API_KEY,
    DaemonProcess,
    reported_files,
    start_daemon,
    wait_for,
    write_config,
)
from tests.e2e.support import not_json, status, tree
from tests.fakes import sha256

SEED = 20240611
KILLS = 6

#: ≈31 % of the calls of each endpoint get an outcome fault, every kind represented, plus
#: slow answers on 10 % of them.
CHAOS = Faults(
    error_5xx=0.08,
    rate_429=0.05,
    retry_after=1.0,
    drop_before=0.06,
    drop_after=0.07,
    business_error=0.05,  # pre and report only
    expire_url=0.05,  # PUT only
    slow=0.10,
    slow_seconds=0.3,
    seed=SEED,
)


def make_files(rng: random.Random) -> dict[str, bytes]:
    """110 files of mixed sizes in nested folders; every base name is unique (the
    emulator only sees base names)."""
    sizes = [0] * 6 + [rng.randint(1, 64) for _ in range(30)]
    sizes += [rng.randint(90_000, 110_000) for _ in range(71)]
    sizes += [5 * 1024 * 1024 + rng.randint(-4096, 4096) for _ in range(3)]
    rng.shuffle(sizes)
    folders = ["", "a", "a/b", "a/b/c", "d", "d/e f", "g/h/i/j"]
    files: dict[str, bytes] = {}
    for i, size in enumerate(sizes):
        folder = rng.choice(folders)
        name = f"f{i:03d}-{size}.bin"
        files[f"{folder}/{name}" if folder else name] = rng.randbytes(size)
    return files


def write(root: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.part")  # excluded: written, then renamed in
        tmp.write_bytes(data)
        os.rename(tmp, path)


@pytest.mark.slow
def test_chaos_every_file_reported_exactly_once_through_faults_and_kills(
    tmp_path: Path, emulator: Emulator, daemons: list[DaemonProcess]
) -> None:
    rng = random.Random(SEED)
    inbox, done = tmp_path / "inbox", tmp_path / "done"
    inbox.mkdir()
    files = make_files(rng)
    names = list(files)
    batches = [names[:60], names[60:85], names[85:]]  # before start, then while running
    write(inbox, {rel: files[rel] for rel in batches[0]})
    config = write_config(
        tmp_path / "c.toml",
        emulator.base_url,
        [{"path": str(inbox), "after_upload": "move", "move_to": str(done)}],
        sync={"settle_seconds": 0.2, "concurrency": 4},
    )
    emulator.faults = CHAOS
    started = time.monotonic()
    runs: list[DaemonProcess] = []

    def start() -> DaemonProcess:
        d = start_daemon(config)
        daemons.append(d)
        runs.append(d)
        return d

    daemon = start()
    kills = 0
    for cycle in range(KILLS):
        if cycle in (1, 3):
            write(inbox, {rel: files[rel] for rel in batches[(cycle + 1) // 2]})
        # Kill after a few more uploads, or at a random moment; at once if it exited.
        if rng.random() < 0.5:
            more = rng.randint(1, 12)
            target = len(daemon.events("upload.succeeded")) + more
            wait_for(
                lambda d=daemon, n=target: len(d.events("upload.succeeded")) >= n,
                15.0,
                fail=False,
                give_up=daemon.exited,
            )
        else:
            wait_for(daemon.exited, rng.uniform(0.05, 2.0), fail=False)
        assert daemon.proc.poll() is None, daemon.log_text()
        daemon.kill()
        assert daemon.proc.returncode == -signal.SIGKILL
        kills += 1
        daemon = start()
    kill_seconds = time.monotonic() - started

    # Still under faults, no more kills: let time work for a while. Usually everything is
    # reported and moved within it (10-30 s after the start, measured), but a file that
    # met six or seven faults in a row waits out a jittered backoff of up to a minute (14
    # runs: 10-82 s): past the bound, the fault-free restart below finishes the rest, and
    # every assertion after it holds either way.
    wanted = {os.path.basename(rel) for rel in files}

    def all_done() -> bool:
        return wanted <= set(reported_files(emulator)) and not tree(inbox)

    wait_for(all_done, 20.0, fail=False)
    done_under_faults = all_done()
    chaos_seconds = time.monotonic() - started
    faulted = emulator.calls()["faulted"]
    uploaded_under_chaos = len(set(reported_files(emulator)) & wanted)

    # Faults off; a graceful restart, and a final run until everything is done. When it
    # all was done already, the restart must not ask for a single new ticket.
    emulator.faults = Faults()
    assert daemon.stop() == 0, daemon.log_text()
    pre_before = emulator.calls()["pre"]
    daemon = start()
    wait_for(all_done, timeout=60, what="every file reported and moved")
    assert daemon.stop() == 0, daemon.log_text()
    if done_under_faults:
        assert emulator.calls()["pre"] == pre_before
    total_seconds = time.monotonic() - started

    # Exactly one reported FileStoreId per file, with the original bytes.
    reported = reported_files(emulator)
    assert set(reported) == wanted
    tickets = emulator.tickets()
    for rel, data in files.items():
        (fsid,) = reported[os.path.basename(rel)]
        info = tickets[fsid]
        assert info.size == len(data), rel
        assert info.sha256 == sha256(data), rel
    # Every original file is on disk exactly once (moved to its relative path), intact;
    # nothing else is there (no half-moved copies, no " (1)" duplicates).
    assert tree(inbox) == {}
    assert tree(done) == files
    summary = status(config)
    assert summary["failed"] == 0 and summary["pending"] == 0
    assert summary["uploaded"] == len(files)
    # The faults really happened, of every kind, and the daemon never crashed.
    logs = [line for d in runs for line in list(d.lines)]
    events = Counter(line.get("event") for line in logs)
    stages = Counter(line.get("stage") for line in logs if line.get("event") == "upload.retry")
    assert events["upload.url_expired"] >= 1
    assert stages["ticket"] >= 1 and stages["put"] >= 1 and stages["report"] >= 1
    assert events["upload.crashed"] == 0 and events["upload.failed"] == 0
    assert not [line for d in runs for line in not_json(d)]
    assert kills >= 5
    print(
        f"\nchaos: {len(files)} files, {kills} SIGKILLs in {kill_seconds:.1f}s, "
        f"{faulted} faulted calls, {uploaded_under_chaos} reported under faults "
        f"({'all' if done_under_faults else 'not all'}) after {chaos_seconds:.1f}s, "
        f"verified after {total_seconds:.1f}s; calls {emulator.calls()}"
    )


# --- the wrong key ----------------------------------------------------------------------------


def api_calls(emulator: Emulator) -> int:
    """Requests received, refused or not (a 401 is counted in its endpoint's counter too)."""
    c = emulator.calls()
    return c["pre"] + c["report"] + c["put"]


def start_with_wrong_key(
    tmp_path: Path,
    emulator: Emulator,
    daemons: list[DaemonProcess],
    files: dict[str, bytes],
    probe_seconds: float = 30.0,
) -> tuple[DaemonProcess, Path, Path]:
    """Starts a daemon whose api_key_file holds a key the emulator refuses; its first auth
    probe comes ``probe_seconds`` after the refusal (``api.auth_probe_seconds``).

    Returns the daemon, the key file and the config file.
    """
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    write(inbox, files)
    key_file = tmp_path / "api.key"
    key_file.write_text("not-the-right-key\n", encoding="utf-8")
    config = write_config(
        tmp_path / "c.toml",
        emulator.base_url,
        [{"path": str(inbox)}],
        api={
            "base_url": emulator.base_url,
            "timeout_seconds": 10,
            "api_key_file": str(key_file),
            "auth_probe_seconds": probe_seconds,
        },
    )
    daemon = start_daemon(config, key=None)
    daemons.append(daemon)
    return daemon, key_file, config


@pytest.mark.slow
def test_wrong_key_pauses_quietly_and_resumes_after_fix_and_sighup(
    tmp_path: Path, emulator: Emulator, daemons: list[DaemonProcess]
) -> None:
    files = {f"doc{i:02d}.txt": f"document {i}\n".encode() * (i + 1) for i in range(12)}
    daemon, key_file, config = start_with_wrong_key(tmp_path, emulator, daemons, files)
    window = 6.0
    most = 0

    def still_up_and_quiet() -> bool:
        """Checked every 0.1 s through the whole window; never "done"."""
        nonlocal most
        assert daemon.proc.poll() is None, daemon.log_text()
        most = max(most, api_calls(emulator))
        # Fewer calls than files (12), let alone retries: once the first refusal opened the
        # circuit, no file is tried (those already on their way may be: 5 seen, of 4 slots).
        assert most < len(files), emulator.calls()
        return False

    wait_for(still_up_and_quiet, window, interval=0.1, fail=False)
    calls = emulator.calls()
    assert daemon.proc.poll() is None
    assert calls["auth_failed"] >= 1
    assert emulator.reported() == {}
    failed = daemon.events("auth.failed")
    assert len(failed) == 1, failed
    line = failed[0]
    assert line["level"] == "error"
    assert line["key_source"] == str(key_file)
    assert "401" in line["error"] and "check the API key" in line["error"]
    assert str(key_file) in line["hint"]
    assert "not-the-right-key" not in daemon.log_text()
    summary = status(config)
    assert summary["pending"] == len(files) and summary["failed"] == 0
    print(f"\nwrong key: {api_calls(emulator)} calls in {window:.0f}s: {calls}")

    key_file.write_text(API_KEY + "\n", encoding="utf-8")
    daemon.proc.send_signal(signal.SIGHUP)
    wait_for(
        lambda: len(emulator.reported()) == len(files),
        timeout=20,
        what="every file reported after the key was fixed",
    )
    by_name = reported_files(emulator)
    assert {name: len(ids) for name, ids in by_name.items()} == dict.fromkeys(files, 1)
    for name, data in files.items():
        assert emulator.tickets()[by_name[name][0]].sha256 == sha256(data)
    assert daemon.events("auth.key_reloaded")
    assert daemon.stop() == 0
    summary = status(config)
    assert summary["uploaded"] == len(files) and summary["pending"] == 0


def test_wrong_key_fixed_on_disk_resumes_by_itself_at_the_first_probe(
    tmp_path: Path, emulator: Emulator, daemons: list[DaemonProcess]
) -> None:
    """No SIGHUP: the probe (api.auth_probe_seconds after the failure, 3 s here instead of
    the default 30 s) reads the key file again."""
    files = {f"doc{i}.txt": f"document {i}\n".encode() for i in range(5)}
    daemon, key_file, _ = start_with_wrong_key(
        tmp_path, emulator, daemons, files, probe_seconds=3.0
    )
    failed_at = time.monotonic()
    daemon.wait_event("auth.failed")
    key_file.write_text(API_KEY + "\n", encoding="utf-8")
    wait_for(lambda: len(emulator.reported()) == len(files), timeout=20, what="resumed")
    resumed_after = time.monotonic() - failed_at
    assert resumed_after >= 2.5  # it waited for the probe, it did not hammer the API
    assert len(daemon.events("auth.failed")) == 1
    assert daemon.events("auth.key_reloaded") and daemon.events("auth.recovered")
    by_name = reported_files(emulator)
    assert {name: len(ids) for name, ids in by_name.items()} == dict.fromkeys(files, 1)
    assert emulator.calls()["auth_failed"] <= 8
    assert daemon.stop() == 0


def test_auth_probe_meeting_a_server_error_does_not_stall_uploads(
    tmp_path: Path, emulator: Emulator, daemons: list[DaemonProcess]
) -> None:
    """The probe after an auth failure gets a 5xx: the file goes back to the retry queue,
    and the next probe must still happen (here forced by SIGHUP after fixing the key)."""
    files = {"one.txt": b"just one file"}
    daemon, key_file, _ = start_with_wrong_key(tmp_path, emulator, daemons, files)
    daemon.wait_event("auth.failed")
    emulator.faults = Faults(error_5xx=1.0, endpoints=frozenset({"pre"}))
    daemon.proc.send_signal(signal.SIGHUP)  # same key: probes at once, and meets a 5xx
    daemon.wait_event("upload.retry")
    key_file.write_text(API_KEY + "\n", encoding="utf-8")
    emulator.faults = Faults()
    daemon.proc.send_signal(signal.SIGHUP)
    daemon.wait_event("upload.succeeded", timeout=15)
    assert len(emulator.reported()) == 1
    assert daemon.stop() == 0
