"""The daemon as systemd and its users see it: sd_notify, SIGHUP, metrics, the demo, the CLI.

Every test runs the real ``hottask-sync`` as a subprocess against the emulator on loopback
and waits on conditions (log lines, datagrams, files, scrapes), never on fixed sleeps.
"""

from __future__ import annotations

import itertools
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from hottask_sync.emulator import Emulator
from tests.conftest import (
    API_KEY,
    DaemonProcess,
    reported_files,
    start_daemon,
    wait_for,
    write_config,
)
from tests.e2e.support import cli
from tests.fakes import clean_env

REPO = Path(__file__).resolve().parents[2]
TRACEBACK = "Traceback (most recent call last)"


# --- helpers -------------------------------------------------------------------------------


class NotifySocket:
    """The receiving end of $NOTIFY_SOCKET: a datagram socket that records each message."""

    def __init__(self, path: Path) -> None:
        assert len(os.fsencode(path)) < 100, f"AF_UNIX path too long: {path}"
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        #: (monotonic arrival time, {field: value}) per datagram, in arrival order.
        self.messages: list[tuple[float, dict[str, str]]] = []

    def close(self) -> None:
        self.sock.close()

    def receive_until(
        self, condition: Callable[[list[dict[str, str]]], bool], timeout: float, what: str
    ) -> list[dict[str, str]]:
        """Receives datagrams until ``condition(all messages so far)`` holds; fails at the
        deadline. Returns every message received so far."""

        def received() -> bool:
            if condition(self.fields()):
                return True
            self.receive_one()  # blocks for at most the socket's 0.1 s timeout
            return condition(self.fields())

        if not wait_for(received, timeout, interval=0, fail=False):
            pytest.fail(f"timed out after {timeout}s waiting for {what}; got {self.fields()}")
        return self.fields()

    def receive_one(self) -> None:
        """Records the next datagram, if one comes within the socket's timeout."""
        try:
            data = self.sock.recv(4096)
        except TimeoutError:
            return
        fields = dict(line.split("=", 1) for line in data.decode().split("\n"))
        self.messages.append((time.monotonic(), fields))

    def fields(self) -> list[dict[str, str]]:
        return [f for _, f in self.messages]

    def count(self, key: str) -> int:
        return sum(1 for f in self.fields() if key in f)


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[NotifySocket]:
    sock = NotifySocket(tmp_path / "n.sock")
    try:
        yield sock
    finally:
        sock.close()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time the process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def drop(folder: Path, name: str, data: bytes) -> Path:
    """Writes a file under a hidden name (never picked up) and renames it into place."""
    tmp = folder / f".{name}.partial"
    tmp.write_bytes(data)
    path = folder / name
    tmp.rename(path)
    return path


def succeeded(daemon: DaemonProcess, folder: Path, name: str) -> list[dict[str, object]]:
    return [
        e
        for e in daemon.events("upload.succeeded")
        if e.get("folder") == str(folder) and e.get("path") == name
    ]


def wait_uploaded(daemon: DaemonProcess, folder: Path, name: str) -> dict[str, object]:
    return wait_for(
        lambda: succeeded(daemon, folder, name), what=f"upload.succeeded for {folder}/{name}"
    )[0]


def timestamp(line: dict[str, object]) -> float:
    return datetime.fromisoformat(str(line["timestamp"]).replace("Z", "+00:00")).timestamp()


# --- 1. sd_notify, the watchdog and the systemd credential ----------------------------------


