"""The TOML configuration: parsed strictly into frozen dataclasses, every problem reported at once."""

from __future__ import annotations

import ipaddress
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

from .errors import ConfigError, KeyNotFoundError
from .patterns import Selector, is_partial_or_hidden

DEFAULT_BASE_URL = "https://usapi.hottask.com"
KEY_ENV = "HOTTASK_API_KEY"
CREDENTIAL_NAME = "hottask-api-key"

AfterUpload = Literal["keep", "move", "delete"]
LogFormat = Literal["auto", "json", "console"]
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


@dataclass(frozen=True)
class ApiConfig:
    base_url: str = DEFAULT_BASE_URL
    timeout_seconds: float = 30.0
    api_key_file: Path | None = None
    allow_insecure_http: bool = False


@dataclass(frozen=True)
class SyncConfig:
    state_dir: Path
    settle_seconds: float = 2.0
    concurrency: int = 4
    rescan_seconds: float = 300.0
    max_attempts: int = 5
    shutdown_grace_seconds: float = 10.0
    bandwidth_limit: int = 0


@dataclass(frozen=True)
class LoggingConfig:
    format: LogFormat = "auto"
    level: str = "info"


@dataclass(frozen=True)
class MetricsConfig:
    listen: str = ""

    @property
    def address(self) -> tuple[str, int] | None:
        """Returns (host, port) to serve metrics on, or None when metrics are off."""
        if not self.listen:
            return None
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]"), int(port)


@dataclass(frozen=True)
class FolderConfig:
    path: Path
    recursive: bool = True
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    after_upload: AfterUpload = "keep"
    move_to: Path | None = None
    poll: bool = False
    selector: Selector = field(default_factory=Selector, compare=False, repr=False)

    @property
    def key(self) -> str:
        """The folder's identity in the ledger: its configured absolute path."""
        return str(self.path)


@dataclass(frozen=True)
class Config:
    source: Path
    api: ApiConfig
    sync: SyncConfig
    logging: LoggingConfig
    metrics: MetricsConfig
    folders: tuple[FolderConfig, ...]


@dataclass(frozen=True)
class ApiKey:
    """The secret key and where it was read from; never shown by repr or str."""

    value: str = field(repr=False)
    source: str

    def __str__(self) -> str:
        return f"<API key from {self.source}>"


# --- reading -----------------------------------------------------------------------------

T = TypeVar("T")


class _Reader:
    """Collects problems while reading one table, each prefixed with file and dotted key."""

    def __init__(self, file: str, problems: list[str]) -> None:
        self.file = file
        self.problems = problems

    def problem(self, key: str, message: str) -> None:
        self.problems.append(f"{self.file}: {key}: {message}")

    def table(self, data: Mapping[str, Any], name: str, known: set[str]) -> dict[str, Any]:
        value = data.get(name, {})
        if not isinstance(value, dict):
            self.problem(name, f"must be a table, got {_type_name(value)}")
            return {}
        self.unknown(value, name, known)
        return value

    def unknown(self, table: Mapping[str, Any], prefix: str, known: set[str]) -> None:
        for key in table:
            if key not in known:
                self.problem(f"{prefix}.{key}", "unknown key")

    def get(
        self,
        table: Mapping[str, Any],
        prefix: str,
        key: str,
        kind: type[T] | tuple[type, ...],
        default: T,
        check: Callable[[Any], str | None] | None = None,
    ) -> T:
        dotted = f"{prefix}.{key}"
        if key not in table:
            return default
        value = table[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        # bool is an int in Python, but `concurrency = true` is a mistake worth naming.
        ok = False if isinstance(value, bool) and bool not in kinds else isinstance(value, kinds)
        if not ok:
            self.problem(dotted, f"must be {_kinds_name(kinds)}, got {_type_name(value)}")
            return default
        if check is not None and (message := check(value)) is not None:
            self.problem(dotted, message)
            return default
        if float in kinds and isinstance(value, int):
            return float(value)  # type: ignore[return-value]
        return value  # type: ignore[no-any-return]


def _type_name(value: object) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}
    names |= {list: "an array", dict: "a table"}
    return names.get(type(value), type(value).__name__)


def _kinds_name(kinds: tuple[type, ...]) -> str:
    if set(kinds) == {int, float}:
        return "a number"
    return " or ".join(_type_name(k()) for k in kinds)


