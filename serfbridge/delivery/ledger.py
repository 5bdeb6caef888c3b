"""The deliverer's index of the spool: one copy of each event, one progress list per sink.

A handler's ``incoming/<entry>.json`` stays where it is, as the one durable record, until every
sink it names is finished with it; fan-out to N sinks is N positions over that one file, not N
copies. A batch file ``incoming/<stem>.jsonl`` (the stream relay's group commit) is one entry
per line (``serfbridge.delivery.entries``) and stays until every line is finished for every
sink. Each sink appends the names it finished to ``progress/<sink>.done`` (one small write per
batch of sends, no fsync: a name lost in a power cut means that event is sent again, which
at-least-once allows), and a file is unlinked when its last entry is done. ``queue/<sink>/``
still holds single-sink entries: dead letters moved back by ``spool retry``, and spools of
older versions. At start the progress files are cut back to the entries of the files still in
``incoming/``.
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
from serfbridge.delivery import entries, reaper, stats


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


@dataclass
class SpoolFile:
    """One file of ``incoming/``: the entry names it holds, and how many are not finished."""

    names: list[str]
    open: int


class Ledger:
    def __init__(self, state_dir: str) -> None:
        self.state_dir = state_dir
        self.lock = threading.Lock()
        # Held around every write of a progress file: a sink's append between the
        # compaction's snapshot and its rename would be replaced by the rewrite, and a
        # restart would send those names again. Taken before ``lock``, never inside it.
        # An append holds only this one, just for the write: what matters is that it never
        # lands in a file the rewrite then replaces.
        self.progress_lock = threading.Lock()
        self.entries: dict[str, Entry] = {}
        self.pending: dict[str, list[Item]] = {}
        self.queued_events: dict[str, dict[str, Any]] = {}  # path -> event, queue/ items
        self.seen: set[str] = set()  # incoming names read (kept or rejected)
        self.seen_queued: set[str] = set()
        self.done: dict[str, set[str]] = {}
        self.files: dict[str, SpoolFile] = {}  # path -> its entries, while some are open

    # -- reading the spool ------------------------------------------------------------
    def load_progress(self) -> None:
        root = spool_dir(self.state_dir, "progress")
        names = os.listdir(root) if os.path.isdir(root) else []
        for fname in names:
            if fname.endswith(".done") and entries.valid_sink_name(fname[:-5]):
                self.done[fname[:-5]] = stats.read_done(self.state_dir, fname[:-5])

    def compact_progress(self) -> None:
        """Keep only names of files still in ``incoming/``: the progress files stay as small
        as the backlog. A finished line of a batch file still on disk is kept, or a restart
        would send it again."""
        with self.progress_lock:
            with self.lock:
                live = set(self.entries)
                for spooled in self.files.values():
                    live.update(spooled.names)
                for sink in self.done:
                    self.done[sink] &= live
                keep = {s: sorted(d) for s, d in self.done.items()}
            for sink, names in keep.items():
                path = stats.progress_path(self.state_dir, sink)
                try:
                    write_atomic(path, "".join(n + "\n" for n in names).encode(), durable=False)
                except OSError as exc:
                    log.warning("cannot compact a progress file", sink=sink, error=str(exc))

    def add_incoming(self, name: str) -> list[str]:
        """Read ``incoming/<name>`` (an entry or a batch file); returns the sinks it has
        entries for (empty when gone or bad)."""
        batch = name.endswith(entries.BATCH_SUFFIX)
        pattern = entries.BATCH_NAME if batch else entries.ENTRY_NAME
        if name in self.seen or not pattern.fullmatch(name):
            return []
        path = spool_dir(self.state_dir, "incoming", name)
        try:
            with open(path, "rb") as fh:
                data = fh.read()
        except FileNotFoundError:
            return []
        self.seen.add(name)
        if not batch:
            try:
                parsed = [(name, entries.parse_incoming(data))]
            except entries.BadEntry as exc:
                entries.reject(self.state_dir, path, str(exc))
                return []
            names = [name]
        else:
            lines = entries.split_batch(data)
            parsed = self._parse_batch(name, lines)
            # Every line's name, also of a bad line not yet kept: that one holds the file.
            names = [entries.line_name(name, k) for k in range(len(lines))]
        touched: set[str] = set()
        with self.lock:
            spooled = SpoolFile(names, 0)
            for entry_name, (sinks, event) in parsed:
                remaining = {s for s in sinks if entry_name not in self.done.get(s, ())}
                if not remaining:
                    continue
                if entry_name in self.entries:
                    # Only a hand-made file can reuse a name: keep it for after this one.
                    log.warning("spool entry name taken twice; kept", entry=entry_name)
                    spooled.open += 1
                    continue
                spooled.open += 1
                self.entries[entry_name] = Entry(event, remaining, path)
                for sink in remaining:
                    _insert(self.pending.setdefault(sink, []), Item(entry_name, path))
                touched |= remaining
            if spooled.open or len(names) > len(parsed):
                spooled.open += len(names) - len(parsed)
                self.files[path] = spooled
            else:
                reaper.unlink(path)
        return sorted(touched)

    def _parse_batch(
        self, name: str, lines: list[bytes]
    ) -> list[tuple[str, tuple[list[str], Any]]]:
        """The good lines of a batch file with their entry names; each bad line is kept in
        ``rejected/`` alone (if that fails, it is left out and the file stays for a restart)."""
        out: list[tuple[str, tuple[list[str], Any]]] = []
        for k, line in enumerate(lines):
            entry_name = entries.line_name(name, k)
            try:
                out.append((entry_name, entries.parse_incoming(line)))
            except entries.BadEntry as exc:
                try:
                    entries.reject_line(self.state_dir, name, entry_name, line, str(exc))
                except OSError as err:
                    log.error("cannot keep a bad batch line", entry=entry_name, error=str(err))
                    continue
                out.append((entry_name, ([], {})))  # kept: finished, no sink waits for it
        return out

    def scan_incoming(self) -> list[str]:
        touched: set[str] = set()
        for name in entries.incoming_names(spool_dir(self.state_dir, "incoming")):
            if name not in self.seen:
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
        self.finish_many(sink, [item])

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

    def _file_done(self, path: str) -> bool:
        """One more entry of ``path`` is finished for every sink; True when it was the file's
        last (under the lock)."""
        spooled = self.files.get(path)
        if spooled is None:
            return True
        spooled.open -= 1
        if spooled.open > 0:
            return False
        del self.files[path]
        return True

    def _finish_locked(self, sink: str, items: Sequence[Item]) -> tuple[list[str], list[str]]:
        """``finish_many``'s bookkeeping, under the lock: the names to record as done and the
        files no sink needs any more."""
        names: list[str] = []
        unlink: list[str] = []
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
                continue
            del self.entries[item.name]
            if self._file_done(entry.path):
                unlink.append(entry.path)
            else:
                # Other lines of this batch file still wait: remember this one.
                self.done.setdefault(sink, set()).add(item.name)
        return names, unlink

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
        with self.lock:
            names, unlink = self._finish_locked(sink, items)
        if names:
            try:
                with self.progress_lock:
                    append_record(
                        stats.progress_path(self.state_dir, sink),
                        "".join(n + "\n" for n in names).encode(),
                    )
            except OSError as exc:
                # Not fatal: without the lines these events are sent again after a restart.
                log.warning("cannot record delivery progress", sink=sink, error=str(exc))
        if remove is not None:
            remove(unlink)
            return
        for path in unlink:
            reaper.unlink(path)


def _insert(items: list[Item], item: Item) -> None:
    """Keep ``items`` sorted. Names are capture times, so a new entry nearly always sorts
    last: reading a backlog of 10,000 then costs no comparisons of ``Item``s."""
    if not items or items[-1].name < item.name:
        items.append(item)
    else:
        bisect.insort(items, item)


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
