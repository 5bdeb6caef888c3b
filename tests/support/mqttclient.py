"""A real MQTT 5 client for relay tests: publish requests, collect replies."""

from __future__ import annotations

import json
import threading
from typing import Any

from paho.mqtt.client import Client
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from .ports import LOOPBACK, wait_for


class MqttPeer:
    def __init__(self, port: int, subscribe: str | None = None) -> None:
        self.messages: list[tuple[str, bytes, Any]] = []
        self._lock = threading.Lock()
        self.client = Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5)
        self.client.on_message = self._on_message
        self.client.connect(LOOPBACK, port)
        self.client.loop_start()
        if subscribe:
            done = threading.Event()
            self.client.on_subscribe = lambda *_: done.set()
            self.client.subscribe(subscribe, qos=1)
            wait_for(done.is_set, 10, what=f"SUBACK for {subscribe}")

    def _on_message(self, _c: Any, _u: Any, msg: Any) -> None:
        with self._lock:
            self.messages.append((msg.topic, msg.payload, msg.properties))

    def publish(
        self,
        topic: str,
        body: dict[str, Any] | bytes,
        *,
        response_topic: str | None = None,
        correlation: bytes | None = None,
        user_properties: list[tuple[str, str]] | None = None,
    ) -> None:
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        if response_topic:
            props.ResponseTopic = response_topic
        if correlation is not None:
            props.CorrelationData = correlation
        if user_properties:
            props.UserProperty = user_properties
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.client.publish(topic, data, qos=1, properties=props).wait_for_publish(10)

    def received(self) -> list[tuple[str, bytes, Any]]:
        with self._lock:
            return list(self.messages)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()
