"""Every safety rule of `serfbridge relay`, checked against a running relay and a real agent."""

from __future__ import annotations

import json
import subprocess
import time
from typing import TYPE_CHECKING, Any

import pytest
from support.inbound import sign_headers
from support.ports import free_port, wait_for
from support.relay import RelayProcess, Watcher, get_text, http_source, metric, post

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from support.serf import SerfClusterFactory

TOKEN = "t0k-3n"  # noqa: S105 - test value
KEY = "hm4c-k3y"
EVENT = {"type": "event", "name": "deploy", "payload": "v2", "coalesce": False}


class Setup:
    def __init__(self, relay: RelayProcess, tok: int, sig: int, metrics: int, watch: Watcher):
        self.relay, self.tok, self.sig, self.metrics_port, self.watch = (
            relay, tok, sig, metrics, watch
        )  # fmt: skip

    def metric(self, name: str, **labels: str) -> float:
        status, text = get_text(self.metrics_port, "/metrics")
        assert status == 200
        return metric(text, name, **labels)

    def signed(self, body: bytes, timestamp: int | None = None) -> tuple[int, dict[str, Any]]:
        ts = int(time.time()) if timestamp is None else timestamp
        return post(self.sig, "/v1/event", body, headers=sign_headers(KEY, body, ts))


@pytest.fixture
def setup(
    serf_cluster: SerfClusterFactory, serfbridge_cmd: list[str], tmp_path: Path
) -> Iterator[Setup]:
    agent = serf_cluster(1)[0]
    tok, sig, metrics = free_port(), free_port(), free_port()
    allow = {"allow_events": ["deploy"], "allow_queries": ["load"]}
    body = (
        f'[relay]\nmetrics_listen = "127.0.0.1:{metrics}"\n'
        + http_source(tok, name="tok", token=TOKEN, max_body=4096, **allow)
        + http_source(sig, name="sig", hmac_key=KEY, max_skew=60, **allow)
    )
    relay = RelayProcess(tmp_path / "relay", serfbridge_cmd, body, rpc_addr=agent.rpc_addr)
    watch = Watcher(agent)
    try:
        relay.start()
        yield Setup(relay, tok, sig, metrics, watch)
    finally:
        relay.stop()
        watch.close()
    assert "Traceback" not in relay.log_text()


def _arrived(s: Setup, payload: bytes) -> bool:
    return any(p == payload for _, p in s.watch.events)


def test_token_required(setup: Setup) -> None:
    """No token or a wrong one is 401 and raises nothing; the right one raises the event."""
    status, doc = post(setup.tok, "/v1/event", {**EVENT, "payload": "none"})
    assert (status, doc["reason"]) == (401, "unauthorized")
    status, doc = post(setup.tok, "/v1/event", {**EVENT, "payload": "wrong"}, token=TOKEN[:-1])
    assert (status, doc["reason"]) == (401, "unauthorized")
    status, _ = post(setup.tok, "/v1/event", {**EVENT, "payload": "right"}, token=TOKEN)
    assert status == 202
    wait_for(lambda: _arrived(setup, b"right"), 10, what="the authenticated event")
    assert not _arrived(setup, b"none")
    assert not _arrived(setup, b"wrong")
    assert (
        setup.metric(
            "serfbridge_relay_messages_rejected_total", source="tok", reason="unauthorized"
        )
        == 2
    )


def test_signatures(setup: Setup) -> None:
    """Bad signature, replay and stale timestamp are refused; a fresh signature passes once."""
    good = json.dumps({**EVENT, "payload": "signed"}).encode()
    now = int(time.time())
    headers = sign_headers(KEY, good, now)
    status, _ = post(setup.sig, "/v1/event", good, headers=headers)
    assert status == 202
    status, doc = post(setup.sig, "/v1/event", good, headers=headers)
    assert (status, doc["reason"]) == (401, "replayed")
    forged = json.dumps({**EVENT, "payload": "forged"}).encode()
    status, doc = post(setup.sig, "/v1/event", forged, headers=headers)
    assert (status, doc["reason"]) == (401, "bad_signature")
    stale = json.dumps({**EVENT, "payload": "stale"}).encode()
    status, doc = setup.signed(stale, now - 3600)
    assert (status, doc["reason"]) == (401, "stale")
    status, doc = post(setup.sig, "/v1/event", stale, token=TOKEN)
    assert (status, doc["reason"]) == (401, "unauthorized")
    wait_for(lambda: _arrived(setup, b"signed"), 10, what="the signed event")
    time.sleep(0.3)
    assert [p for _, p in setup.watch.events] == [b"signed"]


def test_allowlist(setup: Setup) -> None:
    """Names outside allow_events / allow_queries are 403 and never reach Serf."""
    status, doc = post(setup.tok, "/v1/event", {**EVENT, "name": "rm-rf"}, token=TOKEN)
    assert (status, doc["reason"]) == (403, "not_allowed")
    query = {"type": "query", "name": "deploy", "timeout": 0.5}
    status, doc = post(setup.tok, "/v1/query", query, token=TOKEN)
    assert (status, doc["reason"]) == (403, "not_allowed")
    assert setup.metric("serfbridge_relay_messages_out_total", source="tok", type="event") == 0
    assert not setup.watch.events


