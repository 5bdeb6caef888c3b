"""Issue 12 items 5 and 7: the CLI and config rough edges, through the real command."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pytest
from support.bridge import BridgeNode
from support.handler import run_handler, serfbridge, spool_files
from support.ports import free_port
from support.proc import clean_environ, run_cli

if TYPE_CHECKING:
    from pathlib import Path


@pytest.fixture
def node(tmp_path: Path) -> BridgeNode:
    return BridgeNode(tmp_path, "n1")


@pytest.mark.parametrize("command", [["check"], ["relay"], ["status"], ["spool", "list"]])
def test_config_option_is_accepted_after_the_subcommand(
    node: BridgeNode, serfbridge_cmd: list[str], command: list[str]
) -> None:
    node.write_config("")
    env = clean_environ({"SERFBRIDGE_CACHE_DIR": str(node.dir / "cache")})
    proc = run_cli([*serfbridge_cmd, *command, "--config", str(node.config)], env=env, timeout=30)
    assert "unrecognized arguments" not in proc.stderr
    # relay has nothing to relay in an empty config: a config error (3), not a usage error.
    assert proc.returncode == (3 if command == ["relay"] else 0), proc.stderr


def test_events_may_be_a_list(node: BridgeNode, serfbridge_cmd: list[str]) -> None:
    out = node.state / "out.jsonl"
    node.write_config(
        f'[[sinks]]\ntype = "file"\nname = "f"\npath = "{out}"\n'
        'events = ["user", "member-failed"]\n'
    )
    assert serfbridge(serfbridge_cmd, node, "check").returncode == 0
    extra = {"SERF_USER_EVENT": "deploy", "SERF_USER_LTIME": "1"}
    assert run_handler(serfbridge_cmd, node, "user", extra=extra).returncode == 0
    join = run_handler(serfbridge_cmd, node, "member-join", stdin=b"n2\t127.0.0.2\t\t\n")
    assert join.returncode == 0
    assert [d["event"] for d in node.read_jsonl(out)] == ["user"]


@pytest.mark.parametrize("args", [["handle"], ["--config", "X", "handle"]])
def test_handle_without_serf_event_is_a_usage_error(
    node: BridgeNode, serfbridge_cmd: list[str], args: list[str]
) -> None:
    node.write_config("")
    argv = [str(node.config) if a == "X" else a for a in args]
    proc = serfbridge(serfbridge_cmd, node, *argv)
    assert proc.returncode == 2, proc.stderr
    assert "SERF_EVENT" in proc.stderr


def test_tilde_in_state_dir_reaches_the_default_file_sink(
    tmp_path: Path, serfbridge_cmd: list[str]
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    config = tmp_path / "c.toml"
    config.write_text('state_dir = "~/sb"\n')
    env = clean_environ(
        {
            "HOME": str(home),
            "SERFBRIDGE_CONFIG": str(config),
            "SERFBRIDGE_CACHE_DIR": str(tmp_path / "cache"),
            "SERF_EVENT": "user",
            "SERF_USER_EVENT": "t",
            "SERF_USER_LTIME": "1",
        }
    )
    proc = run_cli(serfbridge_cmd, env=env, timeout=30)
    assert proc.returncode == 0, proc.stderr
    lines = (home / "sb" / "events.jsonl").read_text().splitlines()
    assert json.loads(lines[0])["name"] == "t"
    assert not (tmp_path / "~").exists()


def test_check_warns_about_unknown_serfbridge_variables(
    node: BridgeNode, serfbridge_cmd: list[str]
) -> None:
    node.write_config("")
    proc = serfbridge(["env", "SERFBRIDGE_STAT_DIR=/x", *serfbridge_cmd], node, "check")
    assert proc.returncode == 0
    assert "SERFBRIDGE_STAT_DIR" in proc.stdout


def test_check_connect_exits_7_when_the_agent_cannot_be_reached(
    node: BridgeNode, serfbridge_cmd: list[str]
) -> None:
    node.write_config(f'[serf]\nrpc_addr = "127.0.0.1:{free_port()}"\n')
    proc = serfbridge(serfbridge_cmd, node, "check", "--connect")
    assert proc.returncode == 7, proc.stdout + proc.stderr
    assert "UNREACHABLE" in proc.stdout


def test_check_connect_tests_the_agent_handshake(
    node: BridgeNode, serfbridge_cmd: list[str], agent: object
) -> None:
    node.write_config(f'[serf]\nrpc_addr = "{agent.rpc_addr}"\n')  # type: ignore[attr-defined]
    proc = serfbridge(serfbridge_cmd, node, "check", "--connect")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "handshake" in proc.stdout


def test_check_runs_the_relays_start_checks(node: BridgeNode, serfbridge_cmd: list[str]) -> None:
    node.write_config('[[sources]]\ntype = "http"\nlisten = "0.0.0.0:8787"\nallow_events = ["x"]\n')
    proc = serfbridge(serfbridge_cmd, node, "check")
    assert proc.returncode == 3
    assert "unauthenticated listener" in proc.stderr


def test_check_names_a_bad_listen_address_and_broker_url(
    node: BridgeNode, serfbridge_cmd: list[str]
) -> None:
    node.write_config(
        '[relay]\nmetrics_listen = "nowhere"\n'
        '[[sources]]\ntype = "redis"\nurl = "redis://127.0.0.1:notaport/0"\nstream = "s"\n'
    )
    proc = serfbridge(serfbridge_cmd, node, "check")
    assert proc.returncode == 3
    assert "relay.metrics_listen" in proc.stderr
    assert "sources[0] (redis).url" in proc.stderr


def test_check_connect_tests_each_sources_server(
    node: BridgeNode, serfbridge_cmd: list[str], agent: object
) -> None:
    rpc = agent.rpc_addr  # type: ignore[attr-defined]
    node.write_config(
        f'[serf]\nrpc_addr = "{rpc}"\n[[sources]]\ntype = "redis"\n'
        f'url = "redis://127.0.0.1:{free_port()}/0"\nstream = "s"\nallow_events = ["x"]\n'
    )
    proc = serfbridge(serfbridge_cmd, node, "check", "--connect")
    assert proc.returncode == 6, proc.stdout + proc.stderr
    assert "source redis" in proc.stdout
    assert "UNREACHABLE" in proc.stdout


def test_spool_list_rejected_survives_non_utf8_entries(
    node: BridgeNode, serfbridge_cmd: list[str]
) -> None:
    node.write_config("")
    rejected = node.state / "spool" / "rejected"
    rejected.mkdir(parents=True)
    (rejected / "00000000000000000001-0000001-0001.json").write_bytes(b'{"reason": "\xff\xfe"}')
    (rejected / "00000000000000000002-0000001-0001.json").write_bytes(b"\x80 not json")
    (rejected / "00000000000000000003-0000001-0001.json").write_text('{"reason": "fine"}')
    proc = serfbridge(serfbridge_cmd, node, "spool", "list", "--rejected")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("rejected ") == 3
    assert "fine" in proc.stdout


def test_spool_commands_stay_inside_the_spool(node: BridgeNode, serfbridge_cmd: list[str]) -> None:
    node.write_config("")
    outside = node.state / "spool" / "x"
    outside.mkdir(parents=True)
    (outside / "00000000000000000001-0000001-0001.json").write_text("{}")
    proc = serfbridge(serfbridge_cmd, node, "spool", "purge", "--dead", "--sink", "../x")
    assert proc.returncode == 0
    assert spool_files(node, "x") == ["00000000000000000001-0000001-0001.json"]


def test_spool_list_and_purge_queue_see_events_waiting_in_incoming(
    node: BridgeNode, serfbridge_cmd: list[str], http_receiver: object
) -> None:
    """Waiting events stay in incoming/ (one copy for every sink): `spool list --queue`
    shows them per sink, and `purge --queue --sink` drops them for that sink only."""
    url = http_receiver.url  # type: ignore[attr-defined]
    node.write_config(
        f'spawn_deliverer = false\n[[sinks]]\ntype = "webhook"\nname = "a"\nurl = "{url}"\n'
        f'[[sinks]]\ntype = "webhook"\nname = "b"\nurl = "{url}"\n'
    )
    extra = {"SERF_USER_EVENT": "q", "SERF_USER_LTIME": "1"}
    assert run_handler(serfbridge_cmd, node, "user", extra=extra).returncode == 0
    listing = serfbridge(serfbridge_cmd, node, "spool", "list", "--queue")
    assert "queue a: 1 event(s)" in listing.stdout
    assert "queue b: 1 event(s)" in listing.stdout
    purged = serfbridge(serfbridge_cmd, node, "spool", "purge", "--queue", "--sink", "a")
    assert "1 queue event(s) removed" in purged.stdout
    after = serfbridge(serfbridge_cmd, node, "spool", "list", "--queue").stdout
    assert "queue a:" not in after
    assert "queue b: 1 event(s)" in after
    assert serfbridge(serfbridge_cmd, node, "flush").returncode == 0
    assert len(http_receiver.requests) == 1  # type: ignore[attr-defined]
    assert spool_files(node, "incoming") == []
