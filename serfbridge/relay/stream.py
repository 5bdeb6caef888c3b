"""``[relay] stream = true``: the agent's RPC event stream feeds the sinks and responders.

Instead of one handler process per event, one subscription: each record becomes the same
version 1 event document the handler builds (same ids, so receivers dedupe across both), is
routed as the handler routes it (relay-id repeats dropped, file sinks appended inline, the
rest spooled for the shared deliverer with its retry and dead letter), and queries with a
``[[responders]]`` entry are answered with ``respond`` on the stream's connection, once
their event is durable.

Group commit: the stream's reader thread queues records as the agent sends them; the
records that arrived while the previous group was being written (up to ``GROUP_MAX``) are
spooled as one batch file (``spool.capture_many``: one fsync and one wake-up for all of
them), in order. One file per event cost two fsyncs each and held stream mode to a fraction
of the agent's rate. A spool that cannot be written (a full disk) is retried with backoff
while the reader keeps queueing; nothing is dropped.

What it gives up (docs/relay.md): events while the relay is down are not seen, and Serf drops
stream records past 512 buffered (``Dropping event`` in the agent's log).
"""

from __future__ import annotations

import threading
import time
from typing import Any

from serfbridge import log
from serfbridge.capture import cache, jsonenc, relay_ids, respond, route, spool
from serfbridge.capture import event as parse
from serfbridge.capture import run as handler
from serfbridge.config.models import compile_settings
from serfbridge.delivery.backoff import Backoff
from serfbridge.errors import ConfigError, SerfError
from serfbridge.serf.rpc import DEFAULT_ADDR, SerfRPC

TYPE_CHECKING = False
if TYPE_CHECKING:
    from serfbridge._types import Compiled, EventDoc, Member, Node
    from serfbridge.relay.host import RelayHost
    from serfbridge.serf.wire import Stream, StreamRecord

#: The most records in one batch file: what the agent may buffer for a stream (Serf drops
#: records past 512), so one commit takes all the reader queued while the last one ran.
GROUP_MAX = 512


def _node(stats: dict[str, dict[str, str]], tags: dict[str, str]) -> Node:
    return {
        "name": stats.get("agent", {}).get("name", ""),
        "role": tags.get("role", ""),
        "tags": dict(sorted(tags.items())),
    }


def event_doc(
    record: dict[str, Any], node: Node, received: float
) -> tuple[EventDoc, str | None] | None:
    """One stream record -> the handler's event document and the relay id it carried
    (serfbridge.capture.relay_ids), or None for unknown records."""
    kind = str(record.get("Event") or "")
    if kind in ("user", "query"):
        data, relay_id = bytes(record.get("Payload") or b""), None
        if kind == "user":
            data, relay_id = relay_ids.split(data)
        name, ltime = str(record.get("Name") or ""), int(record.get("LTime") or 0)
        doc = parse.user_doc(kind, name, ltime, data, node, received_at=received, relay_id=relay_id)
        return doc, relay_id
    if kind.startswith("member-"):
        members: list[Member] = [
            {
                "name": m.name,
                "addr": m.addr,
                "role": m.tags.get("role", ""),
                "tags": dict(sorted(m.tags.items())),
            }
            for m in record.get("Members") or []
        ]
        return parse.member_doc(kind, members, node, received), None
    return None