def test_oversized(setup: Setup) -> None:
    """An event over Serf's 512-byte limit or a body over max_body is 413; the largest
    event the check accepts is one Serf accepts too."""
    status, doc = post(setup.tok, "/v1/event", {**EVENT, "payload": "x" * 473}, token=TOKEN)
    assert (status, doc["reason"]) == (413, "too_large")
    status, doc = post(setup.tok, "/v1/event", b"{" + b" " * 5000 + b"}", token=TOKEN)
    assert (status, doc["reason"]) == (413, "too_large")
    query = {"type": "query", "name": "load", "payload": "q" * 1100}
    status, doc = post(setup.tok, "/v1/query", query, token=TOKEN)
    assert (status, doc["reason"]) == (413, "too_large")
    status, doc = post(setup.tok, "/v1/event", {**EVENT, "payload": "y" * 472}, token=TOKEN)
    assert status == 202, doc
    wait_for(lambda: _arrived(setup, b"y" * 472), 10, what="the largest event")
    assert not _arrived(setup, b"x" * 473)


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b'{"type": "event", "name": 7}',
        b'{"type": "event", "name": "deploy", "coalesce": "no"}',
        b'{"type": "event", "name": "deploy", "color": "red"}',
        b'{"type": "query", "name": "deploy"}',
        b'{"type": "event", "name": "deploy", "payload": "@@", "payload_encoding": "base64"}',
    ],
)
def test_malformed(setup: Setup, body: bytes) -> None:
    """Malformed JSON, wrong types, unknown fields: 400, and the relay keeps serving."""
    status, doc = post(setup.tok, "/v1/event", body, token=TOKEN)
    assert (status, doc["reason"]) == (400, "malformed")
    status, _ = post(setup.tok, "/v1/event", {**EVENT, "payload": "after"}, token=TOKEN)
    assert status == 202
    assert setup.relay.is_running


def test_loop(setup: Setup) -> None:
    """A serfbridge event document posted back (a sink pointed at the relay) is a loop."""
    doc = {
        "version": 1, "id": "0f" * 16, "event": "user", "name": "deploy", "ltime": 3,
        "payload": "v2", "payload_encoding": "utf-8", "members": [],
        "node": {"name": "n1", "role": "", "tags": {}}, "received_at": "2026-11-23T19:00:00.000Z",
        "truncated": False,
    }  # fmt: skip
    status, reply = post(setup.tok, "/v1/event", doc, token=TOKEN)
    assert (status, reply["reason"]) == (400, "loop")
    assert (
        setup.metric("serfbridge_relay_messages_rejected_total", source="tok", reason="loop") == 1
    )


def test_duplicate_id(setup: Setup) -> None:
    """A message id seen within dedupe_window is relayed once."""
    msg = {**EVENT, "payload": "once", "id": "m-1"}
    assert post(setup.tok, "/v1/event", msg, token=TOKEN)[0] == 202
    status, doc = post(setup.tok, "/v1/event", msg, token=TOKEN)
    assert (status, doc["reason"]) == (409, "duplicate")
    wait_for(lambda: _arrived(setup, b"once"), 10, what="the event")
    time.sleep(0.3)
    assert sum(p == b"once" for _, p in setup.watch.events) == 1


def test_query_and_health(setup: Setup) -> None:
    """An allowed query returns the reply document; /healthz reports the agent connected."""
    status, reply = post(
        setup.tok, "/v1/query", {"name": "load", "timeout": 0.5, "id": "q1"}, token=TOKEN
    )
    assert status == 200
    # n1 acked and has no responder: the reply says it did not answer.
    assert reply == {"id": "q1", "name": "load", "acks": ["n1"], "responses": {},
                     "unanswered": ["n1"], "complete": False}  # fmt: skip
    status, text = get_text(setup.tok, "/healthz")
    assert (status, json.loads(text)) == (200, {"status": "ok", "serf": True})


def test_secrets_not_logged(setup: Setup) -> None:
    """Neither the token nor the HMAC key appears in the log, even for rejected input."""
    post(setup.tok, "/v1/event", EVENT, token=TOKEN + "x")
    post(setup.tok, "/v1/event", EVENT, token=TOKEN)
    setup.signed(json.dumps(EVENT).encode())
    log = setup.relay.log_text()
    assert TOKEN not in log
    assert KEY not in log


def test_refuses_open_listener_on_non_loopback(serfbridge_cmd: list[str], tmp_path: Path) -> None:
    """No token, no key, listen 0.0.0.0 and no `insecure = true`: exit 3, nothing bound."""
    port = free_port()
    config = tmp_path / "open.toml"
    config.write_text(
        f'state_dir = "{tmp_path / "state"}"\n'
        + http_source(port, listen=f"0.0.0.0:{port}", allow_events=["deploy"])
    )
    proc = subprocess.run(
        [*serfbridge_cmd, "--config", str(config), "relay"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert proc.returncode == 3
    assert "refusing an unauthenticated listener on 0.0.0.0" in proc.stderr
    assert "insecure = true" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_check_lists_sources_and_rejects_bad_ones(
    serfbridge_cmd: list[str], tmp_path: Path
) -> None:
    """`serfbridge check` shows each source; a bad source key names the source (exit 3)."""
    config = tmp_path / "c.toml"
    config.write_text(
        f'state_dir = "{tmp_path / "state"}"\n'
        + http_source(free_port(), token=TOKEN, allow_events=["deploy"])
    )
    proc = subprocess.run(
        [*serfbridge_cmd, "--config", str(config), "check"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "source http: type=http events=deploy queries=-" in proc.stdout
    assert TOKEN not in proc.stdout
    config.write_text(
        f'state_dir = "{tmp_path / "state"}"\n'
        '[[sources]]\ntype = "redis"\nurl = "redis://127.0.0.1:1/0"\nstreem = "x"\n'
    )
    proc = subprocess.run(
        [*serfbridge_cmd, "--config", str(config), "relay"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert proc.returncode == 3
    assert "sources[0] (redis).streem: unknown key" in proc.stderr
    assert "sources[0] (redis).stream: Field required" in proc.stderr
    assert "Traceback" not in proc.stderr