def test_sd_notify_ready_watchdog_status_stopping_with_key_from_credential(
    tmp_path: Path,
    emulator: Emulator,
    daemons: list[DaemonProcess],
    notify_socket: NotifySocket,
) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "hottask-api-key").write_text(API_KEY + "\n", encoding="utf-8")
    config = write_config(tmp_path / "c.toml", emulator.base_url, [{"path": str(inbox)}])
    env = {
        "NOTIFY_SOCKET": str(notify_socket.path),
        "WATCHDOG_USEC": "1000000",
        "CREDENTIALS_DIRECTORY": str(creds),
    }
    daemon = start_daemon(config, env=env, key=None)
    daemons.append(daemon)

    starting = daemon.events("daemon.starting")
    assert starting[0]["key_source"] == str(creds / "hottask-api-key")

    messages = notify_socket.receive_until(
        lambda ms: any("READY" in m for m in ms), timeout=10, what="READY=1"
    )
    ready = next(m for m in messages if "READY" in m)
    assert ready["READY"] == "1"
    assert ready["STATUS"].startswith("uploaded 0, pending 0, failed 0")

    # WATCHDOG_USEC=1 s: a ping every 0.5 s, so at least 3 (and no flood) within ~3 s.
    ready_at = next(t for t, m in notify_socket.messages if "READY" in m)
    notify_socket.receive_until(
        lambda ms: sum("WATCHDOG" in m for m in ms) >= 3, timeout=3.0, what="3 x WATCHDOG=1"
    )
    pings = [t for t, m in notify_socket.messages if m.get("WATCHDOG") == "1"]
    assert pings[2] - ready_at <= 3.0
    gaps = [b - a for a, b in itertools.pairwise(pings)]
    assert all(gap > 0.25 for gap in gaps), f"pings closer than half the interval: {gaps}"

    data = b"credential-keyed upload\n" * 100
    drop(inbox, "report.txt", data)
    done = wait_uploaded(daemon, inbox, "report.txt")
    assert reported_files(emulator) == {"report.txt": [done["file_store_id"]]}
    notify_socket.receive_until(
        lambda ms: any("uploaded 1," in m.get("STATUS", "") for m in ms),
        timeout=10,
        what="STATUS= with uploaded 1",
    )

    daemon.proc.send_signal(signal.SIGTERM)
    notify_socket.receive_until(
        lambda ms: any(m.get("STOPPING") == "1" for m in ms), timeout=10, what="STOPPING=1"
    )
    assert daemon.stop() == 0
    # Nothing after STOPPING=1: the notifier is closed.
    after = notify_socket.fields()
    assert after.index(next(m for m in after if "STOPPING" in m)) == len(after) - 1


# --- 2. SIGHUP: folders, invalid configs, the log level -------------------------------------


def test_sighup_adds_a_folder_survives_an_invalid_config_and_changes_the_log_level(
    tmp_path: Path,
    emulator: Emulator,
    daemons: list[DaemonProcess],
    notify_socket: NotifySocket,
) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    path = tmp_path / "c.toml"
    write_config(path, emulator.base_url, [{"path": str(a)}])
    daemon = start_daemon(path, env={"NOTIFY_SOCKET": str(notify_socket.path)})
    daemons.append(daemon)
    notify_socket.receive_until(lambda ms: notify_socket.count("READY") == 1, 10, "READY=1")

    def reload(ready_count: int) -> None:
        daemon.proc.send_signal(signal.SIGHUP)
        ms = notify_socket.receive_until(
            lambda ms: notify_socket.count("READY") == ready_count, 10, f"READY=1 #{ready_count}"
        )
        reloading = [m for m in ms if "RELOADING" in m]
        assert len(reloading) == ready_count - 1
        assert reloading[-1]["MONOTONIC_USEC"].isdigit()

    drop(a, "a0.txt", b"a0")
    wait_uploaded(daemon, a, "a0.txt")

    # Add folder B.
    write_config(path, emulator.base_url, [{"path": str(a)}, {"path": str(b)}])
    reload(2)
    reloaded = daemon.wait_event("config.reloaded")
    assert reloaded[0]["folders"] == [str(a), str(b)]
    drop(b, "b1.txt", b"b1")
    wait_uploaded(daemon, b, "b1.txt")

    # An invalid config is refused; the running one (A and B) stays.
    path.write_text(
        f'[api]\nbase_url = "{emulator.base_url}"\n[sync]\nconcurrency = "lots"\n'
        f'[[folders]]\npath = "{a}"\n',
        encoding="utf-8",
    )
    reload(3)
    invalid = daemon.wait_event("config.invalid")
    assert invalid[0]["level"] == "error"
    assert any("sync.concurrency" in p for p in invalid[0]["problems"])
    assert daemon.proc.poll() is None
    drop(a, "a2.txt", b"a2")
    drop(b, "b2.txt", b"b2")
    wait_uploaded(daemon, a, "a2.txt")
    wait_uploaded(daemon, b, "b2.txt")
    assert len(daemon.events("config.reloaded")) == 1

    # logging.level = "warning": uploads go on, their info lines stop.
    write_config(
        path,
        emulator.base_url,
        [{"path": str(a)}, {"path": str(b)}],
        logging={"format": "json", "level": "warning"},
    )
    reload(4)  # READY=1 comes after the new level is set
    drop(a, "a3.txt", b"a3")
    drop(b, "b3.txt", b"b3")
    wait_for(
        lambda: {"a3.txt", "b3.txt"} <= set(reported_files(emulator)),
        what="a3.txt and b3.txt reported to the emulator",
    )
    assert daemon.stop() == 0  # the reader has now seen every line the daemon wrote

    files = reported_files(emulator)
    assert sorted(files) == ["a0.txt", "a2.txt", "a3.txt", "b1.txt", "b2.txt", "b3.txt"]
    assert all(len(ids) == 1 for ids in files.values()), files
    assert succeeded(daemon, a, "a2.txt") and succeeded(daemon, b, "b2.txt")
    assert not succeeded(daemon, a, "a3.txt")
    assert not succeeded(daemon, b, "b3.txt")
    # Nothing at info level after the switch: not even detection or the shutdown.
    assert not [e for e in daemon.lines if e.get("path") in ("a3.txt", "b3.txt")]
    assert not daemon.events("daemon.stopped")


