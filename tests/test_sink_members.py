"""``type = "members"``: the membership view file, Redis hash and retained MQTT messages."""

from __future__ import annotations

import json
import threading
from typing import TYPE_CHECKING, Any

import pytest
from paho.mqtt.client import Client, MQTTMessage
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from redis import Redis
from support.ports import LOOPBACK, wait_for

from serfbridge.config.models import load_settings
from serfbridge.errors import ConfigError
from serfbridge.sinks.members import MembersSink, MembersSinkConfig, build_view, from_event

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from support.serf import SerfAgent, SerfClusterFactory
    from support.servers import Mosquitto, RedisServer

WAIT = 10.0


def member(name: str, role: str = "web", **tags: str) -> dict[str, Any]:
    return {"name": name, "addr": "10.0.0.1", "role": role, "tags": {"role": role, **tags}}


def event(kind: str, *members: dict[str, Any], eid: str = "e1") -> dict[str, Any]:
    return {
        "version": 1,
        "id": eid,
        "event": kind,
        "name": None,
        "ltime": None,
        "payload": None,
        "payload_encoding": None,
        "members": list(members),
        "node": {"name": "n1", "role": "web", "tags": {"role": "web"}},
        "received_at": "2026-11-23T19:00:00.000Z",
        "truncated": False,
    }


def sink_for(path: Path, agent: SerfAgent | None = None, **extra: Any) -> MembersSink:
    cfg = MembersSinkConfig(type="members", name="m", path=str(path), **extra)
    if agent is not None:
        cfg.use_agent(agent.rpc_addr, None, 2.0)
    return MembersSink(cfg)


def send(sink: MembersSink, doc: dict[str, Any]) -> None:
    sink.send(doc, json.dumps(doc).encode())


