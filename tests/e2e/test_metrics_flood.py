"""The real daemon, short of descriptors, under a flood of idle connections to its metrics
port: uploads go on and a fresh scrape answers while the flood lasts (issue 11, item 4).

Before the limits, every idle connection held a thread and a descriptor: at 128 open files,
about 120 of them starved the uploads of descriptors and left accept() spinning.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from hottask_sync.emulator import Emulator
from hottask_sync.metrics import MAX_CONNECTIONS
from tests.conftest import API_KEY, DaemonProcess, reported_files, wait_for, write_config
from tests.e2e.support import not_json
from tests.fakes import clean_env

NOFILE = 128
FLOOD = 150
FILES = 20
FLOOD_BATCH = 4  # below the listen backlog of the old server (5)
HALF_REQUEST = b"GET /metrics HTTP/1.1\r\nHost: metrics\r\n"  # no blank line: never complete

# The limit is set in the child just before exec (not through preexec_fn, which the
# subprocess docs call unsafe in a process with threads, as this one has: the emulator's).
_LIMITED_EXEC = (
    "import os, resource, sys\n"
    "n = int(sys.argv[1])\n"
    "resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))\n"
    "os.execv(sys.executable, [sys.executable, *sys.argv[2:]])\n"
)


def start_limited(config: Path, nofile: int, daemons: list[DaemonProcess]) -> DaemonProcess:
    """Starts ``hottask-sync run`` with at most ``nofile`` open files, adds it to daemons
    (killed at the end of the test) and waits until it is ready."""
    environ = clean_env()
    environ["HOTTASK_API_KEY"] = API_KEY
    command = ["-m", "hottask_sync.cli", "run", "--config", str(config)]
    proc = subprocess.Popen(
        [sys.executable, "-c", _LIMITED_EXEC, str(nofile), *command],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=environ,
    )
    daemon = DaemonProcess(proc)
    daemons.append(daemon)
    daemon.wait_event("daemon.ready")
    return daemon


def open_files_limit(pid: int) -> int:
    """The soft RLIMIT_NOFILE of a running process (Linux /proc)."""
    text = Path(f"/proc/{pid}/limits").read_text()
    found = re.search(r"^Max open files\s+(\d+)", text, re.MULTILINE)
    assert found is not None, text
    return int(found.group(1))


def sockets_on_port(pid: int, port: int) -> int:
    """How many of pid's descriptors are TCP sockets on local port (the listener included),
    from /proc/PID/fd and /proc/net/tcp."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):  # closed meanwhile
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    on_port = {f[9] for f in tcp_table() if int(f[1].rsplit(":", 1)[1], 16) == port}
    return len(inodes & on_port)


def queued(port: int) -> int:
    """How many connections to local port the kernel holds for a listener that has not
    accepted them yet: handshaking (SYN_RECV) or waiting in the accept queue (ESTABLISHED,
    owned by no process yet: inode 0)."""
    count = 0
    for fields in tcp_table():
        if int(fields[1].rsplit(":", 1)[1], 16) == port:
            state, inode = fields[3], fields[9]
            count += state == "03" or (state == "01" and inode == "0")
    return count


def tcp_table() -> Iterator[list[str]]:
    """The fields of every line of /proc/net/tcp and /proc/net/tcp6 (the headers skipped)."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError), open(table) as lines:
            next(lines)
            for line in lines:
                yield line.split()


def flood(port: int, count: int) -> list[socket.socket]:
    """Opens up to count idle connections to port, each sending half a request.

    They go a few at a time, each batch once the daemon has accepted the one before: a burst
    faster than accept() overflows the listen queue, and the kernel then takes seconds to
    retry. A daemon that stops accepting (out of descriptors) ends the flood there.
    """
    conns: list[socket.socket] = []
    while len(conns) < count:
        for _ in range(min(FLOOD_BATCH, count - len(conns))):
            conn = socket.create_connection(("127.0.0.1", port), timeout=5)
            conns.append(conn)
            with contextlib.suppress(OSError):  # closed by the daemon already: it got there
                conn.sendall(HALF_REQUEST)
        if not wait_for(lambda: queued(port) == 0, timeout=2, fail=False):
            break
    return conns


def is_closed(conn: socket.socket) -> bool:
    """True if the daemon has closed conn (EOF or reset); never blocks."""
    try:
        return conn.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_uploads_and_scrapes_go_on_during_a_flood_of_idle_connections(
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
    daemon = start_limited(config, NOFILE, daemons)
    pid = daemon.proc.pid
    assert open_files_limit(pid) == NOFILE  # guards the guard: the limit is really in force
    url = f"http://127.0.0.1:{port}/metrics"
    assert httpx.get(url, timeout=5).status_code == 200
    # Guards the guard: the count sees the listener (the scrape's socket closes at once).
    wait_for(lambda: sockets_on_port(pid, port) == 1, timeout=5, what="only the listener")

    conns = flood(port, FLOOD)
    try:
        for i in range(FILES):
            (inbox / f"scan-{i:02}.pdf").write_bytes(f"page {i}\n".encode() * 100)
        expected = {f"scan-{i:02}.pdf" for i in range(FILES)}
        wait_for(
            lambda: set(reported_files(emulator)) == expected,
            timeout=30,
            what=f"all {FILES} files uploaded during the flood",
            give_up=daemon.exited,
        )

        started = time.monotonic()
        response = httpx.get(url, timeout=1)
        assert response.status_code == 200
        assert b"hottask_sync_uploads_total" in response.content
        assert time.monotonic() - started < 1

        # The flood reached the daemon, and costs it a handful of descriptors at most.
        assert len(conns) == FLOOD
        wait_for(
            lambda: sum(map(is_closed, conns)) >= FLOOD - MAX_CONNECTIONS,
            timeout=5,
            what=f"at least {FLOOD - MAX_CONNECTIONS} flood connections closed by the daemon",
        )
        assert sockets_on_port(pid, port) <= 1 + MAX_CONNECTIONS
    finally:
        for conn in conns:
            conn.close()

    assert all(len(ids) == 1 for ids in reported_files(emulator).values())
    assert daemon.stop() == 0
    assert not_json(daemon) == []  # no traceback or stray print, from any thread
