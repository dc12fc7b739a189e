"""Issue 2's "done when": `hottask-sync emulator` in one process, `hottask-sync upload` in another."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import tomli_w

from tests.e2e.support import cli
from tests.fakes import clean_env, sha256

KEY = "oneshot-key-77"


def test_emulator_command_and_upload_command_deliver_identical_bytes(tmp_path: Path) -> None:
    emu_dir = tmp_path / "emu"
    emu = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hottask_sync.cli",
            "emulator",
            "--port",
            "0",
            "--data",
            str(emu_dir),
            "--api-key",
            KEY,
            "--quiet",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=clean_env(),
    )
    try:
        assert emu.stdout is not None
        banner = emu.stdout.readline()
        match = re.search(r"(http://127\.0\.0\.1:\d+)", banner)
        assert match, banner
        base_url = match.group(1)
        assert KEY in banner  # the emulator tells its key, as the README says

        config = tmp_path / "c.toml"
        config.write_text(
            tomli_w.dumps({"api": {"base_url": base_url}, "folders": [{"path": str(tmp_path)}]}),
            encoding="utf-8",
        )
        pdf = tmp_path / "some.pdf"
        data = os.urandom(300_000)
        pdf.write_bytes(data)
        empty = tmp_path / "empty.txt"
        empty.write_bytes(b"")

        done = cli(
            "upload",
            "--config",
            str(config),
            str(pdf),
            str(empty),
            env=clean_env(HOTTASK_API_KEY=KEY),
        )
        assert done.returncode == 0, done.stdout + done.stderr
        lines = done.stdout.splitlines()
        assert len(lines) == 2 and all(line.startswith("uploaded ") for line in lines)
        fsid = re.search(r"FileStoreId (\d+)", lines[0])
        assert fsid is not None
        stored = emu_dir / fsid.group(1) / "some.pdf"
        assert stored.read_bytes() == data
        assert sha256(data) in lines[0]
        assert [p.stat().st_size for p in emu_dir.glob("*/empty.txt")] == [0]

        # A missing file and a wrong key: one line each, exit 1, no traceback, no key shown.
        bad = cli(
            "upload",
            "--config",
            str(config),
            str(tmp_path / "nope.txt"),
            str(pdf),
            env=clean_env(HOTTASK_API_KEY="wrong-key-123"),
        )
        assert bad.returncode == 1
        out = bad.stdout.splitlines()
        assert out[0].startswith("FAILED ") and "nope.txt" in out[0]
        assert out[1].startswith("FAILED ") and "API key" in out[1]
        assert "Traceback" not in bad.stdout + bad.stderr
        assert "wrong-key-123" not in bad.stdout + bad.stderr

        # No key anywhere: exit 2 naming the three places.
        nokey = cli("upload", "--config", str(config), str(pdf), env=clean_env())
        assert nokey.returncode == 2
        assert "HOTTASK_API_KEY" in nokey.stderr and "hottask-api-key" in nokey.stderr
    finally:
        emu.send_signal(signal.SIGINT)
        assert emu.wait(timeout=10) == 0
