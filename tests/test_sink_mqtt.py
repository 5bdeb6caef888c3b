"""The MQTT sink against a real mosquitto broker, observed by a real paho subscriber."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
from contextlib import contextmanager, suppress
from typing import TYPE_CHECKING, Any, cast

import pytest
from paho.mqtt.client import Client, MQTTMessage
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from pydantic import ValidationError
from support.pki import loopback_pki
from support.ports import LOOPBACK, free_port
from support.proc import require_binary
from support.servers import Mosquitto

from serfbridge.capture.event import parse_event
from serfbridge.errors import SinkRejected, SinkUnavailable
from serfbridge.sinks.mqtt import MqttSink, MqttSinkConfig

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

WAIT = 10.0  # upper bound for anything that should happen at once


def user_event(name: str = "deploy", payload: bytes = b"v1.2\n") -> dict[str, Any]:
    environ = {
        "SERF_EVENT": "user",
        "SERF_USER_EVENT": name,
        "SERF_USER_LTIME": "7",
        "SERF_SELF_NAME": "node-a",
        "SERF_SELF_ROLE": "web",
    }
    return cast("dict[str, Any]", parse_event(environ, payload, time.time()))


def member_event() -> dict[str, Any]:
    environ = {"SERF_EVENT": "member-join", "SERF_SELF_NAME": "node-a", "SERF_SELF_ROLE": "web"}
    stdin = b"node-b\t127.0.0.1\tdb\tdc=east\n"
    return cast("dict[str, Any]", parse_event(environ, stdin, time.time()))


def body_of(event: dict[str, Any]) -> bytes:
    return json.dumps(event, ensure_ascii=False, separators=(",", ":")).encode()


def make_config(url: str, **overrides: Any) -> MqttSinkConfig:
    return MqttSinkConfig.model_validate({"type": "mqtt", "name": "mq", "url": url, **overrides})


class Subscriber:
    """A real MQTT 5 client subscribed to `topic` (QoS 2), collecting what arrives."""

    def __init__(self, port: int, topic: str) -> None:
        self.messages: list[MQTTMessage] = []
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        self.client = Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5)
        self.client.on_message = lambda _c, _u, msg: self._add(msg)
        self.client.on_subscribe = lambda *_: self._subscribed.set()
        self.client.on_connect = lambda c, *_: c.subscribe(topic, qos=2)
        self.client.connect(LOOPBACK, port)
        self.client.loop_start()
        assert self._subscribed.wait(WAIT), "no SUBACK from the broker"

    def _add(self, msg: MQTTMessage) -> None:
        with self._cond:
            self.messages.append(msg)
            self._cond.notify_all()

    def wait_for(self, n: int = 1) -> list[MQTTMessage]:
        with self._cond:
            assert self._cond.wait_for(lambda: len(self.messages) >= n, WAIT), self.messages
            return list(self.messages)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@contextmanager
def subscribed(broker: Mosquitto, topic: str = "#") -> Iterator[Subscriber]:
    sub = Subscriber(broker.port, topic)
    try:
        yield sub
    finally:
        sub.close()


@contextmanager
def opened(config: MqttSinkConfig) -> Iterator[MqttSink]:
    sink = MqttSink(config)
    with sink:
        yield sink


def user_properties(msg: MQTTMessage) -> dict[str, str]:
    return dict(getattr(msg.properties, "UserProperty", None) or [])


def test_user_event_arrives_on_rendered_topic_with_v5_properties(mosquitto: Mosquitto) -> None:
    """serf/{event} renders to serf/user; the body is the event, with id/type user properties."""
    event = user_event()
    with subscribed(mosquitto) as sub, opened(make_config(mosquitto.url)) as sink:
        assert sink.protocol == "5"
        sink.send(event, body_of(event))
        [msg] = sub.wait_for(1)
    assert msg.topic == "serf/user"
    assert json.loads(msg.payload) == event
    assert user_properties(msg) == {"serfbridge-id": event["id"], "serfbridge-event": "user"}
    assert getattr(msg.properties, "ContentType", None) == "application/json"
    assert not msg.retain


@pytest.mark.parametrize(
    ("template", "make", "expected"),
    [
        ("serf/{node}/{event}/{name}", user_event, "serf/node-a/user/deploy"),
        ("cluster/{event}", member_event, "cluster/member-join"),
        ("serf/{name}", member_event, "serf/"),
    ],
)
def test_topic_templates_render_event_fields(
    mosquitto: Mosquitto, template: str, make: Any, expected: str
) -> None:
    """{node}, {name} and {event} expand from the event; an absent name is empty."""
    event = make()
    with subscribed(mosquitto) as sub, opened(make_config(mosquitto.url, topic=template)) as sink:
        sink.send(event, body_of(event))
        [msg] = sub.wait_for(1)
    assert msg.topic == expected
    assert json.loads(msg.payload)["id"] == event["id"]


@pytest.mark.parametrize("qos", [0, 1, 2])
def test_every_qos_delivers(mosquitto: Mosquitto, qos: int) -> None:
    """QoS 0, 1 and 2 all deliver the document, at the configured QoS."""
    event = user_event()
    with subscribed(mosquitto) as sub, opened(make_config(mosquitto.url, qos=qos)) as sink:
        sink.send(event, body_of(event))
        [msg] = sub.wait_for(1)
    assert msg.qos == qos
    assert json.loads(msg.payload) == event


def test_retained_message_reaches_a_later_subscriber(mosquitto: Mosquitto) -> None:
    """retain = true: a subscriber arriving after the send gets the message, flagged retained."""
    event = user_event()
    with opened(make_config(mosquitto.url, retain=True)) as sink:
        sink.send(event, body_of(event))
    with subscribed(mosquitto, "serf/user") as sub:
        [msg] = sub.wait_for(1)
    assert msg.retain
    assert json.loads(msg.payload) == event


def test_forced_mqtt_311_delivers_without_properties(mosquitto: Mosquitto) -> None:
    """protocol = "3.1.1" connects with MQTT 3.1.1 and publishes no v5 properties."""
    event = user_event()
    config = make_config(mosquitto.url, protocol="3.1.1")
    with subscribed(mosquitto) as sub, opened(config) as sink:
        assert sink.protocol == "3.1.1"
        sink.send(event, body_of(event))
        [msg] = sub.wait_for(1)
    assert json.loads(msg.payload) == event
    assert user_properties(msg) == {}
    assert getattr(msg.properties, "ContentType", None) is None


class V311OnlyProxy:
    """Answers an MQTT 5 CONNECT like a 3.1.1-only broker (CONNACK code 1) and relays any
    other connection to the real broker behind it."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.levels: list[int] = []
        self._sockets: list[socket.socket] = []
        self._listener = socket.create_server((LOOPBACK, 0))
        self.port: int = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with suppress(OSError):
            while True:
                conn, _ = self._listener.accept()
                self._sockets.append(conn)
                threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with suppress(OSError):
            head = b""
            while len(head) < 12:  # fixed header, "MQTT" protocol name, protocol level
                chunk = conn.recv(64)
                if not chunk:
                    return
                head += chunk
            level = head[head.index(b"MQTT") + 4]
            self.levels.append(level)
            if level == 5:
                conn.sendall(b"\x20\x02\x00\x01")
                conn.close()
                return
            upstream = socket.create_connection((LOOPBACK, self.upstream_port), timeout=WAIT)
            upstream.settimeout(None)
            self._sockets.append(upstream)
            upstream.sendall(head)
            threading.Thread(target=self._pump, args=(upstream, conn), daemon=True).start()
            self._pump(conn, upstream)

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        with suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self._listener.close()
        for sock in self._sockets:
            sock.close()


