"""serfbridge.exe under wine publishes to NATS JetStream and RabbitMQ (nats-py, nkeys and pika
frozen into the Windows build), like the Linux builds in test_artifacts_nats/_amqp.

Run after `installers/windows/build-wine.sh`: `pytest --artifacts -m wine` (docs/building.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest
from support.ports import wait_for
from test_artifacts_windows import NODE, WindowsNode, exe, win_node, windows_dist, wine

if TYPE_CHECKING:
    from support.nats import NatsServer
    from support.rabbitmq import RabbitMQServer
    from support.wine import Wine

pytestmark = [pytest.mark.artifact, pytest.mark.wine]
# The wine fixtures of test_artifacts_windows, shared rather than written twice.
__all__ = ["exe", "win_node", "windows_dist", "wine"]


def test_exe_publishes_to_jetstream_and_rabbitmq(
    wine: Wine,
    exe: str,
    win_node: WindowsNode,
    nats_server: NatsServer,
    rabbitmq: RabbitMQServer,
) -> None:
    """One user event from the Windows handler: its detached deliverer publishes it to a
    JetStream stream (acked, Nats-Msg-Id = id) and to a RabbitMQ queue (confirmed), and
    `check --connect` reaches both servers."""
    nats_server.add_stream("WIN", ["win.>"])
    queue = rabbitmq.new_events_queue("win")
    win_node.write_config(
        f'[[sinks]]\ntype = "nats"\nname = "js"\nurl = "{nats_server.url}"\n'
        'subject = "win.{event}"\nstream = "WIN"\n'
        f'[[sinks]]\ntype = "amqp"\nname = "rabbit"\nurl = "{rabbitmq.url()}"\n'
        "[delivery]\nlinger = 2\nbackoff_initial = 0.2\nbackoff_max = 1\n"
    )
    env = {**NODE, "SERF_EVENT": "user", "SERF_USER_EVENT": "deploy", "SERF_USER_LTIME": "11"}
    proc = wine.run([exe], env=env, stdin=b"from-windows\n")
    assert proc.returncode == 0, proc.stderr.decode(errors="replace") + win_node.log_tail()
    queued: list[dict[str, Any]] = []

    def delivered() -> bool:
        queued.extend(rabbitmq.docs(queue))
        return bool(queued and nats_server.stream_messages("WIN"))

    wait_for(delivered, timeout=120, what="JetStream and RabbitMQ", detail=win_node.log_tail)
    [(headers, data)] = nats_server.stream_messages("WIN")
    (doc,) = queued
    assert (doc["event"], doc["name"], doc["payload"], doc["node"]["name"]) == (
        "user", "deploy", "from-windows", "n1",
    )  # fmt: skip
    assert headers["Nats-Msg-Id"] == doc["id"]
    assert f'"id":"{doc["id"]}"'.encode() in data
    check = wine.run([exe, "check", "--connect"], env=NODE)
    out = check.stdout.decode(errors="replace")
    assert check.returncode == 0, out + check.stderr.decode(errors="replace")
    assert "sink js: type=nats" in out
    assert "sink rabbit: type=amqp" in out
