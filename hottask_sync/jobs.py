"""The frozen values that cross between the scheduler and the upload workers.

A :class:`Job` goes to a worker; a :class:`Result` comes back. Neither is changed after it
is made: what a worker learns (a URL it may PUT to again, how many times it failed, that
the file must be looked at again) travels back in the Result, and the scheduler makes the
next Job from it with :meth:`Job.after`.
"""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass, field, replace

from .client import Ticket
from .config import FolderConfig
from .files import FileSig
from .ledger import Entry

Key = tuple[str, str]  # (folder key, relative path)


@dataclass(frozen=True)
class Job:
    """A file to take through the pipeline.

    ``settled`` is the version that settled (None for a report resumed from the ledger);
    ``probe`` marks the one job allowed to call the API while uploads are paused for auth;
    ``orphan`` marks a report owed for a folder no longer configured (its file is never
    opened, moved or deleted: ``folder`` then only names it). ``row`` is the file's ledger
    row as the scheduler read it to plan this job (None: it had none), when ``row_read``:
    the worker does not read it again; a job made for another run (:meth:`after`) reads it
    afresh.
    """

    folder: FolderConfig
    relpath: str
    failures: int = 0  # consecutive failures, for the backoff
    ticket: Ticket | None = field(default=None, repr=False)  # a URL we may PUT to again
    settled: FileSig | None = None
    probe: bool = False
    orphan: bool = False
    row: Entry | None = field(default=None, repr=False, compare=False)
    row_read: bool = field(default=False, compare=False)

    @property
    def key(self) -> Key:
        return (self.folder.key, self.relpath)

    @property
    def path(self) -> str:
        return os.path.join(self.folder.path, self.relpath)

    def after(self, result: Result) -> Job:
        """Given this job's result, returns the job to run next time (never a probe)."""
        return replace(
            self,
            failures=result.failures,
            ticket=result.ticket,
            probe=False,
            row=None,
            row_read=False,
        )


class Outcome(enum.Enum):
    """What became of one run of a job; the scheduler decides what follows."""

    DONE = "done"  # reported (or the cut-off move/delete finished)
    SKIPPED = "skipped"  # nothing to do: already uploaded, failed, or not a regular file
    VANISHED = "vanished"  # deleted before its upload
    CHANGED = "changed"  # changed during the PUT: settle again
    RETRY = "retry"  # try again after `delay`
    FAILED = "failed"  # marked failed in the ledger
    AUTH = "auth"  # the service refused the API key
    PAUSED = "paused"  # held back without a call: uploads are paused for auth
    STOPPED = "stopped"  # cut off by shutdown
    REPORTING = "reporting"  # bytes sent, the report stage has it: its final result follows


@dataclass(frozen=True)
class Result:
    """What a worker reports back about one job.

    ``failures`` and ``ticket`` carry over to the next run of the same file; ``look_again``
    asks for the file to be seen afresh (a resumed report: a newer version may stand there);
    ``key_accepted`` says that at least one API call succeeded with the current key;
    ``error`` is the redacted reason of an AUTH, RETRY or FAILED outcome.
    """

    outcome: Outcome
    delay: float = 0.0
    failures: int = 0
    ticket: Ticket | None = field(default=None, repr=False)
    look_again: bool = False
    key_accepted: bool = False
    error: str | None = None


__all__ = ["Job", "Key", "Outcome", "Result"]