def test_auto_falls_back_to_311_when_the_broker_refuses_v5(mosquitto: Mosquitto) -> None:
    """protocol = "auto" retries with 3.1.1 after a CONNACK saying the version is unsupported."""
    proxy = V311OnlyProxy(mosquitto.port)
    event = user_event()
    try:
        config = make_config(f"mqtt://{LOOPBACK}:{proxy.port}")
        with subscribed(mosquitto) as sub, opened(config) as sink:
            assert sink.protocol == "3.1.1"
            sink.send(event, body_of(event))
            [msg] = sub.wait_for(1)
        assert proxy.levels == [5, 4]
        assert json.loads(msg.payload) == event
        assert user_properties(msg) == {}
        with pytest.raises(SinkUnavailable, match="unsupported protocol version"):
            MqttSink(make_config(config.url, protocol="5")).open()
    finally:
        proxy.close()


def test_broker_stopped_then_restarted(mosquitto: Mosquitto) -> None:
    """A stopped broker makes send and open fail fast; after a restart a fresh sink delivers."""
    event = user_event()
    config = make_config(mosquitto.url, timeout=2.0)
    sink = MqttSink(config)
    sink.open()
    try:
        mosquitto.stop()
        started = time.monotonic()
        with pytest.raises(SinkUnavailable):
            sink.send(event, body_of(event))
        assert time.monotonic() - started < config.timeout + 1.0
    finally:
        sink.close()
    with pytest.raises(SinkUnavailable, match="cannot connect"):
        MqttSink(config).open()
    mosquitto.start()
    with subscribed(mosquitto) as sub, opened(config) as fresh:
        fresh.send(event, body_of(event))
        [msg] = sub.wait_for(1)
    assert json.loads(msg.payload) == event


