"""The deliverer's index of the spool: one copy of each event, one progress list per sink.

A handler's ``incoming/<entry>.json`` stays where it is, as the one durable record, until every
sink it names is finished with it; fan-out to N sinks is N positions over that one file, not N
copies. Each sink appends the names it finished to ``progress/<sink>.done`` (one small write,
no fsync: a name lost in a power cut means that event is sent again, which at-least-once
allows), and the entry is unlinked when its last sink is done. ``queue/<sink>/`` still holds
single-sink entries: dead letters moved back by ``spool retry``, and spools of older versions.
At start the progress files are cut back to the entries still in ``incoming/``.
"""

from __future__ import annotations

import bisect
import json
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from serfbridge import log
from serfbridge.capture.files import append_record, write_atomic
from serfbridge.capture.spool import spool_dir
from serfbridge.delivery import entries, stats


@dataclass(order=True, frozen=True)
class Item:
    """One event waiting for one sink: ``name`` orders it, ``path`` is where its bytes are."""

    name: str
    path: str = field(compare=False)
    queued: bool = field(default=False, compare=False)  # from queue/<sink>/, not incoming/


@dataclass
class Entry:
    event: dict[str, Any]
    remaining: set[str]
    path: str


class Ledger:
    def __init__(self, state_dir: str) -> None:
        self.state_dir = state_dir
        self.lock = threading.Lock()
        self.entries: dict[str, Entry] = {}
        self.pending: dict[str, list[Item]] = {}
        self.queued_events: dict[str, dict[str, Any]] = {}  # path -> event, queue/ items
        self.seen: set[str] = set()  # incoming names read (kept or rejected)
        self.seen_queued: set[str] = set()
        self.done: dict[str, set[str]] = {}

    # -- reading the spool ------------------------------------------------------------
    def load_progress(self) -> None:
        root = spool_dir(self.state_dir, "progress")
        names = os.listdir(root) if os.path.isdir(root) else []
        for fname in names:
            if fname.endswith(".done") and entries.valid_sink_name(fname[:-5]):
                self.done[fname[:-5]] = stats.read_done(self.state_dir, fname[:-5])

    def compact_progress(self) -> None:
        """Keep only names still in ``incoming/``: the files stay as small as the backlog."""
        with self.lock:
            live = set(self.entries)
            for sink in self.done:
                self.done[sink] &= live
            keep = {s: sorted(d) for s, d in self.done.items()}
        for sink, names in keep.items():
            path = spool_dir(self.state_dir, "progress", sink + ".done")
            try:
                write_atomic(path, "".join(n + "\n" for n in names).encode(), durable=False)
            except OSError as exc:
                log.warning("cannot compact a progress file", sink=sink, error=str(exc))

    def add_incoming(self, name: str) -> list[str]:
        """Read ``incoming/<name>``; returns the sinks it is for (empty when gone or bad)."""
        if name in self.seen or not entries.ENTRY_NAME.fullmatch(name):
            return []
        path = spool_dir(self.state_dir, "incoming", name)
        try:
            with open(path, "rb") as fh:
                data = fh.read()
        except FileNotFoundError:
            return []
        self.seen.add(name)
        try:
            sinks, event = entries.parse_incoming(data)
        except entries.BadEntry as exc:
            entries.reject(self.state_dir, path, str(exc))
            return []
        with self.lock:
            remaining = {s for s in sinks if name not in self.done.get(s, ())}
            if not remaining:
                self._unlink(path)
                return []
            self.entries[name] = Entry(event, remaining, path)
            for sink in remaining:
                bisect.insort(self.pending.setdefault(sink, []), Item(name, path))
        return sorted(remaining)

    def scan_incoming(self) -> list[str]:
        touched: set[str] = set()
        directory = spool_dir(self.state_dir, "incoming")
        try:
            names = os.listdir(directory)
        except FileNotFoundError:
            return []
        for name in sorted(n for n in names if n.endswith(".json") and n not in self.seen):
            touched.update(self.add_incoming(name))
        return sorted(touched)

    def scan_queue(self, sink: str) -> bool:
        """Pick up ``queue/<sink>/`` files (``spool retry``, older spools); True if any new."""
        directory = spool_dir(self.state_dir, "queue", sink)
        try:
            names = sorted(os.listdir(directory))
        except (FileNotFoundError, NotADirectoryError):
            return False
        found = False
        for name in names:
            path = os.path.join(directory, name)
            if not name.endswith(".json") or name.startswith(".") or path in self.seen_queued:
                continue
            self.seen_queued.add(path)
            try:
                with open(path, "rb") as fh:
                    event = entries.parse_queued(fh.read())
            except FileNotFoundError:
                continue
            except entries.BadEntry as exc:
                entries.reject(self.state_dir, path, str(exc))
                continue
            with self.lock:
                self.queued_events[path] = event
                bisect.insort(self.pending.setdefault(sink, []), Item(name, path, queued=True))
            found = True
        return found

    # -- what the workers see --------------------------------------------------------
    def head(self, sink: str) -> tuple[Item, dict[str, Any]] | None:
        with self.lock:
            items = self.pending.get(sink)
            if not items:
                return None
            item = items[0]
            if item.queued:
                return item, self.queued_events[item.path]
            return item, self.entries[item.name].event

    def first(self, sink: str, n: int) -> list[tuple[Item, dict[str, Any]]]:
        """The sink's ``n`` oldest waiting entries (a digest), head first."""
        with self.lock:
            items = self.pending.get(sink, [])[:n]
            return [
                (i, self.queued_events[i.path] if i.queued else self.entries[i.name].event)
                for i in items
            ]

    def count(self, sink: str) -> int:
        with self.lock:
            return len(self.pending.get(sink, ()))

    def oldest(self, sink: str) -> str | None:
        with self.lock:
            items = self.pending.get(sink)
            return items[0].name if items else None

    def sinks(self) -> list[str]:
        with self.lock:
            return [s for s, items in self.pending.items() if items]

    def empty(self) -> bool:
        with self.lock:
            return not any(self.pending.values())

    def finish(self, sink: str, item: Item) -> None:
        """The sink is done with ``item`` (delivered or dead-lettered)."""
        with self.lock:
            items = self.pending.get(sink, [])
            if items and items[0] == item:
                items.pop(0)
            elif item in items:
                items.remove(item)
            if item.queued:
                self.queued_events.pop(item.path, None)
                self.seen_queued.discard(item.path)
                self._unlink(item.path)
                return
            entry = self.entries.get(item.name)
            if entry is None:
                return
            entry.remaining.discard(sink)
            if not entry.remaining:
                del self.entries[item.name]
                self._unlink(entry.path)
                return
            self.done.setdefault(sink, set()).add(item.name)
        try:
            append_record(
                spool_dir(self.state_dir, "progress", sink + ".done"), (item.name + "\n").encode()
            )
        except OSError as exc:
            # Not fatal: without the line the event is sent to this sink again after a restart.
            log.warning("cannot record delivery progress", sink=sink, error=str(exc))

    def take_all(self, sink: str) -> list[tuple[Item, dict[str, Any]]]:
        with self.lock:
            items = self.pending.pop(sink, [])
            return [
                (i, self.queued_events[i.path] if i.queued else self.entries[i.name].event)
                for i in items
            ]

    def put_back(self, sink: str, item: Item) -> None:
        with self.lock:
            bisect.insort(self.pending.setdefault(sink, []), item)

    def _unlink(self, path: str) -> None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("cannot remove a delivered entry", path=path, error=str(exc))

    def finish_many(
        self, sink: str, items: Sequence[Item], remove: Callable[[list[str]], None] | None = None
    ) -> None:
        """``finish`` for a batch the sink acknowledged, oldest first: one lock, one progress
        append, then the entries done for every sink are removed, outside the lock (by
        ``remove``, e.g. the deliverer's reaper thread, or here).

        The names are recorded for entries this sink was the last one of too: an entry
        whose removal a crash cut off is then recognised as done at the next start instead
        of being sent again."""
        if not items:
            return
        names: list[str] = []
        unlink: list[str] = []
        with self.lock:
            waiting = self.pending.get(sink, [])
            if waiting[: len(items)] == list(items):
                del waiting[: len(items)]
            else:
                gone = set(items)
                waiting[:] = [i for i in waiting if i not in gone]
            for item in items:
                if item.queued:
                    self.queued_events.pop(item.path, None)
                    self.seen_queued.discard(item.path)
                    unlink.append(item.path)
                    continue
                entry = self.entries.get(item.name)
                if entry is None:
                    continue
                entry.remaining.discard(sink)
                names.append(item.name)
                if entry.remaining:
                    self.done.setdefault(sink, set()).add(item.name)
                else:
                    del self.entries[item.name]
                    unlink.append(entry.path)
        if names:
            try:
                append_record(
                    spool_dir(self.state_dir, "progress", sink + ".done"),
                    "".join(n + "\n" for n in names).encode(),
                )
            except OSError as exc:
                # Not fatal: without the lines these events are sent again after a restart.
                log.warning("cannot record delivery progress", sink=sink, error=str(exc))
        if remove is not None:
            remove(unlink)
            return
        for path in unlink:
            self._unlink(path)


def dead_letter(
    state_dir: str, sink: str, name: str, event: dict[str, Any], *, reason: str, attempts: int
) -> None:
    """Keep ``event`` for ``sink`` in ``dead/<sink>/`` with its reason; raises OSError."""
    target = spool_dir(state_dir, "dead", sink)
    base = name[: -len(".json")]
    meta = {"sink": sink, "reason": reason, "attempts": attempts, "dead_at": time.time()}
    write_atomic(os.path.join(target, base + ".reason"), json.dumps(meta).encode())
    write_atomic(os.path.join(target, name), json.dumps({"event": event}).encode())
    log.error("event dead-lettered", sink=sink, entry=name, attempts=attempts, reason=reason)
