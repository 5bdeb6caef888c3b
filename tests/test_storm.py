"""Chat in a storm: a chat sink is rate limited and folds what waits into digest messages.

Against a real HTTP receiver: events captured by the real capture code and delivered by the
real deliverer (``serfbridge flush``), and a real Serf cluster whose members fail at once
while user events pour in.
"""

from __future__ import annotations

import base64
import itertools
import json
import re
import time
from typing import TYPE_CHECKING, Any

import pytest
from standardwebhooks.webhooks import Webhook
from support.bridge import BridgeNode, bridge_nodes
from support.handler import serfbridge, spool_files
from support.ports import wait_for

from serfbridge.capture import jsonenc, spool
from serfbridge.capture.event import parse_event
from serfbridge.sinks import chat, digest

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from support.serf import SerfClusterFactory
    from support.servers import HttpReceiver

WHSEC = "whsec_" + base64.b64encode(b"digest signing key").decode()
FAST = "[delivery]\nlinger = 2\nbackoff_initial = 0.05\nbackoff_max = 0.5\npoll_interval = 0.02\n"


def chat_sink(url: str, fmt: str = "slack", extra: str = "") -> str:
    return f'[[sinks]]\ntype = "webhook"\nname = "chat"\nformat = "{fmt}"\nurl = "{url}"\n{extra}'


def doc_for(event: str, stdin: bytes = b"", **env: str) -> dict[str, Any]:
    environ = {"SERF_EVENT": event, "SERF_SELF_NAME": "n1", **env}
    parsed: dict[str, Any] = json.loads(jsonenc.dumps(parse_event(environ, stdin, time.time())))
    return parsed


def failed_doc(name: str) -> dict[str, Any]:
    return doc_for("member-failed", f"{name}\t10.1.0.1\t\t\n".encode())


def user_doc(name: str = "deploy", ltime: int = 1) -> dict[str, Any]:
    return doc_for("user", b"x", SERF_USER_EVENT=name, SERF_USER_LTIME=str(ltime))


def texts(receiver: HttpReceiver) -> list[str]:
    """The text of every chat message received (Slack: ``text``)."""
    return [r.json()["text"] for r in receiver.requests]


@pytest.fixture
def node(tmp_path: Path) -> Iterator[BridgeNode]:
    bridge = BridgeNode(tmp_path, "n1")
    yield bridge
    bridge.kill_deliverer()


# -- the digest text ------------------------------------------------------------------------


def test_digest_text_counts_and_names() -> None:
    docs = [failed_doc(f"m{i:02d}") for i in range(12)] + [user_doc(ltime=i) for i in range(3)]
    docs.append(doc_for("member-join", b"m99\t10.1.0.9\t\t\n"))
    docs.append(doc_for("query", SERF_QUERY_NAME="load", SERF_QUERY_LTIME="4"))
    names = ", ".join(f"m{i:02d}" for i in range(12))
    assert digest.text(docs) == (
        f"[serf] n1: 17 events: 12 members failed: {names}; 1 member joined: m99; "
        "3 user events deploy; 1 query load"
    )


def test_digest_that_would_not_fit_takes_fewer_events() -> None:
    """Discord's 2,000 characters: each digest fits whole, and together they name everyone."""
    docs = [failed_doc(f"member-with-a-long-name-{i:03d}") for i in range(300)]
    named: list[str] = []
    while docs:
        body, count = digest.message("discord", docs)
        content = json.loads(body)["content"]
        assert 1 <= count < 300
        assert "truncated" not in content
        assert len(content.encode("utf-16-le")) // 2 <= chat.LIMITS["discord"]
        named += re.findall(r"member-with-a-long-name-\d{3}", content)
        docs = docs[count:]
    assert named == [f"member-with-a-long-name-{i:03d}" for i in range(300)]


def test_digest_escapes_mentions() -> None:
    body, _ = digest.message("mattermost", [user_doc("@channel"), user_doc("<!here>")] * 2)
    text = json.loads(body)["text"]
    assert "@channel" not in text
    assert "<!here>" not in text


# -- the deliverer --------------------------------------------------------------------------