def _at_least(low: float) -> Callable[[Any], str | None]:
    return lambda v: None if v >= low else f"must be >= {low:g}"


def _between(low: int, high: int) -> Callable[[Any], str | None]:
    return lambda v: None if low <= v <= high else f"must be between {low} and {high}"


def _one_of(*choices: str) -> Callable[[Any], str | None]:
    listed = ", ".join(f'"{c}"' for c in choices)
    return lambda v: None if v in choices else f"must be one of {listed}, got {v!r}"


def default_state_dir(environ: Mapping[str, str]) -> Path:
    """Returns where the ledger lives when ``sync.state_dir`` is not set.

    ``$STATE_DIRECTORY`` (systemd StateDirectory=; the first of a colon-separated list),
    else ``$XDG_STATE_HOME/hottask-sync``, else ``~/.local/state/hottask-sync``.
    """
    if state := environ.get("STATE_DIRECTORY"):
        return Path(state.split(":")[0])
    if xdg := environ.get("XDG_STATE_HOME"):
        return Path(xdg) / "hottask-sync"
    home = environ.get("HOME") or str(Path.home())
    return Path(home) / ".local" / "state" / "hottask-sync"


def is_loopback_host(host: str) -> bool:
    """Returns True for localhost and loopback IP literals."""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_listen(value: str) -> str | None:
    if value == "":
        return None
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        return f'must be "HOST:PORT" like "127.0.0.1:9464", got {value!r}'
    return None


API_KEYS = {"base_url", "timeout_seconds", "api_key_file", "allow_insecure_http"}
SYNC_KEYS = {
    "settle_seconds",
    "concurrency",
    "state_dir",
    "rescan_seconds",
    "max_attempts",
    "shutdown_grace_seconds",
    "bandwidth_limit",
}
LOGGING_KEYS = {"format", "level"}
METRICS_KEYS = {"listen"}
FOLDER_KEYS = {"path", "recursive", "include", "exclude", "after_upload", "move_to", "poll"}
TOP_KEYS = {"api", "sync", "logging", "metrics", "folders"}


def load_config(path: str | Path, environ: Mapping[str, str] | None = None) -> Config:
    """Given a TOML file, returns the validated configuration.

    Raises ConfigError listing every problem (``file: dotted.key: message``, or
    ``file: line L, column C: ...`` for syntax errors) when the file is unreadable or invalid.
    """
    env = os.environ if environ is None else environ
    path = Path(path)
    name = str(path)
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError([f"{name}: no such file (create one with `hottask-sync init`)"]) from None
    except IsADirectoryError:
        raise ConfigError([f"{name}: is a directory, not a config file"]) from None
    except PermissionError:
        raise ConfigError([f"{name}: permission denied"]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{name}: not valid UTF-8 ({exc.reason})"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{name}: {_syntax_message(exc)}"]) from None
    return parse_config(data, source=path, environ=env)


def _syntax_message(exc: tomllib.TOMLDecodeError) -> str:
    # tomllib says "Expected '=' after a key in a key/value pair (at line 3, column 10)".
    text = str(exc)
    if "(at line " in text:
        what, _, where = text.rpartition(" (at ")
        return f"{where.rstrip(')')}: TOML syntax error: {what}"
    return f"TOML syntax error: {text}"


def parse_config(data: Mapping[str, Any], *, source: Path, environ: Mapping[str, str]) -> Config:
    """Given parsed TOML, returns the validated Config; raises ConfigError with every problem."""
    problems: list[str] = []
    r = _Reader(str(source), problems)
    for key in data:
        if key not in TOP_KEYS:
            r.problem(key, "unknown key" if key != "api_key" else _INLINE_KEY)

    api = _read_api(r, data)
    sync = _read_sync(r, data, environ)
    logging_t = r.table(data, "logging", LOGGING_KEYS)
    log_format: Any = r.get(
        logging_t, "logging", "format", str, "auto", _one_of("auto", "json", "console")
    )
    log = LoggingConfig(
        format=log_format,
        level=r.get(logging_t, "logging", "level", str, "info", _one_of(*LOG_LEVELS)),
    )
    metrics_t = r.table(data, "metrics", METRICS_KEYS)
    metrics = MetricsConfig(listen=r.get(metrics_t, "metrics", "listen", str, "", _check_listen))
    folders = _read_folders(r, data)

    if problems:
        raise ConfigError(problems)
    return Config(source, api, sync, log, metrics, folders)