# --- 3. Prometheus metrics ------------------------------------------------------------------


def scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def test_metrics_endpoint_after_an_upload(
    tmp_path: Path, emulator: Emulator, daemons: list[DaemonProcess]
) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    port = free_port()
    config = write_config(
        tmp_path / "c.toml",
        emulator.base_url,
        [{"path": str(inbox)}],
        metrics={"listen": f"127.0.0.1:{port}"},
    )
    daemon = start_daemon(config)
    daemons.append(daemon)
    cpu_at_ready, wall_at_ready = cpu_seconds(daemon.proc.pid), time.monotonic()

    before = scrape(port)
    assert before[("hottask_sync_uploads_total", frozenset())] == 0
    assert before[("hottask_sync_files", frozenset({("state", "uploaded")}))] == 0

    data = os.urandom(123_457)
    drop(inbox, "scan.pdf", data)
    wait_uploaded(daemon, inbox, "scan.pdf")
    uploaded = ("hottask_sync_files", frozenset({("state", "uploaded")}))
    m = wait_for(
        lambda: (s := scrape(port))[uploaded] == 1 and s, what="hottask_sync_files uploaded 1"
    )

    assert m[("hottask_sync_uploads_total", frozenset())] >= 1
    assert m[("hottask_sync_uploaded_bytes_total", frozenset())] == len(data)
    assert m[("hottask_sync_sent_bytes_total", frozenset())] == len(data)
    assert m[("hottask_sync_files", frozenset({("state", "failed")}))] == 0
    assert m[("hottask_sync_upload_duration_seconds_count", frozenset())] == 1
    assert m[("hottask_sync_upload_duration_seconds_bucket", frozenset({("le", "+Inf")}))] == 1
    assert m[("hottask_sync_upload_duration_seconds_sum", frozenset())] > 0
    assert ("hottask_sync_queue_depth", frozenset()) in m
    assert m[("hottask_sync_last_success_timestamp_seconds", frozenset())] > 0
    assert httpx.get(f"http://127.0.0.1:{port}/other", timeout=5).status_code == 404
    # Waiting for work must not spin: without a watchdog the main loop once had a deadline
    # in the past and never slept (a whole core, and a SIGTERM deadlock made likely).
    busy = (cpu_seconds(daemon.proc.pid) - cpu_at_ready) / (time.monotonic() - wall_at_ready)
    assert busy < 0.5, f"the idle daemon used {busy:.0%} of a CPU"

    assert daemon.stop() == 0
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)


# --- 4. the demo ----------------------------------------------------------------------------