def capture(node: BridgeNode, docs: list[dict[str, Any]]) -> None:
    """Spool ``docs`` for the chat sink with the handler's own capture code."""
    for doc in docs:
        spool.capture(str(node.state), ["chat"], jsonenc.dumps(doc))


def test_backlog_of_40_failures_is_one_digest(
    node: BridgeNode, http_receiver: HttpReceiver, serfbridge_cmd: list[str]
) -> None:
    """40 member-failed events waiting for a Slack sink go as a handful of messages naming
    every member, instead of 40 messages at one a second; the digest is signed like any
    request (verified with the standardwebhooks package)."""
    signed = f'signature = "standard-webhooks"\nhmac_secret = "{WHSEC}"\n'
    node.write_config(chat_sink(http_receiver.url, extra=signed) + FAST)
    names = [f"m{i:02d}" for i in range(40)]
    capture(node, [failed_doc(n) for n in names])
    proc = serfbridge(serfbridge_cmd, node, "flush", "--timeout", "60")
    assert proc.returncode == 0, proc.stderr + node.log_tail()
    messages = texts(http_receiver)
    assert 1 <= len(messages) <= 3
    assert messages[0].startswith("[serf] n1: 40 events: 40 members failed: m00, m01")
    assert sorted(set(re.findall(r"m\d\d", " ".join(messages)))) == names
    assert spool_files(node, "incoming") == []
    first = http_receiver.requests[0]
    assert first.headers["idempotency-key"].startswith("digest-")
    assert first.headers["webhook-id"] == first.headers["idempotency-key"]
    for request in http_receiver.requests:
        Webhook(WHSEC).verify(request.body, request.headers)


def test_rate_without_digest_paces_every_message(
    node: BridgeNode, http_receiver: HttpReceiver, serfbridge_cmd: list[str]
) -> None:
    """digest_after = 0: every event is its own message, no faster than ``rate``."""
    node.write_config(
        chat_sink(http_receiver.url, "discord", "rate = 5\ndigest_after = 0\n") + FAST
    )
    capture(node, [user_doc(ltime=i) for i in range(6)])
    proc = serfbridge(serfbridge_cmd, node, "flush", "--timeout", "60")
    assert proc.returncode == 0, proc.stderr
    requests = http_receiver.requests
    assert len(requests) == 6
    assert all("embeds" in r.json() for r in requests)
    gaps = [b.time - a.time for a, b in itertools.pairwise(requests)]
    assert min(gaps) >= 0.9 / 5  # the pacing itself, not a performance figure


def test_failed_digest_is_retried_and_nothing_is_lost(
    node: BridgeNode, http_receiver: HttpReceiver, serfbridge_cmd: list[str]
) -> None:
    """A 503 on the digest keeps every entry; the retry sends them all."""
    node.write_config(chat_sink(http_receiver.url, "mattermost", "rate = 20\n") + FAST)
    http_receiver.respond_with(503)
    capture(node, [failed_doc(f"m{i}") for i in range(5)])
    serfbridge(serfbridge_cmd, node, "flush", "--timeout", "5")
    # Still waiting: the captured entries stay in incoming/ until the sink has them.
    assert len(spool_files(node, "incoming")) == 5
    proc = serfbridge(serfbridge_cmd, node, "flush", "--timeout", "30")
    assert proc.returncode == 0, proc.stderr
    last = http_receiver.requests[-1].json()["text"]
    assert last.endswith("5 members failed: m0, m1, m2, m3, m4")
    assert spool_files(node, "incoming") == []


