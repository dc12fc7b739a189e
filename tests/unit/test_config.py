"""Unit tests for hottask_sync.config: strict parsing, every problem at once, the secret key."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from hottask_sync.config import (
    DEFAULT_BASE_URL,
    ApiConfig,
    ApiKey,
    Config,
    load_config,
    resolve_api_key,
)
from hottask_sync.errors import ConfigError, KeyNotFoundError

ENV: dict[str, str] = {"HOME": "/home/tester"}
FOLDER = '[[folders]]\npath = "/srv/inbox"\n'
SECRET = "hk_live_7Qz9S3CR3T-value_do_not_print"


def write(tmp_path: Path, text: str, name: str = "hottask-sync.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def problems(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> list[str]:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, environ=ENV if environ is None else environ)
    assert str(info.value) == "\n".join(info.value.problems)
    return info.value.problems


def load(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> Config:
    return load_config(write(tmp_path, text), environ=ENV if environ is None else environ)


# --- problem format and collection -------------------------------------------------------


def test_unknown_key_is_reported_with_file_and_dotted_key(tmp_path: Path) -> None:
    path = tmp_path / "hottask-sync.toml"
    assert problems(tmp_path, "[sync]\nsetle_seconds = 3\n" + FOLDER) == [
        f"{path}: sync.setle_seconds: unknown key"
    ]


def test_unknown_keys_in_every_table(tmp_path: Path) -> None:
    text = (
        "colour = 1\n[api]\nbase = 1\n[logging]\nlvl = 1\n[metrics]\nport = 1\n"
        '[[folders]]\npath = "/srv/in"\nrecurse = true\n'
    )
    found = problems(tmp_path, text)
    keys = [p.split(": ")[1] for p in found]
    assert keys == ["colour", "api.base", "logging.lvl", "metrics.port", "folders[0].recurse"]
    assert all(p.endswith(": unknown key") for p in found)


def test_three_mistakes_give_three_problems(tmp_path: Path) -> None:
    text = '[sync]\nsetle_seconds = 3\nconcurrency = "4"\n[logging]\nlevel = "loud"\n' + FOLDER
    path = tmp_path / "hottask-sync.toml"
    assert problems(tmp_path, text) == [
        f"{path}: sync.setle_seconds: unknown key",
        f"{path}: sync.concurrency: must be an integer, got a string",
        f"{path}: logging.level: must be one of "
        '"debug", "info", "warning", "error", "critical", got \'loud\'',
    ]


def test_every_problem_line_has_the_file_key_message_shape(tmp_path: Path) -> None:
    text = (
        "[api]\ntimeout_seconds = 0\n[sync]\nmax_attempts = 0\nrescan_seconds = -1\n"
        '[[folders]]\npath = "rel/dir"\n'
    )
    path = tmp_path / "hottask-sync.toml"
    found = problems(tmp_path, text)
    assert len(found) == 4
    shape = re.compile(rf"^{re.escape(str(path))}: [a-z_]+(\[\d+\])?(\.[a-z_]+)*: \S.*$")
    for line in found:
        assert shape.match(line), line


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('concurrency = "4"', "sync.concurrency: must be an integer, got a string"),
        ("concurrency = true", "sync.concurrency: must be an integer, got a boolean"),
        ("concurrency = 4.0", "sync.concurrency: must be an integer, got a number"),
        ('settle_seconds = "2"', "sync.settle_seconds: must be a number, got a string"),
        ("settle_seconds = false", "sync.settle_seconds: must be a number, got a boolean"),
        ("state_dir = 3", "sync.state_dir: must be a string, got an integer"),
    ],
)
def test_wrong_type(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "hottask-sync.toml"
    assert problems(tmp_path, f"[sync]\n{line}\n" + FOLDER) == [f"{path}: {message}"]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("settle_seconds = -0.5", "sync.settle_seconds: must be >= 0"),
        ("concurrency = 0", "sync.concurrency: must be between 1 and 64"),
        ("concurrency = 65", "sync.concurrency: must be between 1 and 64"),
        ("max_attempts = 0", "sync.max_attempts: must be between 1 and 1000"),
        ("bandwidth_limit = -1", "sync.bandwidth_limit: must be >= 0"),
    ],
)
def test_out_of_range(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "hottask-sync.toml"
    assert problems(tmp_path, f"[sync]\n{line}\n" + FOLDER) == [f"{path}: {message}"]


def test_range_edges_are_accepted(tmp_path: Path) -> None:
    text = "[sync]\nsettle_seconds = 0\nconcurrency = 64\n" + FOLDER
    config = load(tmp_path, text)
    assert config.sync.settle_seconds == 0.0
    assert isinstance(config.sync.settle_seconds, float)
    assert config.sync.concurrency == 64
    assert load(tmp_path, "[sync]\nconcurrency = 1\n" + FOLDER).sync.concurrency == 1


def test_table_given_as_value(tmp_path: Path) -> None:
    path = tmp_path / "hottask-sync.toml"
    assert problems(tmp_path, 'sync = "fast"\n' + FOLDER) == [
        f"{path}: sync: must be a table, got a string"
    ]


def test_toml_syntax_error_names_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "hottask-sync.toml"
    found = problems(tmp_path, "[sync]\nconcurrency 4\n" + FOLDER)
    assert len(found) == 1
    assert re.fullmatch(
        rf"{re.escape(str(path))}: line 2, column \d+: TOML syntax error: .+", found[0]
    ), found[0]


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load_config(path, environ=ENV)
    assert len(info.value.problems) == 1
    assert info.value.problems[0].startswith(f"{path}: no such file")
    assert info.value.exit_code == 2


def test_directory_given_as_config(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path, environ=ENV)
    assert info.value.problems == [f"{tmp_path}: is a directory, not a config file"]


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_bytes(b'[sync]\nstate_dir = "/srv/\xff"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path, environ=ENV)
    assert info.value.problems[0].startswith(f"{path}: not valid UTF-8")


# --- folders ---------------------------------------------------------------------------------


def test_missing_folders(tmp_path: Path) -> None:
    path = tmp_path / "hottask-sync.toml"
    found = problems(tmp_path, "[sync]\nconcurrency = 2\n")
    assert found == [f"{path}: folders: at least one [[folders]] table with a path is required"]


def test_empty_folders_array(tmp_path: Path) -> None:
    found = problems(tmp_path, "folders = []\n")
    assert len(found) == 1
    assert ": folders: at least one [[folders]]" in found[0]


def test_folders_as_a_single_table(tmp_path: Path) -> None:
    found = problems(tmp_path, '[folders]\npath = "/srv/in"\n')
    assert found == [
        f"{tmp_path / 'hottask-sync.toml'}: folders: must be an array of tables ([[folders]])"
    ]


def test_folder_without_path(tmp_path: Path) -> None:
    path = tmp_path / "hottask-sync.toml"
    found = problems(tmp_path, FOLDER + "[[folders]]\nrecursive = false\n")
    assert found == [f"{path}: folders[1].path: required (the absolute path of a folder to watch)"]


def test_folder_relative_path(tmp_path: Path) -> None:
    path = tmp_path / "hottask-sync.toml"
    found = problems(tmp_path, '[[folders]]\npath = "inbox/scans"\n')
    assert found == [f"{path}: folders[0].path: must be an absolute path, got 'inbox/scans'"]


def test_folder_empty_path_is_refused_not_dropped(tmp_path: Path) -> None:
    found = problems(tmp_path, '[[folders]]\npath = ""\n')
    assert len(found) == 1
    assert "folders[0].path: must be an absolute path" in found[0]


def test_duplicate_folder(tmp_path: Path) -> None:
    found = problems(tmp_path, FOLDER + '[[folders]]\npath = "/srv/inbox/"\n')
    assert len(found) == 1
    assert "folders[1].path: /srv/inbox is already configured as folders[0]" in found[0]


def test_folder_defaults_and_normalised_path(tmp_path: Path) -> None:
    config = load(tmp_path, '[[folders]]\npath = "/srv/./inbox/"\n')
    (folder,) = config.folders
    assert folder.path == Path("/srv/inbox")
    assert folder.key == "/srv/inbox"
    assert folder.recursive is True
    assert (folder.include, folder.exclude) == ((), ())
    assert folder.after_upload == "keep"
    assert folder.move_to is None
    assert folder.poll is False


def test_bad_globs(tmp_path: Path) -> None:
    text = '[[folders]]\npath = "/srv/in"\ninclude = "*.pdf"\nexclude = ["", "x"]\n'
    found = problems(tmp_path, text)
    assert [p.split(": ")[1] for p in found] == ["folders[0].include", "folders[0].exclude"]


@pytest.mark.parametrize(
    ("pattern", "reason"),
    [
        ("[]", "unclosed '['"),
        ("[!]", "unclosed '['"),
        ("a[b-a]c", "invalid character class '[b-a]': bad character range b-a"),
    ],
)
def test_unusable_glob_is_a_config_problem_not_a_traceback(
    tmp_path: Path, pattern: str, reason: str
) -> None:
    # Issue 9, item 7: these ended in an re.error traceback at load.
    path = tmp_path / "hottask-sync.toml"
    found = problems(tmp_path, FOLDER + f"include = ['{pattern}']\n")
    assert len(found) == 1
    prefix = f"{path}: folders[0].include[0]: invalid pattern {pattern!r}: "
    assert found[0].startswith(prefix), found[0]
    assert reason in found[0]


def test_unusable_globs_are_collected_with_the_other_problems(tmp_path: Path) -> None:
    text = (
        "[sync]\nconcurrency = 0\n"
        '[[folders]]\npath = "/srv/a"\n'
        "[[folders]]\npath = \"/srv/b\"\ninclude = ['*.pdf', '[]']\n"
        "exclude = ['ok', 'a[b-a]c', '[!]']\ncolour = 1\n"
    )
    path = tmp_path / "hottask-sync.toml"
    found = problems(tmp_path, text)
    assert [p.split(": ")[1] for p in found] == [
        "sync.concurrency",
        "folders[1].colour",
        "folders[1].include[1]",
        "folders[1].exclude[1]",
        "folders[1].exclude[2]",
    ]
    assert found[2] == (
        f"{path}: folders[1].include[1]: invalid pattern '[]': unclosed '[' (a ']' right after "
        "'[' or '[!' is in the set; write \\[ for a literal '[')"
    )


def test_escaped_bracket_glob_is_accepted(tmp_path: Path) -> None:
    config = load(tmp_path, FOLDER + "include = ['\\[]', '[]]']\n")
    folder = config.folders[0]
    assert folder.include == ("\\[]", "[]]")
    assert folder.selector.wants("x/[]")
    assert folder.selector.wants("]")
    assert not folder.selector.wants("a.pdf")


def test_after_upload_move_requires_move_to(tmp_path: Path) -> None:
    path = tmp_path / "hottask-sync.toml"
    found = problems(tmp_path, FOLDER + 'after_upload = "move"\n')
    assert found == [f'{path}: folders[0].move_to: required when after_upload = "move"']


def test_after_upload_unknown_value(tmp_path: Path) -> None:
    found = problems(tmp_path, FOLDER + 'after_upload = "archive"\n')
    assert len(found) == 1
    assert 'folders[0].after_upload: must be one of "keep", "move", "delete"' in found[0]


def test_move_to_without_move(tmp_path: Path) -> None:
    found = problems(tmp_path, FOLDER + 'move_to = "/srv/done"\n')
    assert len(found) == 1
    assert 'folders[0].move_to: only used with after_upload = "move"' in found[0]


def test_move_to_outside_is_accepted(tmp_path: Path) -> None:
    config = load(tmp_path, FOLDER + 'after_upload = "move"\nmove_to = "/srv/done"\n')
    assert config.folders[0].after_upload == "move"
    assert config.folders[0].move_to == Path("/srv/done")


def test_move_to_relative(tmp_path: Path) -> None:
    found = problems(tmp_path, FOLDER + 'after_upload = "move"\nmove_to = "done"\n')
    assert len(found) == 1
    assert "folders[0].move_to: must be an absolute path, got 'done'" in found[0]


def test_move_to_the_folder_itself(tmp_path: Path) -> None:
    found = problems(tmp_path, FOLDER + 'after_upload = "move"\nmove_to = "/srv/inbox/"\n')
    assert len(found) == 1
    assert "folders[0].move_to: must not be the watched folder itself" in found[0]


def test_move_to_inside_the_folder_is_refused(tmp_path: Path) -> None:
    found = problems(tmp_path, FOLDER + 'after_upload = "move"\nmove_to = "/srv/inbox/done"\n')
    assert len(found) == 1
    assert (
        "folders[0].move_to: is inside the watched folder; add 'done' to folders[0].exclude"
        in (found[0])
    )


@pytest.mark.parametrize("exclude", ["done", "/done", "**/done", "d*"])
def test_move_to_inside_but_excluded_is_accepted(tmp_path: Path, exclude: str) -> None:
    text = FOLDER + f'after_upload = "move"\nmove_to = "/srv/inbox/done"\nexclude = ["{exclude}"]\n'
    config = load(tmp_path, text)
    folder = config.folders[0]
    assert folder.move_to == Path("/srv/inbox/done")
    assert not folder.selector.wants("done/a.pdf")


def test_move_to_inside_with_unrelated_exclude_is_refused(tmp_path: Path) -> None:
    text = FOLDER + 'after_upload = "move"\nmove_to = "/srv/inbox/done"\nexclude = ["*.tmp2"]\n'
    found = problems(tmp_path, text)
    assert len(found) == 1
    assert "is inside the watched folder" in found[0]


# --- the API table ----------------------------------------------------------------------------


def test_inline_api_key_is_refused_without_echoing_it(tmp_path: Path) -> None:
    path = tmp_path / "hottask-sync.toml"
    found = problems(tmp_path, f'[api]\napi_key = "{SECRET}"\n' + FOLDER)
    assert len(found) == 1
    line = found[0]
    assert line.startswith(f"{path}: api.api_key: ")
    assert "api.api_key_file" in line
    assert "$HOTTASK_API_KEY" in line
    assert "hottask-api-key" in line  # the systemd credential
    assert SECRET not in line


def test_inline_api_key_at_top_level(tmp_path: Path) -> None:
    path = tmp_path / "hottask-sync.toml"
    found = problems(tmp_path, f'api_key = "{SECRET}"\n' + FOLDER)
    assert len(found) == 1
    assert found[0].startswith(f"{path}: api_key: ")
    assert "$HOTTASK_API_KEY" in found[0]
    assert "unknown key" not in found[0]
    assert SECRET not in found[0]


def test_inline_api_key_keeps_the_other_problems(tmp_path: Path) -> None:
    # The [api] api_key report must not swallow a problem found before it.
    text = f'colour = "red"\n[api]\napi_key = "{SECRET}"\n' + FOLDER
    found = problems(tmp_path, text)
    assert [p.split(": ")[1] for p in found] == ["colour", "api.api_key"]
    assert all(SECRET not in p for p in found)


@pytest.mark.parametrize(
    "url",
    ["http://api.example.com", "http://10.0.0.5:8080", "http://example.localhost.com"],
)
def test_http_base_url_refused_for_non_loopback(tmp_path: Path, url: str) -> None:
    found = problems(tmp_path, f'[api]\nbase_url = "{url}"\n' + FOLDER)
    assert len(found) == 1
    assert "api.base_url: http:// is only allowed for loopback hosts" in found[0]


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080",
        "http://127.0.0.2",
        "http://localhost:9000/",
        "http://[::1]:8443",
        "http://emu.localhost",
    ],
)
def test_http_base_url_allowed_for_loopback(tmp_path: Path, url: str) -> None:
    config = load(tmp_path, f'[api]\nbase_url = "{url}"\n' + FOLDER)
    assert config.api.base_url == url.rstrip("/")
    assert config.api.allow_insecure_http is False


def test_http_base_url_allowed_with_allow_insecure_http(tmp_path: Path) -> None:
    text = '[api]\nbase_url = "http://hottask.lan"\nallow_insecure_http = true\n' + FOLDER
    config = load(tmp_path, text)
    assert config.api.base_url == "http://hottask.lan"
    assert config.api.allow_insecure_http is True


@pytest.mark.parametrize(
    "url", ["usapi.hottask.com", "ftp://usapi.hottask.com", "https://", "http://[::1"]
)
def test_base_url_not_an_http_url(tmp_path: Path, url: str) -> None:
    found = problems(tmp_path, f'[api]\nbase_url = "{url}"\n' + FOLDER)
    assert len(found) == 1
    assert "api.base_url: must be an http(s) URL like https://usapi.hottask.com" in found[0]


def test_base_url_with_query(tmp_path: Path) -> None:
    found = problems(tmp_path, '[api]\nbase_url = "https://h.example/?x=1"\n' + FOLDER)
    assert len(found) == 1
    assert "api.base_url: must not have a query or fragment" in found[0]


def test_api_key_file_must_be_absolute(tmp_path: Path) -> None:
    found = problems(tmp_path, '[api]\napi_key_file = "key.txt"\n' + FOLDER)
    assert len(found) == 1
    assert "api.api_key_file: must be an absolute path" in found[0]


def test_timeout_must_be_positive(tmp_path: Path) -> None:
    found = problems(tmp_path, "[api]\ntimeout_seconds = 0\n" + FOLDER)
    assert len(found) == 1
    assert "api.timeout_seconds: must be > 0" in found[0]


def test_auth_probe_seconds(tmp_path: Path) -> None:
    assert load(tmp_path, FOLDER).api.auth_probe_seconds == 30.0
    config = load(tmp_path, "[api]\nauth_probe_seconds = 2\n" + FOLDER)
    assert config.api.auth_probe_seconds == 2.0
    assert isinstance(config.api.auth_probe_seconds, float)
    assert (
        load(tmp_path, "[api]\nauth_probe_seconds = 0.05\n" + FOLDER).api.auth_probe_seconds == 0.05
    )


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("auth_probe_seconds = 0", "api.auth_probe_seconds: must be > 0"),
        ("auth_probe_seconds = -1.5", "api.auth_probe_seconds: must be > 0"),
        ('auth_probe_seconds = "30"', "api.auth_probe_seconds: must be a number, got a string"),
        ("auth_probe_seconds = true", "api.auth_probe_seconds: must be a number, got a boolean"),
    ],
)
def test_auth_probe_seconds_invalid(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "hottask-sync.toml"
    assert problems(tmp_path, f"[api]\n{line}\n" + FOLDER) == [f"{path}: {message}"]


# --- defaults ----------------------------------------------------------------------------------


def test_defaults(tmp_path: Path) -> None:
    config = load(tmp_path, FOLDER)
    assert config.source == tmp_path / "hottask-sync.toml"
    assert DEFAULT_BASE_URL == "https://usapi.hottask.com"
    assert config.api.base_url == "https://usapi.hottask.com"
    assert config.api.timeout_seconds == 30.0
    assert config.api.api_key_file is None
    assert config.api.allow_insecure_http is False
    assert config.sync.settle_seconds == 2.0
    assert config.sync.concurrency == 4
    assert config.sync.rescan_seconds == 300.0
    assert config.sync.max_attempts == 5
    assert config.sync.bandwidth_limit == 0
    assert config.logging.format == "auto"
    assert config.logging.level == "info"
    assert config.metrics.listen == ""
    assert config.metrics.address is None
    assert config.sync.state_dir == Path("/home/tester/.local/state/hottask-sync")


def test_explicit_values(tmp_path: Path) -> None:
    text = (
        '[api]\nbase_url = "https://eu.example.com/"\ntimeout_seconds = 5\n'
        'api_key_file = "/etc/hottask/key"\n'
        '[sync]\nsettle_seconds = 0.5\nconcurrency = 8\nstate_dir = "/var/lib/hs"\n'
        '[logging]\nformat = "json"\nlevel = "debug"\n' + FOLDER
    )
    config = load(tmp_path, text)
    assert config.api.base_url == "https://eu.example.com"
    assert config.api.timeout_seconds == 5.0
    assert config.api.api_key_file == Path("/etc/hottask/key")
    assert config.sync.settle_seconds == 0.5
    assert config.sync.concurrency == 8
    assert config.sync.state_dir == Path("/var/lib/hs")
    assert (config.logging.format, config.logging.level) == ("json", "debug")


# --- state_dir -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        (
            {"STATE_DIRECTORY": "/var/lib/hottask-sync", "XDG_STATE_HOME": "/x", "HOME": "/h"},
            "/var/lib/hottask-sync",
        ),
        ({"STATE_DIRECTORY": "/var/lib/a:/var/lib/b", "HOME": "/h"}, "/var/lib/a"),
        ({"XDG_STATE_HOME": "/home/u/.state", "HOME": "/h"}, "/home/u/.state/hottask-sync"),
        (
            {"STATE_DIRECTORY": "", "XDG_STATE_HOME": "", "HOME": "/h"},
            "/h/.local/state/hottask-sync",
        ),
        ({"HOME": "/home/u"}, "/home/u/.local/state/hottask-sync"),
    ],
)
def test_state_dir_resolution(tmp_path: Path, environ: dict[str, str], expected: str) -> None:
    assert load(tmp_path, FOLDER, environ=environ).sync.state_dir == Path(expected)


def test_state_dir_configured_beats_environment(tmp_path: Path) -> None:
    text = '[sync]\nstate_dir = "/srv/state"\n' + FOLDER
    environ = {"STATE_DIRECTORY": "/var/lib/x", "XDG_STATE_HOME": "/y", "HOME": "/h"}
    assert load(tmp_path, text, environ=environ).sync.state_dir == Path("/srv/state")


def test_state_dir_relative_refused(tmp_path: Path) -> None:
    found = problems(tmp_path, '[sync]\nstate_dir = "state"\n' + FOLDER)
    assert len(found) == 1
    assert "sync.state_dir: must be an absolute path, got 'state'" in found[0]


# --- metrics -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("listen", "address"),
    [
        ("127.0.0.1:9464", ("127.0.0.1", 9464)),
        ("[::1]:9464", ("::1", 9464)),
        ("0.0.0.0:65535", ("0.0.0.0", 65535)),
        ("localhost:1", ("localhost", 1)),
    ],
)
def test_metrics_listen_valid(tmp_path: Path, listen: str, address: tuple[str, int]) -> None:
    config = load(tmp_path, f'[metrics]\nlisten = "{listen}"\n' + FOLDER)
    assert config.metrics.listen == listen
    assert config.metrics.address == address


@pytest.mark.parametrize(
    "listen", ["9464", ":9464", "localhost:", "localhost:0", "localhost:65536", "host:http"]
)
def test_metrics_listen_invalid(tmp_path: Path, listen: str) -> None:
    found = problems(tmp_path, f'[metrics]\nlisten = "{listen}"\n' + FOLDER)
    assert len(found) == 1
    assert (
        f'metrics.listen: must be "HOST:PORT" like "127.0.0.1:9464", got {listen!r}' in (found[0])
    )


def test_metrics_listen_wrong_type(tmp_path: Path) -> None:
    found = problems(tmp_path, "[metrics]\nlisten = 9464\n" + FOLDER)
    assert len(found) == 1
    assert "metrics.listen: must be a string, got an integer" in found[0]


# --- the API key ------------------------------------------------------------------------------


def test_key_file_beats_environment_and_credential(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("from-file\n")
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "hottask-api-key").write_text("from-credential")
    environ = {"HOTTASK_API_KEY": "from-env", "CREDENTIALS_DIRECTORY": str(creds)}
    key = resolve_api_key(ApiConfig(api_key_file=key_file), environ)
    assert key.value == "from-file"
    assert key.source == str(key_file)


def test_environment_beats_credential(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "hottask-api-key").write_text("from-credential")
    environ = {"HOTTASK_API_KEY": "  from-env\n", "CREDENTIALS_DIRECTORY": str(creds)}
    key = resolve_api_key(ApiConfig(), environ)
    assert key.value == "from-env"
    assert key.source == "$HOTTASK_API_KEY"


def test_credential_is_the_last_resort(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "hottask-api-key").write_text("\n\t from-credential \r\n")
    environ = {"HOTTASK_API_KEY": "   ", "CREDENTIALS_DIRECTORY": str(creds)}
    key = resolve_api_key(ApiConfig(), environ)
    assert key.value == "from-credential"
    assert key.source == str(creds / "hottask-api-key")


def test_key_file_whitespace_stripped(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("  abc123  \n\n")
    assert resolve_api_key(ApiConfig(api_key_file=key_file), {}).value == "abc123"


def test_no_key_anywhere_names_all_three_places(tmp_path: Path) -> None:
    with pytest.raises(KeyNotFoundError) as info:
        resolve_api_key(ApiConfig(), {})
    message = str(info.value)
    assert "api.api_key_file" in message
    assert "$HOTTASK_API_KEY" in message
    assert "$CREDENTIALS_DIRECTORY/hottask-api-key" in message
    assert info.value.exit_code == 2


def test_no_key_with_empty_credentials_directory(tmp_path: Path) -> None:
    environ = {"CREDENTIALS_DIRECTORY": str(tmp_path)}
    with pytest.raises(KeyNotFoundError) as info:
        resolve_api_key(ApiConfig(), environ)
    message = str(info.value)
    assert "api.api_key_file (not set)" in message
    assert "$HOTTASK_API_KEY" in message
    assert f"{tmp_path}/hottask-api-key" in message


def test_empty_key_file(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(" \n")
    with pytest.raises(KeyNotFoundError) as info:
        resolve_api_key(ApiConfig(api_key_file=key_file), {"HOTTASK_API_KEY": "from-env"})
    assert str(info.value) == f"api.api_key_file {key_file}: file is empty"


def test_missing_key_file_does_not_fall_back(tmp_path: Path) -> None:
    key_file = tmp_path / "missing"
    with pytest.raises(KeyNotFoundError) as info:
        resolve_api_key(ApiConfig(api_key_file=key_file), {"HOTTASK_API_KEY": "from-env"})
    assert str(info.value) == f"api.api_key_file {key_file}: no such file"


def test_empty_credential_file(tmp_path: Path) -> None:
    (tmp_path / "hottask-api-key").write_text("")
    with pytest.raises(KeyNotFoundError) as info:
        resolve_api_key(ApiConfig(), {"CREDENTIALS_DIRECTORY": str(tmp_path)})
    assert "file is empty" in str(info.value)
    assert "credential" in str(info.value)


def test_key_value_never_shown(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(SECRET + "\n")
    api = ApiConfig(api_key_file=key_file)
    key = resolve_api_key(api, {})
    assert key.value == SECRET
    assert SECRET not in repr(key)
    assert SECRET not in str(key)
    assert SECRET not in f"{key}"
    assert str(key) == f"<API key from {key_file}>"

    env_key = resolve_api_key(ApiConfig(), {"HOTTASK_API_KEY": SECRET})
    assert SECRET not in repr(env_key)
    assert SECRET not in str(env_key)

    config = load(
        tmp_path, f'[api]\napi_key_file = "{key_file}"\n' + FOLDER, environ={"HOME": "/h"}
    )
    assert SECRET not in repr(config)
    assert SECRET not in repr(config.api)
    assert SECRET not in str(config)


def test_key_value_never_in_an_error_message(tmp_path: Path) -> None:
    messages: list[str] = []
    # Inline in the config file, in either place.
    for text in (f'api_key = "{SECRET}"\n', f'[api]\napi_key = "{SECRET}"\n'):
        with pytest.raises(ConfigError) as config_error:
            load(tmp_path, text + FOLDER)
        messages += [str(config_error.value), repr(config_error.value)]
    # A key in the environment while the configured key file is bad.
    bad_files = {
        "missing": None,
        "empty": b"",
        "not-utf8": SECRET.encode() + b"\xff\xfe",
        "a-directory": "dir",
    }
    for name, content in bad_files.items():
        path = tmp_path / name
        if content == "dir":
            path.mkdir()
        elif isinstance(content, bytes):
            path.write_bytes(content)
        with pytest.raises(KeyNotFoundError) as key_error:
            resolve_api_key(ApiConfig(api_key_file=path), {"HOTTASK_API_KEY": SECRET})
        messages += [str(key_error.value), repr(key_error.value)]
    assert len(messages) == 12
    for message in messages:
        assert SECRET not in message
    assert any("not a regular file" in m for m in messages)  # the directory, named as such


def test_api_key_dataclass_repr_hides_value() -> None:
    key = ApiKey("tiny", "$HOTTASK_API_KEY")
    assert "tiny" not in repr(key)
    assert "$HOTTASK_API_KEY" in repr(key)
