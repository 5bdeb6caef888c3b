"""Tests of the test harness itself: real serf agents and servers on free ports."""

from __future__ import annotations

import os
import shlex
import socket
import time
import urllib.error
import urllib.request
from typing import TYPE_CHECKING

import pytest
from support.ports import free_port, port_accepts, wait_for
from support.proc import clean_environ

if TYPE_CHECKING:
    from pathlib import Path

    from support.serf import SerfClusterFactory
    from support.servers import BlackholeServer, HttpReceiver, Mosquitto, RedisServer


def _post(url: str, body: bytes, timeout: float = 5.0) -> int:
    request = urllib.request.Request(  # noqa: S310 - loopback URLs built by the fixtures
        url, data=body, method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - loopback only
            status: int = response.status
            return status
    except urllib.error.HTTPError as exc:
        exc.close()
        return exc.code


def test_wait_for_names_what_it_waited_for() -> None:
    """wait_for raises an AssertionError naming the awaited condition on timeout."""
    with pytest.raises(AssertionError, match="waiting for the moon"):
        wait_for(lambda: False, timeout=0.2, what="the moon")


def test_wait_for_returns_the_truthy_value() -> None:
    """wait_for returns the first truthy value of the predicate."""
    values = iter([0, 0, 7])
    assert wait_for(lambda: next(values), timeout=5.0, interval=0.01) == 7


def test_clean_environ_drops_serf_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    """Child environments drop SERF_* / SERFBRIDGE_* and add the caller's variables."""
    monkeypatch.setenv("SERF_RPC_ADDR", "127.0.0.1:1")
    monkeypatch.setenv("SERFBRIDGE_CONFIG", "/nonexistent")
    env = clean_environ({"SERFBRIDGE_STATE_DIR": "/tmp/state"})
    assert "SERF_RPC_ADDR" not in env
    assert "SERFBRIDGE_CONFIG" not in env
    assert env["SERFBRIDGE_STATE_DIR"] == "/tmp/state"
    assert env["PATH"] == os.environ["PATH"]


def test_free_port_is_bindable() -> None:
    """free_port returns a port that can be bound for both TCP and UDP."""
    port = free_port(udp=True)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
        tcp.bind(("127.0.0.1", port))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind(("127.0.0.1", port))


@pytest.mark.e2e
def test_three_node_cluster_all_alive(serf_cluster: SerfClusterFactory) -> None:
    """A 3-node cluster starts and every agent lists all three members as alive."""
    cluster = serf_cluster(3, tags_for=lambda name: {"role": f"r-{name}"})
    assert cluster.names == ["n1", "n2", "n3"]
    for agent in cluster:
        members = {m["name"]: m for m in agent.members()}
        assert set(members) == {"n1", "n2", "n3"}
        assert all(m["status"] == "alive" for m in members.values())
        assert members["n2"]["tags"] == {"role": "r-n2"}


@pytest.mark.e2e
def test_inline_handler_sees_user_event(serf_cluster: SerfClusterFactory, tmp_path: Path) -> None:
    """An inline shell handler sees SERF_EVENT, the event name and the payload of `serf event`."""
    out = tmp_path / "events.txt"
    target = shlex.quote(str(out))
    # Write then rename, so the test never reads a half-written file.
    handler = (
        f'user={{ printf "%s %s " "$SERF_EVENT" "$SERF_USER_EVENT"; cat; }} > {target}.tmp'
        f" && mv {target}.tmp {target}"
    )
    cluster = serf_cluster(1, handler)
    cluster[0].event("deploy", "v1.2")
    wait_for(out.exists, timeout=10.0, what=f"handler output in {out}")
    text = out.read_text()
    assert text == "user deploy v1.2\n"


@pytest.mark.e2e
def test_agent_environment_reaches_handler(
    serf_cluster: SerfClusterFactory, tmp_path: Path
) -> None:
    """Variables from env_for reach the handler; the agent's cwd is its own directory."""
    handler = (
        'user:probe=printf "%s|%s" "$SERFBRIDGE_STATE_DIR" "$PWD" > p.tmp && mv p.tmp probe.txt'
    )
    cluster = serf_cluster(1, handler, env_for=lambda name: {"SERFBRIDGE_STATE_DIR": f"/s/{name}"})
    agent = cluster["n1"]
    agent.event("probe")
    probe = agent.workdir / "probe.txt"
    wait_for(probe.exists, timeout=10.0, what="probe.txt")
    assert probe.read_text() == f"/s/n1|{tmp_path / 'n1'}"


@pytest.mark.e2e
def test_query_helper_parses_json(serf_cluster: SerfClusterFactory) -> None:
    """A query handler's output comes back through query() as parsed JSON."""
    cluster = serf_cluster(1, 'query:hello=printf "hi from %s" "$SERF_SELF_NAME"')
    result = cluster[0].query("hello", None, "-timeout=1s")
    assert result["Responses"] == {"n1": "hi from n1"}


@pytest.mark.e2e
def test_redis_ping_and_restart_on_same_port(redis_server: RedisServer) -> None:
    """redis-server answers PING, and comes back on the same port after stop/start."""
    port = redis_server.port
    assert redis_server.ping()
    redis_server.stop()
    assert not redis_server.ping(timeout=0.2)
    redis_server.start()
    assert redis_server.port == port
    assert redis_server.ping()


@pytest.mark.e2e
def test_redis_pause_and_resume(redis_server: RedisServer) -> None:
    """A paused redis-server does not answer PING; after resume it does again."""
    redis_server.pause()
    assert not redis_server.ping(timeout=0.3)
    redis_server.resume()
    assert wait_for(redis_server.ping, timeout=5.0, what="PONG after resume")


@pytest.mark.e2e
def test_mosquitto_accepts_tcp(mosquitto: Mosquitto) -> None:
    """mosquitto accepts a TCP connection on its port, and again after stop/start."""
    assert port_accepts(mosquitto.port)
    mosquitto.stop()
    assert not port_accepts(mosquitto.port)
    mosquitto.start()
    assert port_accepts(mosquitto.port)


def test_http_receiver_records_post_and_follows_plan(http_receiver: HttpReceiver) -> None:
    """The receiver records a POST, answers 503 as planned, then falls back to 200."""
    http_receiver.respond_with(503, headers={"Retry-After": "1"})
    assert _post(http_receiver.url_for("/hook"), b'{"n":1}') == 503
    assert _post(http_receiver.url_for("/hook"), b'{"n":2}') == 200
    first, second = http_receiver.wait_for_count(2, timeout=5.0)
    assert (first.method, first.path, first.status) == ("POST", "/hook", 503)
    assert first.headers["content-type"] == "application/json"
    assert first.json() == {"n": 1}
    assert second.body == b'{"n":2}'
    assert second.status == 200
    assert second.time >= first.time


def test_http_receiver_hang_times_out_client(http_receiver: HttpReceiver) -> None:
    """In hang mode a client with a 0.5 s timeout times out; after unhang it gets 200."""
    http_receiver.hang()
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        _post(http_receiver.url, b"x", timeout=0.5)
    assert time.monotonic() - started < 5.0
    assert http_receiver.wait_for_count(1, timeout=5.0)[0].status is None
    http_receiver.unhang()
    assert _post(http_receiver.url, b"y") == 200


def test_blackhole_accepts_and_never_answers(blackhole: BlackholeServer) -> None:
    """The blackhole accepts a connection and sends nothing before the client's timeout."""
    with socket.create_connection(("127.0.0.1", blackhole.port), timeout=0.3) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\n\r\n")
        blackhole.wait_for_connections(1, timeout=5.0)
        with pytest.raises(TimeoutError):
            sock.recv(1)
