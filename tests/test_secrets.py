"""Secrets kept out of the config file: ``<key>_file``, ``${VAR}`` interpolation, systemd
credentials, the compiled cache noticing a rotated secret, and ``check`` flagging leftovers."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import typing
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel, SecretStr
from support.proc import clean_environ

from serfbridge.capture import cache
from serfbridge.config import secrets
from serfbridge.config.models import Settings, load_settings
from serfbridge.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

# Loads the config in a fresh interpreter: was pydantic needed (a cache miss), which
# serfbridge modules got imported, and the sink's bearer token.
PROBE = (
    "import sys; from serfbridge.capture import cache; c = cache.load(sys.argv[1]); "
    "mods = sorted(m for m in sys.modules if m.startswith('serfbridge')); "
    "print(repr(('pydantic' in sys.modules, mods, c['sinks'][0].get('bearer_token'))))"
)
HOOK = "[[sinks]]\ntype = 'webhook'\nname = 'hook'\nurl = 'http://127.0.0.1:9/'\n"


@pytest.fixture
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "cache"
    monkeypatch.setenv("SERFBRIDGE_CACHE_DIR", str(path))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    return path


@pytest.fixture
def write(tmp_path: Path, cache_dir: Path) -> Callable[[str], Path]:
    def make(body: str) -> Path:
        path = tmp_path / "serfbridge.toml"
        state = json.dumps(str(tmp_path / "state"))
        path.write_text(f"state_dir = {state}\n{body}", encoding="utf-8")
        return path

    return make


def secret_file(path: Path, content: str, mode: int = 0o600) -> Path:
    path.write_text(content, encoding="utf-8")
    path.chmod(mode)
    return path


def first_sink(config: Path) -> Any:
    """The first sink of the compiled config, as the handler reads it from the cache."""
    return cache.load(str(config))["sinks"][0]


def probe(config: Path) -> tuple[bool, list[str], str | None]:
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, str(config)],
        capture_output=True,
        text=True,
        env=dict(os.environ),  # SERFBRIDGE_CACHE_DIR and HOME from the fixture
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    result: tuple[bool, list[str], str | None] = eval(proc.stdout)  # noqa: S307 - our repr
    return result


# -- <key>_file -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "read"),
    [
        ("[serf]\nrpc_auth_file = '{f}'\n", lambda s: s.serf.rpc_auth),
        (HOOK + "bearer_token_file = '{f}'\n", lambda s: s.sinks[0].bearer_token),
        (HOOK + "hmac_secret_file = '{f}'\n", lambda s: s.sinks[0].hmac_secret),
        (
            "[[sinks]]\ntype = 'redis'\nname = 'r'\nurl = 'redis://127.0.0.1:1/0'\n"
            "password_file = '{f}'\n",
            lambda s: s.sinks[0].password,
        ),
        (
            "[[sources]]\ntype = 'http'\ntoken_file = '{f}'\nhmac_key_file = '{f}'\n",
            lambda s: s.sources[0].token,
        ),
        (
            "[[sources]]\ntype = 'mqtt'\nurl = 'mqtt://127.0.0.1:1'\ntopic = 't'\n"
            "password_file = '{f}'\n",
            lambda s: s.sources[0].password,
        ),
    ],
)
def test_file_variant_of_each_secret_key(
    write: Callable[[str], Path], tmp_path: Path, body: str, read: Callable[[Settings], Any]
) -> None:
    """``<key>_file`` reads the secret from a file, one trailing newline (CRLF too) stripped."""
    path = secret_file(tmp_path / "s3cret", "p@ss word\r\n")
    settings = load_settings(str(write(body.format(f=path))))
    assert read(settings).get_secret_value() == "p@ss word"


def test_list_of_secret_files_for_rotation(write: Callable[[str], Path], tmp_path: Path) -> None:
    old = secret_file(tmp_path / "old", "k-old\n")
    new = secret_file(tmp_path / "new", "k-new\n")
    settings = load_settings(str(write(HOOK + f"hmac_secret_file = ['{old}', '{new}']\n")))
    assert settings.sinks is not None
    assert settings.sinks[0].secrets() == ["k-old", "k-new"]  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda p: secret_file(p, "x", 0o644), "readable by every user"),
        (lambda p: p, "cannot read"),
        (lambda p: secret_file(p, "\n"), "is empty"),
        (lambda p: p.write_bytes(b"\xff\xfe") and p.chmod(0o600), "not UTF-8"),
    ],
    ids=["world-readable", "missing", "empty", "binary"],
)
def test_bad_secret_file_names_the_key(
    write: Callable[[str], Path], tmp_path: Path, setup: Callable[[Path], object], message: str
) -> None:
    target = tmp_path / "token"
    setup(target)
    config = write(HOOK + f"bearer_token_file = '{target}'\n")
    with pytest.raises(ConfigError, match=message) as info:
        cache.load(str(config))
    assert "sinks[0].bearer_token_file" in str(info.value)
    assert str(config) in str(info.value)


def test_key_and_file_variant_together_is_an_error(
    write: Callable[[str], Path], tmp_path: Path
) -> None:
    path = secret_file(tmp_path / "t", "x")
    with pytest.raises(ConfigError, match="give bearer_token or bearer_token_file, not both"):
        load_settings(str(write(HOOK + f"bearer_token = 'a'\nbearer_token_file = '{path}'\n")))


def test_relative_paths_use_credentials_directory(
    write: Callable[[str], Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """systemd LoadCredential=: a relative *_file path is under $CREDENTIALS_DIRECTORY, and
    without it next to the config file."""
    creds = tmp_path / "credentials"
    creds.mkdir()
    secret_file(creds / "hook-token", "from-systemd\n")
    secret_file(tmp_path / "hook-token", "next-to-config\n")
    config = write(HOOK + "bearer_token_file = 'hook-token'\n")
    assert first_sink(config)["bearer_token"] == "next-to-config"  # noqa: S105
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    assert first_sink(config)["bearer_token"] == "from-systemd"  # noqa: S105


# -- ${VAR} ---------------------------------------------------------------------------------


def test_interpolation_in_values(
    write: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOOK_TOKEN", "tok")
    monkeypatch.setenv("HOOK_HOST", "127.0.0.1")
    config = write(
        "[[sinks]]\ntype = 'webhook'\nname = 'hook'\nurl = 'http://${HOOK_HOST}:${PORT:-8080}/'\n"
        "bearer_token = '${HOOK_TOKEN}'\nheaders = { X-Cost = '$$5 ${TEAM:-ops}' }\n"
    )
    sink = first_sink(config)
    assert sink["url"] == "http://127.0.0.1:8080/"
    assert sink["bearer_token"] == "tok"  # noqa: S105 - test value
    assert sink["headers"] == {"X-Cost": "$5 ops"}


def test_unset_variable_names_the_key(write: Callable[[str], Path]) -> None:
    """The issue's example: password = "${REDIS_PW}" is an error, not a literal password."""
    config = write(
        "[[sinks]]\ntype = 'redis'\nname = 'r'\nurl = 'redis://127.0.0.1:1/0'\n"
        "password = '${REDIS_PW}'\n"
    )
    with pytest.raises(ConfigError, match=r"sinks\[0\]\.password: .*REDIS_PW is not set"):
        cache.load(str(config))


