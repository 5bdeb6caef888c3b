"""``type = "redis"``: read a stream through a consumer group; ack only after Serf accepted.

Each entry carries the message JSON in field ``data``, and optionally ``timestamp`` +
``signature`` (see :mod:`serfbridge.relay.auth`). Per loop the source reads, in order:

1. its own pending entries (``XREADGROUP ... 0``): ones that failed because Serf was down,
   or that a previous run with the same consumer name read and never acknowledged;
2. entries pending longer than ``claim_idle`` in other consumers (``XAUTOCLAIM``): a relay
   that died (``kill -9``) leaves its unacknowledged entries to the survivors;
3. new entries (``XREADGROUP ... >``), blocking up to one second.

Entries are handed, in stream order, to ``workers`` threads, so a query that lasts its whole
timeout holds one worker and not the stream: later entries go on at once. When every worker
is busy the reader waits for one. Each entry is acknowledged by its worker:

Accepted -> ``XACK``. Refused for good (malformed, not allowed, too large, bad signature, no
``data`` field) -> ``XADD`` to ``dead_letter`` (``MAXLEN ~ dead_maxlen``; the data cut to
``dead_max_data`` bytes) with the reason, then ``XACK``. Serf unavailable or rate limited ->
left pending and retried with backoff. Query replies (and ``{"accepted": true}`` for an event
with ``reply_to``) go to the stream named by the message's ``reply_to`` (``XADD <reply_to> *
data <reply JSON>``).

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
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from serfbridge import log
from serfbridge.delivery.backoff import Backoff
from serfbridge.errors import Rejected, RelayError
from serfbridge.relay import messages
from serfbridge.relay.auth import Credentials
from serfbridge.relay.sources.base import RETRYABLE, Source, dead_letter_doc

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
        self.pool = ThreadPoolExecutor(cfg.workers, thread_name_prefix=f"source {self.name}")
        self._slots = threading.BoundedSemaphore(cfg.workers)
        self._inflight: set[bytes] = set()
        self._lock = threading.Lock()
        self._retry = threading.Event()  # a worker left an entry pending: back off
        self.thread = threading.Thread(target=self._run, name=f"source {self.name}", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(timeout=self.config.timeout + 5)
        self.pool.shutdown(wait=True, cancel_futures=True)  # entries in Serf finish and ack
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
        if self._retry.is_set():
            self._retry.clear()
            return False
        # Our pending entries include the ones in flight here: read past them. The set is
        # taken before the read: an entry a worker finished (and acknowledged) after it was
        # taken may still be in the answer, and must not be relayed again.
        with self._lock:
            busy = set(self._inflight)
        own = self.client.xreadgroup(
            cfg.group, self.consumer, {stream: "0"}, count=cfg.batch + cfg.workers
        )
        with self._lock:
            busy |= self._inflight
        entries = [(i, f) for i, f in _entries(own) if i not in busy]
        if entries:
            return self._process(entries[: cfg.batch])
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
        """One read's entries; False if one must be retried later.

        Events go into Serf together, in stream order, pipelined on the RPC connection,
        and are acknowledged together; each query goes to a worker (it lasts its timeout).
        """
        events: list[tuple[bytes, messages.Message, str | None]] = []
        finished: list[bytes] = []
        for entry_id, fields in entries:
            if self._stop.is_set():
                break
            # Trimmed away while pending (nothing left to relay), or already taken by Serf
            # (only the writes are left).
            if not fields or entry_id in self._owed:
                finished.append(entry_id)
                continue
            try:
                msg, key = self._admit(entry_id, fields)
            except Rejected as exc:
                if exc.reason in RETRYABLE:
                    self._retry.set()
                else:
                    self._owed[entry_id] = self._dead_letter(entry_id, fields, exc)
                    finished.append(entry_id)
                continue
            if msg.type == "query":
                if not self._submit(entry_id, msg, key):
                    break
            else:
                events.append((entry_id, msg, key))
        self._relay_events(events, finished)
        self._flush(finished)
        return not self._retry.is_set()

    def _relay_events(
        self, events: list[tuple[bytes, messages.Message, str | None]], finished: list[bytes]
    ) -> None:
        results = self.gate.relay_events([(msg, key) for _, msg, key in events])
        for (entry_id, msg, _), result in zip(events, results, strict=True):
            if result is not None and result.reason in RETRYABLE:
                self._retry.set()  # left pending: read again from our own PEL
                continue
            if result is None:
                self._owed[entry_id] = _reply(msg, None)
            else:
                self._owed[entry_id] = self._dead_letter(entry_id, {b"data": b""}, result, msg)
            finished.append(entry_id)

    def _admit(
        self, entry_id: bytes, fields: dict[bytes, bytes]
    ) -> tuple[messages.Message, str | None]:
        cfg = self.config
        creds = Credentials(
            token=_text(fields, b"token"),
            timestamp=_text(fields, b"timestamp"),
            signature=_text(fields, b"signature"),
        )
        origin = f"redis\0{self._server_id}\0{cfg.stream}\0{cfg.group}\0{entry_id.decode()}"
        data = fields.get(b"data")
        if data is None:
            names = ", ".join(sorted(k.decode("utf-8", "replace") for k in fields))
            raise self.gate.refused(
                "malformed", f"entry has no 'data' field (fields: {names or 'none'})"
            )
        return self.gate.admit(data, creds, origin)

    def _dead_letter(
        self,
        entry_id: bytes,
        fields: dict[bytes, bytes],
        exc: Rejected,
        msg: messages.Message | None = None,
    ) -> tuple[str | None, dict[Any, Any] | None]:
        data = fields.get(b"data") or b""
        if msg is not None:  # refused by Serf: the entry's body is no longer at hand
            data = json.dumps({"type": msg.type, "name": msg.name}).encode()
        return self.dead, dead_letter_doc(exc, data, self.config.dead_max_data, entry=entry_id)

    def _submit(self, entry_id: bytes, msg: messages.Message, key: str | None) -> bool:
        """Hand a query to a worker, waiting for a free one; False when stopping."""
        while not self._slots.acquire(timeout=0.5):
            if self._stop.is_set():
                return False
        with self._lock:
            self._inflight.add(entry_id)
        try:
            self.pool.submit(self._query, entry_id, msg, key)
        except RuntimeError:  # stopping: the entry stays pending for the next run
            self._done(entry_id)
            return False
        return True

    def _done(self, entry_id: bytes) -> None:
        with self._lock:
            self._inflight.discard(entry_id)
        self._slots.release()

    def _query(self, entry_id: bytes, msg: messages.Message, key: str | None) -> None:
        import redis

        try:
            try:
                reply = self.gate.call(msg, key)
            except Rejected as exc:
                if exc.reason in RETRYABLE:
                    self._retry.set()
                    return
                self._owed[entry_id] = self._dead_letter(entry_id, {}, exc, msg)
            else:
                self._owed[entry_id] = _reply(msg, reply)
            self._flush([entry_id])
        except redis.RedisError as exc:
            # Left pending (not acknowledged): the reader finds it among its own again, and
            # finishes the writes it owes without calling Serf a second time.
            self._retry.set()
            log.warning("redis write failed", source=self.name, error=str(exc))
        except Exception as exc:  # noqa: BLE001 - a worker's exception would vanish in its future
            self._retry.set()
            log.error("redis entry failed", source=self.name, error=repr(exc))
        finally:
            self._done(entry_id)

    def _flush(self, entry_ids: list[bytes]) -> None:
        """The writes owed for these entries (replies, dead letters), then one XACK for all,
        in one pipeline. A write that failed stays owed; a failed XACK raises (the entries
        stay pending and the next read finishes them)."""
        if not entry_ids:
            return
        cfg = self.config
        pipe = self.client.pipeline(transaction=False)
        writing: list[bytes] = []
        for entry_id in entry_ids:
            target, record = self._owed.get(entry_id, (None, None))
            if target is None or record is None:
                continue
            maxlen = cfg.dead_maxlen if target == self.dead else REPLY_MAXLEN
            pipe.xadd(target, record, maxlen=maxlen, approximate=True)
            writing.append(entry_id)
        pipe.xack(cfg.stream, cfg.group, *entry_ids)
        results = pipe.execute(raise_on_error=False)
        for entry_id, result in zip(writing, results, strict=False):
            if not isinstance(result, Exception):
                self._owed[entry_id] = (None, None)
        failed = [r for r in results if isinstance(r, Exception)]
        if failed:
            raise failed[0]
        for entry_id in entry_ids:
            self._owed.pop(entry_id, None)


def _reply(
    msg: messages.Message, reply: dict[str, Any] | None
) -> tuple[str | None, dict[Any, Any] | None]:
    """The write owed after Serf took ``msg``: its reply on ``reply_to``, if it named one."""
    if not msg.reply_to:
        return None, None
    return msg.reply_to, {"data": json.dumps(reply or {"accepted": True})}


def _entries(reply: Any) -> list[tuple[bytes, dict[bytes, bytes] | None]]:
    """XREADGROUP's [[stream, [(id, fields), ...]]] -> [(id, fields), ...]."""
    out: list[tuple[bytes, dict[bytes, bytes] | None]] = []
    for _stream, items in reply or []:
        out.extend(items)
    return out
