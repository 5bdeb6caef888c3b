"""Configuration: TOML + SERFBRIDGE_* environment via config.load_settings and cache.load."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from typing import TYPE_CHECKING

import pytest

from serfbridge.capture import cache
from serfbridge.config.models import load_settings
from serfbridge.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

# Prints whether pydantic was imported to load the config, and a value from the result.
PROBE = (
    "import sys; from serfbridge.capture import cache; c = cache.load(sys.argv[1]); "
    "print('pydantic' in sys.modules, c['log_level'], c['state_dir'])"
)


@pytest.fixture
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """SERFBRIDGE_CACHE_DIR in tmp_path (also inherited by child processes)."""
    path = tmp_path / "cache"
    monkeypatch.setenv("SERFBRIDGE_CACHE_DIR", str(path))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg-state"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    return path


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def write(tmp_path: Path, state_dir: Path, cache_dir: Path) -> Callable[..., Path]:
    """write(body, name=...) -> path of a TOML file with state_dir set, then ``body``."""

    def make(body: str = "", name: str = "serfbridge.toml", with_state: bool = True) -> Path:
        path = tmp_path / name
        head = f"state_dir = {json.dumps(str(state_dir))}\n" if with_state else ""
        path.write_text(head + body, encoding="utf-8")
        return path

    return make


def _loc(*parts: str | int) -> re.Pattern[str]:
    """Regex for a key's location in an error: ``responders.0.x`` or ``responders[0].x``,
    with an optional sink type after a list index (``sinks[0] (file).path``)."""
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += rf"(\.{part}|\[{part}\])(\.\w+| \(\w+\))?"
        else:
            out += (r"\." if out else r"\b") + re.escape(part)
    return re.compile(out + r"(?!\w)")


def _probe(config: Path) -> tuple[bool, str, str]:
    """Load ``config`` in a fresh interpreter: (pydantic imported?, log_level, state_dir)."""
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    used, level, state = proc.stdout.split()
    return used == "True", level, state


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("body", "key"),
    [
        pytest.param("bogus = 1\n", ("bogus",), id="top-level"),
        pytest.param("[serf]\nrpc_adr = '127.0.0.1:7373'\n", ("serf", "rpc_adr"), id="serf"),
        pytest.param("[delivery]\nretries = 3\n", ("delivery", "retries"), id="delivery"),
        pytest.param(
            "[[sinks]]\ntype = 'file'\nname = 'a'\npath = '/tmp/a'\npathh = 1\n",
            ("sinks", 0, "pathh"),
            id="sink",
        ),
        pytest.param(
            "[[responders]]\nquery = 'q'\ntext = 't'\ntimeuot = 1\n",
            ("responders", 0, "timeuot"),
            id="responder",
        ),
    ],
)
@pytest.mark.parametrize("loader", ["load_settings", "compiled"])
def test_unknown_key_names_key_and_file(
    write: Callable[..., Path], body: str, key: tuple[str | int, ...], loader: str
) -> None:
    """An unknown key is a ConfigError naming the key and the file."""
    path = str(write(body))
    load = cache.load if loader == "compiled" else load_settings
    with pytest.raises(ConfigError) as info:
        load(path)
    message = str(info.value)
    assert path in message
    assert _loc(*key).search(message), message
    assert "unknown key" in message


@pytest.mark.parametrize(
    ("body", "key"),
    [
        pytest.param("max_input_bytes = 'lots'\n", ("max_input_bytes",), id="int-as-text"),
        pytest.param("max_input_bytes = 10\n", ("max_input_bytes",), id="int-below-minimum"),
        pytest.param("log_level = 'loud'\n", ("log_level",), id="bad-literal"),
        pytest.param(
            "query_response_size_limit = 1.5\n", ("query_response_size_limit",), id="float"
        ),
        pytest.param("[serf]\nrpc_timeout = 'slow'\n", ("serf", "rpc_timeout"), id="nested"),
        pytest.param("serf = 'x'\n", ("serf",), id="section-as-string"),
        pytest.param("sinks = 'file'\n", ("sinks",), id="sinks-as-string"),
        pytest.param(
            "[[responders]]\nquery = 'q'\ncommand = 'echo hi'\n",
            ("responders", 0, "command"),
            id="command-as-string",
        ),
        pytest.param("[[sinks]]\ntype = 'nope'\nname = 'a'\n", ("sinks", 0), id="sink-type"),
    ],
)
def test_wrong_type_names_key(
    write: Callable[..., Path], body: str, key: tuple[str | int, ...]
) -> None:
    """A value of the wrong type or range is a ConfigError naming the key and the file."""
    path = write(body)
    with pytest.raises(ConfigError) as info:
        load_settings(str(path))
    assert _loc(*key).search(str(info.value)), str(info.value)
    assert str(path) in str(info.value)


def test_state_dir_wrong_type(write: Callable[..., Path]) -> None:
    """state_dir = 5 (not a string) is rejected."""
    path = write("state_dir = 5\n", with_state=False)
    with pytest.raises(ConfigError, match="state_dir"):
        load_settings(str(path))


def test_invalid_toml_names_file_and_line(write: Callable[..., Path]) -> None:
    """Invalid TOML is a ConfigError naming the file and the line."""
    path = write("log_level = 'info'\nmax_input_bytes = = 3\n")
    with pytest.raises(ConfigError) as info:
        cache.load(str(path))
    assert str(path) in str(info.value)
    assert "line 3" in str(info.value)


def test_duplicate_sink_names(write: Callable[..., Path], tmp_path: Path) -> None:
    """Two sinks with one name are rejected, naming the name."""
    path = write(
        "[[sinks]]\ntype = 'file'\nname = 'dup'\npath = 'a.jsonl'\n"
        "[[sinks]]\ntype = 'file'\nname = 'dup'\npath = 'b.jsonl'\n"
    )
    with pytest.raises(ConfigError, match="two sinks are named 'dup'"):
        load_settings(str(path))


def test_invalid_sink_filter_names_term(write: Callable[..., Path]) -> None:
    """A sink's events filter with an invalid term is rejected, naming the term."""
    path = write("[[sinks]]\ntype = 'file'\nname = 'a'\npath = 'a'\nevents = 'user,users'\n")
    with pytest.raises(ConfigError, match="'users'"):
        load_settings(str(path))


