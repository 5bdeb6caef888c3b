"""The HTTP source under attack and at its edges, against a running relay and a real agent:
slow connections, unauthenticated floods, names Serf cannot carry, inputs that used to give
500, and the headers RFC 6750 / RFC 9110 ask for."""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import threading
import time
import urllib.request
from typing import TYPE_CHECKING, Any

import pytest
from support.ports import LOOPBACK, free_port, wait_for
from support.relay import RelayProcess, Watcher, http_source, post

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from support.serf import SerfClusterFactory

pytestmark = pytest.mark.e2e
TOKEN = "att4ck-t0ken"  # noqa: S105 - test value
KEY = "att4ck-k3y"
EVENT = {"type": "event", "name": "deploy", "payload": "v"}


class Setup:
    def __init__(self, relay: RelayProcess, port: int, watch: Watcher) -> None:
        self.relay, self.port, self.watch = relay, port, watch

    def signed(self, doc: dict[str, Any], timeout: float = 30) -> tuple[int, dict[str, Any]]:
        return post(self.port, "/v1/event", doc, hmac_key=KEY, timeout=timeout)

    def raw(self, request: bytes, timeout: float = 10) -> bytes:
        """One request written as is; the whole answer."""
        with socket.create_connection((LOOPBACK, self.port), timeout=timeout) as sock:
            sock.sendall(request)
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks)


@pytest.fixture
def setup(
    serf_cluster: SerfClusterFactory, serfbridge_cmd: list[str], tmp_path: Path
) -> Iterator[Setup]:
    agents = serf_cluster(3)
    port = free_port()
    body = http_source(
        port, token=TOKEN, hmac_key=KEY, allow_events=["deploy", "d*"], allow_queries=["*"],
        rate=5, burst=10, threads=4, header_timeout=2, body_timeout=2,
    )  # fmt: skip
    relay = RelayProcess(tmp_path / "relay", serfbridge_cmd, body, rpc_addr=agents[0].rpc_addr)
    relay.log_level = "info"
    watch = Watcher(agents[0])
    try:
        relay.start()
        yield Setup(relay, port, watch)
    finally:
        relay.stop()
        watch.close()
    assert "Traceback" not in relay.log_text()


def _trickle(port: int, stop: threading.Event, opened: list[socket.socket]) -> None:
    """A slowloris client: a request line, then one header byte at a time."""
    try:
        sock = socket.create_connection((LOOPBACK, port), timeout=5)
    except OSError:
        return
    opened.append(sock)
    try:
        sock.sendall(b"POST /v1/event HTTP/1.1\r\nHost: x\r\n")
        while not stop.wait(0.2):
            sock.sendall(b"X")
    except OSError:
        pass  # the relay closed it: that is what a header deadline does


def test_slow_connections_do_not_stall_signed_callers(setup: Setup) -> None:
    """40 connections trickling headers (10 x the worker threads): a signed event still gets
    its 202 at once, and each trickler is cut off at header_timeout."""
    stop, opened = threading.Event(), []  # type: ignore[var-annotated]
    threads = [threading.Thread(target=_trickle, args=(setup.port, stop, opened), daemon=True)
               for _ in range(40)]  # fmt: skip
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: len(opened) == 40, 10, what="the slow connections")
        time.sleep(0.5)
        for i in range(5):
            status, doc = setup.signed({**EVENT, "payload": f"through-{i}"}, timeout=5)
            assert status == 202, doc

        # Past header_timeout (2 s) the relay has answered 408 and closed each trickler.
        def all_closed() -> bool:
            closed = 0
            for sock in opened:
                try:
                    sock.settimeout(0.01)
                    data = sock.recv(4096)
                    closed += data == b"" or data.startswith(b"HTTP/1.1 408")
                except (TimeoutError, BlockingIOError):
                    pass
                except OSError:
                    closed += 1
            return closed == len(opened)

        wait_for(all_closed, 10, what="the relay to close the slow connections")
    finally:
        stop.set()
        for sock in opened:
            sock.close()
    wait_for(lambda: b"through-4" in setup.watch.payloads(), 10, what="the signed events")


