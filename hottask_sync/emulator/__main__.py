"""``python -m hottask_sync.emulator [options]``: the same as ``hottask-sync emulator``."""

from __future__ import annotations

import sys

from .command import main

if __name__ == "__main__":
    sys.exit(main())
