"""The handler, stream mode and the dry run take the same routing decisions.

One config of file sinks and responders with ``events`` and ``when``, one table of events.
Node n1 runs the serfbridge handler, node n2 has no handler and a ``stream = true`` relay;
both carry the same tags. For every row the sinks that recorded the event on n1 (handler),
on n2 (stream mode) and the dry run's ``fired`` list must equal the row's expectation, and
so must the query answers.
"""

from __future__ import annotations

import json
from functools import partial
from typing import TYPE_CHECKING, Any

import pytest
from support.bridge import BridgeNode
from support.ports import wait_for
from support.relay import RelayProcess

from serfbridge import simulate
from serfbridge.capture import paths
from serfbridge.config.models import compile_settings, load_settings

if TYPE_CHECKING:
    from pathlib import Path

    from support.serf import SerfClusterFactory

pytestmark = pytest.mark.e2e

TAGS = {"role": "db", "dc": "east"}
SINKS = {
    "all": "",
    "deploys": 'events = "user:deploy"',
    "listed": 'events = "user:deploy,member-join"',
    "db": 'when = { role = "db" }',
    "web": 'when = { role = "web" }',
    "east_deploys": 'events = "user:deploy"\nwhen = { dc = "east" }',
    "queries": 'events = "query"',
}
RESPONDERS = (
    '[[responders]]\nquery = "load"\ntext = "web-load"\nwhen = { role = "web" }\n'
    '[[responders]]\nquery = "load"\ntext = "db-load"\n'
    '[[responders]]\nquery = "ping"\ntext = "west-pong"\nwhen = { dc = "west" }\n'
)
# (kind, name, payload, sinks that fire, answer on a node with TAGS or None)
ROWS = [
    ("user", "deploy", "v1", {"all", "deploys", "listed", "db", "east_deploys"}, None),
    ("user", "other", "x", {"all", "db"}, None),
    ("query", "load", "q", {"all", "db", "queries"}, "db-load"),
    ("query", "ping", "q", {"all", "db", "queries"}, None),
    ("member-join", "n3", None, {"all", "listed", "db"}, None),
]


def config_body(out: Path) -> str:
    blocks = []
    for name, extra in SINKS.items():
        path = json.dumps(str(out / f"{name}.jsonl"))
        blocks.append(f'[[sinks]]\ntype = "file"\nname = "{name}"\npath = {path}\n{extra}\n')
    return "".join(blocks) + RESPONDERS


def row_key(doc: dict[str, Any]) -> tuple[str, str]:
    """A member event's row is named after its (only) member."""
    if doc["event"].startswith("member-"):
        return doc["event"], doc["members"][0]["name"]
    return doc["event"], doc["name"]


def documents(out: Path) -> dict[tuple[str, str], dict[str, Any]]:
    """The documents of the sink that takes everything, by row key."""
    path = out / "all.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return {row_key(d): d for d in map(json.loads, lines)}


def has_rows(out: Path, keys: set[tuple[str, str]]) -> bool:
    return keys <= set(documents(out))


def recorded(out: Path) -> dict[str, set[str]]:
    """Event id -> the sinks whose file holds it."""
    found: dict[str, set[str]] = {}
    for name in SINKS:
        path = out / f"{name}.jsonl"
        for line in path.read_text().splitlines() if path.exists() else []:
            found.setdefault(json.loads(line)["id"], set()).add(name)
    return found


def test_handler_stream_mode_and_dry_run_agree(
    serf_cluster: SerfClusterFactory,
    serfbridge_cmd: list[str],
    serfbridge_handler: str,
    tmp_path: Path,
) -> None:
    """Every row: the same sinks fire and the same responder answers on all three paths."""
    handler_node = BridgeNode(tmp_path, "n1")
    handler_out = tmp_path / "handler-out"
    handler_node.write_config(config_body(handler_out))
    cluster = serf_cluster(
        1, serfbridge_handler, env_for=lambda _: handler_node.env(), tags_for=lambda _: TAGS
    )
    n1 = cluster[0]
    n2 = cluster.add("n2", None, tags=TAGS)
    stream_out = tmp_path / "stream-out"
    relay = RelayProcess(
        tmp_path / "relay", serfbridge_cmd, "[relay]\nstream = true\n" + config_body(stream_out),
        rpc_addr=n2.rpc_addr,
    )  # fmt: skip
    settings = load_settings(str(handler_node.config))
    cfg: Any = compile_settings(settings, paths.config_path(str(handler_node.config)))
    with relay:
        relay.start()
        wait_for(lambda: "event stream subscribed" in relay.log_text(), 10, what="subscription")
        answers: dict[str, dict[str, str]] = {}
        for kind, name, payload, _, _ in ROWS:
            if kind == "user":
                n1.event(name, payload)
            elif kind == "query":
                answers[name] = n1.query(name, payload, "-timeout=2s")["Responses"]
            else:
                cluster.add("n3", None)
        keys = {(kind, name) for kind, name, *_ in ROWS}
        for out, tail in ((handler_out, handler_node.log_tail), (stream_out, relay.log_tail)):
            wait_for(partial(has_rows, out, keys), 20, what=f"every row in {out.name}",
                     detail=tail)  # fmt: skip
    docs, handled, streamed = documents(handler_out), recorded(handler_out), recorded(stream_out)
    for kind, name, _, fired, answer in ROWS:
        doc = docs[kind, name]
        dry = simulate.decide(cfg, doc)
        row = f"{kind}:{name}"
        assert handled[doc["id"]] == fired, row
        assert streamed.get(doc["id"]) == fired, row
        assert set(dry.fired) == fired, row
        if kind == "query":
            expected = {} if answer is None else {"n1": answer, "n2": answer}
            assert answers[name] == expected, row
            assert (dry.answer if dry.responder else None) == answer, row