def view(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def as_cli(doc: dict[str, Any]) -> dict[str, tuple[str, dict[str, str], str]]:
    """The view reduced to what `serf members -format=json` shows: addr:port, tags, status."""
    return {
        name: (f"{m['addr']}:{m['port']}", m["tags"], m["status"])
        for name, m in doc["members"].items()
    }


def cli_members(agent: SerfAgent) -> dict[str, tuple[str, dict[str, str], str]]:
    return {m["name"]: (m["addr"], m["tags"], m["status"]) for m in agent.members()}


# --------------------------------------------------------------------------- from events only


def test_events_build_the_view_without_an_agent(tmp_path: Path) -> None:
    """join, update, leave, failed and reap applied in turn; by role; who changed what."""
    path = tmp_path / "sub dir" / "members.json"
    sink = sink_for(path)
    send(sink, event("member-join", member("n1"), member("n2", "db"), eid="j"))
    doc = view(path)
    assert doc["source"] == "events"
    assert sorted(doc["members"]) == ["n1", "n2"]
    assert [m["name"] for m in doc["roles"]["db"]] == ["n2"]
    assert doc["members"]["n2"]["changed_by"] == {"event": "member-join", "id": "j", "ltime": None}
    joined_at = doc["members"]["n1"]["changed_at"]

    send(sink, event("member-update", member("n2", "cache", dc="east"), eid="u"))
    doc = view(path)
    assert doc["members"]["n2"]["role"] == "cache"
    assert doc["members"]["n2"]["tags"] == {"dc": "east", "role": "cache"}
    assert sorted(doc["roles"]) == ["cache", "web"]
    assert doc["members"]["n1"]["changed_at"] == joined_at  # untouched member keeps its time
    assert doc["members"]["n1"]["changed_by"]["id"] == "j"

    send(sink, event("member-leave", member("n1"), eid="l"))
    send(sink, event("member-failed", member("n2", "cache", dc="east"), eid="f"))
    doc = view(path)
    assert {n: m["status"] for n, m in doc["members"].items()} == {"n1": "left", "n2": "failed"}
    send(sink, event("member-reap", member("n1"), eid="r"))
    assert sorted(view(path)["members"]) == ["n2"]


def test_user_events_leave_the_view_alone(tmp_path: Path) -> None:
    """Only membership events change the view (events = '*' is allowed but harmless)."""
    path = tmp_path / "members.json"
    sink = sink_for(path, events="*")
    send(sink, {**event("user"), "name": "deploy", "ltime": 3})
    assert not path.exists()


def test_unchanged_view_is_not_republished() -> None:
    """build_view reports no changes when nothing differs (the spurious member-update)."""
    old = from_event({}, event("member-join", member("n1")))
    first, _, _ = build_view({}, old, event("member-join", member("n1")), "events")
    again = from_event(first["members"], event("member-update", member("n1")))
    _, changed, removed = build_view(first["members"], again, event("member-update"), "events")
    assert (changed, removed) == ([], [])


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("once = true", "once = true makes no sense here"),
        ("mqtt_url = 'mqtt://127.0.0.1:1883'\nmqtt_prefix = 'a/#'", "mqtt_prefix contains a +"),
        ("redis_url = 'http://x'", "url must start with redis://"),
        ("path = 'x'\nshell = 1", "unknown key"),
    ],
)
def test_config_errors(tmp_path: Path, extra: str, message: str) -> None:
    """Bad options name the sink."""
    path = tmp_path / "c.toml"
    body = extra if extra.startswith("path") else f"path = 'x'\n{extra}"
    path.write_text(f"[[sinks]]\ntype = 'members'\nname = 'm'\n{body}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"sinks\[0\] \(members\)") as info:
        load_settings(str(path))
    assert message in str(info.value)


def test_serf_section_reaches_the_sink(tmp_path: Path) -> None:
    """[serf] rpc_addr is what the sink reconciles against."""
    path = tmp_path / "c.toml"
    path.write_text(
        "[serf]\nrpc_addr = '127.0.0.1:7999'\n[[sinks]]\ntype = 'members'\nname = 'm'\n"
        "path = 'members.json'\n",
        encoding="utf-8",
    )
    (sink,) = load_settings(str(path)).effective_sinks()
    assert isinstance(sink, MembersSinkConfig)
    assert sink.rpc_addr == "127.0.0.1:7999"


# --------------------------------------------------------------------------- against real agents


def test_reconciles_with_the_agent_and_heals(
    tmp_path: Path, serf_cluster: SerfClusterFactory
) -> None:
    """With an agent: exact tags and ports; a stale file (ghost member, wrong tags) heals."""
    cluster = serf_cluster(2, tags_for=lambda n: {"role": "web", "list": "a,b=c"})
    path = tmp_path / "members.json"
    stale = {
        "members": {
            "ghost": {**member("ghost"), "port": 1, "status": "alive"},
            "n2": {**member("n2", "db"), "addr": "127.0.0.1", "port": 2, "status": "alive"},
        }
    }
    path.write_text(json.dumps(stale), encoding="utf-8")
    sink = sink_for(path, cluster["n1"])
    send(sink, event("member-update", member("n1"), eid="u1"))
    doc = view(path)
    assert doc["source"] == "agent"
    assert as_cli(doc) == cli_members(cluster["n1"])
    assert doc["members"]["n1"]["tags"] == {"list": "a,b=c", "role": "web"}
    assert doc["members"]["n2"]["changed_by"] == {"event": "reconcile", "id": "u1", "ltime": None}
    assert doc["members"]["n1"]["changed_by"]["event"] == "member-update"


def test_unreachable_agent_falls_back_to_the_event(
    tmp_path: Path, serf_cluster: SerfClusterFactory
) -> None:
    """A stopped agent (this node left) does not block the view: the event is applied."""
    cluster = serf_cluster(1)
    agent = cluster["n1"]
    path = tmp_path / "members.json"
    sink = sink_for(path, agent)
    agent.stop()
    send(sink, event("member-leave", member("n1")))
    doc = view(path)
    assert doc["source"] == "events"
    assert doc["members"]["n1"]["status"] == "left"


# --------------------------------------------------------------------------- Redis and MQTT


class Retained:
    """Subscribe to ``topic`` (QoS 1) and collect what arrives."""

    def __init__(self, port: int, topic: str) -> None:
        self.messages: list[MQTTMessage] = []
        self._cond = threading.Condition()
        subscribed = threading.Event()
        self.client = Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5)
        self.client.on_message = lambda _c, _u, msg: self._add(msg)
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
        self.client.connect(LOOPBACK, port)
        self.client.loop_start()
        assert subscribed.wait(WAIT), "no SUBACK"

    def _add(self, msg: MQTTMessage) -> None:
        with self._cond:
            self.messages.append(msg)
            self._cond.notify_all()

    def wait_for(self, n: int) -> list[MQTTMessage]:
        with self._cond:
            assert self._cond.wait_for(lambda: len(self.messages) >= n, WAIT), self.messages
            return list(self.messages)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def retained(mosquitto: Mosquitto) -> Iterator[Any]:
    subs: list[Retained] = []

    def make(topic: str) -> Retained:
        subs.append(Retained(mosquitto.port, topic))
        return subs[-1]

    yield make
    for sub in subs:
        sub.close()


