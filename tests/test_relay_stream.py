"""Stream mode, loop prevention end to end, and the serf CLI fallback."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

import pytest
from support.bridge import BridgeNode
from support.ports import free_port, wait_for
from support.relay import RelayProcess, Watcher, get_text, http_source, metric, post

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from support.serf import SerfClusterFactory
    from support.servers import HttpReceiver, Mosquitto

pytestmark = pytest.mark.e2e

TOKEN = "str3am-t0ken"  # noqa: S105 - test value
FAST = "[delivery]\nlinger = 1\nbackoff_initial = 0.05\nbackoff_max = 0.5\n"


def _jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def stopped_deliverers() -> Iterator[list[BridgeNode]]:
    """Deliverers detach (setsid); kill the ones a test's nodes started."""
    nodes: list[BridgeNode] = []
    yield nodes
    for node in nodes:
        node.kill_deliverer()


def test_stream_mode_feeds_sinks_and_answers_queries(
    serf_cluster: SerfClusterFactory,
    serfbridge_cmd: list[str],
    serfbridge_handler: str,
    tmp_path: Path,
    http_receiver: HttpReceiver,
    stopped_deliverers: list[BridgeNode],
) -> None:
    """With stream = true the relay records each event like the handler does (same id),
    delivers through the spool to a webhook, and answers a query with respond."""
    node = BridgeNode(tmp_path, "n1")
    node.write_config()
    cluster = serf_cluster(1, "user=" + serfbridge_handler, env_for=lambda _: node.env())
    agent = cluster[0]
    streamed = tmp_path / "relay" / "streamed.jsonl"
    body = (
        "[relay]\nstream = true\n"
        f'[[sinks]]\ntype = "file"\nname = "file"\npath = "{streamed}"\n'
        f'[[sinks]]\ntype = "webhook"\nname = "hook"\nurl = "{http_receiver.url_for("s")}"\n'
        '[[responders]]\nquery = "ping"\ntext = "pong from {node} ({payload})"\n' + FAST
    )
    relay = RelayProcess(tmp_path / "relay", serfbridge_cmd, body, rpc_addr=agent.rpc_addr)
    relay_node = BridgeNode(tmp_path, "relay")
    relay_node.state = relay.state
    stopped_deliverers.append(relay_node)
    with relay:
        relay.start()
        wait_for(lambda: "event stream subscribed" in relay.log_text(), 10, what="subscription")
        agent.event("deploy", "v1")
        doc: dict[str, Any] = wait_for(
            lambda: next((d for d in _jsonl(streamed) if d["name"] == "deploy"), {}),
            15,
            what="the streamed event in the file sink",
            detail=relay.log_tail,
        )
        assert (doc["event"], doc["payload"], doc["node"]["name"]) == ("user", "v1", "n1")
        handled = node.wait_event(lambda e: e["name"] == "deploy", "the handler's copy")
        assert doc["id"] == handled["id"]
        requests = http_receiver.wait_for_count(1, timeout=20)
        assert requests[0].json()["id"] == doc["id"]
        answer = agent.query("ping", "hi", "-timeout=2s")
        assert answer["Responses"] == {"n1": "pong from n1 (hi)"}
        queries = [d for d in _jsonl(streamed) if d["event"] == "query"]
        assert [q["name"] for q in queries] == ["ping"]


def test_loop_through_mqtt_stops_at_the_relay(
    serf_cluster: SerfClusterFactory,
    serfbridge_cmd: list[str],
    serfbridge_handler: str,
    tmp_path: Path,
    mosquitto: Mosquitto,
    stopped_deliverers: list[BridgeNode],
) -> None:
    """The handler forwards events to serf/<event> over MQTT and the relay listens on serf/#:
    the forwarded document comes back, is refused as a loop, and the event happens once."""
    node = BridgeNode(tmp_path, "n1")
    stopped_deliverers.append(node)
    node.write_config(
        '[[sinks]]\ntype = "file"\nname = "file"\n'
        f'path = "{node.state / "events.jsonl"}"\n'
        f'[[sinks]]\ntype = "mqtt"\nname = "bus"\nurl = "{mosquitto.url}"\n'
        'topic = "serf/{event}"\n' + FAST
    )
    cluster = serf_cluster(1, "user=" + serfbridge_handler, env_for=lambda _: node.env())
    http, metrics = free_port(), free_port()
    body = (
        f'[relay]\nmetrics_listen = "127.0.0.1:{metrics}"\n'
        + http_source(http, token=TOKEN, allow_events=["deploy"])
        + f'[[sources]]\ntype = "mqtt"\nurl = "{mosquitto.url}"\ntopic = "serf/#"\n'
        'allow_events = ["deploy"]\n'
    )
    relay = RelayProcess(tmp_path / "relay", serfbridge_cmd, body, rpc_addr=cluster[0].rpc_addr)
    with relay:
        relay.start()
        time.sleep(0.5)  # SUBACK
        status, _ = post(http, "/v1/event", {"name": "deploy", "payload": "once"}, token=TOKEN)
        assert status == 202

        def loops() -> float:
            text = get_text(metrics, "/metrics")[1]
            return metric(
                text, "serfbridge_relay_messages_rejected_total", source="mqtt", reason="loop"
            )

        wait_for(lambda: loops() >= 1, 30, what="the forwarded document to come back",
                 detail=relay.log_tail)  # fmt: skip
        time.sleep(1.0)
        deploys = [e for e in node.events() if e["name"] == "deploy"]
        assert len(deploys) == 1
        assert loops() == 1


def test_serf_cli_fallback(
    serf_cluster: SerfClusterFactory,
    serfbridge_cmd: list[str],
    serf_bin: str,
    tmp_path: Path,
) -> None:
    """With serf_cli set the relay runs `serf event` / `serf query` (argv, no shell);
    /healthz checks that the agent's RPC port answers."""
    agent = serf_cluster(1)[0]
    watch = Watcher(agent)
    http = free_port()
    body = f"[relay]\nserf_cli = [{json.dumps(serf_bin)}]\n" + http_source(
        http, token=TOKEN, allow_events=["deploy"], allow_queries=["load"]
    )
    relay = RelayProcess(tmp_path / "relay", serfbridge_cmd, body, rpc_addr=agent.rpc_addr)
    try:
        with relay:
            relay.start()
            event = {"name": "deploy", "payload": "$(touch pwned); -x 'q'"}
            status, _ = post(http, "/v1/event", event, token=TOKEN)
            assert status == 202
            wait_for(lambda: b"$(touch pwned); -x 'q'" in watch.payloads(), 10, what="event")
            query = {"name": "load", "timeout": 0.5, "nodes": ["n1"]}
            status, reply = post(http, "/v1/query", query, token=TOKEN)
            assert status == 200
            assert reply["acks"] == ["n1"]
            status, doc = post(http, "/v1/event", {"name": "deploy", "payload": "x" * 473},
                               token=TOKEN)  # fmt: skip
            assert (status, doc["reason"]) == (413, "too_large")
            assert get_text(http, "/healthz")[0] == 200
            agent.kill9()
            status, text = get_text(http, "/healthz")
            assert (status, json.loads(text)["status"]) == (503, "degraded")
    finally:
        watch.close()
    assert not (tmp_path / "relay" / "pwned").exists()