def test_serf_variables_are_refused(write: Callable[[str], Path]) -> None:
    """SERF_* differ per event; interpolating them at compile time would freeze one event's."""
    with pytest.raises(ConfigError, match="SERF_\\* variables change with every event"):
        load_settings(str(write("[[responders]]\nquery = 'q'\ntext = '${SERF_EVENT}'\n")))


NAME = st.from_regex(r"[A-Z_][A-Z0-9_]{0,10}", fullmatch=True).filter(
    lambda n: not n.startswith("SERF_")
)
PLAIN = st.text(alphabet=st.characters(blacklist_characters="$"), max_size=30)


@given(st.text(max_size=60))
def test_escaped_text_comes_back_unchanged(text: str) -> None:
    """Any text with every $ doubled interpolates to itself and reads no variable."""
    assert secrets.interpolate(text.replace("$", "$$"), {}) == (text, [])


@given(PLAIN, NAME, st.text(max_size=20), PLAIN)
def test_variable_is_replaced_by_its_value(before: str, name: str, value: str, after: str) -> None:
    assert secrets.interpolate(before + "${" + name + "}" + after, {name: value}) == (
        before + value + after,
        [name],
    )


@given(NAME, st.text(alphabet=st.characters(blacklist_characters="}"), max_size=20), st.booleans())
def test_default_when_unset_or_empty(name: str, default: str, empty: bool) -> None:
    env = {name: ""} if empty else {}
    assert secrets.interpolate("${" + name + ":-" + default + "}", env)[0] == default