def test_paused_broker_times_out_instead_of_hanging(mosquitto: Mosquitto) -> None:
    """SIGSTOPped broker: a QoS 1 send and an open fail within about timeout; close is quick."""
    event = user_event()
    config = make_config(mosquitto.url, qos=1, timeout=1.0)
    sink = MqttSink(config)
    sink.open()
    mosquitto.pause()
    try:
        started = time.monotonic()
        with pytest.raises(SinkUnavailable, match="no acknowledgement"):
            sink.send(event, body_of(event))
        assert config.timeout <= time.monotonic() - started < config.timeout + 1.5
        started = time.monotonic()
        sink.close()
        assert time.monotonic() - started < 2.5
        started = time.monotonic()
        with pytest.raises(SinkUnavailable, match="no CONNACK"):
            MqttSink(config).open()
        assert time.monotonic() - started < config.timeout + 2.5
    finally:
        sink.close()
        mosquitto.resume()


def test_nobody_listening_is_unavailable() -> None:
    """A port nobody listens on: open (and check) raise SinkUnavailable, not a socket error."""
    config = make_config(f"mqtt://{LOOPBACK}:{free_port()}", timeout=2.0)
    with pytest.raises(SinkUnavailable, match="cannot connect"):
        MqttSink(config).open()
    with pytest.raises(SinkUnavailable):
        MqttSink(config).check()


def test_send_without_open_is_unavailable() -> None:
    """send on a sink that is not connected raises SinkUnavailable."""
    sink = MqttSink(make_config(f"mqtt://{LOOPBACK}:{free_port()}"))
    event = user_event()
    with pytest.raises(SinkUnavailable, match="not connected"):
        sink.send(event, body_of(event))


def test_check_connects_and_disconnects(mosquitto: Mosquitto) -> None:
    """check() succeeds against a live broker and leaves the sink closed."""
    sink = MqttSink(make_config(mosquitto.url))
    sink.check()
    assert sink.protocol is None


