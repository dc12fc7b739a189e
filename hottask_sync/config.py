"""The TOML configuration: parsed strictly into frozen dataclasses, every problem reported at once.

The dataclasses below are the one definition of every key: its default is the field's default,
and its type, range and documentation are the field's ``metadata["key"]`` (a :class:`KeyDoc`).
The reader takes both from there, and :mod:`hottask_sync.example` generates the commented
example config (``hottask-sync init``, config.example.toml) and the README's table from them.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import stat
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import MISSING, Field, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, get_args
from urllib.parse import urlsplit

import structlog

from .backoff import AUTH_FIRST_PROBE_SECONDS, AUTH_PROBE_CAP_SECONDS
from .errors import ConfigError, KeyNotFoundError
from .patterns import Selector, is_partial_or_hidden, pattern_problem

DEFAULT_BASE_URL = "https://usapi.hottask.com"
KEY_ENV = "HOTTASK_API_KEY"
CREDENTIAL_NAME = "hottask-api-key"

AfterUpload = Literal["keep", "move", "delete"]
LogFormat = Literal["auto", "json", "console"]
LogLevel = Literal["debug", "info", "warning", "error", "critical"]
LOG_LEVELS: tuple[str, ...] = get_args(LogLevel)

Kind = Literal["number", "int", "bool", "string", "path", "globs", "choice"]


@dataclass(frozen=True)
class KeyDoc:
    """How one config key is read, checked and documented: a dataclass field's ``metadata["key"]``.

    ``doc`` is the meaning (Markdown; the example config shows it without backticks). A field
    without a default is required unless ``default_doc`` says what it falls back to; ``shown``
    is the value the example config shows for it. ``note`` lines are shown in the example only.
    """

    doc: str
    kind: Kind
    low: float | None = None
    high: float | None = None
    positive: bool = False
    choices: tuple[str, ...] = ()
    check: Callable[[Any], str | None] | None = field(default=None, compare=False)
    shown: str | None = None
    default_doc: str | None = None
    note: tuple[str, ...] = ()

    def problem(self, value: Any) -> str | None:
        """Given a value of the right TOML type, returns what is wrong with it, or None."""
        if self.choices and value not in self.choices:
            listed = ", ".join(f'"{c}"' for c in self.choices)
            return f"must be one of {listed}, got {value!r}"
        if self.positive and not value > 0:
            return "must be > 0"
        if self.low is not None and self.high is not None and not self.low <= value <= self.high:
            return f"must be between {self.low:g} and {self.high:g}"
        if self.low is not None and value < self.low:
            return f"must be >= {self.low:g}"
        return None if self.check is None else self.check(value)


def _doc(doc: str, kind: Kind, **spec: Any) -> dict[str, KeyDoc]:
    """Returns the metadata that makes a dataclass field a config key."""
    return {"key": KeyDoc(doc, kind, **spec)}


def _check_listen(value: str) -> str | None:
    if value == "":
        return None
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        return f'must be "HOST:PORT" like "127.0.0.1:9464", got {value!r}'
    return None


#: The longest shutdown grace: with the abort's unwinding and the thread joins after it, a
#: stop takes at most this + runtime.ABORT_WAIT_SECONDS + runtime.JOIN_SECONDS (checked
#: against the unit's TimeoutStopSec by a test).
MAX_SHUTDOWN_GRACE_SECONDS = 20.0

_KEY_PLACES = (
    "The secret key is never written here. It is read, in this order, from:",
    "  1. the file named by api_key_file (absolute path; whitespace is stripped),",
    f"  2. the environment variable {KEY_ENV},",
    f"  3. $CREDENTIALS_DIRECTORY/{CREDENTIAL_NAME} (systemd LoadCredential=).",
)


@dataclass(frozen=True)
class ApiConfig:
    base_url: str = field(
        default=DEFAULT_BASE_URL,
        metadata=_doc(
            "HotTask API. `http://` only for loopback hosts (the local emulator) "
            "unless `allow_insecure_http`.",
            "string",
        ),
    )
    timeout_seconds: float = field(
        default=30.0,
        metadata=_doc(
            "Connect/read/write timeout of each call, in seconds. "
            "A PUT must also average ≥ 16 KiB/s.",
            "number",
            positive=True,
        ),
    )
    api_key_file: Path | None = field(
        default=None,
        metadata=_doc(
            "Absolute path of a file holding the key.",
            "path",
            shown="/etc/hottask-sync/api-key",
            note=_KEY_PLACES,
        ),
    )
    allow_insecure_http: bool = field(
        default=False, metadata=_doc("Allow `http://` to a non-loopback host.", "bool")
    )
    auth_probe_seconds: float = field(
        default=AUTH_FIRST_PROBE_SECONDS,
        metadata=_doc(
            "After the key was refused, seconds until the first probe; the delay then "
            f"doubles up to {AUTH_PROBE_CAP_SECONDS / 60:g} min.",
            "number",
            positive=True,
        ),
    )


@dataclass(frozen=True)
class SyncConfig:
    state_dir: Path = field(
        metadata=_doc(
            "Where the ledger lives (local disk only).",
            "path",
            shown="/var/lib/hottask-sync",
            default_doc="see below",
            note=(
                "Default: $STATE_DIRECTORY (systemd StateDirectory=), else",
                "$XDG_STATE_HOME/hottask-sync, else ~/.local/state/hottask-sync.",
            ),
        )
    )
    settle_seconds: float = field(
        default=2.0,
        metadata=_doc(
            "Quiet time (seconds) before a file counts as complete: no event, and size, "
            "mtime and inode unchanged.",
            "number",
            low=0,
        ),
    )
    concurrency: int = field(
        default=4, metadata=_doc("Uploads running at once.", "int", low=1, high=64)
    )
    rescan_seconds: float = field(
        default=300.0,
        metadata=_doc(
            "Full rescan period (seconds), to catch what inotify missed; `0` = off.",
            "number",
            low=0,
        ),
    )
    ledger_retention_days: float = field(
        default=30.0,
        metadata=_doc(
            "Days the ledger keeps the row of a file that is gone (moved or deleted after "
            "upload, or deleted by a user) before forgetting it; `0` = keep forever. A "
            "forgotten file that comes back is uploaded again.",
            "number",
            low=0,
        ),
    )
    max_attempts: int = field(
        default=5,
        metadata=_doc(
            "Permanent-error attempts before a file is marked failed "
            "(transient errors are retried forever).",
            "int",
            low=1,
            high=1000,
        ),
    )
    shutdown_grace_seconds: float = field(
        default=10.0,
        metadata=_doc(
            "Seconds running uploads get to finish on SIGTERM (then they are cut off, and "
            "resumed at the next start); at most 20, so that the whole stop fits the unit's "
            "`TimeoutStopSec=30`.",
            "number",
            low=0,
            high=MAX_SHUTDOWN_GRACE_SECONDS,
        ),
    )
    bandwidth_limit: int = field(
        default=0,
        metadata=_doc("Bytes per second across all uploads; `0` = no limit.", "int", low=0),
    )
    allow_network_state_dir: bool = field(
        default=False,
        metadata=_doc(
            "Allow `state_dir` on a network filesystem (NFS, SMB, ...), where SQLite's "
            "write-ahead log is unsafe: refused unless set.",
            "bool",
        ),
    )


@dataclass(frozen=True)
class LoggingConfig:
    format: LogFormat = field(
        default="auto",
        metadata=_doc(
            "`auto`: console on a terminal, JSON lines otherwise.",
            "choice",
            choices=get_args(LogFormat),
        ),
    )
    level: LogLevel = field(
        default="info",
        metadata=_doc("The least severe level that is logged.", "choice", choices=LOG_LEVELS),
    )


@dataclass(frozen=True)
class MetricsConfig:
    listen: str = field(
        default="",
        metadata=_doc(
            "`HOST:PORT` for Prometheus metrics, e.g. `127.0.0.1:9464`; empty = off.",
            "string",
            check=_check_listen,
        ),
    )

    @property
    def address(self) -> tuple[str, int] | None:
        """Returns (host, port) to serve metrics on, or None when metrics are off."""
        if not self.listen:
            return None
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]"), int(port)


_GLOB_RULES = (
    "Globs on the path relative to the folder (gitignore patterns). A glob",
    'without "/" matches a name at any depth ("*.pdf"); with "/" it matches from',
    'the folder\'s root ("scans/**/*.pdf"). A leading "!" or "#" is literal.',
    "Hidden files and partial downloads (*.part, *.tmp, *.crdownload, ~$*, ...)",
    "are always skipped.",
)


@dataclass(frozen=True)
class FolderConfig:
    path: Path = field(
        metadata=_doc(
            "Absolute path of a folder to watch; links in it are resolved once, at load. "
            "Folders must not overlap, unless the outer one excludes the inner.",
            "path",
            shown="/srv/hottask/inbox",
        )
    )
    recursive: bool = field(default=True, metadata=_doc("Watch subfolders too.", "bool"))
    include: tuple[str, ...] = field(
        default=(), metadata=_doc("Only these (empty = all).", "globs", note=_GLOB_RULES)
    )
    exclude: tuple[str, ...] = field(default=(), metadata=_doc("Never these.", "globs"))
    after_upload: AfterUpload = field(
        default="keep",
        metadata=_doc(
            "What happens to an uploaded file: kept, moved into `move_to` (keeping its "
            "relative path, never overwriting) or deleted.",
            "choice",
            choices=get_args(AfterUpload),
        ),
    )
    move_to: Path | None = field(
        default=None,
        metadata=_doc(
            'Required with `"move"`; outside the folder, or excluded.',
            "path",
            shown="/srv/hottask/done",
        ),
    )
    poll: bool = field(
        default=False,
        metadata=_doc("Poll instead of inotify (network shares: NFS, SMB).", "bool"),
    )
    selector: Selector = field(default_factory=Selector, compare=False, repr=False)
    #: The path as written in the config (normalised), when it differs from ``path``, the
    #: real folder it leads to (through a link, say); None when they are the same. For
    #: messages, and to find ledger rows recorded under that spelling by older versions.
    configured: Path | None = field(default=None, compare=False)

    @property
    def key(self) -> str:
        """The folder's identity in the ledger: its real absolute path (links resolved at
        load), so another spelling of the same folder is the same folder."""
        return str(self.path)

    @property
    def shown(self) -> str:
        """The folder for a message: as configured, and where it really is if elsewhere."""
        if self.configured is None:
            return str(self.path)
        return f"{self.configured} (resolves to {self.path})"


@dataclass(frozen=True)
class Config:
    source: Path
    api: ApiConfig
    sync: SyncConfig
    logging: LoggingConfig
    metrics: MetricsConfig
    folders: tuple[FolderConfig, ...]


#: The TOML tables in order; "folders" is an array of tables.
SECTIONS: tuple[tuple[str, type[Any]], ...] = (
    ("api", ApiConfig),
    ("sync", SyncConfig),
    ("logging", LoggingConfig),
    ("metrics", MetricsConfig),
    ("folders", FolderConfig),
)


def key_fields(cls: type[Any]) -> tuple[Field[Any], ...]:
    """Given a config dataclass, returns its fields that are config keys, in order."""
    return tuple(f for f in fields(cls) if "key" in f.metadata)


def key_doc(f: Field[Any]) -> KeyDoc:
    """Given a key field, returns how it is read, checked and documented."""
    doc: KeyDoc = f.metadata["key"]
    return doc


def has_default(f: Field[Any]) -> bool:
    """Returns True when the field has a default value (possibly None)."""
    return f.default is not MISSING or f.default_factory is not MISSING


def is_required(f: Field[Any]) -> bool:
    """Returns True for a key that must be set: no default, and no documented fallback."""
    return not has_default(f) and key_doc(f).default_doc is None


def field_default(f: Field[Any]) -> Any:
    """Given a field, returns its default value (None when it has none)."""
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return None


@dataclass(frozen=True)
class ApiKey:
    """The secret key and where it was read from; never shown by repr or str."""

    value: str = field(repr=False)
    source: str

    def __str__(self) -> str:
        return f"<API key from {self.source}>"


# --- reading -----------------------------------------------------------------------------

_TOML_TYPES: dict[Kind, tuple[type, ...]] = {
    "number": (int, float),
    "int": (int,),
    "bool": (bool,),
    "string": (str,),
    "path": (str,),
    "choice": (str,),
}


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

    def value(self, table: Mapping[str, Any], prefix: str, f: Field[Any]) -> Any:
        """Returns the key's checked value; its default (None if none) when absent or wrong."""
        default, spec = field_default(f), key_doc(f)
        if f.name not in table:
            return default
        dotted, value = f"{prefix}.{f.name}", table[f.name]
        if spec.kind == "globs":
            return self.globs(dotted, value, default)
        kinds = _TOML_TYPES[spec.kind]
        # bool is an int in Python, but `concurrency = true` is a mistake worth naming.
        ok = False if isinstance(value, bool) and bool not in kinds else isinstance(value, kinds)
        if not ok:
            self.problem(dotted, f"must be {_kinds_name(kinds)}, got {_type_name(value)}")
            return default
        if (message := spec.problem(value)) is not None:
            self.problem(dotted, message)
            return default
        return float(value) if spec.kind == "number" else value

    def globs(self, dotted: str, value: Any, default: tuple[str, ...]) -> tuple[str, ...]:
        """Returns the usable globs of an array; each unusable one is a problem of its own."""
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            self.problem(dotted, "must be an array of non-empty glob strings")
            return default
        usable: list[str] = []
        for i, pattern in enumerate(value):
            if (reason := pattern_problem(pattern)) is not None:
                self.problem(f"{dotted}[{i}]", f"invalid pattern {pattern!r}: {reason}")
            else:
                usable.append(pattern)
        return tuple(usable)

    def section(self, table: Mapping[str, Any], prefix: str, cls: type[Any]) -> dict[str, Any]:
        """Returns every key of a config dataclass read from the table, by field name."""
        return {f.name: self.value(table, prefix, f) for f in key_fields(cls)}


