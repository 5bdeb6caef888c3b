"""`serfbridge relay` with NATS sources on a real 3-node cluster running serfbridge handlers.

A NATS request (what `nats req serf.in '{"type":"query",...}'` sends) runs a query and gets
every node's answer on its reply inbox; an event through core NATS or JetStream is raised on
every node; JetStream messages are acknowledged only after Serf took them.
"""

from __future__ import annotations

import json
import time
from functools import partial
from typing import TYPE_CHECKING, Any

import pytest
from support.bridge import NAMES
from support.inbound import sign_headers
from support.ports import wait_for
from support.relaycluster import (
    ALLOW,
    RelayCluster,
    assert_full_reply,
    relay_cluster,
    toml_table,
)

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from nats.aio.client import Client
    from support.nats import NatsServer
    from support.serf import SerfClusterFactory

pytestmark = pytest.mark.e2e

KEY = "nats-hmac-key"
STREAM = "SERFIN"


class Env(RelayCluster):
    def __init__(self, *cluster: Any, nats: NatsServer) -> None:
        super().__init__(*cluster)
        self.nats = nats


@pytest.fixture
def env(
    serf_cluster: SerfClusterFactory,
    serfbridge_cmd: list[str],
    serfbridge_handler: str,
    tmp_path: Path,
    nats_server: NatsServer,
) -> Iterator[Env]:
    nats_server.add_stream(STREAM, ["serf.js.>"])
    sources = (
        toml_table("sources", type="nats", name="core", url=nats_server.url, subject="serf.in",
                   dead_letter="serf.dead", **ALLOW)
        + toml_table("sources", type="nats", name="js", url=nats_server.url,
                     subject="serf.js.in", stream=STREAM, durable="relays",
                     dead_letter="serf.dead", **ALLOW)
        + toml_table("sources", type="nats", name="signed", url=nats_server.url,
                     subject="serf.signed", hmac_key=KEY, require_signature=True, **ALLOW)
    )  # fmt: skip
    make = partial(Env, nats=nats_server)
    with relay_cluster(
        serf_cluster, serfbridge_cmd, serfbridge_handler, tmp_path, sources, make,
        ready=("nats source reading", 3),
    ) as env:  # fmt: skip
        yield env


def _request(env: Env, subject: str, msg: dict[str, Any], timeout: float = 20.0) -> Any:
    async def work(client: Client) -> Any:
        reply = await client.request(subject, json.dumps(msg).encode(), timeout=timeout)
        return json.loads(reply.data)

    return env.nats.call(work)


def test_nats_request_runs_a_query_on_every_node(env: Env) -> None:
    """A request to serf.in (as `nats req` sends it) gets every node's answer."""
    query = {"type": "query", "name": "load", "payload": "q1", "timeout": 3}
    assert_full_reply(_request(env, "serf.in", query), "q1")


def test_core_event_raised_on_every_node(env: Env) -> None:
    """An event as a request is raised everywhere and answered {"accepted": true}; a plain
    publish is raised too."""
    event = {"type": "event", "name": "deploy", "payload": "via-nats"}
    assert _request(env, "serf.in", event) == {"accepted": True}
    env.seen_everywhere("via-nats")

    async def publish(client: Client) -> None:
        await client.publish("serf.in", json.dumps({**event, "payload": "fire"}).encode())
        await client.flush()

    env.nats.call(publish)
    env.seen_everywhere("fire")
    assert env.count("via-nats") == dict.fromkeys(NAMES, 1)


def test_refusals_answer_and_dead_letter(env: Env) -> None:
    """A name outside allow_events: the requester hears why, dead_letter gets the message."""

    async def work(client: Client) -> tuple[Any, Any]:
        dead = await client.subscribe("serf.dead")
        await client.flush()
        msg = {"type": "event", "name": "rm-rf", "payload": "x"}
        reply = await client.request("serf.in", json.dumps(msg).encode(), timeout=10)
        letter = await dead.next_msg(timeout=10)
        return json.loads(reply.data), json.loads(letter.data)

    reply, letter = env.nats.call(work)
    assert reply["reason"] == "not_allowed"
    assert letter["reason"] == "not_allowed"
    assert letter["subject"] == "serf.in"
    assert (
        env.metric("serfbridge_relay_messages_rejected_total", source="core", reason="not_allowed")
        == 1
    )


