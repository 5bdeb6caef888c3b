"""Several relays on one MQTT shared subscription (``$share/<group>/<topic>``): the broker
hands each message to one of them, and each is relayed once."""

from __future__ import annotations

import time
from collections import Counter
from functools import partial
from typing import TYPE_CHECKING

import pytest
from support.mqttclient import MqttPeer
from support.ports import free_port, wait_for
from support.relay import RelayProcess, Watcher, get_text, metric

if TYPE_CHECKING:
    from pathlib import Path

    from support.serf import SerfClusterFactory
    from support.servers import Mosquitto

pytestmark = pytest.mark.e2e

COUNT = 60


def _subscribed(relay: RelayProcess) -> bool:
    return "mqtt source subscribed" in relay.log_text()


def test_shared_subscription_splits_the_load(
    serf_cluster: SerfClusterFactory,
    mosquitto: Mosquitto,
    serfbridge_cmd: list[str],
    tmp_path: Path,
) -> None:
    agent = serf_cluster(1)[0]
    watcher = Watcher(agent)
    relays: list[tuple[RelayProcess, int]] = []
    for name in ("a", "b"):
        metrics = free_port()
        body = (
            f'[relay]\nmetrics_listen = "127.0.0.1:{metrics}"\n'
            "[[sources]]\n"
            'type = "mqtt"\n'
            f'url = "{mosquitto.url}"\n'
            'topic = "$share/relays/relay/in"\n'
            f'client_id = "relay-{name}"\n'
            'allow_events = ["bulk"]\n'
        )
        relay = RelayProcess(tmp_path / name, serfbridge_cmd, body, rpc_addr=agent.rpc_addr,
                             name=name)  # fmt: skip
        relays.append((relay, metrics))
    peer = MqttPeer(mosquitto.port)
    try:
        with relays[0][0], relays[1][0]:
            for relay, _ in relays:
                relay.start()
                # The SUBSCRIBE goes out after "relay ready"; a message before it is missed.
                wait_for(partial(_subscribed, relay), 10, what="the relay's subscription")
            sent = [f"s{i:03d}".encode() for i in range(COUNT)]
            for payload in sent:
                peer.publish("relay/in", {"type": "event", "name": "bulk",
                                          "payload": payload.decode()})  # fmt: skip
            wait_for(lambda: len(watcher.payloads()) >= COUNT, 30, what="every event")
            time.sleep(0.5)  # a message handed to both relays would show up by now
            out = "serfbridge_relay_messages_out_total"
            texts = [get_text(port, "/metrics")[1] for _, port in relays]
            shares = [metric(text, out, source="mqtt", type="event") for text in texts]
    finally:
        peer.close()
        watcher.close()
    assert Counter(watcher.payloads()) == Counter(sent)
    assert sum(shares) == COUNT
    assert all(share > 0 for share in shares), shares