def test_demo_as_a_user_runs_it(tmp_path: Path) -> None:
    root = tmp_path / "demo"
    proc = subprocess.Popen(
        [sys.executable, "-m", "hottask_sync.cli", "demo", "--dir", str(root)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=clean_env(),
    )
    lines: list[str] = []

    def read() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            lines.append(raw.decode("utf-8", "replace").rstrip("\n"))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:

        def told(pattern: str) -> re.Match[str] | None:
            return next((m for line in list(lines) if (m := re.search(pattern, line))), None)

        inbox_match = wait_for(lambda: told(r"Drop files into:\s+(\S.*)$"), what="the inbox")
        url_match = wait_for(lambda: told(r"emulator runs at (http://\S+?) "), what="the URL")
        inbox = Path(inbox_match.group(1).strip())
        assert inbox == (root / "inbox").resolve()
        port = int(url_match.group(1).rsplit(":", 1)[1])

        data = b"my first hottask upload\n" * 50
        (inbox / "hello.txt").write_bytes(data)

        def arrived() -> list[Path]:
            return [
                p
                for p in (root / "uploaded").glob("*/hello.txt")
                if p.parent.name.isdigit() and p.read_bytes() == data
            ]

        wait_for(arrived, what="hello.txt under demo/uploaded/<id>/")
        proc.send_signal(signal.SIGINT)  # what Ctrl-C does
        code = proc.wait(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        reader.join(timeout=5)
    output = "\n".join(lines)
    assert code == 0, output
    assert TRACEBACK not in output
    assert "demo stopped" in output
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port), 2):
        pass


# --- 5. check, init, --version, --help, config mistakes -------------------------------------


def problem_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


def test_check_accepts_a_good_config_and_names_every_problem(
    tmp_path: Path, emulator: Emulator
) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    good = write_config(tmp_path / "good.toml", emulator.base_url, [{"path": str(inbox)}])
    ok = cli("check", "--config", str(good), env=clean_env(HOTTASK_API_KEY=API_KEY))
    assert ok.returncode == 0, ok.stderr
    assert "OK" in ok.stdout and "$HOTTASK_API_KEY" in ok.stdout
    assert API_KEY not in ok.stdout + ok.stderr

    missing = tmp_path / "nowhere"
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder", encoding="utf-8")
    bad = write_config(
        tmp_path / "bad.toml", emulator.base_url, [{"path": str(missing)}, {"path": str(a_file)}]
    )
    res = cli("check", "--config", str(bad))  # no key anywhere
    assert res.returncode == 2
    assert TRACEBACK not in res.stderr
    lines = problem_lines(res.stderr)
    assert len(lines) == 3, res.stderr
    assert any(f"folders[0].path {missing}: does not exist" in line for line in lines)
    assert any(f"folders[1].path {a_file}: is not a directory" in line for line in lines)
    (key_line,) = [line for line in lines if "no API key found" in line]
    for place in ("api.api_key_file", "$HOTTASK_API_KEY", "$CREDENTIALS_DIRECTORY/hottask-api-key"):
        assert place in key_line


def test_init_writes_the_example_config_and_never_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "hottask-sync.toml"
    res = cli("init", str(path))
    assert res.returncode == 0, res.stderr
    text = path.read_text(encoding="utf-8")
    assert text == (REPO / "config.example.toml").read_text(encoding="utf-8")
    tomllib.loads(text)

    inbox = tmp_path / "inbox"
    inbox.mkdir()
    assert text.count('path = "/srv/hottask/inbox"') == 1
    edited = text.replace('path = "/srv/hottask/inbox"', f'path = "{inbox}"')
    path.write_text(edited, encoding="utf-8")
    assert tomllib.loads(edited)["folders"][0]["path"] == str(inbox)
    ok = cli("check", "--config", str(path), env=clean_env(HOTTASK_API_KEY=API_KEY))
    assert ok.returncode == 0, ok.stderr

    again = cli("init", str(path))
    assert again.returncode != 0
    assert "already exists" in again.stderr
    assert TRACEBACK not in again.stderr
    assert path.read_text(encoding="utf-8") == edited