@pytest.mark.parametrize(
    "body",
    [
        pytest.param("text = 'x'\ncommand = ['true']\n", id="both"),
        pytest.param("", id="neither"),
    ],
)
def test_responder_needs_exactly_one_answer(write: Callable[..., Path], body: str) -> None:
    """A responder with both or neither of text and command is rejected."""
    path = write("[[responders]]\nquery = 'load'\n" + body)
    with pytest.raises(ConfigError, match="exactly one of text or command") as info:
        load_settings(str(path))
    assert _loc("responders", 0).search(str(info.value))


def test_responder_text_unknown_field_rejected(write: Callable[..., Path]) -> None:
    """A responder text template with an unknown {field} is a config error."""
    path = write("[[responders]]\nquery = 'load'\ntext = 'load {bogus}'\n")
    with pytest.raises(ConfigError, match="bogus"):
        load_settings(str(path))


def test_explicit_missing_config(tmp_path: Path, cache_dir: Path) -> None:
    """A config path named with --config that does not exist is a ConfigError."""
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match=f"config file {missing} does not exist"):
        cache.load(str(missing))


def test_env_named_missing_config(
    tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A SERFBRIDGE_CONFIG that does not exist is a ConfigError too."""
    missing = tmp_path / "nope.toml"
    monkeypatch.setenv("SERFBRIDGE_CONFIG", str(missing))
    with pytest.raises(ConfigError, match="does not exist"):
        cache.load()


def test_load_settings_missing_file(tmp_path: Path) -> None:
    """load_settings on a missing path reports it cannot read the file."""
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match=f"cannot read config file {missing}"):
        load_settings(str(missing))


# --------------------------------------------------------------------------- values


def test_env_beats_file(
    write: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SERFBRIDGE_STATE_DIR and nested SERFBRIDGE_SERF__RPC_ADDR override the file."""
    path = write("[serf]\nrpc_addr = '10.0.0.1:7373'\nrpc_timeout = 2.0\n")
    env_state = tmp_path / "env-state"
    monkeypatch.setenv("SERFBRIDGE_STATE_DIR", str(env_state))
    monkeypatch.setenv("SERFBRIDGE_SERF__RPC_ADDR", "127.0.0.1:7374")

    settings = load_settings(str(path))
    assert settings.state_dir == str(env_state)
    assert settings.serf.rpc_addr == "127.0.0.1:7374"
    assert settings.serf.rpc_timeout == 2.0  # the rest of [serf] still comes from the file

    cfg = cache.load(str(path))
    assert cfg["state_dir"] == str(env_state)
    assert cfg["serf"]["rpc_addr"] == "127.0.0.1:7374"
    assert cfg["sinks"][0]["path"] == str(env_state / "events.jsonl")


def test_no_sinks_key_gives_default_file_sink(write: Callable[..., Path], state_dir: Path) -> None:
    """Without a sinks key every event goes to <state_dir>/events.jsonl."""
    cfg = cache.load(str(write("log_level = 'info'\n")))
    assert cfg["sinks"] == [
        {
            "type": "file",
            "name": "default",
            "events": "*",
            "once": False,
            "path": str(state_dir / "events.jsonl"),
            "fsync": False,
            "filter": [("*", None)],
            "when": None,
        }
    ]
    assert cfg["state_dir"] == str(state_dir)
    assert cfg["log_file"] == str(state_dir / "serfbridge.log")


def test_empty_sinks_means_none(write: Callable[..., Path]) -> None:
    """sinks = [] switches the default sink off."""
    assert cache.load(str(write("sinks = []\n")))["sinks"] == []


def test_sink_filter_is_compiled(write: Callable[..., Path]) -> None:
    """A sink's events filter is stored parsed, ready for filters.matches."""
    cfg = cache.load(
        str(write("[[sinks]]\ntype = 'file'\nname = 'd'\npath = 'd'\nevents = 'user:deploy'\n"))
    )
    assert cfg["sinks"][0]["filter"] == [("user", "deploy")]


# --------------------------------------------------------------------------- compiled cache


def test_second_load_skips_pydantic(write: Callable[..., Path], state_dir: Path) -> None:
    """The first process validates with pydantic; the next one reads the cache only."""
    path = write("log_level = 'warning'\n")
    assert _probe(path) == (True, "warning", str(state_dir))
    assert _probe(path) == (False, "warning", str(state_dir))


def test_content_change_invalidates_cache(write: Callable[..., Path]) -> None:
    """Editing the file (even to the same size) recompiles on the next load."""
    path = write("log_level = 'debug'\n")
    assert cache.load(str(path))["log_level"] == "debug"
    path.write_text(path.read_text().replace("debug", "error"))
    assert cache.load(str(path))["log_level"] == "error"


def test_content_change_invalidates_cache_across_processes(write: Callable[..., Path]) -> None:
    """A new process after an edit validates again and sees the new value."""
    path = write("log_level = 'debug'\n")
    assert _probe(path)[:2] == (True, "debug")
    assert _probe(path)[:2] == (False, "debug")
    path.write_text(path.read_text().replace("debug", "error"))
    assert _probe(path)[:2] == (True, "error")
    assert _probe(path)[:2] == (False, "error")


def test_env_change_invalidates_cache(
    write: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Changing a SERFBRIDGE_* variable recompiles; the cached entry is not reused."""
    path = write("log_level = 'info'\n")
    assert _probe(path)[:2] == (True, "info")
    assert _probe(path)[:2] == (False, "info")
    monkeypatch.setenv("SERFBRIDGE_LOG_LEVEL", "debug")
    assert _probe(path)[:2] == (True, "debug")
    assert cache.load(str(path))["log_level"] == "debug"
    monkeypatch.setenv("SERFBRIDGE_STATE_DIR", str(tmp_path / "other"))
    assert _probe(path) == (True, "debug", str(tmp_path / "other"))
    assert cache.load(str(path))["state_dir"] == str(tmp_path / "other")


def test_cache_file_mode(write: Callable[..., Path], cache_dir: Path) -> None:
    """Cache entries hold secrets: files are 0600 in a 0700 directory."""
    path = write("[serf]\nrpc_addr = '127.0.0.1:7373'\nrpc_auth = 'secret'\n")
    cache.load(str(path))
    entries = list(cache_dir.iterdir())
    assert [e.suffix for e in entries] == [".marshal"]
    assert stat.S_IMODE(entries[0].stat().st_mode) == 0o600
    assert stat.S_IMODE(cache_dir.stat().st_mode) == 0o700
    # The cached value is the usable secret (the handler needs it in clear).
    assert cache.load(str(path))["serf"]["rpc_auth"] == "secret"


def test_cached_result_equals_fresh_compile(write: Callable[..., Path]) -> None:
    """What the cache returns is what a fresh pydantic compile produces."""
    path = write(
        "[[sinks]]\ntype = 'file'\nname = 'all'\npath = 'all.jsonl'\n"
        "[[responders]]\nquery = 'load'\ntext = '{node}'\n"
    )
    first = cache.load(str(path))
    second = cache.load(str(path))
    assert first == second == cache.compile_now(str(path))


def test_unwritable_cache_still_loads(
    write: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cache location that cannot be created only costs speed."""
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a directory")
    monkeypatch.setenv("SERFBRIDGE_CACHE_DIR", str(blocker / "cache"))
    assert cache.load(str(write("log_level = 'error'\n")))["log_level"] == "error"
    assert not os.path.exists(blocker / "cache")
