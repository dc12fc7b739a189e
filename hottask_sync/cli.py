"""The command line: a thin layer over config, client, ledger, daemon and emulator."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import __version__, logs
from .client import HotTaskClient
from .config import Config, load_config, resolve_api_key
from .errors import LedgerError, UserError
from .folders import check_folders
from .ledger import LEDGER_FILENAME, Ledger
from .runtime import run_daemon
from .statedir import check_filesystem, daemon_pid

# What only one command needs (oneshot, proof, example, the emulator) is imported when that
# command runs: the daemon's start-up does not pay for it.

PROG = "hottask-sync"


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the CLI; returns the exit code (0 ok, 1 failure, 2 bad input, 3 already running)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
        return code
    except UserError as exc:
        for line in str(exc).splitlines() or [type(exc).__name__]:
            print(f"{PROG}: {line}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Upload every completed file dropped into watched folders to HotTask.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        return p

    def config_arg(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", "-c", required=True, metavar="PATH", help="the TOML config")

    p = command("run", "Watch the configured folders and upload files (runs in the foreground).")
    config_arg(p)
    p.set_defaults(func=cmd_run)

    p = command("upload", "Upload the named files now and print one result line per file.")
    config_arg(p)
    p.add_argument("files", nargs="+", metavar="FILE")
    p.set_defaults(func=cmd_upload)

    p = command(
        "status",
        "Show the ledger: counts per state, pending files, recent failures; with FILEs, "
        "whether each is uploaded in its current version, and as what (exit 1 if not).",
    )
    config_arg(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("files", nargs="*", metavar="FILE")
    p.set_defaults(func=cmd_status)

    p = command("retry", "Mark failed files (all, or those named) to be uploaded again.")
    config_arg(p)
    p.add_argument("files", nargs="*", metavar="FILE")
    p.set_defaults(func=cmd_retry)

    p = command("check", "Validate the config, the folders and the API key.")
    config_arg(p)
    p.set_defaults(func=cmd_check)

    p = command("init", "Write a commented starter config (never overwrites).")
    p.add_argument("path", nargs="?", default="hottask-sync.toml", metavar="PATH")
    p.set_defaults(func=cmd_init)

    # The emulator parses its own options when its command runs, so that building this parser
    # never imports it: every argument after "emulator" is kept verbatim. A NUL prefix (no
    # command-line argument can hold one) makes argparse take even "--help" as a plain value.
    about = "Run a local HotTask-compatible server (for trying and testing)."
    p = sub.add_parser("emulator", help=about, description=about, add_help=False, prefix_chars="\0")
    p.add_argument("emulator_args", nargs=argparse.REMAINDER, metavar="OPTIONS")
    p.set_defaults(func=cmd_emulator, emulator_about=about)

    p = command("demo", "Start the emulator and a daemon watching DIR/inbox: drop files in.")
    p.add_argument("--dir", default="hottask-demo", metavar="DIR", help="default ./hottask-demo")
    p.set_defaults(func=cmd_demo)
    return parser


# --- run --------------------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    logs.configure(config.logging.format, config.logging.level)
    return run_daemon(config)


# --- upload -----------------------------------------------------------------------------------


def cmd_upload(args: argparse.Namespace) -> int:
    from . import oneshot

    config = load_config(args.config)
    key = resolve_api_key(config.api)
    logs.set_secrets([key.value])
    logs.configure("console", "warning", stream=sys.stderr)
    with HotTaskClient(
        config.api.base_url,
        key.value,
        timeout=config.api.timeout_seconds,
        allow_insecure_http=config.api.allow_insecure_http,
    ) as client:
        results = oneshot.upload_files(
            client, args.files, max_attempts=config.sync.max_attempts, key_source=key.source
        )
    for r in results:
        if r.file_store_id is not None:
            print(
                f"uploaded {r.name} -> FileStoreId {r.file_store_id} "
                f"({r.size} bytes, sha256 {r.sha256})"
            )
        else:
            print(f"FAILED {r.name}: {r.error}")
    return 1 if any(r.file_store_id is None for r in results) else 0


# --- status and retry -------------------------------------------------------------------------


def _open_ledger(config: Config, readonly: bool) -> Ledger:
    path = config.sync.state_dir / LEDGER_FILENAME
    if not path.exists():
        raise UserError(f"no ledger at {path} (has the daemon run yet with this config?)")
    try:
        return Ledger(path, readonly=readonly)
    except LedgerError as exc:
        raise UserError(str(exc)) from exc


def cmd_status(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    if args.files:
        return _status_files(config, args.files, as_json=args.json)
    ledger = _open_ledger(config, readonly=True)
    try:
        counts = ledger.counts()
        failures = ledger.recent_failures(10)
        waiting = [
            e
            for s in ("put", "ticketed", "pending")
            for e in ledger.in_state(s, limit=20)  # type: ignore[arg-type]
        ][:20]
    finally:
        ledger.close()
    pid = daemon_pid(config.sync.state_dir)
    summary = {
        "uploaded": counts["reported"],
        "pending": counts["pending"] + counts["ticketed"] + counts["put"],
        "failed": counts["failed"],
        "states": {k: v for k, v in counts.items() if k != "total"},
        "total": counts["total"],
        "daemon_pid": pid,
        "pending_files": [_row(e) for e in waiting],
        "recent_failures": [_row(e) for e in failures],
    }
    if args.json:
        print(json.dumps(summary, ensure_ascii=False))
        return 0
    print(f"daemon: {'running, PID ' + str(pid) if pid else 'not running'}")
    print(f"ledger: {config.sync.state_dir / LEDGER_FILENAME}")
    print(
        f"uploaded {summary['uploaded']}, pending {summary['pending']}, failed {summary['failed']}"
        f" (pending {counts['pending']}, ticketed {counts['ticketed']}, put {counts['put']})"
    )
    if waiting:
        print("pending:")
        for e in waiting:
            print(
                f"  {_show(e.folder, e.relpath)}  [{e.state}]"
                + (f"  last error: {e.last_error}" if e.last_error else "")
            )
    if failures:
        print("recent failures:")
        for e in failures:
            print(
                f"  {_show(e.folder, e.relpath)}  [{e.state}, {e.attempts} attempts]  {e.last_error}"
            )
    return 0


def _status_files(config: Config, names: list[str], *, as_json: bool) -> int:
    """Prints what the ledger says about each named file; returns 1 unless every one is
    uploaded in its current version."""
    from . import proof

    ledger = _open_ledger(config, readonly=True)
    try:
        proofs = proof.prove(names, ledger, config.folders, lambda name: _locate(config, name))
    finally:
        ledger.close()
    if as_json:
        print(json.dumps({"files": [p.as_json() for p in proofs]}, ensure_ascii=False))
    else:
        for p in proofs:
            print(p.line())
    return 0 if all(p.uploaded for p in proofs) else 1


def _show(folder: str, relpath: str) -> str:
    return os.path.join(folder, relpath).encode("utf-8", "backslashreplace").decode()


def _row(e: Any) -> dict[str, Any]:
    return {
        "folder": e.folder,
        "path": e.relpath.encode("utf-8", "backslashreplace").decode(),
        "state": str(e.state),
        "attempts": e.attempts,
        "last_error": e.last_error,
        "file_store_id": e.file_store_id,
    }


def cmd_retry(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    ledger = _open_ledger(config, readonly=False)
    try:
        if not args.files:
            n = ledger.retry_failed()
        else:
            n = 0
            for name in args.files:
                folder, rel = _locate(config, name)
                n += ledger.retry_failed(folder, [rel])
    finally:
        ledger.close()
    pid = daemon_pid(config.sync.state_dir)
    if pid is not None and n:
        os.kill(pid, signal.SIGHUP)  # the daemon rescans on reload and picks them up
    print(
        f"{n} failed file(s) will be uploaded again"
        + (" by the running daemon" if pid and n else "")
    )
    return 0


def _locate(config: Config, name: str) -> tuple[str, str]:
    """Given a file named on the command line, returns its folder's key and its path
    relative to that folder; raises UserError when it is in no configured folder.

    The name may reach the folder through its real path or as configured (a link, say): its
    folders are resolved, its last part is not (a link named is the link). Failing that, it
    is matched as written, against either spelling. The deepest folder holding it wins: an
    outer folder may hold an inner one that it excludes.
    """
    path = os.path.abspath(name)
    real = os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))
    for candidate in (real, path):
        found, depth = None, 0
        for folder in config.folders:
            for root in filter(None, (folder.path, folder.configured)):
                prefix = str(root).rstrip("/") + "/"
                if candidate.startswith(prefix) and len(prefix) > depth:
                    found, depth = (folder.key, candidate[len(prefix) :]), len(prefix)
        if found is not None:
            return found
    raise UserError(f"{name}: not inside any configured folder")


# --- check and init ---------------------------------------------------------------------------


def cmd_check(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    problems = check_folders(config)
    for i, folder in enumerate(config.folders):
        if (
            folder.move_to is not None
            and folder.move_to.exists()
            and not os.access(folder.move_to, os.W_OK)
        ):
            problems.append(
                f"{config.source}: folders[{i}].move_to {folder.move_to}: not writable by this user"
            )
    try:
        check_filesystem(config.sync.state_dir, allow_network=config.sync.allow_network_state_dir)
    except UserError as exc:
        problems.append(f"{config.source}: {exc}")
    try:
        key = resolve_api_key(config.api)
    except UserError as exc:
        problems.append(str(exc))
        key = None
    for p in problems:
        print(f"{PROG}: {p}", file=sys.stderr)
    if problems:
        return 2
    print(
        f"{args.config}: OK — {len(config.folders)} folder(s), key from {key.source if key else '?'}"
    )
    return 0


def cmd_init(args: argparse.Namespace) -> int:
    from .example import EXAMPLE_CONFIG

    path = Path(args.path)
    try:
        with path.open("x", encoding="utf-8") as fh:
            fh.write(EXAMPLE_CONFIG)
    except FileExistsError:
        raise UserError(f"{path}: already exists; not overwriting it") from None
    except OSError as exc:
        raise UserError(f"{path}: {exc.strerror}") from None
    print(f"wrote {path}; edit [[folders]] path, then: {PROG} check --config {path}")
    return 0


# --- demo -------------------------------------------------------------------------------------


def cmd_emulator(args: argparse.Namespace) -> int:
    from .emulator.command import main as emulator_main

    return emulator_main(
        args.emulator_args, prog=f"{PROG} emulator", description=args.emulator_about
    )


def cmd_demo(args: argparse.Namespace) -> int:
    import tomli_w

    from .emulator import Emulator

    root = Path(args.dir).resolve()
    inbox = root / "inbox"
    store = root / "uploaded"
    inbox.mkdir(parents=True, exist_ok=True)
    store.mkdir(parents=True, exist_ok=True)
    key = "demo-key"
    emu = Emulator(store, api_key=key, port=0)
    config_path = root / "hottask-sync.toml"
    config_path.write_text(
        tomli_w.dumps(
            {
                "api": {"base_url": emu.base_url},
                "sync": {"settle_seconds": 1.0, "state_dir": str(root / "state")},
                "logging": {"format": "console"},
                "folders": [{"path": str(inbox)}],
            }
        ),
        encoding="utf-8",
    )
    emu.start()
    env = {**os.environ, "HOTTASK_API_KEY": key}
    config = load_config(config_path, env)
    logs.configure("console", "info")
    print(
        f"\nhottask-sync demo\n"
        f"  A local HotTask emulator runs at {emu.base_url} (key {key!r}).\n"
        f"  Drop files into:   {inbox}\n"
        f"  They arrive under: {store}/<FileStoreId>/<name>\n"
        f"  Config used:       {config_path}\n"
        f"  Press Ctrl-C to stop.\n",
        flush=True,
    )
    try:
        code = run_daemon(config, env)
    except KeyboardInterrupt:
        code = 0  # Ctrl-C before the daemon took over SIGINT: still a clean stop
    finally:
        emu.stop()
    print(f"demo stopped; uploaded files are under {store}")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