class StreamFeeder:
    def __init__(self, relay: RelayHost) -> None:
        self.relay = relay
        settings = relay.settings
        self.cfg: Compiled = compile_settings(settings, relay.config_path)
        self._fingerprint = self._current_fingerprint()
        serf = settings.serf
        self.addr = serf.rpc_addr or DEFAULT_ADDR
        self.auth = serf.rpc_auth.get_secret_value() if serf.rpc_auth else None
        self.timeout = max(serf.rpc_timeout, 2.0)
        self._stop = threading.Event()
        self._client: SerfRPC | None = None

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, name="stream", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self._stop.set()
        client = self._client
        if client is not None:
            client.close()  # ends the blocking iteration
        self.thread.join(timeout=10)

    def _run(self) -> None:
        retry = Backoff(0.2, self.relay.config.reconnect_max)
        while not self._stop.is_set():
            delay = 0.2
            try:
                self._follow()
                retry.reset()
            except SerfError as exc:
                if self._stop.is_set():
                    return
                delay = retry.failed()
                log.warning("event stream lost", error=str(exc), retry_in=delay)
            self._stop.wait(delay)

    def _follow(self) -> None:
        client = SerfRPC(self.addr, self.auth, timeout=self.timeout)
        self._client = client
        with client:
            stats = client.stats()
            tags = {m.name: m.tags for m in client.members()}.get(
                stats.get("agent", {}).get("name", ""), {}
            )
            node = _node(stats, tags)
            stream = client.stream(self.relay.config.stream_filter)
            log.info("event stream subscribed", filter=stream.filter, node=node["name"])
            for record in stream:
                if self._stop.is_set():
                    return
                group = [record, *_waiting(stream, GROUP_MAX - 1)]
                node = self._feed_group(client, group, node)

    def _refresh(self, client: SerfRPC, node: Node) -> Node:
        for member in client.members():
            if member.name == node["name"]:
                return {**node, "role": member.tags.get("role", ""), "tags": member.tags}
        return node

    def _current_fingerprint(self) -> str | None:
        if self.relay.config_path is None:
            return None
        try:
            return cache.fingerprint(self.relay.config_path)
        except ConfigError:
            return None

    def _follow_config(self) -> None:
        """Route with the config the handler would use now: an edit (a sink added, a URL
        changed) applies from the next record on, as it does for handlers."""
        current = self._current_fingerprint()
        if current == self._fingerprint or self.relay.config_path is None:
            return
        self._fingerprint = current
        try:
            self.cfg = cache.compile_now(self.relay.config_path)
        except ConfigError as exc:
            log.error(
                "config changed but is invalid; stream keeps the previous one", error=str(exc)
            )
            return
        log.info("config changed; stream routing reloaded")

    def _feed_group(self, client: SerfRPC, group: list[StreamRecord], node: Node) -> Node:
        """Route the records of one group, spool them with one commit, then answer the
        queries among them; returns the node as the last member-update left it."""
        self._follow_config()
        metrics = self.relay.metrics
        items: list[tuple[list[str], str]] = []
        ids: list[str] = []  # relay ids recorded as seen, forgotten if the commit fails
        queries: list[tuple[int, EventDoc, str]] = []
        for record in group:
            if record.get("Event") == "member-update":
                # Our own tags may have changed: SERF_TAG_* would show the new ones.
                node = self._refresh(client, node)
            found = event_doc(record, node, time.time())
            if found is None:
                continue
            doc, relay_id = found
            metrics.inc("serfbridge_relay_stream_events_total", event=doc["event"])
            event_json = jsonenc.dumps(doc)
            if relay_id is not None:
                if not handler.first_time(self.cfg, doc, relay_id):
                    metrics.inc("serfbridge_relay_stream_repeats_total")
                    continue
                ids.append(relay_id)
            spooled = handler.inline_files(self.cfg, doc, event_json)
            if spooled:
                items.append((spooled, event_json))
            if doc["event"] == "query":
                queries.append((int(record.get("ID") or 0), doc, event_json))
        if items and not self._commit(items, ids):
            return node
        for query_id, doc, event_json in queries:
            self._answer(client, query_id, doc, event_json)
        return node

    def _commit(self, items: list[tuple[list[str], str]], ids: list[str]) -> bool:
        """Spool ``items`` as one batch file and wake the deliverer; an error is retried
        until it succeeds or the relay stops (False: then the events are lost, and said so)."""
        state_dir = self.cfg["state_dir"]
        retry = Backoff(0.05, 5.0)
        while True:
            try:
                entry = spool.capture_many(state_dir, items)
                break
            except OSError as exc:
                if self._stop.is_set():
                    log.error("relay stopping: stream events not spooled", events=len(items),
                              error=str(exc))  # fmt: skip
                    for relay_id in ids:
                        handler.forget(self.cfg, relay_id)
                    return False
                delay = retry.failed()
                log.error("cannot spool stream events; retrying", events=len(items),
                          error=str(exc), retry_in=f"{delay:.2f}s")  # fmt: skip
                self._stop.wait(delay)
        handler.hand_over(self.cfg, entry, self.relay.config_path, ".jsonl")
        return True

    def _answer(self, client: SerfRPC, query_id: int, doc: EventDoc, event_json: str) -> None:
        responder = route.responder_for(self.cfg, doc)
        if responder is None:
            return
        limit = self.cfg["query_response_size_limit"]
        answer = respond.answer(responder, doc, event_json, limit)
        try:
            client.respond(query_id, answer)
        except SerfError as exc:
            log.warning("query response not sent", query=doc["name"], error=str(exc))


def _waiting(stream: Stream, limit: int) -> list[StreamRecord]:
    """Up to ``limit`` records already received, without waiting for more."""
    out: list[StreamRecord] = []
    try:
        while len(out) < limit:
            record = stream.get(0)
            if record is None:
                break
            out.append(record)
    except SerfError:
        pass  # the stream ended: the records taken are still fed; the next read raises
    return out
