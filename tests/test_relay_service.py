"""The relay as a service: TLS, rate limits, signals, health, signed MQTT and Redis input."""

from __future__ import annotations

import json
import signal
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from typing import TYPE_CHECKING, Any

import pytest
import redis
from support.inbound import sign_headers
from support.mqttclient import MqttPeer
from support.pki import loopback_pki
from support.ports import LOOPBACK, free_port, wait_for
from support.relay import RelayProcess, Watcher, get_text, http_source, metric, post

if TYPE_CHECKING:
    from pathlib import Path

    from support.serf import SerfAgent
    from support.servers import Mosquitto, RedisServer

pytestmark = pytest.mark.e2e

TOKEN = "svc-t0ken"  # noqa: S105 - test value
KEY = "svc-k3y"
EVENT = {"type": "event", "name": "deploy", "payload": "v"}


def test_https_with_a_configured_certificate(
    agent: SerfAgent, watcher: Watcher, serfbridge_cmd: list[str], tmp_path: Path
) -> None:
    """With tls_cert/tls_key the listener speaks HTTPS, verified against the CA."""
    ca, cert, key = loopback_pki(tmp_path / "pki")
    port = free_port()
    body = http_source(port, token=TOKEN, allow_events=["deploy"], tls_cert=str(cert),
                       tls_key=str(key))  # fmt: skip
    relay = RelayProcess(tmp_path / "relay", serfbridge_cmd, body, rpc_addr=agent.rpc_addr)
    with relay:
        relay.start()
        context = ssl.create_default_context(cafile=str(ca))
        request = urllib.request.Request(
            f"https://{LOOPBACK}:{port}/v1/event",
            data=json.dumps({**EVENT, "payload": "over-tls"}).encode(),
            headers={"Authorization": f"Bearer {TOKEN}"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10, context=context) as resp:  # noqa: S310
            assert resp.status == 202
        wait_for(lambda: b"over-tls" in watcher.payloads(), 10, what="the event over TLS")
        with pytest.raises(ConnectionResetError):  # plain HTTP to the TLS port
            post(port, "/v1/event", EVENT, token=TOKEN, timeout=5)


def test_rate_limit_per_source(
    agent: SerfAgent, watcher: Watcher, serfbridge_cmd: list[str], tmp_path: Path
) -> None:
    """Past `burst` messages at `rate` per second a source answers 429; another source is
    not affected."""
    slow, other = free_port(), free_port()
    body = http_source(slow, name="slow", token=TOKEN, allow_events=["deploy"], rate=0.2,
                       burst=3) + http_source(other, name="other", token=TOKEN,
                                              allow_events=["deploy"])  # fmt: skip
    relay = RelayProcess(tmp_path / "relay", serfbridge_cmd, body, rpc_addr=agent.rpc_addr)
    with relay:
        relay.start()
        statuses = [post(slow, "/v1/event", EVENT, token=TOKEN)[0] for _ in range(5)]
        assert statuses == [202, 202, 202, 429, 429]
        assert post(other, "/v1/event", EVENT, token=TOKEN)[0] == 202


def test_sigint_and_sigterm_stop_cleanly(
    agent: SerfAgent, serfbridge_cmd: list[str], tmp_path: Path
) -> None:
    """Ctrl-C (SIGINT) and SIGTERM each stop the relay with exit 0 and free the port."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        port = free_port()
        relay = RelayProcess(tmp_path / sig.name, serfbridge_cmd,
                             http_source(port, token=TOKEN, allow_events=["deploy"]),
                             rpc_addr=agent.rpc_addr)  # fmt: skip
        relay.start()
        try:
            assert post(port, "/v1/event", EVENT, token=TOKEN)[0] == 202
            relay.send_signal(sig)
            assert relay.wait_exit(10)
            assert relay.proc is not None
            assert relay.proc.returncode == 0
        finally:
            relay.stop()
        log = relay.log_text()
        assert "relay stopped" in log
        assert "Traceback" not in log
        with pytest.raises(urllib.error.URLError, match="Connection refused"):
            post(port, "/v1/event", EVENT, token=TOKEN, timeout=2)


def test_health_reports_the_agent(
    agent: SerfAgent, serfbridge_cmd: list[str], tmp_path: Path
) -> None:
    """/healthz is 200 while the agent answers and 503 while it is down."""
    port = free_port()
    relay = RelayProcess(tmp_path / "relay", serfbridge_cmd, http_source(port, token=TOKEN),
                         rpc_addr=agent.rpc_addr)  # fmt: skip
    with relay:
        relay.start()
        assert get_text(port, "/healthz")[0] == 200
        agent.kill9()
        status, text = get_text(port, "/healthz")
        assert (status, json.loads(text)["status"]) == (503, "degraded")
        status, doc = post(port, "/v1/event", {**EVENT, "name": "x"}, token=TOKEN)
        assert (status, doc["reason"]) == (403, "not_allowed")  # checks run before Serf


def _signed_props(body: bytes, ts: int | None = None) -> list[tuple[str, str]]:
    return list(sign_headers(KEY, body, ts or int(time.time())).items())


def test_signed_mqtt_and_redis(
    agent: SerfAgent,
    watcher: Watcher,
    serfbridge_cmd: list[str],
    tmp_path: Path,
    mosquitto: Mosquitto,
    redis_server: RedisServer,
) -> None:
    """With hmac_key on MQTT and Redis sources only signed messages pass; the signature
    travels in MQTT 5 user properties and in Redis entry fields."""
    metrics = free_port()
    body = (
        f'[relay]\nmetrics_listen = "127.0.0.1:{metrics}"\n'
        f'[[sources]]\ntype = "mqtt"\nurl = "{mosquitto.url}"\ntopic = "in"\n'
        f'hmac_key = "{KEY}"\nallow_events = ["deploy"]\ndead_letter = "dead"\n'
        f'[[sources]]\ntype = "redis"\nurl = "{redis_server.url}"\nstream = "in"\n'
        f'hmac_key = "{KEY}"\nallow_events = ["deploy"]\n'
    )
    relay = RelayProcess(tmp_path / "relay", serfbridge_cmd, body, rpc_addr=agent.rpc_addr)
    peer = MqttPeer(mosquitto.port, subscribe="dead")
    client = redis.Redis.from_url(redis_server.url)
    try:
        with relay:
            relay.start()
            time.sleep(0.5)  # SUBACK
            unsigned = json.dumps({**EVENT, "payload": "mqtt-unsigned"}).encode()
            signed = json.dumps({**EVENT, "payload": "mqtt-signed"}).encode()
            peer.publish("in", unsigned)
            peer.publish("in", signed, user_properties=_signed_props(signed))
            r_unsigned = json.dumps({**EVENT, "payload": "redis-unsigned"}).encode()
            r_signed = json.dumps({**EVENT, "payload": "redis-signed"}).encode()
            fields: dict[Any, Any] = {"data": r_unsigned}
            client.xadd("in", fields)
            fields = {"data": r_signed, **dict(_signed_props(r_signed))}
            fields = {"data": r_signed, "timestamp": fields["X-Serfbridge-Timestamp"],
                      "signature": fields["X-Serfbridge-Signature"]}  # fmt: skip
            client.xadd("in", fields)
            client.xadd("in", fields)  # the same signature again: a replay
            wait_for(lambda: {b"mqtt-signed", b"redis-signed"} <= set(watcher.payloads()), 15,
                     what="both signed events")  # fmt: skip
            wait_for(lambda: len(peer.received()) >= 1, 10, what="the MQTT dead letter")
            dead = json.loads(peer.received()[0][1])
            assert (dead["reason"], dead["topic"]) == ("unauthorized", "in")

            def rejected(source: str, reason: str) -> float:
                text = get_text(metrics, "/metrics")[1]
                return metric(text, "serfbridge_relay_messages_rejected_total",
                              source=source, reason=reason)  # fmt: skip

            wait_for(lambda: rejected("redis", "replayed") == 1, 10, what="the replay refused")
            assert rejected("redis", "unauthorized") == 1
            assert rejected("mqtt", "unauthorized") == 1
            time.sleep(0.3)
            assert sorted(watcher.payloads()) == [b"mqtt-signed", b"redis-signed"]
    finally:
        peer.close()
        client.close()


def test_port_in_use_exits_9(agent: SerfAgent, serfbridge_cmd: list[str], tmp_path: Path) -> None:
    """A listener that cannot bind stops the relay with exit 9 and a one-line reason."""
    import socket

    with socket.socket() as holder:
        holder.bind((LOOPBACK, 0))
        holder.listen()
        port = holder.getsockname()[1]
        config = tmp_path / "busy.toml"
        config.write_text(
            f'state_dir = "{tmp_path / "state"}"\nlog_file = "-"\n'
            f'[serf]\nrpc_addr = "{agent.rpc_addr}"\n'
            + http_source(port, token=TOKEN, allow_events=["deploy"])
        )
        proc = subprocess.run(
            [*serfbridge_cmd, "--config", str(config), "relay"],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
    assert proc.returncode == 9, proc.stderr
    assert f"cannot listen on ('{LOOPBACK}', {port})" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_stream_mode_resubscribes_after_agent_restart(
    agent: SerfAgent, serfbridge_cmd: list[str], tmp_path: Path
) -> None:
    """Stream mode survives a kill -9 of its agent: events after the restart are recorded."""
    streamed = tmp_path / "streamed.jsonl"
    body = (
        "[relay]\nstream = true\nreconnect_max = 1\n"
        f'[[sinks]]\ntype = "file"\nname = "f"\npath = "{streamed}"\n'
    )
    relay = RelayProcess(tmp_path / "relay", serfbridge_cmd, body, rpc_addr=agent.rpc_addr)

    def names() -> list[str]:
        if not streamed.exists():
            return []
        return [json.loads(line)["name"] for line in streamed.read_text().splitlines()]

    with relay:
        relay.start()
        wait_for(lambda: "event stream subscribed" in relay.log_text(), 10, what="subscribed")
        agent.event("deploy", "before")
        wait_for(lambda: "deploy" in names(), 10, what="the first event")
        agent.kill9()
        agent.start()
        wait_for(lambda: relay.log_text().count("event stream subscribed") >= 2, 20,
                 what="the relay to resubscribe", detail=relay.log_tail)  # fmt: skip
        agent.event("after-restart", "x")
        wait_for(lambda: "after-restart" in names(), 10, what="the event after the restart")
