"""The API key is checked when it is read (issue 10, item 9).

A key file with two lines, or whitespace or odd characters inside, used to be sent as is: the
HTTP library refused the header with a message quoting the key escaped, which leaked into
every log line, the ledger and ``status``, and was retried forever. Now reading the key fails
at once (exit 2) with one line naming the file or variable, never its content; a key file
readable by group or others is warned about once, the way ssh treats private keys.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
import structlog

from hottask_sync import config as config_mod
from hottask_sync.config import KEY_ENV, ApiConfig, ApiKey, resolve_api_key
from hottask_sync.errors import KeyNotFoundError
from hottask_sync.keyring import KeyReader

LINE1 = "sk-live-FIRSTLINE-7Qz9"
LINE2 = "sk-live-SECONDLINE-3Pw2"

#: Malformed keys (as found in a file or variable, before stripping) and the reason named.
MALFORMED = {
    "two lines": (f"{LINE1}\n{LINE2}\n", "more than one line"),
    "CRLF between lines": (f"{LINE1}\r\n{LINE2}", "more than one line"),
    "a space inside": (f"{LINE1} {LINE2}", "whitespace inside"),
    "a tab inside": (f"{LINE1}\t{LINE2}", "whitespace inside"),
    "a control character": (f"{LINE1}\x01{LINE2}", "not printable ASCII"),
    "a NUL": (f"{LINE1}\x00{LINE2}", "not printable ASCII"),
    "DEL": (f"{LINE1}\x7f{LINE2}", "not printable ASCII"),
    "non-ASCII": (f"{LINE1}\u00e9{LINE2}", "not printable ASCII"),
    "a byte-order mark": (f"\ufeff{LINE1}{LINE2}", "not printable ASCII"),
}


@pytest.fixture(autouse=True)
def fresh_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test sees the once-per-file warning afresh."""
    monkeypatch.setattr(config_mod, "_warned_modes", set(), raising=False)


def key_file(tmp_path: Path, content: str | bytes, mode: int = 0o600) -> Path:
    path = tmp_path / "api-key"
    data = content.encode("utf-8") if isinstance(content, str) else content
    path.write_bytes(data)
    path.chmod(mode)
    return path


def assert_hidden(message: str) -> None:
    """One line, and no piece of the key in it."""
    assert "\n" not in message and "\r" not in message
    for piece in (LINE1, LINE2, "FIRSTLINE", "SECONDLINE"):
        assert piece not in message


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_a_malformed_key_file_is_refused_naming_the_file_not_the_key(
    tmp_path: Path, case: str
) -> None:
    content, reason = MALFORMED[case]
    path = key_file(tmp_path, content)
    with pytest.raises(KeyNotFoundError) as info:
        # A good key elsewhere does not help: the configured file is what the user meant.
        resolve_api_key(ApiConfig(api_key_file=path), {KEY_ENV: "good-key"})
    message = str(info.value)
    assert message.startswith(f"api.api_key_file {path}: ")
    assert reason in message
    assert_hidden(message)
    assert_hidden(repr(info.value))
    assert info.value.exit_code == 2


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_a_malformed_key_in_the_environment_is_refused_naming_the_variable(case: str) -> None:
    content, reason = MALFORMED[case]
    with pytest.raises(KeyNotFoundError) as info:
        resolve_api_key(ApiConfig(), {KEY_ENV: content})
    message = str(info.value)
    assert message.startswith(f"${KEY_ENV}: ")
    assert reason in message
    assert_hidden(message)
    assert info.value.exit_code == 2


