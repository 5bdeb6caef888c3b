"""Every MQTT request with somewhere to answer gets an answer, checked with the real
``mosquitto_rr`` (MQTT 5 Response Topic + Correlation Data) against a running relay."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from typing import TYPE_CHECKING, Any

import pytest
from support.mqttclient import MqttPeer
from support.ports import wait_for
from support.relay import RelayProcess, Watcher

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from support.serf import SerfClusterFactory
    from support.servers import Mosquitto

pytestmark = pytest.mark.e2e
KEY = "mq-k3y"


class Setup:
    def __init__(self, mosquitto: Mosquitto, relay: RelayProcess, watch: Watcher) -> None:
        self.mosquitto, self.relay, self.watch = mosquitto, relay, watch

    def rr(self, topic: str, message: dict[str, Any] | bytes, wait: int = 15) -> dict[str, Any]:
        """One request with mosquitto_rr; its printed answer (correlation data, payload)."""
        binary = shutil.which("mosquitto_rr")
        assert binary, "mosquitto_rr missing: apt-get install mosquitto-clients (setup.sh)"
        body = message if isinstance(message, bytes) else json.dumps(message).encode()
        proc = subprocess.run(
            [binary, "-h", self.mosquitto.host, "-p", str(self.mosquitto.port), "-t", topic,
             "-e", f"answers/{time.monotonic_ns()}", "-D", "publish", "correlation-data",
             "corr-42", "-F", "%D|%p", "-W", str(wait), "-m", body.decode()],
            capture_output=True, timeout=wait + 10, check=False,
        )  # fmt: skip
        assert proc.returncode == 0, f"no answer: rc={proc.returncode} {proc.stderr!r}"
        correlation, _, payload = proc.stdout.decode().strip().partition("|")
        doc: dict[str, Any] = json.loads(payload)
        doc["_correlation"] = correlation
        return doc


@pytest.fixture
def setup(
    serf_cluster: SerfClusterFactory, mosquitto: Mosquitto, serfbridge_cmd: list[str],
    tmp_path: Path,
) -> Iterator[Setup]:  # fmt: skip
    agents = serf_cluster(3, config={"query_response_size_limit": 1024})
    body = (
        f'[[sources]]\ntype = "mqtt"\nname = "open"\nurl = "{mosquitto.url}"\ntopic = "in"\n'
        'allow_events = ["deploy"]\nallow_queries = ["load"]\n'
        f'[[sources]]\ntype = "mqtt"\nname = "signed"\nurl = "{mosquitto.url}"\n'
        f'topic = "signed"\nhmac_key = "{KEY}"\nallow_events = ["deploy"]\n'
    )
    relay = RelayProcess(tmp_path / "relay", serfbridge_cmd, body, rpc_addr=agents[0].rpc_addr)
    watch = Watcher(agents[0])
    try:
        relay.start()
        time.sleep(0.5)  # SUBACK
        yield Setup(mosquitto, relay, watch)
    finally:
        relay.stop()
        watch.close()
    assert "Traceback" not in relay.log_text()


def test_refused_query_is_answered(setup: Setup) -> None:
    """not_allowed, malformed and unauthorized each come back as {error, reason} with the
    request's correlation data, instead of the caller waiting out its timeout."""
    answer = setup.rr("in", {"type": "query", "name": "rm-rf", "timeout": 0.5})
    assert answer["reason"] == "not_allowed"
    assert answer["_correlation"] == "corr-42"
    assert "error" in answer
    assert setup.rr("in", b"{not json")["reason"] == "malformed"
    assert setup.rr("in", {"type": "event", "name": "dep\u0000loy"})["reason"] == "malformed"
    assert setup.rr("signed", {"type": "event", "name": "deploy"})["reason"] == "unauthorized"


def test_accepted_event_is_acknowledged(setup: Setup) -> None:
    """An event with a response topic gets {"accepted": true} once Serf took it."""
    answer = setup.rr("in", {"type": "event", "name": "deploy", "payload": "rr"})
    assert answer == {"accepted": True, "_correlation": "corr-42"}
    wait_for(lambda: b"rr" in setup.watch.payloads(), 10, what="the event")


def test_query_reply_names_nodes_that_did_not_answer(setup: Setup) -> None:
    """Three nodes ack, none has a responder: complete is false and unanswered names all
    three (it was true before, whatever the responses)."""
    answer = setup.rr("in", {"type": "query", "name": "load", "timeout": 1, "id": "q7"})
    assert answer["_correlation"] == "corr-42"
    assert answer["id"] == "q7"
    assert sorted(answer["acks"]) == ["n1", "n2", "n3"]
    assert answer["responses"] == {}
    assert sorted(answer["unanswered"]) == ["n1", "n2", "n3"]
    assert answer["complete"] is False


def test_reply_to_field_gets_the_refusal_too(setup: Setup, mosquitto: Mosquitto) -> None:
    """MQTT 3.1.1 style: no Response Topic, the message's reply_to names the topic."""
    peer = MqttPeer(mosquitto.port, subscribe="back/#")
    try:
        time.sleep(0.3)
        peer.publish("in", {"type": "event", "name": "nope", "reply_to": "back/1"})
        wait_for(lambda: peer.messages, 10, what="the refusal on reply_to")
        topic, payload = peer.messages[0][:2]
        assert topic == "back/1"
        assert json.loads(payload)["reason"] == "not_allowed"
    finally:
        peer.close()
