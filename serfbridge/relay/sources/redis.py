"""``type = "redis"``: read a stream through a consumer group; ack only after Serf accepted.

Each entry carries the message JSON in field ``data``, and optionally ``timestamp`` +
``signature`` (see :mod:`serfbridge.relay.auth`). Per loop the source reads, in order:

1. its own pending entries (``XREADGROUP ... 0``): ones that failed because Serf was down,
   or that a previous run with the same consumer name read and never acknowledged;
2. entries pending longer than ``claim_idle`` in other consumers (``XAUTOCLAIM``): a relay
   that died (``kill -9``) leaves its unacknowledged entries to the survivors;
3. new entries (``XREADGROUP ... >``), blocking up to one second.

Accepted -> ``XACK``. Refused for good (malformed, not allowed, too large, bad signature)
-> ``XADD`` to ``dead_letter`` with the reason, then ``XACK``. Serf unavailable or rate
limited -> left pending and retried with backoff. Query replies go to the stream named by the
message's ``reply_to`` (``XADD <reply_to> * data <reply JSON>``).

An entry Serf took whose reply or ``XACK`` then failed is remembered: the retry finishes the
writes without calling Serf again. Delivery into Serf is still at least once: a relay killed
between Serf's answer and its ``XACK`` leaves that one entry to be relayed again by whoever
claims it. With ``event_ids = true`` the resend carries the first send's id (made from the
Redis server's run id, the stream, the group and the entry id), and serfbridge handlers drop
it (serfbridge.capture.relay_ids).
"""

from __future__ import annotations

import json
import os
import socket
import threading
from typing import Any

from serfbridge import log
from serfbridge.delivery.backoff import Backoff
from serfbridge.errors import Rejected, RelayError
from serfbridge.relay.auth import Credentials
from serfbridge.relay.sources.base import RETRYABLE, Source

TYPE_CHECKING = False
if TYPE_CHECKING:
    from redis import Redis

REPLY_MAXLEN = 10_000


def _text(fields: dict[bytes, bytes], key: bytes) -> str | None:
    value = fields.get(key)
    return None if value is None else value.decode("utf-8", "replace")