def test_rendered_wildcard_topic_is_rejected(mosquitto: Mosquitto) -> None:
    """An event whose name renders a + or # into the topic is rejected, not retried."""
    event = user_event(name="a/#")
    with opened(make_config(mosquitto.url, topic="serf/{name}")) as sink:
        with pytest.raises(SinkRejected, match="wildcard"):
            sink.send(event, body_of(event))
        ok = user_event()
        sink.send(ok, body_of(ok))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"topic": "serf/{nope}"}, "unknown template field"),
        ({"topic": "serf/{event!r}"}, "unknown template field"),
        ({"topic": "serf/#"}, "wildcard"),
        ({"topic": ""}, "empty"),
        ({"url": "http://localhost"}, "mqtt://"),
        ({"url": "mqtt://user:pw@localhost"}, "credentials"),
        ({"url": "mqtt://localhost:99999"}, "[Pp]ort"),
        ({"url": "mqtt://localhost/topic"}, "no path"),
        ({"ca_certs": "/etc/ssl/ca.pem"}, "mqtts://"),
        ({"password": "secret"}, "password needs username"),
    ],
)
def test_invalid_config_is_rejected(overrides: dict[str, Any], message: str) -> None:
    """Bad topic templates, URLs and option combinations fail at config validation."""
    with pytest.raises(ValidationError, match=message):
        make_config(overrides.pop("url", "mqtt://localhost"), **overrides)


def test_default_port_and_client_id() -> None:
    """mqtt:// defaults to 1883, mqtts:// to 8883; the client id names host, pid and sink."""
    from serfbridge.sinks.mqtt import default_client_id, split_url

    assert split_url("mqtt://broker") == (False, "broker", 1883)
    assert split_url("mqtts://broker") == (True, "broker", 8883)
    assert split_url("mqtts://[::1]:9000") == (True, "::1", 9000)
    client_id = default_client_id("mq")
    assert client_id.startswith("serfbridge-")
    assert client_id.endswith(f"-{os.getpid()}-mq")


@pytest.fixture
def auth_broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """mosquitto that requires user `bridge` with password `right`."""
    passwd = tmp_path / "passwd"
    subprocess.run(
        [
            require_binary("mosquitto_passwd", "mosquitto"),
            "-b",
            "-c",
            str(passwd),
            "bridge",
            "right",
        ],
        check=True,
        capture_output=True,
        timeout=WAIT,
    )
    broker = Mosquitto(
        tmp_path / "auth",
        extra_config=["allow_anonymous false", f"password_file {passwd}"],
    )
    try:
        broker.start()
        yield broker
    finally:
        broker.stop()


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_login_refused_is_unavailable(auth_broker: Mosquitto, protocol: str) -> None:
    """A wrong password is retryable (the operator fixes it); the right one delivers."""
    login = {"protocol": protocol, "username": "bridge"}
    wrong = make_config(auth_broker.url, **login, password="wrong")  # noqa: S106 - test broker
    with pytest.raises(SinkUnavailable, match="refused the login"):
        MqttSink(wrong).open()
    right = make_config(auth_broker.url, **login, password="right")  # noqa: S106 - test broker
    event = user_event()
    with opened(right) as sink:
        sink.send(event, body_of(event))


@pytest.fixture
def tls_broker(tmp_path: Path) -> Iterator[tuple[Mosquitto, Path]]:
    """mosquitto with a TLS listener; yields it and the CA certificate that signed it."""
    ca, cert, key = loopback_pki(tmp_path / "pki")
    tls = [f"cafile {ca}", f"certfile {cert}", f"keyfile {key}"]
    broker = Mosquitto(tmp_path / "tls", extra_config=tls)
    try:
        broker.start()
        yield broker, ca
    finally:
        broker.stop()


