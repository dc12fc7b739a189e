"""``hottask-sync upload FILE…``: named files through the daemon's own Uploader, now.

The same pipeline as the daemon (three calls, expired-URL renewal, change detection, the
same retry maths), driven in the foreground: a retry waits its delay in this thread, a
refused key ends the run (every file left is failed without a call). Progress is kept in
an in-memory ledger: the daemon's ledger is never touched.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from .client import HotTaskClient
from .config import FolderConfig
from .jobs import Job, Outcome
from .ledger import Ledger
from .uploader import Uploader

#: A one-shot upload waits at most this long between two tries.
MAX_WAIT_SECONDS = 30.0

_WHY = {
    Outcome.VANISHED: "No such file or directory",
    Outcome.SKIPPED: "not a regular file (never uploaded)",
}


@dataclass(frozen=True)
class Uploaded:
    """One named file's end: a FileStoreId (with size and sha256), or an error."""

    name: str
    file_store_id: str | None = None
    size: int = 0
    sha256: str | None = None
    error: str | None = None


def upload_files(
    client: HotTaskClient,
    names: Iterable[str],
    *,
    max_attempts: int,
    key_source: str = "",
    wait: Callable[[float], object] = time.sleep,
) -> list[Uploaded]:
    """Uploads each named file, trying each at most ``max_attempts`` times; returns one
    Uploaded per name, in order."""
    results: list[Uploaded] = []
    refused: str | None = None
    with Ledger(Path(":memory:")) as ledger:
        uploader = Uploader(client, ledger, max_attempts=max_attempts, key_source=key_source)
        for name in names:
            if refused is not None:
                results.append(Uploaded(name, error=refused))
                continue
            done = _upload_one(uploader, ledger, name, max_attempts, wait)
            results.append(done)
            if done.error is not None and done.error.startswith("key refused"):
                refused = done.error
    return results


def _upload_one(
    uploader: Uploader,
    ledger: Ledger,
    name: str,
    max_attempts: int,
    wait: Callable[[float], object],
) -> Uploaded:
    path = os.path.abspath(name)
    folder = FolderConfig(Path(os.path.dirname(path)))
    job = Job(folder, os.path.basename(path))
    for attempt in range(1, max_attempts + 1):
        result = uploader.run_through(job)
        outcome = result.outcome
        if outcome is Outcome.DONE:
            row = ledger.get(*job.key)
            assert row is not None and row.sig is not None
            return Uploaded(name, row.file_store_id, row.sig.size, row.sha256)
        if outcome is Outcome.AUTH:
            return Uploaded(name, error=f"key refused: {result.error}")
        if outcome in _WHY:
            return Uploaded(name, error=_WHY[outcome])
        if outcome is Outcome.FAILED or attempt == max_attempts:
            return Uploaded(name, error=result.error or f"gave up ({outcome.value})")
        wait(min(result.delay, MAX_WAIT_SECONDS))
        job = job.after(result)
    raise AssertionError("unreachable")
