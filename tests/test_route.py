"""Dry run: `serfbridge route` and serfbridge.testing.Simulation."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from support.bridge import BridgeNode
from support.handler import run_handler

from serfbridge.errors import ConfigError, InputError
from serfbridge.testing import Simulation

if TYPE_CHECKING:
    from collections.abc import Mapping

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "docs" / "examples" / "cluster.toml"


def route(
    cmd: list[str], *args: str, env: Mapping[str, str] | None = None, cwd: Path = ROOT
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*cmd, *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        timeout=60,
        check=False,
    )


@pytest.fixture(scope="module")
def sim() -> Simulation:
    return Simulation.from_config(EXAMPLE)


# --------------------------------------------------------------------------- Simulation


@pytest.mark.parametrize(
    ("role", "dc", "fired"),
    [
        ("web", "east", ["deploy-web", "chat"]),
        ("db", "east", ["chat", "db-log"]),
        ("db-replica", "east", ["chat", "db-log"]),
        ("db", "west", ["chat"]),
        ("", "east", ["chat"]),
    ],
)
def test_deploy_fires_per_role(sim: Simulation, role: str, dc: str, fired: list[str]) -> None:
    """The same event does different things on web and db nodes."""
    assert sim.route("user:deploy", "v2", role=role, tags={"dc": dc}).fired == fired


def test_reasons_and_messages(sim: Simulation) -> None:
    """Each decision says why; only firing chat sinks carry the rendered message."""
    result = sim.route("user:deploy", "v2", role="web", node="web1")
    chat = result.sink("chat")
    assert chat.message == "[serf] web1: user event deploy (ltime 1): v2"
    assert chat.once
    assert result.sink("db-log").reason == "when role=db|db-* dc=east: not this node"
    assert result.sink("deploy-web").action.startswith("run /usr/local/bin/deploy-app")
    other = sim.route("user:other", role="web")
    assert other.sink("chat").fires is False
    assert other.sink("chat").message is None
    assert "does not match user:other" in other.sink("chat").reason
    with pytest.raises(KeyError, match="sinks: deploy-web, chat, db-log, members"):
        result.sink("nope")


def test_responders_per_role(sim: Simulation) -> None:
    """Web answers with its text; other roles reach the command responder, which is not run."""
    web = sim.route("query:health", role="web", node="web1")
    assert web.answer == "web1: web ok"
    assert web.responder is not None
    assert web.responder.index == 0
    db = sim.route("query:health", role="db")
    assert db.responder is not None
    assert (db.responder.index, db.responder.kind, db.answer) == (1, "command", None)
    assert db.responder.command == ["/usr/local/bin/db-health"]
    assert sim.route("query:other", role="web").responder is None


def test_membership_event_members(sim: Simulation) -> None:
    """Members given as name@addr show up in the document and the chat message."""
    result = sim.route("member-failed", members=["db2@10.0.0.12", {"name": "w1", "role": "web"}])
    assert [(m["name"], m["addr"], m["role"]) for m in result.event["members"]] == [
        ("db2", "10.0.0.12", ""),
        ("w1", "127.0.0.1", "web"),
    ]
    assert result.sink("chat").message == (
        "[serf] node1: member-failed db2 (10.0.0.12), w1 (127.0.0.1, role web)"
    )


def test_recorded_document_seen_from_another_node(sim: Simulation) -> None:
    """A recorded document keeps its event; role/tags replace its node's."""
    doc = sim.route("user:deploy", "v3", role="web", node="web1", tags={"dc": "east"}).event
    as_db = sim.route(doc, role="db")
    assert as_db.event["node"] == {
        "name": "web1",
        "role": "db",
        "tags": {"dc": "east", "role": "db"},
    }
    assert as_db.event["id"] == doc["id"]
    assert as_db.fired == ["chat", "db-log"]
    assert sim.route(doc).fired == ["deploy-web", "chat"]


def test_bad_events_are_input_errors(sim: Simulation) -> None:
    """Unknown types, missing names and payloads on membership events are refused clearly."""
    with pytest.raises(InputError, match="unknown event 'deploy'"):
        sim.route("deploy")
    with pytest.raises(InputError, match="give the user name"):
        sim.route("user")
    with pytest.raises(InputError, match="member-join has no payload"):
        sim.route("member-join", "x")


