"""``when``: sinks and responders limited by the node's own role and tags."""

from __future__ import annotations

import fnmatch
import json
import random
from typing import TYPE_CHECKING

import pytest
from support.bridge import BridgeNode
from support.handler import run_handler

from serfbridge.capture import cache, when
from serfbridge.config.models import load_settings
from serfbridge.errors import ConfigError

if TYPE_CHECKING:
    from pathlib import Path

    from serfbridge._types import Node


def node(role: str = "web", **tags: str) -> Node:
    return {"name": "n1", "role": role, "tags": {"role": role, **tags}}


# --------------------------------------------------------------------------- globs


@pytest.mark.parametrize(
    ("pattern", "text", "expected"),
    [
        ("web", "web", True),
        ("web", "web1", False),
        ("web*", "web1", True),
        ("web*", "web", True),
        ("*web", "aweb", True),
        ("w?b", "wxb", True),
        ("w?b", "wb", False),
        ("*-*-*", "a-b-c", True),
        ("*-*-*", "a-b", False),
        ("a*a", "a", False),
        ("a*a", "aa", True),
        ("*", "", True),
        ("?", "", False),
        ("r1-*-?", "r1-x-yz", False),
    ],
)
def test_glob_examples(pattern: str, text: str, expected: bool) -> None:
    """Hand-picked patterns, including overlap between the first and last part."""
    assert when.glob_match(pattern.split("*"), text) is expected


def test_glob_agrees_with_fnmatchcase() -> None:
    """5000 random patterns over a tiny alphabet give fnmatch.fnmatchcase's answer."""
    rng = random.Random(6)
    for _ in range(5000):
        pattern = "".join(rng.choice("ab*?") for _ in range(rng.randint(0, 6)))
        text = "".join(rng.choice("ab") for _ in range(rng.randint(0, 7)))
        got = when.glob_match(pattern.split("*"), text)
        assert got is fnmatch.fnmatchcase(text, pattern), (pattern, text)


# --------------------------------------------------------------------------- matching


@pytest.mark.parametrize(
    ("key", "folded"),
    [("role", "role"), ("dc", "dc"), ("my-tag.v", "my_tag_v"), ("DC", "dc"), ("sp ace", "sp_ace")],
)
def test_keys_fold_like_serf_tag_variables(key: str, folded: str) -> None:
    """Keys fold the way Serf names SERF_TAG_* variables, lower-cased back."""
    assert when.tag_key(key) == folded


