#!/usr/bin/env python3
"""Read serfbridge events from a Redis stream with a consumer group.

Delivery is at-least-once, twice over: serfbridge may XADD the same event more than once (a
retry after a timeout whose XADD had in fact been applied; several nodes forwarding the same
member event), and this consumer acknowledges an entry only after processing it, so an entry
is read again when a consumer dies between the two. Every event carries a deterministic
``id``; entries whose ``id`` was seen among the last ``--dedupe-window`` events are skipped.

On start the consumer first re-reads its own pending entries (those it read but never
acknowledged before a crash: keep ``--consumer`` stable across restarts), then takes over
entries that other consumers left pending for more than ``--claim-idle`` seconds (XAUTOCLAIM,
also repeated while running), then reads new entries.

    python examples/redis_consumer.py --url redis://localhost:6379/0 \\
        --stream serf:events --group serf-consumers --consumer "$(hostname)"

Needs only redis-py (``pip install redis``).
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time
from collections import OrderedDict
from typing import Any

from redis import Redis
from redis import exceptions as rx

BLOCK_MS = 5000
BATCH = 10
CLAIM_EVERY = 30.0

Entry = tuple[str, dict[bytes, bytes]]


class SeenIds:
    """The last ``size`` event ids, least recently seen evicted first."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._ids: OrderedDict[str, None] = OrderedDict()

    def seen(self, event_id: str) -> bool:
        """Record ``event_id``; True if it was already in the window."""
        if event_id in self._ids:
            self._ids.move_to_end(event_id)
            return True
        self._ids[event_id] = None
        if len(self._ids) > self.size:
            self._ids.popitem(last=False)
        return False


def _entries(reply: Any) -> list[Entry]:
    """Entries of one stream from an XREADGROUP reply (RESP2 list or RESP3 map)."""
    streams = reply.items() if isinstance(reply, dict) else reply or []
    entries: list[Entry] = []
    for _stream, messages in streams:
        for entry_id, fields in messages:
            entries.append((entry_id.decode(), fields or {}))
    return entries


class Consumer:
    """One member of a consumer group; ``step`` handles one batch and acknowledges it."""

    def __init__(self, client: Redis, args: argparse.Namespace) -> None:
        self.client = client
        self.stream: str = args.stream
        self.group: str = args.group
        self.name: str = args.consumer
        self.start: str = args.start
        self.claim_idle_ms = int(args.claim_idle * 1000)
        self.seen = SeenIds(args.dedupe_window)

    def ensure_group(self) -> None:
        """XGROUP CREATE <stream> <group> <start> MKSTREAM; an existing group is fine."""
        try:
            self.client.xgroup_create(self.stream, self.group, id=self.start, mkstream=True)
        except rx.ResponseError as exc:
            if not str(exc).startswith("BUSYGROUP"):
                raise

    def own_pending(self, count: int) -> list[Entry]:
        """Entries delivered to this consumer earlier and never acknowledged."""
        reply = self.client.xreadgroup(self.group, self.name, {self.stream: "0"}, count=count)
        return _entries(reply)

    def claim_stale(self, count: int) -> list[Entry]:
        """Take over entries idle for longer than --claim-idle in any consumer's pending list."""
        claimed: list[Entry] = []
        cursor: str | bytes = "0-0"
        while len(claimed) < count:
            reply: Any = self.client.xautoclaim(
                self.stream,
                self.group,
                self.name,
                self.claim_idle_ms,
                start_id=cursor,
                count=count - len(claimed),
            )
            # [next cursor, [(id, fields), ...], [ids deleted from the stream]] (Redis >= 7)
            cursor, messages = reply[0], reply[1]
            claimed.extend((entry_id.decode(), fields or {}) for entry_id, fields in messages)
            if cursor in (b"0-0", "0-0"):
                break
        return claimed

    def new(self, count: int) -> list[Entry]:
        """Entries never delivered to any consumer of the group; waits up to 5 s."""
        reply = self.client.xreadgroup(
            self.group, self.name, {self.stream: ">"}, count=count, block=BLOCK_MS
        )
        return _entries(reply)

    def handle(self, entry_id: str, fields: dict[bytes, bytes]) -> None:
        """Process one entry (print it), then XACK it."""
        if not fields:
            # Trimmed by MAXLEN before it was acknowledged: the event itself is gone.
            print(f"{entry_id} trimmed from the stream before it was processed", flush=True)
        else:
            event_id = fields.get(b"id", b"").decode("utf-8", "replace")
            if event_id and self.seen.seen(event_id):
                print(f"{entry_id} id={event_id} duplicate, skipped", flush=True)
            else:
                self.process(entry_id, event_id, fields)
        self.client.xack(self.stream, self.group, entry_id)

    def process(self, entry_id: str, event_id: str, fields: dict[bytes, bytes]) -> None:
        """Your code goes here; it must finish before the entry is acknowledged."""
        event = fields.get(b"event", b"").decode("utf-8", "replace")
        name = fields.get(b"name", b"").decode("utf-8", "replace")
        try:
            doc = json.loads(fields.get(b"data", b""))
        except ValueError as exc:
            # A poison entry: report it and acknowledge it, or it would come back forever.
            print(f"{entry_id} id={event_id} unreadable data: {exc}", file=sys.stderr, flush=True)
            return
        data = json.dumps(doc, ensure_ascii=False, separators=(",", ":"))
        print(
            f"{entry_id} id={event_id} event={event} name={json.dumps(name)} data={data}",
            flush=True,
        )