def known_keys(cls: type[Any]) -> set[str]:
    """Given a config dataclass, returns the names of its keys."""
    return {f.name for f in key_fields(cls)}


def _type_name(value: object) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}
    names |= {list: "an array", dict: "a table"}
    return names.get(type(value), type(value).__name__)


def _kinds_name(kinds: tuple[type, ...]) -> str:
    if set(kinds) == {int, float}:
        return "a number"
    return " or ".join(_type_name(k()) for k in kinds)


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


@functools.lru_cache(maxsize=256)
def is_loopback_host(host: str) -> bool:
    """Returns True for localhost and loopback IP literals (cached: every upload URL's host
    is asked about)."""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


API_KEYS = known_keys(ApiConfig)
SYNC_KEYS = known_keys(SyncConfig)
LOGGING_KEYS = known_keys(LoggingConfig)
METRICS_KEYS = known_keys(MetricsConfig)
FOLDER_KEYS = known_keys(FolderConfig)
TOP_KEYS = {name for name, _ in SECTIONS}


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
    log = LoggingConfig(
        **r.section(r.table(data, "logging", LOGGING_KEYS), "logging", LoggingConfig)
    )
    metrics = MetricsConfig(
        **r.section(r.table(data, "metrics", METRICS_KEYS), "metrics", MetricsConfig)
    )
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
    values = r.section(t, "api", ApiConfig)
    base_url: str = values["base_url"]
    try:
        parts = urlsplit(base_url)
        hostname = parts.hostname
    except ValueError:
        parts, hostname = urlsplit(""), None
    if parts.scheme not in ("http", "https") or not hostname:
        r.problem(
            "api.base_url", f"must be an http(s) URL like {DEFAULT_BASE_URL}, got {base_url!r}"
        )
    elif (
        parts.scheme == "http"
        and not values["allow_insecure_http"]
        and not is_loopback_host(hostname)
    ):
        r.problem(
            "api.base_url",
            "http:// is only allowed for loopback hosts; use https:// "
            "(or set api.allow_insecure_http = true)",
        )
    elif parts.query or parts.fragment:
        r.problem("api.base_url", "must not have a query or fragment")
    key_file = values["api_key_file"]
    if key_file and not Path(key_file).is_absolute():
        # Not echoed: someone may have pasted the key itself here.
        r.problem("api.api_key_file", "must be an absolute path to a file holding the key")
    values["base_url"] = base_url.rstrip("/")
    values["api_key_file"] = Path(key_file) if key_file else None
    return ApiConfig(**values)