class RedisSource(Source):
    def start(self) -> None:
        import redis

        cfg = self.config
        self.consumer = cfg.consumer or f"{socket.gethostname()}-{os.getpid()}"
        self.dead = cfg.dead_letter or f"{cfg.stream}:dead"
        try:
            self.client: Redis = redis.Redis.from_url(
                cfg.url,
                username=cfg.username,
                password=cfg.password.get_secret_value() if cfg.password else None,
                socket_timeout=cfg.timeout + 2,
                socket_connect_timeout=cfg.timeout,
            )
        except ValueError as exc:
            raise RelayError(f"source {self.name}: bad url: {exc}") from None
        self._stop = threading.Event()
        self._group_ready = False
        self.connected = False  # until the first reply (a connection error resets both)
        self._server_id = ""
        # entry id -> the writes still owed for it (reply or dead letter, then XACK), for
        # entries that are done with Serf: a retry must not call Serf again.
        self._owed: dict[bytes, tuple[str | None, dict[Any, Any] | None]] = {}
        self.thread = threading.Thread(target=self._run, name=f"source {self.name}", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(timeout=self.config.timeout + 5)
        self.client.close()

    # -- loop --------------------------------------------------------------------------------

    def _ensure_group(self) -> None:
        import redis

        if self._group_ready:
            return
        # Entry ids repeat across Redis servers (they are timestamps), so an event id made
        # from one also names the server; a restarted server gets a new run id, which only
        # costs the dedupe of entries claimed across the restart.
        self._server_id = str(self.client.info("server").get("run_id", ""))
        try:
            # "0": a new group starts with what is already in the stream, so nothing written
            # before the first relay started is skipped.
            self.client.xgroup_create(self.config.stream, self.config.group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True
        log.info(
            "redis source reading", source=self.name, stream=self.config.stream,
            group=self.config.group, consumer=self.consumer,
        )  # fmt: skip

    def _run(self) -> None:
        import redis

        # An empty read backs off gently; a broken connection or a bug, further.
        idle, unreachable, failing = Backoff(0.2, 10.0), Backoff(0.5, 10.0), Backoff(0.5, 30.0)
        while not self._stop.is_set():
            delay = 0.0
            try:
                self._ensure_group()
                self.connected = True
                if self._cycle():
                    for backoff in (idle, unreachable, failing):
                        backoff.reset()
                else:
                    delay = idle.failed()
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                self.connected = False
                self._group_ready = False
                delay = unreachable.failed()
                log.warning("redis unreachable", source=self.name, error=str(exc), retry_in=delay)
            except redis.RedisError as exc:
                delay = failing.failed()
                log.error("redis error", source=self.name, error=str(exc), retry_in=delay)
            except Exception as exc:  # noqa: BLE001 - a bug must not silently end the source
                delay = failing.failed()
                log.error("redis source failed", source=self.name, error=repr(exc), retry_in=delay)
            if delay:
                self._stop.wait(delay)

    def _cycle(self) -> bool:
        """One round; False when something must be retried later (back off)."""
        cfg = self.config
        stream = cfg.stream
        own = self.client.xreadgroup(cfg.group, self.consumer, {stream: "0"}, count=cfg.batch)
        entries = _entries(own)
        if entries:
            return self._process(entries)
        idle_ms = int(cfg.claim_idle * 1000)
        claimed = self.client.xautoclaim(
            stream, cfg.group, self.consumer, idle_ms, start_id="0-0", count=cfg.batch
        )
        taken = [(i, f) for i, f in claimed[1] if f is not None] if claimed else []
        if taken:
            log.info("claimed pending entries", source=self.name, count=len(taken))
            return self._process(taken)
        new = self.client.xreadgroup(
            cfg.group, self.consumer, {stream: ">"}, count=cfg.batch, block=1000
        )
        return self._process(_entries(new))

    def _process(self, entries: list[tuple[bytes, dict[bytes, bytes] | None]]) -> bool:
        for entry_id, fields in entries:
            if self._stop.is_set():
                return True
            if not fields:  # trimmed away while pending: nothing left to relay
                self.client.xack(self.config.stream, self.config.group, entry_id)
                continue
            if not self._one(entry_id, fields):
                return False
        return True

    def _one(self, entry_id: bytes, fields: dict[bytes, bytes]) -> bool:
        cfg = self.config
        if entry_id not in self._owed:
            owed = self._run_message(entry_id, fields)
            if owed is None:
                return False  # stays pending; read again from our own PEL
            self._owed[entry_id] = owed
        target, record = self._owed[entry_id]
        if target is not None and record is not None:
            if target == self.dead:
                self.client.xadd(target, record)
            else:
                self.client.xadd(target, record, maxlen=REPLY_MAXLEN, approximate=True)
            self._owed[entry_id] = (None, None)
        self.client.xack(cfg.stream, cfg.group, entry_id)
        del self._owed[entry_id]
        return True

    def _run_message(
        self, entry_id: bytes, fields: dict[bytes, bytes]
    ) -> tuple[str | None, dict[Any, Any] | None] | None:
        """Through the gate into Serf; returns the write owed afterwards (a query reply, a
        dead letter, or nothing), or None when the entry must be retried later."""
        cfg = self.config
        creds = Credentials(
            token=_text(fields, b"token"),
            timestamp=_text(fields, b"timestamp"),
            signature=_text(fields, b"signature"),
        )
        origin = f"redis\0{self._server_id}\0{cfg.stream}\0{cfg.group}\0{entry_id.decode()}"
        try:
            msg, reply = self.gate.handle(fields.get(b"data", b""), creds, origin=origin)
        except Rejected as exc:
            if exc.reason in RETRYABLE:
                return None
            dead: dict[Any, Any] = {
                "entry": entry_id,
                "reason": exc.reason,
                "error": str(exc),
                "data": fields.get(b"data", b""),
            }
            return self.dead, dead
        if reply is not None and msg.reply_to:
            return msg.reply_to, {"data": json.dumps(reply)}
        return None, None


def _entries(reply: Any) -> list[tuple[bytes, dict[bytes, bytes] | None]]:
    """XREADGROUP's [[stream, [(id, fields), ...]]] -> [(id, fields), ...]."""
    out: list[tuple[bytes, dict[bytes, bytes] | None]] = []
    for _stream, items in reply or []:
        out.extend(items)
    return out
