"""One config file on every node of a real 3-node cluster: roles decide, membership is exact.

web nodes (n1, n3) and a db node (n2) share one serfbridge.toml; only their role tags and
per-host environment (state dir, agent RPC address) differ.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
from functools import partial
from typing import TYPE_CHECKING, Any

import pytest
from support.ports import free_port, wait_for
from support.serf import SerfAgent, SerfCluster

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

pytestmark = pytest.mark.e2e

# A failed member is reaped fast; a left one stays 20 s, long enough to see "left" in every
# node's view on a loaded machine (with 1 s it was sometimes reaped before the check).
FAST_REAP = {"reconnect_timeout": "1s", "tombstone_timeout": "20s", "reconnect_interval": "1s"}
ROLES = {"n1": "web", "n2": "db", "n3": "web"}

# Fails the first two runs on each node, then succeeds; records every run in its cwd.
PROGRAM = r"""
import json, os, sys
body = sys.stdin.read()
runs = "command-runs.jsonl"
count = sum(1 for _ in open(runs)) + 1 if os.path.exists(runs) else 1
with open(runs, "a") as fh:
    fh.write(json.dumps({"attempt": count, "event": json.loads(body),
                         "id": os.environ["SERFBRIDGE_EVENT_ID"]}) + "\n")
sys.exit(3 if count <= 2 else 0)
"""

SHARED_CONFIG = """\
log_level = "debug"

[delivery]
linger = 2
backoff_initial = 0.05
backoff_max = 0.3
poll_interval = 0.02

# Relative paths land in each agent's working directory (the handler's cwd).
[[sinks]]
type = "file"
name = "web-deploys"
path = "web-deploys.jsonl"
events = "user:deploy"
when = {{ role = "web" }}

[[sinks]]
type = "file"
name = "db-deploys"
path = "db-deploys.jsonl"
events = "user:deploy"
when = {{ role = ["db", "db-*"], dc = "east" }}

[[sinks]]
type = "command"
name = "hook"
events = "user:deploy"
command = {command}
timeout = 10
when = {{ role = "web" }}

[[sinks]]
type = "members"
name = "members"
path = "members.json"

[[responders]]
query = "whoami"
text = "web {{node}}"
when = {{ role = "web" }}

[[responders]]
query = "whoami"
text = "db {{node}}"
"""


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def view_as_cli(agent: SerfAgent) -> dict[str, Any]:
    """The node's members.json in `serf members -format=json` terms; {} if absent."""
    path = agent.workdir / "members.json"
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {
        name: (f"{m['addr']}:{m['port']}", m["tags"], m["status"])
        for name, m in doc["members"].items()
    }


def has_status(agent: SerfAgent, name: str, status: str) -> bool:
    return agent.member_status(name) == status


def cli_members(agent: SerfAgent) -> dict[str, Any]:
    return {m["name"]: (m["addr"], m["tags"], m["status"]) for m in agent.members()}


def wait_view_matches(agent: SerfAgent, what: str, timeout: float = 40.0) -> dict[str, Any]:
    """Until members.json equals `serf members` on ``agent`` (and report both if not)."""

    def same() -> dict[str, Any]:
        expected = cli_members(agent)
        return expected if view_as_cli(agent) == expected else {}

    def detail() -> str:
        return f"view: {view_as_cli(agent)}\nserf members: {cli_members(agent)}\n" + log_tail(agent)

    return wait_for(same, timeout=timeout, what=f"{agent.name}: {what}", detail=detail)


def log_tail(agent: SerfAgent) -> str:
    log = agent.workdir / "state" / "serfbridge.log"
    return log.read_text(encoding="utf-8")[-3000:] if log.exists() else "(no serfbridge.log)"


def kill_deliverer(agent: SerfAgent) -> None:
    with contextlib.suppress(OSError, ValueError):
        pid = int((agent.workdir / "state" / "spool" / "deliver.pid").read_text())
        os.kill(pid, signal.SIGKILL)


