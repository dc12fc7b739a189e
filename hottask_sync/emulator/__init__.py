"""A local HotTask-compatible HTTP server, for tests, the demo and benchmarks.

It speaks the three calls of the real service (GetPreUploadUrl, the presigned S3-style PUT,
ReportUploadSuccess) over real sockets, stores what it receives under a data directory, and
injects reproducible faults on demand. Stdlib only. The modules:

* :mod:`.server`: the :class:`Emulator`, its storage and request handling;
* :mod:`.signing`: signing and verifying presigned PUT URLs;
* :mod:`.faults`: :class:`Faults`, its text form (:func:`parse_faults`) and the fault draw;
* :mod:`.command`: the ``hottask-sync emulator`` / ``python -m hottask_sync.emulator`` command.

The product imports this package only to run the ``emulator`` and ``demo`` commands.
"""

from __future__ import annotations

from .command import add_arguments, main, run_from_args
from .faults import Faults, parse_faults
from .server import Emulator, TicketInfo

__all__ = [
    "Emulator",
    "Faults",
    "TicketInfo",
    "add_arguments",
    "main",
    "parse_faults",
    "run_from_args",
]