def _read_sync(r: _Reader, data: Mapping[str, Any], environ: Mapping[str, str]) -> SyncConfig:
    values = r.section(r.table(data, "sync", SYNC_KEYS), "sync", SyncConfig)
    state_dir = values["state_dir"]
    if state_dir and not Path(state_dir).is_absolute():
        r.problem("sync.state_dir", f"must be an absolute path, got {state_dir!r}")
    values["state_dir"] = Path(state_dir) if state_dir else default_state_dir(environ)
    return SyncConfig(**values)


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
    folders: list[tuple[int, FolderConfig]] = []  # with their index in the file
    for i, t in enumerate(raw):
        folder = _read_folder(r, t, f"folders[{i}]")
        if folder is not None:
            folders.append((i, folder))
    _check_overlaps(r, folders)
    return tuple(folder for _, folder in folders)


def _read_folder(r: _Reader, t: Mapping[str, Any], prefix: str) -> FolderConfig | None:
    r.unknown(t, prefix, FOLDER_KEYS)
    values = r.section(t, prefix, FolderConfig)
    raw_path = values["path"]
    if "path" not in t:
        r.problem(f"{prefix}.path", "required (the absolute path of a folder to watch)")
    elif raw_path is not None and not Path(raw_path).is_absolute():
        r.problem(f"{prefix}.path", f"must be an absolute path, got {raw_path!r}")
    absolute = bool(raw_path) and Path(raw_path).is_absolute()
    # The real folder is its identity (and what is watched): resolved once, here. A part
    # that does not exist yet is kept as written (the daemon waits for the folder).
    path = Path(os.path.realpath(raw_path)) if absolute else None
    configured = Path(os.path.normpath(raw_path)) if absolute else None
    move_to_raw = values["move_to"]
    values["move_to"] = Path(os.path.normpath(move_to_raw)) if move_to_raw else None
    values["selector"] = Selector.of(values["include"], values["exclude"])
    _check_move_to(r, prefix, path, move_to_raw, values)
    if path is None:
        return None
    values["path"] = path
    values["configured"] = configured if configured != path else None
    return FolderConfig(**values)


