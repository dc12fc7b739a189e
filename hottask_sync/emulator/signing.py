"""Presigned PUT URLs: how the emulator signs the URLs it hands out and verifies the ones it
receives, the way S3 checks a presigned URL (every query parameter signed, host bound).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final
from urllib.parse import parse_qsl, quote, unquote

__all__ = ["BUCKET", "SignedTarget", "UrlSigner", "fmt_seconds"]

#: The bucket of every presigned URL: ``/<BUCKET>/<FileStoreId>/<object key>``.
BUCKET: Final = "hottask-bucket"

_REQUIRED_PARAMS: Final = frozenset(
    {"X-Amz-Expires", "X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Date", "X-Amz-SignedHeaders"}
)


def fmt_seconds(value: float) -> str:
    """Formats seconds as an integer when whole ("1"), else as a plain decimal ("0.5")."""
    if float(value).is_integer():
        return str(int(value))
    return f"{value:.6f}".rstrip("0").rstrip(".")


def _canon_host(host: str) -> str:
    host = host.strip().lower()
    return host[:-3] if host.endswith(":80") else host


@dataclass(frozen=True, slots=True)
class SignedTarget:
    """What a correctly signed PUT target names, and until when it is valid."""

    file_store_id: str
    object_key: str
    expires_at: float  # Unix time


class UrlSigner:
    """Signs and verifies presigned PUT URLs with a secret of its own (random by default)."""

    def __init__(self, secret: bytes | None = None) -> None:
        self._secret = secret if secret is not None else secrets.token_bytes(32)

    def presign(
        self, host: str, file_store_id: str, object_key: str, issued_at: float, ttl: float
    ) -> str:
        """The presigned ``http://host/...`` URL to PUT ``object_key`` of ``file_store_id``,
        valid for ``ttl`` seconds from ``issued_at`` (Unix time, whole seconds count)."""
        amz_date = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(issued_at))
        params = [
            ("X-Amz-Expires", fmt_seconds(ttl)),
            ("X-Amz-Algorithm", "AWS4-HMAC-SHA256"),
            ("X-Amz-Credential", f"EMULATOR/{amz_date[:8]}/us-west-1/s3/aws4_request"),
            ("X-Amz-Date", amz_date),
            ("X-Amz-SignedHeaders", "host"),
        ]
        path = f"/{BUCKET}/{file_store_id}/{object_key}"
        signature = self._sign("PUT", path, host, params)
        query = "&".join(f"{k}={quote(v, safe='')}" for k, v in params)
        return f"http://{host}{quote(path, safe='/')}?{query}&X-Amz-Signature={signature}"

    def verify(self, target: str, host: str | None) -> SignedTarget | None:
        """Checks a PUT request target (path and query) received with Host ``host``.

        Returns what it names, or None if it is not a URL this signer issued for that host
        (tampered, re-hosted, malformed). Expiry is the caller's to check.
        """
        raw_path, _, raw_query = target.partition("?")
        path = unquote(raw_path, errors="surrogateescape")
        try:
            pairs = parse_qsl(raw_query, keep_blank_values=True, strict_parsing=True)
        except ValueError:
            return None
        signatures = [v for k, v in pairs if k == "X-Amz-Signature"]
        params = [(k, v) for k, v in pairs if k != "X-Amz-Signature"]
        names = [k for k, _ in params]
        if len(signatures) != 1 or len(set(names)) != len(names):
            return None
        if not set(names) >= _REQUIRED_PARAMS or host is None:
            return None
        expected = self._sign("PUT", path, host, params)
        if not hmac.compare_digest(expected, signatures[0]):
            return None
        values = dict(params)
        try:
            issued = datetime.strptime(values["X-Amz-Date"], "%Y%m%dT%H%M%SZ")
            expires_at = issued.replace(tzinfo=UTC).timestamp() + float(values["X-Amz-Expires"])
        except ValueError:
            return None
        parts = path.split("/")
        if len(parts) != 4 or parts[:2] != ["", BUCKET]:
            return None
        return SignedTarget(parts[2], parts[3], expires_at)

    def _sign(self, method: str, path: str, host: str, params: Sequence[tuple[str, str]]) -> str:
        # Every query parameter is signed, so tampering with any of them (not only
        # X-Amz-Date and X-Amz-Expires) fails like it does on S3.
        canonical = "\n".join(
            [method, path, _canon_host(host), *sorted(f"{k}={v}" for k, v in params)]
        )
        return hmac.new(
            self._secret, canonical.encode("utf-8", "surrogateescape"), hashlib.sha256
        ).hexdigest()