def _marker(broker: Mosquitto, topic: str) -> None:
    """A non-retained message published after the subscription: it arrives after any retained
    message for the topic, so seeing it first proves there was none."""
    client = Client(CallbackAPIVersion.VERSION2)
    client.connect(LOOPBACK, broker.port)
    client.loop_start()
    client.publish(topic, b"marker", qos=1).wait_for_publish(WAIT)
    client.disconnect()
    client.loop_stop()


def test_redis_hash_and_retained_mqtt_follow_the_view(
    tmp_path: Path, redis_server: RedisServer, mosquitto: Mosquitto, retained: Any
) -> None:
    """Joins fill the hash and retained topics; a reap deletes the field and clears the topic."""
    path = tmp_path / "members.json"
    sink = sink_for(
        path,
        redis_url=redis_server.url,
        redis_key="cluster:members",
        mqtt_url=mosquitto.url,
        mqtt_prefix="serf/members",
    )
    with sink:
        send(sink, event("member-join", member("n1"), member("n2", "db")))
        send(sink, event("member-reap", member("n1"), eid="r"))
    client = Redis.from_url(redis_server.url, decode_responses=True)
    try:
        stored = client.hgetall("cluster:members")
    finally:
        client.close()
    assert sorted(stored) == ["n2"]
    assert json.loads(stored["n2"]) == view(path)["members"]["n2"]

    late = retained("serf/members/#")  # a late subscriber sees the current state at once
    (msg,) = late.wait_for(1)
    assert (msg.topic, msg.retain) == ("serf/members/n2", True)
    assert json.loads(msg.payload)["role"] == "db"
    gone = retained("serf/members/n1")
    _marker(mosquitto, "serf/members/n1")
    (first,) = gone.wait_for(1)
    assert (first.payload, first.retain) == (b"marker", False)


def test_redis_down_is_retried_and_the_file_waits(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """Redis stopped: SinkUnavailable and the file unchanged; the retry publishes everything."""
    from serfbridge.errors import SinkUnavailable

    path = tmp_path / "members.json"
    sink = sink_for(path, redis_url=redis_server.url, timeout=1.0)
    sink.open()
    redis_server.stop()
    with pytest.raises(SinkUnavailable):
        send(sink, event("member-join", member("n1")))
    assert not path.exists()
    sink.close()
    redis_server.start()
    with sink:
        send(sink, event("member-join", member("n1")))
    client = Redis.from_url(redis_server.url, decode_responses=True)
    try:
        wait_for(lambda: client.hkeys("serf:members") == ["n1"], timeout=5, what="n1 in Redis")
    finally:
        client.close()
    assert sorted(view(path)["members"]) == ["n1"]
