"""``type = "mqtt"``: publish with paho-mqtt; delivered means acknowledged by the broker.

Each event is one PUBLISH of its canonical JSON document to the rendered ``topic``. With QoS 1
or 2 ``send`` returns only once the broker acknowledged (PUBACK / PUBCOMP); with QoS 0 once
the packet is written to the socket. Connecting, the CONNACK and every acknowledgement are
each bounded by ``timeout``. paho is imported inside the sink, so loading the config model
stays cheap.

Failures (docs/sink-mqtt.md):

* broker unreachable or silent, connection lost, no acknowledgement in time, and also the
  broker refusing the login -> ``SinkUnavailable``. A wrong password is fixed by the operator;
  the queued events must survive until then (``max_attempts`` / ``max_age`` still bound it);
* a rendered topic that is not a valid topic name, or an MQTT 5 PUBACK saying the topic or the
  payload is invalid or too large -> ``SinkRejected`` (only this event is dead-lettered).
"""

from __future__ import annotations

import os
import socket
import threading
import time
from typing import TYPE_CHECKING, Any, Literal, Self

from pydantic import Field, SecretStr, field_validator, model_validator

from serfbridge.capture import render
from serfbridge.errors import SinkRejected, SinkUnavailable
from serfbridge.sinks.base import Sink, SinkConfigBase

if TYPE_CHECKING:
    from paho.mqtt.client import Client, ConnectFlags, DisconnectFlags, MQTTMessageInfo
    from paho.mqtt.properties import Properties
    from paho.mqtt.reasoncodes import ReasonCode

_VERSIONS = {"5": ("5",), "3.1.1": ("3.1.1",), "auto": ("5", "3.1.1")}
_UNSUPPORTED_VERSION = 0x84
_LOGIN_REFUSED = frozenset({0x86, 0x87, 0x8C})  # bad user name or password, not authorized, ...
_EVENT_REFUSED = frozenset({0x90, 0x95, 0x99})  # topic name invalid, too large, bad payload
_CLOSE_GRACE = 1.0  # seconds close() waits for a clean DISCONNECT before cutting the socket


def split_url(url: str) -> tuple[bool, str, int]:
    """``mqtt[s]://host[:port]`` -> (tls, host, port); port 1883, or 8883 for mqtts."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    tls = parts.scheme == "mqtts"
    if not parts.hostname:
        raise ValueError("url has no host: mqtt://host:port")
    return tls, parts.hostname, parts.port or (8883 if tls else 1883)


def topic_problem(topic: str) -> str | None:
    """Why ``topic`` cannot be published to (MQTT topic name rules), or None."""
    if not topic:
        return "is empty"
    if "+" in topic or "#" in topic:
        return "contains a + or # wildcard"
    if "\x00" in topic:
        return "contains a NUL character"
    if len(topic.encode("utf-8", "surrogatepass")) > 65535:
        return "is longer than 65535 bytes"
    return None


class MqttSinkConfig(SinkConfigBase):
    type: Literal["mqtt"]
    url: str = Field(description="mqtt://host:port or mqtts://host:port")
    topic: str = Field(
        default="serf/{event}", description="Topic template: {event}, {name}, {node}."
    )
    qos: Literal[0, 1, 2] = 1
    retain: bool = False
    username: str | None = None
    password: SecretStr | None = None
    client_id: str | None = None
    protocol: Literal["auto", "5", "3.1.1"] = Field(
        default="auto", description="MQTT version; auto tries 5 and falls back to 3.1.1."
    )
    ca_certs: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    tls_insecure: bool = False
    keepalive: int = Field(default=60, ge=5)
    timeout: float = Field(default=5.0, gt=0, le=300)
    format: Literal["json", "cloudevents", "cloudevents-binary"] = Field(
        default="json", description="Payload: the document, or CloudEvents (MQTT binding)."
    )
    source: str | None = Field(
        default=None, description="CloudEvents source; default serf://<node>."
    )

    @field_validator("url")
    @classmethod
    def _mqtt_url(cls, value: str) -> str:
        if not value.startswith(("mqtt://", "mqtts://")):
            raise ValueError("url must start with mqtt:// or mqtts://")
        from urllib.parse import urlsplit

        parts = urlsplit(value)
        if parts.username is not None or parts.password is not None:
            raise ValueError("put credentials in username and password, not in the url")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ValueError("url takes no path, query or fragment: mqtt://host:port")
        split_url(value)  # host present, port a number in range
        return value

    @field_validator("topic")
    @classmethod
    def _topic_template(cls, value: str) -> str:
        render.validate(value)
        problem = topic_problem(value)
        if problem:
            raise ValueError(f"topic {problem}: it must be a topic name, not a filter")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        tls_options = self.ca_certs or self.certfile or self.keyfile or self.tls_insecure
        if tls_options and not self.url.startswith("mqtts://"):
            raise ValueError("ca_certs, certfile, keyfile and tls_insecure need an mqtts:// url")
        if self.keyfile and not self.certfile:
            raise ValueError("keyfile needs certfile")
        if self.password is not None and self.username is None:
            raise ValueError("password needs username")
        if self.format == "cloudevents-binary" and self.protocol == "3.1.1":
            raise ValueError(
                "cloudevents-binary needs MQTT 5 user properties: use protocol 5 or auto, "
                'or format = "cloudevents" (structured)'
            )
        return self


def default_client_id(sink_name: str) -> str:
    """``serfbridge-<host>-<pid>-<sink>``: unique per sink, so two sinks of one deliverer
    on the same broker do not take over each other's session."""
    return f"serfbridge-{socket.gethostname()}-{os.getpid()}-{sink_name}"