def test_oversized_event_is_refused_before_serf(env: Env) -> None:
    """Serf's user event size limit is checked first: the requester hears too_large."""
    event = {"type": "event", "name": "deploy", "payload": "x" * 600}
    reply = _request(env, "serf.in", event)
    assert reply["reason"] == "too_large"
    assert (
        env.metric("serfbridge_relay_messages_rejected_total", source="core", reason="too_large")
        == 1
    )


def test_signed_source_refuses_unsigned(env: Env) -> None:
    """require_signature: the headers X-Serfbridge-* must sign the body."""
    body = json.dumps({"type": "event", "name": "deploy", "payload": "signed"}).encode()

    async def work(client: Client) -> tuple[Any, Any]:
        bad = await client.request("serf.signed", body, timeout=10)
        good = await client.request(
            "serf.signed", body, timeout=10, headers=sign_headers(KEY, body, int(time.time()))
        )
        return json.loads(bad.data), json.loads(good.data)

    bad, good = env.nats.call(work)
    assert bad["reason"] == "unauthorized"
    assert good == {"accepted": True}
    env.seen_everywhere("signed")


def test_jetstream_event_and_query_acked_after_serf(env: Env) -> None:
    """Through the durable consumer: the event is raised everywhere, the query's reply goes
    to reply_to, and nothing stays unacknowledged."""

    async def event(client: Client) -> None:
        event = {"type": "event", "name": "deploy", "payload": "via-js"}
        await client.jetstream().publish("serf.js.in", json.dumps(event).encode())

    async def query(client: Client) -> Any:
        replies = await client.subscribe("serf.replies")
        await client.flush()
        query = {"type": "query", "name": "load", "payload": "j1", "timeout": 3,
                 "reply_to": "serf.replies"}  # fmt: skip
        await client.jetstream().publish("serf.js.in", json.dumps(query).encode())
        reply = await replies.next_msg(timeout=20)
        return json.loads(reply.data)

    env.nats.call(event)
    env.seen_everywhere("via-js")
    assert_full_reply(env.nats.call(query), "j1")

    async def consumer(client: Client) -> tuple[int, int]:
        info = await client.jetstream().consumer_info(STREAM, "relays")
        return info.num_ack_pending or 0, info.num_pending or 0

    wait_for(lambda: env.nats.call(consumer) == (0, 0), 10, what="every message acknowledged")


def test_jetstream_waits_out_a_serf_outage(env: Env) -> None:
    """The agent the relay talks to is stopped: the message is not acknowledged (nak) and
    is raised once the agent is back."""
    agent = env.cluster[0]
    agent.kill9()

    async def publish(client: Client) -> None:
        event = {"type": "event", "name": "deploy", "payload": "after-outage"}
        await client.jetstream().publish("serf.js.in", json.dumps(event).encode())

    env.nats.call(publish)
    wait_for(
        lambda: (
            env.metric(
                "serfbridge_relay_messages_rejected_total", source="js", reason="serf_unavailable"
            )
            >= 1
        ),
        20,
        what="a serf_unavailable refusal",
    )
    agent.start()
    agent.serf("join", env.cluster[1].bind_addr, check=True)
    env.cluster.wait_converged()
    env.seen_everywhere("after-outage", timeout=40)
    assert env.count("after-outage") == dict.fromkeys(NAMES, 1)


def test_source_up_follows_the_server(env: Env) -> None:
    """serfbridge_relay_source_up is 1 while connected, 0 while nats-server is down, and 1
    again once it is back (both the core and the JetStream source)."""

    def up(source: str) -> float:
        return env.metric("serfbridge_relay_source_up", source=source)

    wait_for(lambda: up("core") == up("js") == 1.0, 10, what="both sources up")
    env.nats.stop()
    wait_for(lambda: up("core") == up("js") == 0.0, 20, what="both sources down")
    env.nats.start()
    wait_for(lambda: up("core") == up("js") == 1.0, 30, what="both sources up again",
             detail=env.relay.log_tail)  # fmt: skip
    query = {"type": "query", "name": "load", "payload": "back", "timeout": 3}
    assert_full_reply(_request(env, "serf.in", query), "back")
