#!/usr/bin/env python3
"""The receiving end of the sink benchmarks, in its own process.

A benchmark's client loop and this receiver must not share one interpreter (and its GIL),
or the reference row would be slowed by its own receiver. It runs the test suite's HTTP
receiver (``tests/support/servers.py``: ThreadingHTTPServer, HTTP/1.1 keep-alive, answers
200) and a QoS 1 MQTT subscriber to ``bench/#``, each started on command (so a benchmark
can keep the sink "down" first). It prints ``ready`` and then answers one command per line
on stdin, each with one line:

``http <port>``  listen for HTTP on ``<port>`` (one more receiver each time): ``up``
``mqtt <port>``  subscribe at the broker on ``<port>``: ``up``
``serf <addr>``  subscribe to user events on the agent's RPC stream at ``<addr>``: ``up``
``count``      requests, MQTT messages and stream records received: ``<http> <mqtt> <serf>``
``ids``        a JSON object: per channel (http, mqtt, serf), ``[id, payload, time]`` of each
               document received, in arrival order (``time.time()``); then forgets them
``quit``       stop

Documents are the bodies (HTTP) or payloads (MQTT): serfbridge's event JSON, or anything
with an ``id`` field.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from support.servers import HttpReceiver


class MqttCollector:
    def __init__(self, port: int) -> None:
        from paho.mqtt.client import Client
        from paho.mqtt.enums import CallbackAPIVersion

        self.lock = threading.Lock()
        self.received: list[tuple[bytes, float]] = []
        self.ready = threading.Event()
        self.client = Client(CallbackAPIVersion.VERSION2, client_id="bench-collector")
        self.client.on_connect = lambda c, *_: c.subscribe("bench/#", qos=1)
        self.client.on_subscribe = lambda *_: self.ready.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        if not self.ready.wait(15):
            raise SystemExit("MQTT subscription not acknowledged")

    def _on_message(self, _c: Any, _u: Any, msg: Any) -> None:
        now = time.time()
        with self.lock:
            self.received.append((msg.payload, now))

    def take(self) -> list[tuple[bytes, float]]:
        with self.lock:
            taken, self.received = self.received, []
        return taken


class SerfCollector:
    """The bare stream subscriber: when the agent hands each user event to an RPC client."""

    def __init__(self, addr: str) -> None:
        from serfbridge.serf.rpc import SerfRPC

        self.lock = threading.Lock()
        self.received: list[tuple[str, float]] = []
        self.client = SerfRPC(addr, timeout=3600).connect()
        self.stream = self.client.stream("user")
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        for record in self.stream:
            now = time.time()
            payload = bytes(record.get("Payload") or b"").decode("utf-8", "replace")
            with self.lock:
                self.received.append((payload, now))

    def take(self) -> list[tuple[str | None, str, float]]:
        with self.lock:
            taken, self.received = self.received, []
        return [(None, payload, at) for payload, at in taken]


def ids(items: list[tuple[bytes, float]]) -> list[tuple[str, str, float]]:
    out = []
    for body, at in items:
        try:
            doc = json.loads(body)
            out.append((str(doc.get("id")), str(doc.get("payload")), at))
        except ValueError:
            out.append(("<not JSON>", "", at))
    return out


def main() -> int:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()
    receivers: list[HttpReceiver] = []
    mqtt: MqttCollector | None = None
    serf: SerfCollector | None = None
    print("ready", flush=True)
    for line in sys.stdin:
        command, _, arg = line.strip().partition(" ")
        if command == "http":
            receiver = HttpReceiver()
            receiver.port = int(arg)
            receivers.append(receiver.start())
            print("up", flush=True)
        elif command == "mqtt":
            mqtt = MqttCollector(int(arg))
            print("up", flush=True)
        elif command == "serf":
            serf = SerfCollector(arg)
            print("up", flush=True)
        elif command == "count":
            messages = len(mqtt.received) if mqtt else 0
            streamed = len(serf.received) if serf else 0
            requests = sum(len(r.requests) for r in receivers)
            print(f"{requests} {messages} {streamed}", flush=True)
        elif command == "ids":
            offset = time.time() - time.monotonic()
            http = [(r.body, r.time + offset) for rcv in receivers for r in rcv.requests]
            for rcv in receivers:
                rcv.clear()
            answer = {
                "http": ids(http),
                "mqtt": ids(mqtt.take()) if mqtt else [],
                "serf": serf.take() if serf else [],
            }
            print(json.dumps(answer), flush=True)
        elif command == "quit":
            break
    for receiver in receivers:
        receiver.stop()
    if mqtt:
        mqtt.client.disconnect()
        mqtt.client.loop_stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
