"""SHA-256 while sending: big files are hashed on a thread beside the send, with at most a
few chunks waiting (memory stays flat); the digest is the file's either way."""

from __future__ import annotations

import hashlib
import os
import threading

from hottask_sync.uploader import Hasher


def test_a_big_file_is_hashed_beside_the_send_and_the_digest_is_right() -> None:
    chunks = [os.urandom(1024 * 1024) for _ in range(12)]
    before = {t.name for t in threading.enumerate()}
    hasher = Hasher.for_size(len(chunks) * len(chunks[0]))
    assert "sha256" in {t.name for t in threading.enumerate()} - before
    for chunk in chunks:
        hasher.update(chunk)
    assert hasher.hexdigest() == hashlib.sha256(b"".join(chunks)).hexdigest()
    assert "sha256" not in {t.name for t in threading.enumerate()} - before  # ended


def test_a_small_file_is_hashed_inline() -> None:
    before = threading.active_count()
    hasher = Hasher.for_size(4096)
    hasher.update(b"x" * 4096)
    assert threading.active_count() == before
    assert hasher.hexdigest() == hashlib.sha256(b"x" * 4096).hexdigest()
