"""A smoke test of the benchmark suite (bench/run.py): its row functions run and give numbers;
and the parts its honesty rests on: the emulator's lean bench mode, the reference check that
marks a table invalid, and the slow-disk fsync shim.

Only that the rows produce finite figures is checked, never the timing targets: those depend
on the machine and on what else runs on it (``bench/run.py`` is the place to judge them).
"""

from __future__ import annotations

import http.client
import json
import math
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from bench import fsync_shim
from bench import run as bench
from hottask_sync.emulator import Emulator, Faults, TicketInfo

KEY = "bench-smoke-key"
API = {"Authorization": KEY, "Content-Type": "application/json"}
NO_GCC = shutil.which("gcc") is None and shutil.which("cc") is None
NO_CURL = shutil.which("curl") is None


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def _bench_script(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Runs bench/``name`` with ``args``; returns what it did."""
    script = Path(bench.__file__).with_name(name)
    return subprocess.run(
        [sys.executable, str(script), *args], capture_output=True, text=True, timeout=120
    )


# --- the rows ------------------------------------------------------------------------------


def test_throughput_row_measures_the_daemon_and_every_reference(tmp_path: Path) -> None:
    rows = bench.row_throughput(tmp_path, n_files=20)
    assert [r.row for r in rows] == ["1v", "1a", "1b", "1c"]
    assert all(_number(r.measured) for r in rows)
    check = rows[0]
    # The reference check and the rows it guards agree on whether the run is valid.
    assert bool(check.invalid) == (not check.met)
    assert all(bool(r.invalid) == bool(check.invalid) for r in rows[1:])
    for who in ("daemon", "naive", "lean_1", "lean_4", "httpx"):
        assert check.details[who]["files"] == 20
        assert _number(check.details[who]["wall_s"])
        assert _number(check.details[who]["cpu_s"])
        assert _number(check.details[who]["switches_per_file"])
    assert check.details["daemon"]["who"] == f"daemon (concurrency {bench.CONCURRENCY})"
    assert "context switches per file" in rows[2].note


def test_layers_measures_every_layer() -> None:
    done = _bench_script("layers.py", "--files", "16", "--reps", "1")
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()[1:]
    assert [line.split()[0] for line in lines] == ["bare", "client", "uploader", "ledger", "writer"]
    assert all(float(line.split()[1]) > 0 for line in lines)


def test_layers_runs_only_the_layers_asked_for_and_refuses_an_unknown_one() -> None:
    args = ("--files", "8", "--reps", "1")
    done = _bench_script("layers.py", *args, "--layers", "writer,bare")
    assert done.returncode == 0, done.stderr[-2000:]
    assert [line.split()[0] for line in done.stdout.splitlines()[1:]] == ["bare", "writer"]
    refused = _bench_script("layers.py", *args, "--layers", "bare,nope")
    assert refused.returncode == 2 and "--layers: unknown ['nope']" in refused.stderr


def test_ab_runs_each_checkouts_own_daemon(tmp_path: Path) -> None:
    checkout = tmp_path / "checkout"
    package = Path(bench.__file__).parents[1] / "hottask_sync"
    shutil.copytree(package, checkout / "hottask_sync", ignore=shutil.ignore_patterns("*.pyc"))
    init = checkout / "hottask_sync" / "__init__.py"
    mark = "\nimport pathlib\npathlib.Path(__file__).with_name('ran').write_text('copy')\n"
    init.write_text(init.read_text() + mark)
    done = _bench_script("ab.py", str(checkout), "--files", "5", "--reps", "1", "--json")
    assert done.returncode == 0, done.stderr
    sides = json.loads(done.stdout)["sides"]
    assert set(sides) == {str(checkout), "bare httpx loop"}
    assert all(_number(side["cpu_ms_per_file"]) for side in sides.values())
    assert (checkout / "hottask_sync" / "ran").read_text() == "copy"  # the copy's daemon ran


def test_writer_bench_measures_both_ways_of_writing_the_ledger() -> None:
    done = _bench_script("writer.py", "--files", "40", "--reps", "1")
    assert done.returncode == 0, done.stderr[-2000:]
    rows = {line.split()[0]: line.split() for line in done.stdout.splitlines()[1:]}
    assert list(rows) == ["inline", "writer"]
    # Each write its own commit inline (ticket, put, report); the writer shares commits.
    assert float(rows["inline"][4]) == 3.0
    assert 0 < float(rows["writer"][4]) <= 3.0
    assert all(float(row[1]) > 0 for row in rows.values())


def test_latency_row_measures_each_file(tmp_path: Path) -> None:
    (row,) = bench.row_latency(tmp_path, samples=2)
    assert row.row == "3"
    assert _number(row.measured)
    latencies = row.details["latencies_ms"]
    assert len(latencies) == 2
    assert all(_number(x) for x in latencies)


@pytest.mark.skipif(NO_GCC, reason="no C compiler (gcc or cc): the slow-disk shim cannot be built")
def test_far_row_runs_the_slow_disk_daemon_under_the_shim(tmp_path: Path) -> None:
    rows = bench.row_far(tmp_path, n_files=4, latency_samples=1, delay=0.005)
    assert [r.row for r in rows] == ["2a", "2b", "2c"]
    assert all(_number(r.measured) for r in rows)
    slow = rows[2]
    assert not slow.invalid, slow.invalid
    syncs = slow.details["daemon"]["syncs"]
    # The daemon's ledger commits are durable: the shim saw (and delayed) its syncs.
    assert sum(syncs.values()) > 0


@pytest.mark.skipif(NO_CURL, reason="no curl: row 4 compares the daemon with curl -T")
def test_big_row_compares_the_daemon_with_curl(tmp_path: Path) -> None:
    rows = bench.row_big(tmp_path, size=4 * bench.MIB)
    assert [r.row for r in rows] == ["4a", "4b"]
    assert all(_number(r.measured) for r in rows)
    details = rows[1].details
    assert details["daemon"]["emulator_put_s"] > 0
    assert details["curl"]["emulator_put_s"] > 0


# --- the reference check -------------------------------------------------------------------


def _run(who: str, wall: float) -> bench.Run:
    return bench.Run(who, 100, wall, cpu=wall / 2, emu_cpu=wall / 4)


def test_reference_check_passes_when_the_stdlib_client_is_far_ahead() -> None:
    row = bench.validity_row("1v", naive=_run("naive", 6.0), lean=_run("stdlib", 1.0))
    assert row.met and not row.invalid
    assert row.verdict() == "yes"
    assert "6.00 s" in row.note and "1.00 s" in row.note  # both sides of the ratio


def test_reference_check_marks_the_table_invalid_when_the_emulator_limits(
    capsys: pytest.CaptureFixture[str],
) -> None:
    row = bench.validity_row("1v", naive=_run("naive", 3.0), lean=_run("stdlib", 1.0))
    assert not row.met
    assert "emulator limits the clients" in row.invalid
    info = {
        "machine": bench.machine(),
        "fsync_ms": 1.0,
        "speed_probe_s": 0.1,
        "seconds": 1.0,
        "quick": True,
        "emulator": "lean (bench mode)",
        "naive_impl": "requests",
    }
    bench.print_table([row], info)
    out = capsys.readouterr().out
    assert out.splitlines()[3].rstrip().endswith("INVALID")  # header, titles, rule, row
    assert "MEASUREMENT INVALID: row 1v: the stdlib client is only 3.0x" in out


def test_only_rejects_an_unknown_row(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        bench.main(["--only", "1,9"])
    assert exc.value.code == 2
    assert "--only: no row 9" in capsys.readouterr().err


# --- the slow-disk shim --------------------------------------------------------------------

_TIME_SYNCS = """
import json, os, sys, time
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT, 0o600)
os.write(fd, b"x")
took = {}
for name in ("fsync", "fdatasync"):
    t0 = time.perf_counter()
    getattr(os, name)(fd)
    took[name] = time.perf_counter() - t0