@pytest.fixture
def cluster(tmp_path: Path, serf_bin: str, serfbridge_handler: str) -> Iterator[SerfCluster]:
    """n1..n3 with serfbridge as handler, all reading tmp_path/serfbridge.toml."""
    program = tmp_path / "hook.py"
    program.write_text(PROGRAM, encoding="utf-8")
    config = tmp_path / "serfbridge.toml"
    config.write_text(
        SHARED_CONFIG.format(command=json.dumps([sys.executable, str(program)])),
        encoding="utf-8",
    )
    base = tmp_path / "agents"
    serf = SerfCluster(base, serf_bin=serf_bin)
    try:
        for name, role in ROLES.items():
            rpc_port = free_port()
            workdir = base / name
            env = {
                "SERFBRIDGE_CONFIG": str(config),
                "SERFBRIDGE_STATE_DIR": str(workdir / "state"),
                "SERFBRIDGE_CACHE_DIR": str(workdir / "cache"),
                "SERFBRIDGE_SERF__RPC_ADDR": f"127.0.0.1:{rpc_port}",
            }
            agent = SerfAgent(
                name,
                workdir,
                handlers=["*=" + serfbridge_handler],
                join=[serf.agents[0].bind_addr] if serf.agents else [],
                tags={"role": role, "dc": "east"},
                env=env,
                config=FAST_REAP,
                rpc_port=rpc_port,
                bind_port=free_port(udp=True),
                serf_bin=serf_bin,
            )
            serf.agents.append(agent)
            agent.start(timeout=30)
        serf.wait_converged(timeout=30)
        yield serf
    finally:
        serf.stop()
        for agent in serf.agents:
            kill_deliverer(agent)


def test_one_config_roles_command_sink_and_membership_view(cluster: SerfCluster) -> None:
    """Web and db nodes act differently on the same events; members.json tracks serf members
    through joins, a tag change, a leave, a kill -9 and a reap."""
    n1, n2, n3 = cluster["n1"], cluster["n2"], cluster["n3"]
    for agent in cluster:
        wait_view_matches(agent, "membership view after the joins")

    # The same user event: web nodes record it and run the command, the db node logs it.
    n1.event("deploy", "v1")
    for agent in (n1, n3):

        def ran(agent: SerfAgent = agent) -> list[dict[str, Any]]:
            runs = read_jsonl(agent.workdir / "command-runs.jsonl")
            return runs if len(runs) >= 3 else []

        runs = wait_for(
            ran, timeout=30, what=f"{agent.name}: 3 command runs", detail=partial(log_tail, agent)
        )
        # Two failures, then success: retried with the same event, then no more runs.
        assert [r["attempt"] for r in runs] == [1, 2, 3]
        assert {r["id"] for r in runs} == {runs[0]["event"]["id"]}
        assert runs[0]["event"]["payload"] == "v1"
        assert [e["payload"] for e in read_jsonl(agent.workdir / "web-deploys.jsonl")] == ["v1"]
        assert not (agent.workdir / "db-deploys.jsonl").exists()
        assert "delivery failed, will retry" in log_tail(agent)
    wait_for(lambda: read_jsonl(n2.workdir / "db-deploys.jsonl"), timeout=20, what="n2: db deploy")
    assert not (n2.workdir / "web-deploys.jsonl").exists()
    assert not (n2.workdir / "command-runs.jsonl").exists()

    # Each role answers the same query its own way.
    result = n1.query("whoami", None, "-timeout=3s")
    assert result["Responses"] == {"n1": "web n1", "n2": "db n2", "n3": "web n3"}

    # A tag change: n3 becomes a db node; the views follow and the next deploy obeys it.
    n3.tags(set={"role": "db-replica", "rack": "r1,r2=x"})
    for agent in cluster:
        view = wait_view_matches(agent, "membership view after the tag change")
        assert view["n3"][1] == {"dc": "east", "rack": "r1,r2=x", "role": "db-replica"}
    n1.event("deploy", "v2")
    wait_for(
        lambda: len(read_jsonl(n3.workdir / "db-deploys.jsonl")) == 1,
        timeout=20,
        what="n3: deploy v2 logged as a db node",
    )
    assert [e["payload"] for e in read_jsonl(n3.workdir / "web-deploys.jsonl")] == ["v1"]

    # A graceful leave, a kill -9, then both reaped: n1's view follows each step.
    n3.leave()
    for agent in (n1, n2):
        wait_for(partial(has_status, agent, "n3", "left"), timeout=20, what="n3 left")
        view = wait_view_matches(agent, "membership view after n3 left")
        assert view["n3"][2] == "left"
    n2.kill9()
    wait_for(partial(has_status, n1, "n2", "failed"), timeout=30, what="n1 to see n2 failed")
    view = wait_view_matches(n1, "membership view after kill -9 of n2")
    assert view["n2"][2] == "failed"
    wait_for(lambda: set(cli_members(n1)) == {"n1"}, timeout=60, what="n1 to reap n2 and n3")
    view = wait_view_matches(n1, "membership view after the reap")
    assert set(view) == {"n1"}
