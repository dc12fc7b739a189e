"""The one exception tree of hottask-sync.

Everything the package raises on purpose derives from :class:`HottaskSyncError`.
:class:`UserError` is the branch the CLI prints as one line without a traceback.
Third-party errors (httpx, sqlite3, OSError) are translated at the boundary with
``raise ... from``.
"""

from __future__ import annotations


class HottaskSyncError(Exception):
    """Base of every error hottask-sync raises on purpose."""


class UserError(HottaskSyncError):
    """A problem the user can fix; the CLI prints ``str(error)`` and exits with ``exit_code``."""

    exit_code = 1


class ConfigError(UserError):
    """The configuration is invalid; ``problems`` holds one line per problem."""

    exit_code = 2

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class KeyNotFoundError(UserError):
    """No API key was found in any of the places it is looked for."""

    exit_code = 2


class LockedError(UserError):
    """Another daemon holds the state directory's lock ("already running").

    Its own exit code, 3, not 2 (bad input): the holder may be a previous instance still
    exiting, so a service manager should try again later (the systemd unit prevents
    restarts on 2 only).
    """

    exit_code = 3


class LedgerError(HottaskSyncError):
    """The ledger cannot record a step (disk full, read-only, corrupt): uploads must stop."""


# --- API errors -------------------------------------------------------------------------


class ApiError(HottaskSyncError):
    """A HotTask call failed. ``hint`` says what to do about it."""

    hint = ""

    def __init__(self, message: str, *, status: int | None = None, code: int | None = None) -> None:
        self.status = status
        self.code = code
        super().__init__(message)

    def __str__(self) -> str:
        base = super().__str__()
        return f"{base} ({self.hint})" if self.hint else base


class AuthError(ApiError):
    """HTTP 401/403 or business Code 401/403 on an API call: the key is wrong or revoked."""

    hint = "check the API key"


class UrlExpired(ApiError):
    """The presigned URL expired before the PUT: ask for a new URL."""

    hint = "a new upload URL is needed"


class TransientError(ApiError):
    """A failure worth retrying as is: network, timeout, 5xx, 429, business Code >= 500."""

    hint = "will retry"

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: int | None = None,
        retry_after: float | None = None,
        maybe_applied: bool = False,
    ) -> None:
        super().__init__(message, status=status, code=code)
        #: Seconds the server asked us to wait (HTTP Retry-After), if any.
        self.retry_after = retry_after
        #: True when the request may have reached the server before the failure
        #: (answer lost): the caller must not assume the call had no effect.
        self.maybe_applied = maybe_applied


class PermanentError(ApiError):
    """Retrying the same request will not help: other 4xx, business errors, bad input."""

    hint = "will not retry until the file changes or `hottask-sync retry` is run"

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: int | None = None,
        fail_now: bool = False,
    ) -> None:
        super().__init__(message, status=status, code=code)
        #: True when more attempts cannot help at all (file too large, unreadable):
        #: the file is marked failed at once instead of after ``max_attempts``.
        self.fail_now = fail_now


class FileTooLarge(PermanentError):
    """The file is over the 5 GiB limit of a single S3 PUT."""

    hint = "HotTask accepts at most 5 GiB per file"

    def __init__(self, message: str) -> None:
        super().__init__(message, fail_now=True)
