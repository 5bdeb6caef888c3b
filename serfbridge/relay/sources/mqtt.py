"""``type = "mqtt"``: subscribe to ``topic`` (``$share/<group>/...`` allowed) with paho-mqtt.

QoS 1 messages are acknowledged by hand (paho ``manual_ack``) only after Serf accepted them or
they were refused for good, so a relay that dies mid-message leaves it to the broker to send
again (to a persistent session or another shared subscriber). Serf unavailable / rate limited
messages are retried in place with backoff until they pass or the relay stops.

Every message with somewhere to answer gets an answer: the query reply, ``{"accepted":
true}`` for an event, or ``{"error", "reason"}`` for a refusal. It goes to the MQTT 5
*Response Topic* with its *Correlation Data*, else to the message's ``reply_to`` field (not
for a message that failed authentication: a sender without credentials must not pick the
topics the relay publishes to). Signatures travel as MQTT 5 user properties
``X-Serfbridge-Timestamp`` / ``X-Serfbridge-Signature``. Refused messages are logged, counted,
and published with their reason to ``dead_letter`` when it is set (``dead_letter_doc``).
"""

from __future__ import annotations

import json
import os
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from serfbridge import log
from serfbridge.errors import Rejected, RelayError
from serfbridge.relay.auth import SIGNATURE_HEADER, TIMESTAMP_HEADER, Credentials
from serfbridge.relay.sources.base import Source, dead_letter_json
from serfbridge.sinks.mqtt import split_url

AUTH_REASONS = frozenset({"unauthorized", "bad_signature", "stale", "replayed"})


def _body_reply_to(body: bytes) -> str | None:
    """A refused message's ``reply_to``, if its body is JSON enough to have one."""
    try:
        obj = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    value = obj.get("reply_to") if isinstance(obj, dict) else None
    if not isinstance(value, str) or not value or "\0" in value:
        return None
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return None
    return value


class MqttSource(Source):
    def start(self) -> None:
        from paho.mqtt.client import Client
        from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

        cfg = self.config
        try:
            tls, host, port = split_url(cfg.url)
        except ValueError as exc:
            raise RelayError(f"source {self.name}: {exc}") from None
        self.v5 = cfg.protocol == "5"
        # The source's name too: two MQTT sources of one relay with the same id would take
        # turns throwing each other off the broker.
        client_id = (
            cfg.client_id or f"serfbridge-relay-{socket.gethostname()}-{os.getpid()}-{self.name}"
        )
        self.client = Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=MQTTProtocolVersion.MQTTv5 if self.v5 else MQTTProtocolVersion.MQTTv311,
            manual_ack=True,
        )
        if cfg.username:
            pw = cfg.password.get_secret_value() if cfg.password else None
            self.client.username_pw_set(cfg.username, pw)
        if tls:
            self.client.tls_set()
        self.connected = False
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(1, 10)
        self._stop = threading.Event()
        self.subscribed = threading.Event()
        self.pool = ThreadPoolExecutor(cfg.workers, thread_name_prefix=f"source {self.name}")
        self.client.connect_async(host, port, cfg.keepalive)
        self.client.loop_start()

    def stop(self) -> None:
        self._stop.set()
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.client.disconnect()
        self.client.loop_stop()

    def _on_connect(self, client: Any, _ud: Any, _flags: Any, reason: Any, _props: Any) -> None:
        if reason.is_failure:
            self.connected = False
            log.warning("mqtt connect refused", source=self.name, reason=str(reason))
            return
        self.connected = True
        client.subscribe(self.config.topic, qos=self.config.qos)
        self.subscribed.set()
        log.info("mqtt source subscribed", source=self.name, topic=self.config.topic)

    def _on_disconnect(self, _client: Any, _ud: Any, _flags: Any, reason: Any, _props: Any) -> None:
        self.connected = False
        if not self._stop.is_set():
            log.warning("mqtt connection lost", source=self.name, reason=str(reason))

    def _on_message(self, _client: Any, _ud: Any, msg: Any) -> None:
        # paho's network thread must not wait for a query's full timeout.
        try:
            self.pool.submit(self._handle, msg)
        except RuntimeError:  # shutting down: not acked, the broker sends it again
            pass

    def _creds(self, msg: Any) -> Credentials:
        props: dict[str, str] = {}
        for key, value in getattr(msg.properties, "UserProperty", None) or []:
            props[key.lower()] = value
        return Credentials(
            timestamp=props.get(TIMESTAMP_HEADER.lower()),
            signature=props.get(SIGNATURE_HEADER.lower()),
        )

    def _handle(self, msg: Any) -> None:
        try:
            self._handle_one(msg)
        except Exception as exc:  # noqa: BLE001 - a worker's exception would vanish in its future
            log.error("mqtt message failed", source=self.name, topic=msg.topic, error=repr(exc))

    def _handle_one(self, msg: Any) -> None:
        try:
            handled = self.gate.handle_patiently(msg.payload, self._creds(msg), self._stop)
        except Rejected as exc:
            self._dead_letter(msg, exc)
            error = {"error": str(exc), "reason": exc.reason}
            trusted = exc.reason not in AUTH_REASONS
            self._reply(msg, _body_reply_to(msg.payload) if trusted else None, error)
            self._ack(msg)
            return
        if handled is None:
            return  # stopping: not acked, the broker redelivers
        parsed, reply = handled
        self._reply(msg, parsed.reply_to, reply if reply is not None else {"accepted": True})
        self._ack(msg)

    def _ack(self, msg: Any) -> None:
        if msg.qos > 0:
            self.client.ack(msg.mid, msg.qos)

    def _reply(self, msg: Any, reply_to: str | None, reply: dict[str, Any]) -> None:
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        props = getattr(msg, "properties", None)
        topic = getattr(props, "ResponseTopic", None) or reply_to
        if not topic:
            if "name" in reply:
                log.warning("query reply has nowhere to go", source=self.name, name=reply["name"])
            return
        out = None
        if self.v5:
            out = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            correlation = getattr(props, "CorrelationData", None)
            if correlation is not None:
                out.CorrelationData = correlation
            out.ContentType = "application/json"
        try:
            self.client.publish(topic, json.dumps(reply), qos=1, properties=out)
        except ValueError as exc:  # a wildcard or over-long topic: nowhere to answer
            log.warning("reply not published", source=self.name, error=str(exc))

    def _dead_letter(self, msg: Any, exc: Rejected) -> None:
        topic = self.config.dead_letter
        if not topic:
            return
        doc = dead_letter_json(exc, msg.payload, self.config.dead_max_data, topic=msg.topic)
        self.client.publish(topic, doc, qos=1)