_INLINE_KEY = (
    "the key is not read from the config file; put it in a file named by api.api_key_file, "
    f"in ${KEY_ENV}, or in the systemd credential {CREDENTIAL_NAME}"
)


def _read_api(r: _Reader, data: Mapping[str, Any]) -> ApiConfig:
    t = r.table(data, "api", API_KEYS | {"api_key"})
    if "api_key" in t:  # known to r.table, so reported here with a useful message
        r.problem("api.api_key", _INLINE_KEY)
    insecure = r.get(t, "api", "allow_insecure_http", bool, False)
    base_url = r.get(t, "api", "base_url", str, DEFAULT_BASE_URL)
    try:
        parts = urlsplit(base_url)
        hostname = parts.hostname
    except ValueError:
        parts, hostname = urlsplit(""), None
    if parts.scheme not in ("http", "https") or not hostname:
        r.problem(
            "api.base_url", f"must be an http(s) URL like {DEFAULT_BASE_URL}, got {base_url!r}"
        )
    elif parts.scheme == "http" and not insecure and not is_loopback_host(hostname):
        r.problem(
            "api.base_url",
            "http:// is only allowed for loopback hosts; use https:// "
            "(or set api.allow_insecure_http = true)",
        )
    elif parts.query or parts.fragment:
        r.problem("api.base_url", "must not have a query or fragment")
    key_file = r.get(t, "api", "api_key_file", str, "")
    if key_file and not Path(key_file).is_absolute():
        # Not echoed: someone may have pasted the key itself here.
        r.problem("api.api_key_file", "must be an absolute path to a file holding the key")
    return ApiConfig(
        base_url=base_url.rstrip("/"),
        timeout_seconds=r.get(t, "api", "timeout_seconds", (int, float), 30.0, _positive),
        api_key_file=Path(key_file) if key_file else None,
        allow_insecure_http=insecure,
    )


def _positive(v: Any) -> str | None:
    return None if v > 0 else "must be > 0"


def _read_sync(r: _Reader, data: Mapping[str, Any], environ: Mapping[str, str]) -> SyncConfig:
    t = r.table(data, "sync", SYNC_KEYS)
    state_dir = r.get(t, "sync", "state_dir", str, "")
    if state_dir and not Path(state_dir).is_absolute():
        r.problem("sync.state_dir", f"must be an absolute path, got {state_dir!r}")
    num = (int, float)
    return SyncConfig(
        state_dir=Path(state_dir) if state_dir else default_state_dir(environ),
        settle_seconds=r.get(t, "sync", "settle_seconds", num, 2.0, _at_least(0)),
        concurrency=r.get(t, "sync", "concurrency", int, 4, _between(1, 64)),
        rescan_seconds=r.get(t, "sync", "rescan_seconds", num, 300.0, _at_least(0)),
        max_attempts=r.get(t, "sync", "max_attempts", int, 5, _between(1, 1000)),
        shutdown_grace_seconds=r.get(t, "sync", "shutdown_grace_seconds", num, 10.0, _at_least(0)),
        bandwidth_limit=r.get(t, "sync", "bandwidth_limit", int, 0, _at_least(0)),
    )


def _read_folders(r: _Reader, data: Mapping[str, Any]) -> tuple[FolderConfig, ...]:
    raw = data.get("folders")
    if raw is None:
        r.problem("folders", "at least one [[folders]] table with a path is required")
        return ()
    if not isinstance(raw, list) or not all(isinstance(f, dict) for f in raw):
        r.problem("folders", "must be an array of tables ([[folders]])")
        return ()
    if not raw:
        r.problem("folders", "at least one [[folders]] table with a path is required")
    folders: list[FolderConfig] = []
    for i, t in enumerate(raw):
        folder = _read_folder(r, t, f"folders[{i}]")
        if folder is not None:
            folders.append(folder)
    seen: dict[Path, int] = {}
    for i, f in enumerate(folders):
        if f.path in seen:
            r.problem(
                f"folders[{i}].path", f"{f.path} is already configured as folders[{seen[f.path]}]"
            )
        seen.setdefault(f.path, i)
    return tuple(folders)


def _glob_list(r: _Reader, t: Mapping[str, Any], prefix: str, key: str) -> tuple[str, ...]:
    value = t.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        r.problem(f"{prefix}.{key}", "must be an array of non-empty glob strings")
        return ()
    return tuple(value)