def run(args: argparse.Namespace) -> int:
    """Consume until --count entries are acknowledged (or forever); returns the exit status."""
    client = Redis.from_url(
        args.url,
        socket_connect_timeout=5.0,
        # Longer than BLOCK, so a blocking read is not mistaken for a dead server.
        socket_timeout=BLOCK_MS / 1000 + 5.0,
        # RESP2: the reply shapes documented for redis-py's stream commands.
        protocol=2,
    )
    consumer = Consumer(client, args)
    remaining: int | None = args.count
    recovering = True  # own pending entries first, until there are none left
    next_claim = 0.0
    try:
        while remaining is None or remaining > 0:
            batch = BATCH if remaining is None else min(BATCH, remaining)
            try:
                if recovering:
                    consumer.ensure_group()
                    entries = consumer.own_pending(batch)
                    recovering = bool(entries)
                elif time.monotonic() >= next_claim:
                    entries = consumer.claim_stale(batch)
                    if len(entries) < batch:
                        next_claim = time.monotonic() + CLAIM_EVERY
                else:
                    entries = consumer.new(batch)
                for entry_id, fields in entries:
                    consumer.handle(entry_id, fields)
                    if remaining is not None:
                        remaining -= 1
            except (rx.ConnectionError, rx.TimeoutError) as exc:
                print(f"redis unavailable, retrying in 1 s: {exc}", file=sys.stderr, flush=True)
                time.sleep(1.0)
            except rx.ResponseError as exc:
                if not str(exc).startswith("NOGROUP"):
                    raise
                # The stream or the group was deleted: create it again, re-read pending.
                recovering = True
    except KeyboardInterrupt:
        return 130
    finally:
        client.close()
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line flags; --count is mostly for tests."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--url", default="redis://localhost:6379/0")
    parser.add_argument("--stream", default="serf:events")
    parser.add_argument("--group", default="serf-consumers")
    parser.add_argument(
        "--consumer", default=socket.gethostname(), help="stable name: default the host name"
    )
    parser.add_argument(
        "--start", default="$", help="where a new group starts: $ (new entries) or 0 (all)"
    )
    parser.add_argument(
        "--count", type=int, default=None, help="exit after acknowledging N entries"
    )
    parser.add_argument(
        "--claim-idle",
        type=float,
        default=60.0,
        help="seconds before another consumer's pending entry is taken over",
    )
    parser.add_argument(
        "--dedupe-window", type=int, default=10_000, help="how many event ids to remember"
    )
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(run(parse_args()))