def test_a_malformed_credential_is_refused_naming_it(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    cred = creds / "hottask-api-key"
    cred.write_text(f"{LINE1}\n{LINE2}\n")
    with pytest.raises(KeyNotFoundError) as info:
        resolve_api_key(ApiConfig(), {"CREDENTIALS_DIRECTORY": str(creds)})
    message = str(info.value)
    assert message.startswith(f"credential {cred}: ")
    assert "more than one line" in message
    assert_hidden(message)


def test_a_surrogate_escaped_environment_value_is_refused_without_a_crash() -> None:
    # os.environ holds undecodable bytes as lone surrogates.
    with pytest.raises(KeyNotFoundError) as info:
        resolve_api_key(ApiConfig(), {KEY_ENV: f"{LINE1}\udcff"})
    assert "not printable ASCII" in str(info.value)
    assert_hidden(str(info.value))


@pytest.mark.parametrize(
    "content", [f"{LINE1}\n", f"{LINE1}\r\n", f"  {LINE1}\n\n", f"\t{LINE1} ", LINE1]
)
def test_surrounding_whitespace_is_fine(tmp_path: Path, content: str) -> None:
    path = key_file(tmp_path, content)
    assert resolve_api_key(ApiConfig(api_key_file=path), {}).value == LINE1
    assert resolve_api_key(ApiConfig(), {KEY_ENV: content}).value == LINE1


def test_every_printable_ascii_character_is_allowed(tmp_path: Path) -> None:
    key = "".join(chr(c) for c in range(0x21, 0x7F))
    path = key_file(tmp_path, key + "\n")
    assert resolve_api_key(ApiConfig(api_key_file=path), {}).value == key


def test_a_huge_file_is_not_taken_for_a_key(tmp_path: Path) -> None:
    path = key_file(tmp_path, b"k" * (config_mod.MAX_KEY_BYTES + 1))
    with pytest.raises(KeyNotFoundError) as info:
        resolve_api_key(ApiConfig(api_key_file=path), {})
    assert str(info.value).startswith(f"api.api_key_file {path}: over ")


def test_a_reload_keeps_the_working_key_when_the_file_turns_malformed(tmp_path: Path) -> None:
    path = key_file(tmp_path, f"{LINE1}\n")
    api = ApiConfig(api_key_file=path)
    assert resolve_api_key(api, {}).value == LINE1
    path.write_text(f"{LINE1}\n{LINE2}\n")
    done = threading.Event()
    reader = KeyReader(done.set)
    with structlog.testing.capture_logs() as logged:
        reader.start(api, {})
        assert done.wait(10)
        answer = reader.poll()
    # Not a key: the runtime logs it as auth.key_unreadable and keeps the running key.
    assert isinstance(answer, KeyNotFoundError)
    assert "more than one line" in str(answer)
    assert_hidden(str(answer) + repr(logged))


# --- a key file readable by others ------------------------------------------------------------


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o444], ids=oct)
def test_a_key_file_readable_by_group_or_others_is_warned_about_once(
    tmp_path: Path, mode: int
) -> None:
    path = key_file(tmp_path, f"{LINE1}\n", mode)
    api = ApiConfig(api_key_file=path)
    with structlog.testing.capture_logs() as logged:
        for _ in range(3):  # startup, a reload, an auth probe: read again each time
            assert resolve_api_key(api, {}).value == LINE1
    warnings = [e for e in logged if e["event"] == "key.file_exposed"]
    assert len(warnings) == 1, logged
    (warning,) = warnings
    assert warning["log_level"] == "warning"
    assert warning["path"] == str(path)
    assert warning["mode"] == f"{mode:04o}"
    assert "chmod 600" in warning["hint"]
    assert LINE1 not in repr(logged)


def test_a_new_mode_is_warned_about_again(tmp_path: Path) -> None:
    path = key_file(tmp_path, f"{LINE1}\n", 0o644)
    api = ApiConfig(api_key_file=path)
    with structlog.testing.capture_logs() as logged:
        resolve_api_key(api, {})
        path.chmod(0o640)
        resolve_api_key(api, {})
        resolve_api_key(api, {})
    modes = [e["mode"] for e in logged if e["event"] == "key.file_exposed"]
    assert modes == ["0644", "0640"]


@pytest.mark.parametrize("mode", [0o600, 0o400, 0o700, 0o620, 0o602], ids=oct)
def test_a_private_key_file_is_not_warned_about(tmp_path: Path, mode: int) -> None:
    path = key_file(tmp_path, f"{LINE1}\n", mode)
    with structlog.testing.capture_logs() as logged:
        resolve_api_key(ApiConfig(api_key_file=path), {})
    assert not [e for e in logged if e["event"] == "key.file_exposed"]


def test_a_key_from_the_environment_is_never_warned_about() -> None:
    with structlog.testing.capture_logs() as logged:
        key = resolve_api_key(ApiConfig(), {KEY_ENV: LINE1})
    assert key == ApiKey(LINE1, f"${KEY_ENV}")
    assert logged == []


def test_a_malformed_exposed_file_is_refused_without_a_warning(tmp_path: Path) -> None:
    path = key_file(tmp_path, f"{LINE1}\n{LINE2}\n", 0o644)
    with structlog.testing.capture_logs() as logged, pytest.raises(KeyNotFoundError):
        resolve_api_key(ApiConfig(api_key_file=path), {})
    assert logged == []
    assert os.stat(path).st_mode & 0o777 == 0o644  # left as it was: never changed by us