def test_from_toml_reports_config_errors() -> None:
    """Configuration errors read like `serfbridge check`'s."""
    with pytest.raises(ConfigError, match=r"sinks\[0\] \(file\)\.when: when must name"):
        Simulation.from_toml("[[sinks]]\ntype='file'\nname='f'\npath='x'\nwhen={}\n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        Simulation.from_toml("[[sinks]\n")


def test_documented_example_passes(tmp_path: Path) -> None:
    """The pytest example in docs/testing-config.md runs green against the example config."""
    text = (ROOT / "docs" / "testing-config.md").read_text(encoding="utf-8")
    code = re.search(r"```python\n(.*?)```", text, re.DOTALL)
    assert code is not None
    source = code.group(1).replace(
        'Path(__file__).parent.parent / "deploy" / "serfbridge.toml"', repr(str(EXAMPLE))
    )
    assert repr(str(EXAMPLE)) in source
    (tmp_path / "test_doc_example.py").write_text(source, encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "8 passed" in proc.stdout


# --------------------------------------------------------------------------- the CLI


def test_readme_example_output_is_exact(serfbridge_cmd: list[str]) -> None:
    """Every `serfbridge ... route` command in the README prints exactly what is shown."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```console\n(.*?)```", readme, re.DOTALL)
    commands = 0
    for block in blocks:
        for chunk in re.split(r"^\$ ", block, flags=re.MULTILINE)[1:]:
            line, _, expected = chunk.partition("\n")
            argv = shlex.split(line)
            if argv[0] != "serfbridge" or "route" not in argv:
                continue
            proc = route(serfbridge_cmd, *argv[1:])
            assert (proc.returncode, proc.stderr) == (0, ""), line
            assert proc.stdout == expected, line
            commands += 1
    assert commands >= 2


def test_json_output(serfbridge_cmd: list[str]) -> None:
    """--json prints the Simulation's to_dict: decisions, the answer and the event."""
    proc = route(
        serfbridge_cmd,
        "--config",
        str(EXAMPLE),
        "route",
        "--event",
        "query:health",
        "--payload",
        "hi",
        "--role",
        "web",
        "--node",
        "web7",
        "--json",
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["fired"] == []
    assert out["responder"] == {
        "index": 0,
        "query": "health",
        "kind": "text",
        "answer": "web7: web ok",
        "command": None,
    }
    assert out["event"]["payload"] == "hi"
    assert [s["name"] for s in out["sinks"]] == ["deploy-web", "chat", "db-log", "members"]


def test_recorded_event_file_from_a_real_handler(tmp_path: Path, serfbridge_cmd: list[str]) -> None:
    """events.jsonl written by the handler replays through route, as recorded or on a db node."""
    node = BridgeNode(tmp_path, "web1")
    node.write_config()
    extra = {"SERF_TAG_ROLE": "web", "SERF_TAG_DC": "east", "SERF_USER_EVENT": "deploy"}
    for ltime in (1, 2):
        handled = run_handler(
            serfbridge_cmd,
            node,
            "user",
            stdin=b"v%d\n" % ltime,
            extra={**extra, "SERF_USER_LTIME": str(ltime)},
        )
        assert handled.returncode == 0
    events = str(node.state / "events.jsonl")
    proc = route(
        serfbridge_cmd, "--config", str(EXAMPLE), "route", "--event-file", events, "--json"
    )
    results = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["event"]["ltime"] for r in results] == [1, 2]
    assert [r["fired"] for r in results] == [["deploy-web", "chat"]] * 2
    proc = route(
        serfbridge_cmd, "--config", str(EXAMPLE), "route", "--event-file", events, "--role", "db"
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("FIRE  db-log (file)") == 2
    assert "node:  web1 (role 'db'; tags dc=east, role=db)" in proc.stdout


def test_node_from_serf_environment(serfbridge_cmd: list[str]) -> None:
    """--from-env reads SERF_SELF_* and SERF_TAG_* as the handler would."""
    env = {
        "SERF_SELF_NAME": "db9",
        "SERF_SELF_ROLE": "db",
        "SERF_TAG_ROLE": "db",
        "SERF_TAG_DC": "east",
    }
    args = ["--config", str(EXAMPLE), "route", "--event", "user:deploy", "--from-env"]
    proc = route(serfbridge_cmd, *args, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "node:  db9 (role 'db'; tags dc=east, role=db)" in proc.stdout
    assert "FIRE  db-log (file)" in proc.stdout


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--event", "user:x", "--tag", "nokey"], 2, "--tag 'nokey': expected KEY=VALUE"),
        (["--role", "web"], 2, "one of the arguments --event --event-file is required"),
        (["--event", "bogus"], 4, "unknown event 'bogus'"),
        (["--event-file", "/nonexistent/e.json"], 4, "cannot read /nonexistent/e.json"),
    ],
)
def test_usage_and_input_errors(
    serfbridge_cmd: list[str], args: list[str], code: int, message: str
) -> None:
    """Bad arguments exit 2, bad events exit 4: one clear line, never a traceback."""
    proc = route(serfbridge_cmd, "--config", str(EXAMPLE), "route", *args)
    assert proc.returncode == code
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_bad_event_file_and_bad_config(tmp_path: Path, serfbridge_cmd: list[str]) -> None:
    """A file that is not an event document exits 4; an invalid config exits 3."""
    bad = tmp_path / "e.json"
    bad.write_text('{"hello": 1}\n', encoding="utf-8")
    proc = route(serfbridge_cmd, "--config", str(EXAMPLE), "route", "--event-file", str(bad))
    assert proc.returncode == 4
    assert "document 1 is not a serfbridge event document" in proc.stderr
    config = tmp_path / "c.toml"
    config.write_text("[[sinks]]\ntype='file'\nname='f'\npath='x'\nwhen={}\n", encoding="utf-8")
    proc = route(serfbridge_cmd, "--config", str(config), "route", "--event", "user:x")
    assert proc.returncode == 3
    assert "when must name at least one tag" in proc.stderr