print(json.dumps(took))
"""


@pytest.mark.skipif(NO_GCC, reason="no C compiler (gcc or cc): the slow-disk shim cannot be built")
def test_fsync_shim_builds_and_delays_each_sync_of_its_process_only(tmp_path: Path) -> None:
    library = fsync_shim.build(tmp_path / "shim")
    assert fsync_shim.build(tmp_path / "shim") == library  # built once per directory
    report = tmp_path / "syncs.txt"
    env = {**os.environ, **fsync_shim.environment(library, 150, report)}
    cmd = [sys.executable, "-c", _TIME_SYNCS, str(tmp_path / "data")]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    took = json.loads(done.stdout)
    # A sleep of 150 ms comes before each real call: a lower bound no disk can undercut.
    assert took["fsync"] >= 0.15
    assert took["fdatasync"] >= 0.15
    assert fsync_shim.read_report(report) == {"fsync": 1, "fdatasync": 1, "sync_file_range": 0}


def test_shim_report_is_none_when_the_process_wrote_none(tmp_path: Path) -> None:
    assert fsync_shim.read_report(tmp_path / "missing.txt") is None


# --- the emulator's bench mode -------------------------------------------------------------


def _call(
    emu: Emulator, method: str, target: str, body: bytes, headers: dict[str, str]
) -> tuple[int, bytes]:
    host, port = emu.address
    conn = http.client.HTTPConnection(host, port, timeout=10)
    try:
        conn.request(method, target, body, headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def _ticket(emu: Emulator, name: str) -> tuple[str, str]:
    status, body = _call(
        emu, "POST", "/chat/User/GetPreUploadUrl", json.dumps({"fileName": name}).encode(), API
    )
    assert status == 200
    data = json.loads(body)["Data"]
    url = data["PreUploadUrl"]
    return data["FileStoreId"], url[url.index("/", 8) :]


def test_bench_mode_serves_the_three_calls_without_storing(tmp_path: Path) -> None:
    reported: list[TicketInfo] = []
    with Emulator(tmp_path / "emu", api_key=KEY, bench=True, on_report=reported.append) as emu:
        file_store_id, target = _ticket(emu, "a.bin")
        body = os.urandom(3 * 1024 * 1024 + 5)  # larger than one receive, not a round size
        assert _call(emu, "PUT", target, body, {})[0] == 200
        payload = json.dumps({"fileStoreID": file_store_id}).encode()
        status, answer = _call(emu, "POST", "/chat/User/ReportUploadSuccess", payload, API)
        assert status == 200 and json.loads(answer)["Data"] is True
        info = emu.tickets()[file_store_id]
        calls = emu.calls()
    assert (info.put_count, info.size, info.reported_count) == (1, len(body), 1)
    assert info.sha256 is None and info.stored_path is None  # counted, not stored or hashed
    assert info.put_seconds is not None and info.put_seconds >= 0
    assert [r.file_store_id for r in reported] == [file_store_id]
    assert (calls["pre"], calls["put"], calls["report"]) == (1, 1, 1)
    assert not any((tmp_path / "emu").iterdir())


def test_bench_mode_keeps_the_checks(tmp_path: Path) -> None:
    with Emulator(tmp_path / "emu", api_key=KEY, bench=True) as emu:
        wrong = {**API, "Authorization": "nope"}
        assert (
            _call(emu, "POST", "/chat/User/GetPreUploadUrl", b'{"fileName":"a"}', wrong)[0] == 401
        )
        status, body = _call(emu, "POST", "/chat/User/GetPreUploadUrl", b'{"fileName":""}', API)
        assert status == 200 and json.loads(body)["Code"] == 400
        file_store_id, target = _ticket(emu, "b.bin")
        tampered = target.replace("X-Amz-Expires=300", "X-Amz-Expires=301")
        status, body = _call(emu, "PUT", tampered, b"data", {})
        assert status == 403 and b"SignatureDoesNotMatch" in body
        payload = json.dumps({"fileStoreID": file_store_id}).encode()
        status, body = _call(emu, "POST", "/chat/User/ReportUploadSuccess", payload, API)
        assert json.loads(body)["Code"] == 400  # not uploaded yet
        assert emu.calls()["auth_failed"] == 1


def test_bench_mode_answers_expect_continue_and_keeps_the_connection(tmp_path: Path) -> None:
    with Emulator(tmp_path / "emu", api_key=KEY, bench=True) as emu:
        file_store_id, target = _ticket(emu, "c.bin")
        host, port = emu.address
        with socket.create_connection((host, port), timeout=10) as sock:
            head = (
                f"PUT {target} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Length: 5\r\n"
                "Expect: 100-continue\r\n\r\n"
            )
            sock.sendall(head.encode())
            assert sock.recv(100).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
            sock.sendall(b"hello" + b"GET /_emulator/state HTTP/1.1\r\nHost: x\r\n\r\n")
            data = b""
            while b"reported_count" not in data:  # both answers, on one connection
                chunk = sock.recv(65536)
                assert chunk, data
                data += chunk
        assert data.startswith(b"HTTP/1.1 200 OK\r\n")
        assert emu.tickets()[file_store_id].size == 5


def test_bench_mode_refuses_faults_other_than_delay(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="bench mode injects no faults but delay_seconds"):
        Emulator(tmp_path / "a", bench=True, faults=Faults(error_5xx=0.1))
    emu = Emulator(tmp_path / "b", bench=True, faults=Faults(delay_seconds=0.01))
    try:
        with pytest.raises(ValueError, match="drop_after"):
            emu.faults = Faults(drop_after=0.5)
        assert emu.faults.delay_seconds == 0.01
    finally:
        emu.stop()


def test_full_emulator_records_how_long_a_put_body_took(tmp_path: Path) -> None:
    with Emulator(tmp_path / "emu", api_key=KEY) as emu:
        file_store_id, target = _ticket(emu, "d.bin")
        assert _call(emu, "PUT", target, b"x" * 1000, {})[0] == 200
        info = emu.tickets()[file_store_id]
    assert info.sha256 is not None and info.put_seconds is not None


def test_emulator_command_refuses_bench_with_other_faults(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from hottask_sync.emulator import main

    argv = ["--bench", "--port", "0", "--data", str(tmp_path), "--faults", "5xx=0.1"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: bench mode injects no faults but delay_seconds, got ['error_5xx']"