def test_version_and_help_of_every_subcommand() -> None:
    commands = ["run", "upload", "status", "retry", "check", "init", "emulator", "demo"]
    runs = [[], *([c] for c in commands)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "hottask_sync.cli", *argv, "--help"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=clean_env(),
        )
        for argv in runs
    ]
    version = cli("--version")
    assert version.returncode == 0
    assert re.fullmatch(r"hottask-sync \d+\.\d+\S*\n", version.stdout)
    for argv, proc in zip(runs, procs, strict=True):
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, (argv, err)
        assert out.startswith(f"usage: {' '.join(['hottask-sync', *argv])}"), out
        assert err == ""


def test_config_with_mistakes_lists_each_on_its_own_line(tmp_path: Path) -> None:
    secret = "sk-never-echo-this-1234"
    path = tmp_path / "bad.toml"
    path.write_text(
        "[api]\n"
        'base_url = "ftp://files.example"\n'
        f'api_key = "{secret}"\n'
        "[sync]\n"
        "concurrency = 0\n"
        'settle_seconds = "soon"\n'
        "colour = 1\n"
        "[[folders]]\n"
        'path = "relative/dir"\n'
        'after_upload = "archive"\n',
        encoding="utf-8",
    )
    expected = [
        "api.base_url",
        "api.api_key",
        "sync.concurrency",
        "sync.settle_seconds",
        "sync.colour",
        "folders[0].path",
        "folders[0].after_upload",
    ]
    for command in ("check", "run"):
        res = cli(command, "--config", str(path), env=clean_env(HOTTASK_API_KEY=API_KEY))
        assert res.returncode == 2, (command, res.stderr)
        assert TRACEBACK not in res.stderr
        assert secret not in res.stdout + res.stderr
        lines = problem_lines(res.stderr)
        assert len(lines) == len(expected), res.stderr
        for key in expected:
            shape = re.compile(rf"^hottask-sync: {re.escape(str(path))}: {re.escape(key)}: \S.*$")
            assert sum(bool(shape.match(line)) for line in lines) == 1, (key, res.stderr)

    path.write_text("[sync\nconcurrency = 2\n", encoding="utf-8")
    res = cli("check", "--config", str(path))
    assert res.returncode == 2
    assert TRACEBACK not in res.stderr
    (line,) = problem_lines(res.stderr)
    assert re.match(
        rf"^hottask-sync: {re.escape(str(path))}: line 1, column \d+: TOML syntax error", line
    )


# --- 7. bandwidth_limit ---------------------------------------------------------------------


def test_bandwidth_limit_paces_an_upload(
    tmp_path: Path, emulator: Emulator, daemons: list[DaemonProcess]
) -> None:
    rate, size, burst_seconds = 2_000_000, 6_000_000, 0.25
    # The bucket is full (rate x 0.25 s) when the upload starts: only the rest is paced.
    expected = (size - rate * burst_seconds) / rate  # 2.75 s

    started: list[DaemonProcess] = []
    inboxes: list[Path] = []
    for name, limit in (("limited", rate), ("free", 0)):
        inbox = tmp_path / name / "inbox"
        inbox.mkdir(parents=True)
        config = write_config(
            tmp_path / name / "c.toml",
            emulator.base_url,
            [{"path": str(inbox)}],
            sync={"bandwidth_limit": limit},
        )
        daemon = start_daemon(config, wait_ready=False)
        daemons.append(daemon)
        started.append(daemon)
        inboxes.append(inbox)
    for daemon in started:
        daemon.wait_event("daemon.ready")
    limited, free = started

    def upload_seconds(daemon: DaemonProcess, inbox: Path) -> tuple[float, float]:
        drop(inbox, "big.bin", os.urandom(size))
        done = wait_uploaded(daemon, inbox, "big.bin")
        (begun,) = [e for e in daemon.events("upload.started") if e["path"] == "big.bin"]
        return float(done["duration_ms"]) / 1000, timestamp(done) - timestamp(begun)

    free_duration, _ = upload_seconds(free, inboxes[1])
    duration, wall = upload_seconds(limited, inboxes[0])
    assert expected * 0.9 <= duration <= expected * 1.1, duration
    assert expected * 0.9 <= wall <= expected * 1.1, wall
    assert free_duration < expected / 3, free_duration
    for daemon in started:
        assert daemon.stop() == 0
    assert {info.size for info in emulator.reported().values()} == {size}