def _check_move_to(
    r: _Reader, prefix: str, path: Path | None, raw: str | None, values: dict[str, Any]
) -> None:
    """Reports a move_to that is missing, unused, relative, or inside the folder unexcluded
    (compared as real paths: ``path`` is the folder's)."""
    after, move_to, selector = values["after_upload"], values["move_to"], values["selector"]
    key = f"{prefix}.move_to"
    if after == "move" and move_to is None:
        r.problem(key, 'required when after_upload = "move"')
    if move_to is None:
        return
    if after != "move":
        r.problem(key, 'only used with after_upload = "move"')
    elif not move_to.is_absolute():
        r.problem(key, f"must be an absolute path, got {raw!r}")
    elif path is not None:
        real = Path(os.path.realpath(move_to))
        if real == path:
            r.problem(key, "must not be the watched folder itself")
        elif real.is_relative_to(path):
            rel = real.relative_to(path).as_posix()
            if not selector.excluded_dir(rel) and not is_partial_or_hidden(rel):
                r.problem(
                    key,
                    f"is inside the watched folder; add {rel!r} to {prefix}.exclude "
                    "or choose a folder outside it",
                )


def _check_overlaps(r: _Reader, folders: list[tuple[int, FolderConfig]]) -> None:
    """Reports two entries naming the same real folder, and a folder inside another that
    does not exclude it (its files would be uploaded twice): at most one problem per entry,
    at the later one's key, naming both entries' keys and paths."""
    for n, (j, later) in enumerate(folders):
        for i, earlier in folders[:n]:
            if (message := _overlap(i, earlier, j, later)) is not None:
                r.problem(f"folders[{j}].path", message)
                break