class _Connection:
    """What paho's network thread reports about one connection (its callbacks)."""

    def __init__(self) -> None:
        self.answered = threading.Event()  # CONNACK arrived, or the connection ended first
        self.closed = threading.Event()
        self.connack: ReasonCode | None = None
        self.acks: dict[int, ReasonCode] = {}

    def on_connect(
        self, _c: Client, _u: Any, _f: ConnectFlags, reason: ReasonCode, _p: Properties | None
    ) -> None:
        self.connack = reason
        self.answered.set()

    def on_disconnect(
        self, _c: Client, _u: Any, _f: DisconnectFlags, _r: ReasonCode, _p: Properties | None
    ) -> None:
        self.closed.set()
        self.answered.set()

    def on_publish(self, _c: Client, _u: Any, mid: int, reason: ReasonCode, _p: Any) -> None:
        self.acks[mid] = reason


class MqttSink(Sink):
    config: MqttSinkConfig

    def __init__(self, config: MqttSinkConfig) -> None:
        super().__init__(config)
        self.protocol: str | None = None  # "5" or "3.1.1" while open
        self._client: Client | None = None
        self._conn = _Connection()
        _, host, port = split_url(config.url)
        self._where = f"MQTT broker {host}:{port}"

    def open(self) -> None:
        self.close()
        versions = _VERSIONS[self.config.protocol]
        for version in versions:
            if self._connect(version):
                self.protocol = version
                return
        raise SinkUnavailable(
            f"{self._where} refused MQTT {' and '.join(versions)}: unsupported protocol version"
        )

    def _connect(self, version: str) -> bool:
        """Connect and wait for the CONNACK; False if the broker does not speak ``version``."""
        from paho.mqtt.client import Client
        from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

        cfg = self.config
        tls, host, port = split_url(cfg.url)
        conn = _Connection()
        client = Client(
            CallbackAPIVersion.VERSION2,
            client_id=cfg.client_id or default_client_id(cfg.name),
            protocol=MQTTProtocolVersion.MQTTv5 if version == "5" else MQTTProtocolVersion.MQTTv311,
            # A lost connection ends the network thread; the deliverer reopens the sink.
            reconnect_on_failure=False,
        )
        client.on_connect = conn.on_connect
        client.on_disconnect = conn.on_disconnect
        client.on_publish = conn.on_publish
        client.connect_timeout = cfg.timeout
        if cfg.username is not None:
            secret = cfg.password.get_secret_value() if cfg.password is not None else None
            client.username_pw_set(cfg.username, secret)
        self._client, self._conn = client, conn
        try:
            if tls:
                client.tls_set(ca_certs=cfg.ca_certs, certfile=cfg.certfile, keyfile=cfg.keyfile)
                if cfg.tls_insecure:
                    client.tls_insecure_set(True)
            client.connect(host, port, keepalive=cfg.keepalive)  # ssl.SSLError is an OSError
        except (OSError, ValueError) as exc:
            self.close()
            raise SinkUnavailable(f"cannot connect to {self._where}: {exc}") from exc
        client.loop_start()
        if not conn.answered.wait(cfg.timeout):
            self.close()
            raise SinkUnavailable(f"no CONNACK from {self._where} within {cfg.timeout:g}s")
        reason = conn.connack
        if reason is not None and not reason.is_failure and not conn.closed.is_set():
            return True
        self.close()
        if reason is None or not reason.is_failure:
            when = "before" if reason is None else "right after"
            raise SinkUnavailable(f"{self._where} closed the connection {when} CONNACK")
        if reason.value == _UNSUPPORTED_VERSION:
            return False
        if reason.value in _LOGIN_REFUSED:
            raise SinkUnavailable(
                f"{self._where} refused the login ({reason}): check username and password; "
                "events stay queued and are retried"
            )
        raise SinkUnavailable(f"{self._where} refused the connection: {reason}")

    def send(self, event: dict[str, Any], body: bytes) -> None:
        topic = render.render(self.config.topic, event)
        problem = topic_problem(topic)
        if problem:
            raise SinkRejected(f"rendered topic {topic!r} {problem}")
        payload, properties = self._message(event, body)
        self.publish(topic, payload, retain=self.config.retain, properties=properties)

    def _message(self, event: dict[str, Any], body: bytes) -> tuple[bytes, Properties | None]:
        """Payload and MQTT 5 properties in the configured format. On an MQTT 3.1.1
        connection (``auto`` fell back) both CloudEvents formats are structured: the
        binding's only mode without properties."""
        fmt, v5 = self.config.format, self.protocol == "5"
        if fmt == "json":
            return body, _properties(event) if v5 else None
        from serfbridge.sinks import cloudevents

        if fmt == "cloudevents-binary" and v5:
            attrs = cloudevents.user_properties(event, self.config.source)
            return body, _properties(event, cloudevents.DATA_CONTENT_TYPE, attrs)
        payload = cloudevents.structured(event, body, self.config.source)
        return payload, _properties(event, cloudevents.STRUCTURED_CONTENT_TYPE) if v5 else None

    def publish(
        self, topic: str, payload: bytes, *, retain: bool, properties: Properties | None = None
    ) -> None:
        """One PUBLISH at the sink's QoS, waited for as ``send`` does (also used by the
        members sink for its retained per-member messages)."""
        client, conn, cfg = self._client, self._conn, self.config
        if client is None or conn.closed.is_set() or not client.is_connected():
            raise SinkUnavailable(f"not connected to {self._where}")
        try:
            info = client.publish(topic, payload, qos=cfg.qos, retain=retain, properties=properties)
        except ValueError as exc:
            raise SinkRejected(f"cannot publish to {topic!r}: {exc}") from exc
        self._wait(info)
        reason = conn.acks.pop(info.mid, None)
        if reason is not None and reason.is_failure:
            error = SinkRejected if reason.value in _EVENT_REFUSED else SinkUnavailable
            raise error(f"{self._where} refused the message on {topic!r}: {reason}")

    def _wait(self, info: MQTTMessageInfo) -> None:
        """Until acknowledged (QoS 1/2) or written (QoS 0), at most ``timeout``."""
        timeout = self.config.timeout
        deadline = time.monotonic() + timeout
        try:
            while not info.is_published():
                if self._conn.closed.is_set():
                    raise SinkUnavailable(f"lost the connection to {self._where} before the ack")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise SinkUnavailable(f"no acknowledgement from {self._where} in {timeout:g}s")
                info.wait_for_publish(min(remaining, 0.1))
        except (RuntimeError, ValueError) as exc:  # paho: not queued, or connection lost
            raise SinkUnavailable(f"publish to {self._where} failed: {exc}") from exc

    def close(self) -> None:
        client, conn, self._client = self._client, self._conn, None
        self.protocol = None
        if client is None:
            return
        try:
            client.disconnect()
            # A hung broker may never take the DISCONNECT: cut the socket so the thread ends.
            if client.socket() is not None and not conn.closed.wait(_CLOSE_GRACE):
                sock = client.socket()
                if isinstance(sock, socket.socket):  # ssl.SSLSocket included
                    sock.shutdown(socket.SHUT_RDWR)
            client.loop_stop()
        except Exception:  # noqa: BLE001, S110 - close never raises
            pass


def _properties(
    event: dict[str, Any],
    content_type: str = "application/json",
    user: list[tuple[str, str]] | None = None,
) -> Properties:
    """MQTT 5 PUBLISH properties: content type and user properties (by default the event's
    id and type; paho appends on each assignment, so they are set once)."""
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    props.ContentType = content_type
    props.UserProperty = user or [
        ("serfbridge-id", event["id"]),
        ("serfbridge-event", event["event"]),
    ]
    return props