def _read_folder(r: _Reader, t: Mapping[str, Any], prefix: str) -> FolderConfig | None:
    r.unknown(t, prefix, FOLDER_KEYS)
    raw_path = r.get(t, prefix, "path", str, "")
    if "path" not in t:
        r.problem(f"{prefix}.path", "required (the absolute path of a folder to watch)")
    elif isinstance(t["path"], str) and not Path(raw_path).is_absolute():
        r.problem(f"{prefix}.path", f"must be an absolute path, got {raw_path!r}")
        raw_path = ""
    include = _glob_list(r, t, prefix, "include")
    exclude = _glob_list(r, t, prefix, "exclude")
    after = r.get(t, prefix, "after_upload", str, "keep", _one_of("keep", "move", "delete"))
    move_to_raw = r.get(t, prefix, "move_to", str, "")
    move_to = Path(os.path.normpath(move_to_raw)) if move_to_raw else None
    selector = Selector.of(include, exclude)
    path = Path(os.path.normpath(raw_path)) if raw_path else None
    if after == "move" and move_to is None:
        r.problem(f"{prefix}.move_to", 'required when after_upload = "move"')
    if move_to is not None:
        if after != "move":
            r.problem(f"{prefix}.move_to", 'only used with after_upload = "move"')
        elif not move_to.is_absolute():
            r.problem(f"{prefix}.move_to", f"must be an absolute path, got {move_to_raw!r}")
        elif path is not None:
            if move_to == path:
                r.problem(f"{prefix}.move_to", "must not be the watched folder itself")
            elif move_to.is_relative_to(path):
                rel = move_to.relative_to(path).as_posix()
                if not selector.excluded_dir(rel) and not is_partial_or_hidden(rel):
                    r.problem(
                        f"{prefix}.move_to",
                        f"is inside the watched folder; add {rel!r} to {prefix}.exclude "
                        "or choose a folder outside it",
                    )
    if path is None:
        return None
    return FolderConfig(
        path=path,
        recursive=r.get(t, prefix, "recursive", bool, True),
        include=include,
        exclude=exclude,
        after_upload=after,  # type: ignore[arg-type]
        move_to=move_to,
        poll=r.get(t, prefix, "poll", bool, False),
        selector=selector,
    )


# --- the secret key ------------------------------------------------------------------------


def key_places(api: ApiConfig, environ: Mapping[str, str]) -> list[str]:
    """Returns, in lookup order, a description of every place the key is looked for."""
    places = [
        f"api.api_key_file ({api.api_key_file})"
        if api.api_key_file
        else "api.api_key_file (not set)"
    ]
    places.append(f"${KEY_ENV}")
    creds = environ.get("CREDENTIALS_DIRECTORY")
    places.append(
        f"{creds}/{CREDENTIAL_NAME}" if creds else f"$CREDENTIALS_DIRECTORY/{CREDENTIAL_NAME}"
    )
    return places


def resolve_api_key(api: ApiConfig, environ: Mapping[str, str] | None = None) -> ApiKey:
    """Returns the API key, from api.api_key_file, else $HOTTASK_API_KEY, else the credential.

    Raises KeyNotFoundError when the configured file is unreadable or empty, or when the key is
    found nowhere (the message names all three places). The key itself is never in a message.
    """
    env = os.environ if environ is None else environ
    if api.api_key_file is not None:
        return ApiKey(_read_key_file(api.api_key_file, "api.api_key_file"), str(api.api_key_file))
    if (value := env.get(KEY_ENV, "").strip()) != "":
        return ApiKey(value, f"${KEY_ENV}")
    if creds := env.get("CREDENTIALS_DIRECTORY"):
        cred = Path(creds) / CREDENTIAL_NAME
        if cred.exists():
            return ApiKey(_read_key_file(cred, "credential"), str(cred))
    raise KeyNotFoundError("no API key found; looked in " + ", ".join(key_places(api, env)))


def _read_key_file(path: Path, what: str) -> str:
    try:
        value = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise KeyNotFoundError(f"{what} {path}: no such file") from None
    except PermissionError:
        raise KeyNotFoundError(f"{what} {path}: permission denied") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyNotFoundError(f"{what} {path}: cannot read ({type(exc).__name__})") from None
    if not value:
        raise KeyNotFoundError(f"{what} {path}: file is empty")
    return value