def _overlap(i: int, earlier: FolderConfig, j: int, later: FolderConfig) -> str | None:
    """Returns what is wrong with ``later`` (folders[j]) beside ``earlier`` (folders[i])."""
    other = f"folders[{i}].path {earlier.shown}"
    if later.path == earlier.path:
        return f"{later.shown} is already configured as {other}"
    if later.path.is_relative_to(earlier.path) and not _keeps_out(earlier, later):
        return f"{later.shown} is inside {other}; {_overlap_hint(i, earlier, later)}"
    if earlier.path.is_relative_to(later.path) and not _keeps_out(later, earlier):
        return f"{later.shown} contains {other}; {_overlap_hint(j, later, earlier)}"
    return None


def _keeps_out(outer: FolderConfig, inner: FolderConfig) -> bool:
    """Returns True when ``outer`` never takes a file inside ``inner`` (a folder below it):
    it is not recursive, or it never descends into the inner folder or one on the way."""
    if not outer.recursive:
        return True  # it takes no file below a folder of its own
    parts = inner.path.relative_to(outer.path).parts
    return any(
        not outer.selector.may_descend("/".join(parts[:k])) for k in range(1, len(parts) + 1)
    )


def _overlap_hint(index: int, outer: FolderConfig, inner: FolderConfig) -> str:
    """Returns why an overlap is wrong and the exclude (anchored to the root) that fixes it."""
    rel = inner.path.relative_to(outer.path).as_posix()
    return (
        f"its files would be uploaded twice: add {'/' + rel + '/'!r} to folders[{index}].exclude "
        "or remove one of them"
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

    Surrounding whitespace is stripped; what is left must be one token of printable ASCII.
    Raises KeyNotFoundError (exit 2) when the configured file is unreadable or empty, when the
    key found is malformed (more than one line, whitespace inside, a character that is not
    printable ASCII), or when it is found nowhere (the message names all three places). Every
    message names the file or variable; the key itself is never in a message.
    """
    env = os.environ if environ is None else environ
    if api.api_key_file is not None:
        return ApiKey(_read_key_file(api.api_key_file, "api.api_key_file"), str(api.api_key_file))
    raw = env.get(KEY_ENV, "").encode("utf-8", "surrogateescape").strip()
    if raw:
        return ApiKey(_checked_key(raw, f"${KEY_ENV}"), f"${KEY_ENV}")
    if creds := env.get("CREDENTIALS_DIRECTORY"):
        cred = Path(creds) / CREDENTIAL_NAME
        if cred.exists():
            return ApiKey(_read_key_file(cred, "credential"), str(cred))
    raise KeyNotFoundError("no API key found; looked in " + ", ".join(key_places(api, env)))


#: No key is this long: a bigger file is the wrong file, and is not read whole.
MAX_KEY_BYTES = 16 * 1024
_KEY_RULE = "the key must be one line of printable ASCII with no spaces inside"
#: (path, mode) pairs already warned about: the key is read again on every reload and
#: before every auth probe, and one warning per file and mode is enough.
_warned_modes: set[tuple[str, int]] = set()


def _read_key_file(path: Path, what: str) -> str:
    """Returns the key held in ``path`` (``what`` names it in errors), checked as
    :func:`resolve_api_key` says; warns once when the file is readable by group or others."""
    try:
        # Non-blocking: a FIFO put there must not hang the reader (it is refused below).
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            mode = os.fstat(fd).st_mode
            if not stat.S_ISREG(mode):
                raise KeyNotFoundError(f"{what} {path}: not a regular file")
            raw = os.read(fd, MAX_KEY_BYTES + 1)
        finally:
            os.close(fd)
    except FileNotFoundError:
        raise KeyNotFoundError(f"{what} {path}: no such file") from None
    except PermissionError:
        raise KeyNotFoundError(f"{what} {path}: permission denied") from None
    except OSError as exc:
        raise KeyNotFoundError(f"{what} {path}: cannot read ({type(exc).__name__})") from None
    if len(raw) > MAX_KEY_BYTES:
        raise KeyNotFoundError(f"{what} {path}: over {MAX_KEY_BYTES} bytes, not a key file")
    raw = raw.strip()
    if not raw:
        raise KeyNotFoundError(f"{what} {path}: file is empty")
    value = _checked_key(raw, f"{what} {path}")
    _warn_if_exposed(path, mode)
    return value


def _checked_key(raw: bytes, where: str) -> str:
    """Given a key stripped of surrounding whitespace, returns it as text; raises
    KeyNotFoundError naming ``where`` (never the key) unless it is one printable-ASCII token.

    Sent as is, a malformed key is refused by the HTTP library with a message that quotes it
    escaped (``b'sk-1\\nsk-2'``), which redaction of the literal key does not catch.
    """
    if b"\n" in raw or b"\r" in raw:
        why = "it has more than one line"
    elif any(byte in b" \t\v\f" for byte in raw):
        why = "it has whitespace inside"
    elif not all(0x21 <= byte <= 0x7E for byte in raw):
        why = "it has a character that is not printable ASCII"
    else:
        return raw.decode("ascii")
    raise KeyNotFoundError(f"{where}: {_KEY_RULE}; {why}")


def _warn_if_exposed(path: Path, mode: int) -> None:
    """Logs a warning, once per file and mode, when the key file is readable by group or
    others: like ssh with a private key, though the key is still used."""
    if not mode & (stat.S_IRGRP | stat.S_IROTH) or (str(path), mode) in _warned_modes:
        return
    _warned_modes.add((str(path), mode))
    structlog.get_logger("hottask_sync.config").warning(
        "key.file_exposed",
        path=str(path),
        mode=f"{stat.S_IMODE(mode):04o}",
        hint=f"readable by group or others; chmod 600 {path}",
    )
