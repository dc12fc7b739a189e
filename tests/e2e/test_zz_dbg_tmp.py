import signal, time, subprocess
from pathlib import Path
from hottask_sync.emulator import Emulator
from tests.conftest import DaemonProcess, start_daemon, write_config

def test_dbg(tmp_path: Path, emulator: Emulator, daemons: list[DaemonProcess]) -> None:
    inbox = tmp_path / "inbox"; inbox.mkdir()
    config = write_config(tmp_path / "c.toml", emulator.base_url, [{"path": str(inbox)}])
    d = start_daemon(config); daemons.append(d)
    (inbox / "report.pdf").write_bytes(b"hello hottask\n" * 1000)
    d.wait_event("upload.succeeded")
    d.proc.send_signal(signal.SIGTERM)
    try:
        print("code", d.proc.wait(5))
    except subprocess.TimeoutExpired:
        print(open(f"/proc/{d.proc.pid}/status").read()[:600])
        for t in Path(f"/proc/{d.proc.pid}/task").iterdir():
            print(t.name, (t/"wchan").read_text(), (t/"comm").read_text().strip())
    print(d.log_text())
    assert False