@pytest.mark.parametrize(
    ("spec", "the_node", "expected"),
    [
        (None, node("db"), True),
        ({"role": "web"}, node("web"), True),
        ({"role": "web"}, node("db"), False),
        ({"role": ["web", "api"]}, node("api"), True),
        ({"role": ["web", "api"], "dc": "east"}, node("web", dc="east"), True),
        ({"role": ["web", "api"], "dc": "east"}, node("web", dc="west"), False),
        ({"role": ["web", "api"], "dc": "east"}, node("db", dc="east"), False),
        ({"dc": "east"}, node("web"), False),  # the node has no dc tag
        ({"dc": "*"}, node("web"), False),  # not even a catch-all glob matches a missing tag
        ({"role": ""}, {"name": "n", "role": "", "tags": {}}, True),  # SERF_SELF_ROLE=""
        ({"rack": "r1-*"}, node("web", rack="r1-07"), True),
        ({"rack": "r1-*"}, node("web", rack="r2-07"), False),
        ({"my-tag.v": "x"}, node("web", my_tag_v="x"), True),
    ],
)
def test_matches(spec: dict[str, str | list[str]] | None, the_node: Node, expected: bool) -> None:
    """Keys are and-ed, list values or-ed; missing tags never match (role excepted)."""
    assert when.matches(when.compile_when(spec), the_node) is expected


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("when_toml", "message"),
    [
        ("{}", "sinks[0] (file).when: when must name at least one tag"),
        ("{ role = [] }", "sinks[0] (file).when: when.role: give at least one value"),
        ("{ my-tag = 'a', 'my.tag' = 'b' }", "are the same tag to Serf (SERF_TAG_MY_TAG)"),
        ("{ role = 5 }", "sinks[0] (file).when: when.role: give a string or a list of strings"),
        ("{ dc = ['a', 1] }", "when.dc: give a string or a list of strings, not ['a', 1]"),
        ("'web'", "sinks[0] (file).when: Input should be a valid dictionary"),
    ],
)
def test_bad_when_is_a_config_error(tmp_path: Path, when_toml: str, message: str) -> None:
    """A bad when names the sink and the key."""
    path = tmp_path / "c.toml"
    path.write_text(
        f"[[sinks]]\ntype = 'file'\nname = 'f'\npath = 'x.jsonl'\nwhen = {when_toml}\n",
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as info:
        load_settings(str(path))
    assert message in str(info.value)


def test_bad_responder_when_is_a_config_error(tmp_path: Path) -> None:
    """The same checks apply to responders."""
    path = tmp_path / "c.toml"
    path.write_text("[[responders]]\nquery = 'q'\ntext = 'x'\nwhen = {}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"responders\[0\]\.when: when must name"):
        load_settings(str(path))


def test_when_is_compiled_into_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The handler reads when already split into exact values and globs."""
    monkeypatch.setenv("SERFBRIDGE_CACHE_DIR", str(tmp_path / "cache"))
    path = tmp_path / "c.toml"
    path.write_text(
        f"state_dir = {json.dumps(str(tmp_path))}\n"
        "[[sinks]]\ntype = 'file'\nname = 'f'\npath = 'x.jsonl'\n"
        "when = { role = ['web', 'a*'], My-Tag = 'x' }\n"
        "[[responders]]\nquery = 'q'\ntext = 'x'\nwhen = { dc = 'east' }\n",
        encoding="utf-8",
    )
    cfg = cache.load(str(path))
    assert cfg["sinks"][0].get("when") == [("role", ["web"], [["a", ""]]), ("my_tag", ["x"], [])]
    assert cfg["responders"][0].get("when") == [("dc", ["east"], [])]


# --------------------------------------------------------------------------- the handler


ROLE_CONFIG = """
[[sinks]]
type = "file"
name = "web-only"
path = {web}
when = {{ role = "web" }}

[[sinks]]
type = "file"
name = "db-east"
path = {db}
events = "user"
when = {{ role = ["db", "cache"], dc = "east" }}

[[responders]]
query = "whoami"
text = "web answer from {{node}}"
when = {{ role = "web" }}

[[responders]]
query = "whoami"
text = "db answer from {{node}}"
"""


@pytest.mark.parametrize(
    ("role", "dc", "web_lines", "db_lines", "answer"),
    [
        ("web", "east", 2, 0, b"web answer from n1"),
        ("db", "east", 0, 1, b"db answer from n1"),
        ("db", "west", 0, 0, b"db answer from n1"),
    ],
)
def test_handler_routes_by_role_and_tags(
    tmp_path: Path,
    serfbridge_cmd: list[str],
    role: str,
    dc: str,
    web_lines: int,
    db_lines: int,
    answer: bytes,
) -> None:
    """One config, three nodes: each records and answers only what its role and tags select."""
    bridge = BridgeNode(tmp_path, "n1")
    web, db = tmp_path / "web.jsonl", tmp_path / "db.jsonl"
    bridge.write_config(ROLE_CONFIG.format(web=json.dumps(str(web)), db=json.dumps(str(db))))
    tags = {"SERF_SELF_ROLE": role, "SERF_TAG_ROLE": role, "SERF_TAG_DC": dc}
    user = {**tags, "SERF_USER_EVENT": "deploy", "SERF_USER_LTIME": "3"}
    proc = run_handler(serfbridge_cmd, bridge, "user", stdin=b"v1\n", extra=user)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, b"", b""), bridge.log_tail()
    query = {**tags, "SERF_QUERY_NAME": "whoami", "SERF_QUERY_LTIME": "4"}
    proc = run_handler(serfbridge_cmd, bridge, "query", stdin=b"", extra=query)
    assert (proc.returncode, proc.stdout) == (0, answer), bridge.log_tail()
    assert len(bridge.read_jsonl(web)) == web_lines
    assert len(bridge.read_jsonl(db)) == db_lines


def test_check_shows_when(tmp_path: Path, serfbridge_cmd: list[str]) -> None:
    """`serfbridge check` lists each sink's and responder's when."""
    import subprocess

    path = tmp_path / "c.toml"
    path.write_text(
        f"state_dir = {json.dumps(str(tmp_path))}\n"
        "[[sinks]]\ntype = 'file'\nname = 'f'\npath = 'x.jsonl'\n"
        "when = { role = ['web', 'a*'], dc = 'east' }\n"
        "[[responders]]\nquery = 'q'\ntext = 'x'\nwhen = { role = 'db' }\n",
        encoding="utf-8",
    )
    proc = subprocess.run(
        [*serfbridge_cmd, "--config", str(path), "check"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "sink f: type=file events=* when role=web|a* dc=east\n" in proc.stdout
    assert "responder q: text when role=db\n" in proc.stdout