def test_unauthenticated_flood_leaves_authenticated_callers_alone(setup: Setup) -> None:
    """300 requests without credentials from this address, interleaved with 8 signed ones
    (rate 5/s, burst 10): every signed one is 202; the flood gets 401, then 429 once its own
    budget is spent."""
    flood_status: list[int] = []

    def flood() -> None:
        for _ in range(100):
            flood_status.append(post(setup.port, "/v1/event", EVENT)[0])

    workers = [threading.Thread(target=flood) for _ in range(3)]
    for worker in workers:
        worker.start()
    signed = []
    for i in range(8):
        signed.append(setup.signed({**EVENT, "payload": f"auth-{i}"})[0])
        time.sleep(0.05)
    for worker in workers:
        worker.join()
    assert signed == [202] * 8
    assert set(flood_status) == {401, 429}
    assert flood_status.count(429) > 200


def test_rfc_headers(setup: Setup) -> None:
    """401 carries WWW-Authenticate (RFC 6750), 429 Retry-After, 405 Allow (RFC 9110)."""
    answer = setup.raw(b"POST /v1/event HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
                       b"Connection: close\r\n\r\n{}")  # fmt: skip
    assert answer.startswith(b"HTTP/1.1 401 ")
    assert b'\r\nWWW-Authenticate: Bearer realm="serfbridge-http"' in answer
    answer = setup.raw(b"GET /v1/event HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 405 ")
    assert b"\r\nAllow: POST\r\n" in answer
    answer = setup.raw(b"DELETE /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert b"\r\nAllow: GET, HEAD\r\n" in answer
    statuses = [post(setup.port, "/v1/event", EVENT, token=TOKEN) for _ in range(12)]
    assert statuses[-1][0] == 429
    request = urllib.request.Request(
        f"http://{LOOPBACK}:{setup.port}/v1/event", data=json.dumps(EVENT).encode(),
        headers={"Authorization": f"Bearer {TOKEN}"}, method="POST",
    )  # fmt: skip
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=10)  # noqa: S310 - loopback
    caught.value.close()
    assert caught.value.code == 429
    assert caught.value.headers["Retry-After"] == "1"


@pytest.mark.parametrize(
    ("name", "why"),
    [("dep\u0000loy", "NUL"), ("d\ud800", "lone surrogate"), ("d-\udfff-x", "lone surrogate")],
)
def test_names_serf_cannot_carry_are_400(setup: Setup, name: str, why: str) -> None:
    """A NUL (Go's exec refuses the handler's environment: the event was lost on every node)
    or a lone surrogate (not text; was 500) in a name: 400 with the reason, nothing sent."""
    body = json.dumps({**EVENT, "name": name}).encode()
    status, doc = post(setup.port, "/v1/event", body, token=TOKEN)
    assert (status, doc["reason"]) == (400, "malformed"), doc
    assert why in doc["error"] or "Unicode" in doc["error"]
    status, doc = post(setup.port, "/v1/query", {"name": name, "timeout": 0.5}, token=TOKEN)
    assert (status, doc["reason"]) == (400, "malformed")
    status, doc = post(setup.port, "/v1/query", {"name": "_serf_ping"}, token=TOKEN)
    assert (status, doc["reason"]) == (400, "malformed")
    assert "Serf's own" in doc["error"]
    time.sleep(0.3)
    assert setup.watch.events == []


def test_inputs_that_gave_500(setup: Setup) -> None:
    """Deeply nested JSON and a 5,000-digit signed timestamp are refused, not 500."""
    status, doc = post(setup.port, "/v1/event", b"[" * 50_000, token=TOKEN)
    assert (status, doc["reason"]) == (400, "malformed")
    body = json.dumps(EVENT).encode()
    stamp = "9" * 5000  # correctly signed: the old code reached int() and raised
    mac = hmac.new(KEY.encode(), stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    headers = {"X-Serfbridge-Timestamp": stamp, "X-Serfbridge-Signature": "sha256=" + mac}
    status, doc = post(setup.port, "/v1/event", body, headers=headers)
    assert (status, doc["reason"]) == (401, "bad_signature")