@given(st.text(max_size=60), st.dictionaries(NAME, st.text(max_size=10), max_size=3))
def test_interpolation_never_fails_with_anything_but_valueerror(
    text: str, env: dict[str, str]
) -> None:
    """Arbitrary input either interpolates or raises ValueError with a message."""
    try:
        secrets.interpolate(text, env)
    except ValueError as exc:
        assert str(exc)  # noqa: PT017 - the message is the point


@pytest.mark.parametrize(
    ("text", "message"),
    [("${A", "without a closing"), ("${1A}", "not a variable name"), ("${}", "not a variable")],
)
def test_malformed_placeholders(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        secrets.interpolate(text, {})


# -- the compiled cache ---------------------------------------------------------------------


def test_rotated_secret_file_recompiles(write: Callable[[str], Path], tmp_path: Path) -> None:
    """New content in a secret file (same size) is picked up on the next event; an unchanged
    one is a cache hit that imports no config or pydantic module."""
    token = secret_file(tmp_path / "token", "AAAA\n")
    config = write(HOOK + f"bearer_token_file = '{token}'\n")
    assert probe(config)[::2] == (True, "AAAA")
    hit, modules, value = probe(config)
    assert (hit, value) == (False, "AAAA")
    assert not [m for m in modules if m.startswith(("serfbridge.config", "serfbridge.sinks"))]
    secret_file(token, "BBBB\n")
    assert probe(config)[::2] == (True, "BBBB")
    assert probe(config)[::2] == (False, "BBBB")
    token.unlink()
    with pytest.raises(ConfigError, match="bearer_token_file: cannot read"):
        cache.load(str(config))


def test_changed_variable_recompiles(
    write: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A variable the config interpolates is part of the cache's key, set or unset."""
    config = write(HOOK + "bearer_token = '${HOOK_TOKEN:-none}'\n")
    assert probe(config)[::2] == (True, "none")
    assert probe(config)[::2] == (False, "none")
    monkeypatch.setenv("HOOK_TOKEN", "set-now")
    assert probe(config)[::2] == (True, "set-now")
    assert probe(config)[::2] == (False, "set-now")


def test_cache_holding_resolved_secrets_is_0600(
    write: Callable[[str], Path], tmp_path: Path, cache_dir: Path
) -> None:
    token = secret_file(tmp_path / "token", "in-the-cache\n")
    cache.load(str(write(HOOK + f"bearer_token_file = '{token}'\n")))
    [entry] = cache_dir.iterdir()
    assert stat.S_IMODE(entry.stat().st_mode) == 0o600
    assert b"in-the-cache" in entry.read_bytes()


# -- check ----------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["$REDIS_PW", "%REDIS_PW%", "$${REDIS_PW}"])
def test_check_flags_unexpanded_placeholders(
    write: Callable[[str], Path], serfbridge_cmd: list[str], value: str
) -> None:
    """A value that still reads like a placeholder fails `check` (exit 3), naming the key."""
    config = write(
        "[[sinks]]\ntype = 'redis'\nname = 'r'\nurl = 'redis://127.0.0.1:1/0'\n"
        f"password = '{value}'\n"
    )
    proc = subprocess.run(
        [*serfbridge_cmd, "--config", str(config), "check"],
        capture_output=True,
        text=True,
        env=clean_environ({"SERFBRIDGE_CACHE_DIR": str(config.parent / "c")}),
        timeout=60,
        check=False,
    )
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "sinks[0].password" in proc.stderr
    assert "unexpanded placeholder" in proc.stderr


def test_every_secret_field_has_a_file_variant() -> None:
    """SECRET_KEYS is exactly the SecretStr fields of every config model."""
    found: set[str] = set()

    def walk(model: type[BaseModel], seen: set[type]) -> None:
        if model in seen:
            return
        seen.add(model)
        for name, field in model.model_fields.items():
            for arg in _flatten(field.annotation):
                if arg is SecretStr:
                    found.add(name)
                elif isinstance(arg, type) and issubclass(arg, BaseModel):
                    walk(arg, seen)

    walk(Settings, set())
    assert found == secrets.SECRET_KEYS


def _flatten(annotation: Any) -> list[Any]:
    args = typing.get_args(annotation)
    if not args:
        return [annotation]
    out = []
    for arg in args:
        out += _flatten(arg)
    return out