# paho (2.2) does not close the socket when the TLS handshake fails; it is finalized by the GC.
@pytest.mark.filterwarnings(
    "ignore:Exception ignored in. <ssl.SSLSocket:pytest.PytestUnraisableExceptionWarning"
)
def test_mqtts_verifies_the_broker_certificate(tls_broker: tuple[Mosquitto, Path]) -> None:
    """mqtts:// with the right CA delivers; without it the handshake fails as unavailable."""
    broker, ca = tls_broker
    url = f"mqtts://{LOOPBACK}:{broker.port}"
    event = user_event()
    with opened(make_config(url, ca_certs=str(ca))) as sink:
        sink.send(event, body_of(event))
    with pytest.raises(SinkUnavailable, match="cannot connect"):
        MqttSink(make_config(url, timeout=2.0)).open()


# -- CloudEvents (MQTT protocol binding) ------------------------------------------------------


def _sdk_event(payload: bytes | bytearray) -> Any:
    from cloudevents.core.formats.json import JSONFormat

    return JSONFormat().read(None, bytes(payload))


def test_cloudevents_structured_v5(mosquitto: Mosquitto) -> None:
    """format = "cloudevents": the JSON event format as payload, Content Type says so."""
    event = user_event()
    config = make_config(mosquitto.url, format="cloudevents")
    with subscribed(mosquitto) as sub, opened(config) as sink:
        sink.send(event, body_of(event))
        [msg] = sub.wait_for(1)
    assert (
        getattr(msg.properties, "ContentType", None)
        == "application/cloudevents+json; charset=utf-8"
    )
    ce = _sdk_event(msg.payload)
    assert ce.get_id() == event["id"]
    assert ce.get_type() == "io.serf.user"
    assert ce.get_source() == "serf://node-a"
    assert ce.get_data() == event


def test_cloudevents_binary_v5_user_properties(mosquitto: Mosquitto) -> None:
    """format = "cloudevents-binary": the payload is the document, Content Type is
    datacontenttype, every other attribute a user property under its own name, unencoded."""
    event = user_event(name="dé ploy")
    config = make_config(mosquitto.url, format="cloudevents-binary", source="urn:serf:test")
    with subscribed(mosquitto) as sub, opened(config) as sink:
        sink.send(event, body_of(event))
        [msg] = sub.wait_for(1)
    assert msg.payload == body_of(event)
    assert getattr(msg.properties, "ContentType", None) == "application/json"
    props = user_properties(msg)
    assert set(props) == {"specversion", "id", "source", "type", "subject", "time"}
    assert props["subject"] == "dé ploy"
    assert props["source"] == "urn:serf:test"
    # Binding §3.1: attributes from the properties, datacontenttype from Content Type, data
    # from the payload; the SDK's JSON reader validates the reassembled event.
    envelope = {**props, "datacontenttype": getattr(msg.properties, "ContentType", None),
                "data": json.loads(msg.payload)}  # fmt: skip
    ce = _sdk_event(json.dumps(envelope).encode())
    assert ce.get_subject() == "dé ploy"
    assert ce.get_id() == event["id"]


@pytest.mark.parametrize("fmt", ["cloudevents", "cloudevents-binary"])
def test_cloudevents_on_311_is_structured(mosquitto: Mosquitto, fmt: str) -> None:
    """MQTT 3.1.1 has no properties: the binding's only mode there is structured JSON."""
    event = user_event()
    protocol = "3.1.1" if fmt == "cloudevents" else "auto"
    proxy = V311OnlyProxy(mosquitto.port)
    try:
        url = mosquitto.url if protocol == "3.1.1" else f"mqtt://{LOOPBACK}:{proxy.port}"
        config = make_config(url, format=fmt, protocol=protocol)
        with subscribed(mosquitto) as sub, opened(config) as sink:
            assert sink.protocol == "3.1.1"
            sink.send(event, body_of(event))
            [msg] = sub.wait_for(1)
    finally:
        proxy.close()
    assert user_properties(msg) == {}
    assert _sdk_event(msg.payload).get_data() == event


def test_cloudevents_binary_needs_v5() -> None:
    with pytest.raises(ValidationError, match="cloudevents-binary needs MQTT 5"):
        make_config("mqtt://127.0.0.1:1883", format="cloudevents-binary", protocol="3.1.1")