def test_unreadable_entry_is_not_folded_into_a_digest(
    node: BridgeNode, http_receiver: HttpReceiver, serfbridge_cmd: list[str]
) -> None:
    """A corrupt entry among them is never folded into a digest: it is moved to rejected/
    as it is read, and the events around it are delivered. (Entries are placed in the
    sink's queue directly, as `spool retry` would, so one can be corrupted.)"""
    node.write_config(chat_sink(http_receiver.url, "slack", "rate = 20\n") + FAST)
    capture(node, [failed_doc(f"m{i}") for i in range(6)])
    queue = node.state / "spool" / "queue" / "chat"
    incoming = node.state / "spool" / "incoming"
    queue.mkdir(parents=True)
    names = sorted(p.name for p in incoming.iterdir())
    for name in names:
        entry = json.loads((incoming / name).read_bytes())
        (queue / name).write_text(json.dumps({"event": entry["event"]}))
        (incoming / name).unlink()
    (queue / names[3]).write_text("{not json")
    proc = serfbridge(serfbridge_cmd, node, "flush", "--timeout", "30")
    assert proc.returncode == 0, proc.stderr + node.log_tail()
    messages = texts(http_receiver)
    assert "m3" not in " ".join(messages)
    assert sorted(set(re.findall(r"m\d", " ".join(messages)))) == ["m0", "m1", "m2", "m4", "m5"]
    assert spool_files(node, "rejected") == [names[3]]
    assert spool_files(node, "queue", "chat") == []
    assert spool_files(node, "incoming") == []


def test_rate_and_digest_after_are_for_chat_formats_only() -> None:
    from pydantic import ValidationError

    from serfbridge.sinks.webhook import WebhookSinkConfig

    with pytest.raises(ValidationError, match="rate applies to the chat formats"):
        WebhookSinkConfig(type="webhook", name="j", url="http://127.0.0.1/", rate=2)


# -- a real cluster -------------------------------------------------------------------------


@pytest.mark.e2e
def test_serf_storm_gives_a_handful_of_messages(
    serf_cluster: SerfClusterFactory,
    serfbridge_handler: str,
    tmp_path: Path,
    http_receiver: HttpReceiver,
) -> None:
    """n1 forwards to a Slack-format receiver. 8 agents leave at once while 32 user events
    are raised: 40 events in a few seconds become a handful of messages that together name
    every departed member and count every user event.

    (Leaves, not kill -9: with one survivor and no peers to confirm, memberlist declares
    killed agents failed one by one, several seconds apart, which is no storm.)"""
    nodes = bridge_nodes(tmp_path, ["n1"], lambda _: chat_sink(http_receiver.url) + FAST)
    cluster = serf_cluster(1, "*=" + serfbridge_handler, env_for=lambda _: nodes["n1"].env())
    try:
        doomed = [f"n{i}" for i in range(2, 10)]
        for name in doomed:
            cluster.add(name, wait=False)
        cluster.wait_converged(timeout=90)  # 9 agents on a loaded 2-core machine
        # The join wave of 8 members arrives first: wait for every name, then start afresh.
        wait_for(
            lambda: all(re.search(rf"\b{n}\b", " ".join(texts(http_receiver))) for n in doomed),
            timeout=30,
            what="the joins of n2..n9",
        )
        joins = len(http_receiver.requests)
        # One sink: an entry leaves incoming/ once the chat sink has it.
        wait_for(lambda: not spool_files(nodes["n1"], "incoming"), 30, what="joins sent")
        http_receiver.clear()
        for name in doomed:
            cluster[name].request_stop()  # SIGINT: a graceful leave, all at once
        for i in range(32):
            cluster["n1"].event("deploy", str(i))

        def counted() -> tuple[set[str], int]:
            failed = {n for t in texts(http_receiver) if "left" in t or "leave" in t
                      for n in doomed if re.search(rf"\b{n}\b", t)}  # fmt: skip
            users = 0
            for t in texts(http_receiver):
                users += sum(int(n) for n in re.findall(r"(\d+) user events? deploy", t))
                users += 1 if re.match(r"\[serf\] n1: user event deploy \(ltime", t) else 0
            return failed, users

        wait_for(
            lambda: counted() == (set(doomed), 32),
            60,
            what="8 leaves and 32 events",
            detail=lambda: f"{counted()}: {texts(http_receiver)}"[:3000],
        )
    finally:
        nodes["n1"].kill_deliverer()
    messages = texts(http_receiver)
    assert len(messages) <= 8, messages
    print(f"join wave: {joins} message(s); storm of 40 events: {len(messages)} message(s)")
    print("\n".join(messages))
