"""``serfbridge spool list|retry|purge``: look into and repair the spool by hand."""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from serfbridge.capture.files import append_record
from serfbridge.capture.spool import entry_time, spool_dir
from serfbridge.delivery import stats
from serfbridge.delivery.entries import valid_sink_name
from serfbridge.errors import EXIT_OK, EXIT_USAGE


def _sinks(root: str, only: str | None) -> list[str]:
    if not os.path.isdir(root) or (only is not None and not valid_sink_name(only)):
        return []
    return sorted(s for s in os.listdir(root) if only is None or s == only)


def _entries(directory: str, wanted: list[str]) -> list[str]:
    try:
        names = sorted(n for n in os.listdir(directory) if n.endswith(".json") and n[0] != ".")
    except FileNotFoundError:
        return []
    if wanted:
        keep = {w if w.endswith(".json") else w + ".json" for w in wanted}
        names = [n for n in names if n in keep]
    return names


def _reason(directory: str, name: str) -> dict[str, Any]:
    try:
        with open(os.path.join(directory, name[:-5] + ".reason"), encoding="utf-8") as fh:
            data: dict[str, Any] = json.load(fh)
            return data
    except (OSError, ValueError):
        return {}


def _rejected_reason(directory: str, name: str) -> str:
    """Why an entry was rejected; never fails on what the entry holds (any bytes)."""
    info = _reason(directory, name)
    if info.get("reason"):
        return str(info["reason"])
    try:
        with open(os.path.join(directory, name), "rb") as fh:
            record = json.loads(fh.read().decode("utf-8", "replace"))
    except (OSError, ValueError, RecursionError) as exc:
        return f"(unreadable entry: {exc})"
    return str(record.get("reason", "?")) if isinstance(record, dict) else "?"


def _drop_reason(directory: str, name: str) -> None:
    try:
        os.unlink(os.path.join(directory, name[:-5] + ".reason"))
    except FileNotFoundError:
        pass


def _list(state: str, kind: str, args: argparse.Namespace) -> int:
    if kind == "rejected":
        directory = spool_dir(state, "rejected")
        for name in _entries(directory, args.entries):
            print(f"rejected {name[:-5]}: {_rejected_reason(directory, name)}")
        return EXIT_OK
    if kind == "queue":
        return _list_waiting(state, args)
    root = spool_dir(state, kind)
    for sink in _sinks(root, args.sink):
        directory = os.path.join(root, sink)
        names = _entries(directory, args.entries)
        print(f"{kind} {sink}: {len(names)} event(s)")
        for name in names:
            age = entry_time(name)
            line = f"  {name[:-5]}"
            if kind == "dead":
                info = _reason(directory, name)
                line += f"  attempts={info.get('attempts', '?')}  {info.get('reason', '')}"
            elif age:
                line += f"  captured {age:.3f}"
            print(line)
    return EXIT_OK


def _selected(state: str, args: argparse.Namespace) -> dict[str, list[tuple[str, str, bool]]]:
    """What waits per sink (incoming/ entries a sink has not finished, and queue/ files),
    narrowed to ``--sink`` and the named entries."""
    found = stats.waiting(state)
    if args.sink is not None:
        found = {args.sink: found.get(args.sink, [])} if valid_sink_name(args.sink) else {}
    if args.entries:
        keep = {w if w.endswith(".json") else w + ".json" for w in args.entries}
        found = {s: [i for i in items if i[0] in keep] for s, items in found.items()}
    return found


def _list_waiting(state: str, args: argparse.Namespace) -> int:
    for sink, items in sorted(_selected(state, args).items()):
        print(f"queue {sink}: {len(items)} event(s)")
        for name, _, _ in items:
            print(f"  {name[:-5]}  captured {entry_time(name):.3f}")
    return EXIT_OK


def _purge_waiting(state: str, args: argparse.Namespace) -> int:
    """Drop waiting events for a sink: queue/ files are removed; for an incoming/ entry the
    sink is marked finished (the entry goes when no sink waits for it). A deliverer running
    now may still send what it had already read."""
    removed = 0
    for sink, items in _selected(state, args).items():
        for name, path, from_incoming in items:
            if from_incoming:
                append_record(stats.progress_path(state, sink), (name + "\n").encode())
            else:
                os.unlink(path)
            removed += 1
    print(f"{removed} queue event(s) removed")
    return EXIT_OK


def _retry(state: str, args: argparse.Namespace) -> int:
    """Move dead letters back to their sink's queue; the deliverer picks them up."""
    root = spool_dir(state, "dead")
    moved = 0
    for sink in _sinks(root, args.sink):
        directory = os.path.join(root, sink)
        queue = spool_dir(state, "queue", sink)
        os.makedirs(queue, exist_ok=True)
        for name in _entries(directory, args.entries):
            os.replace(os.path.join(directory, name), os.path.join(queue, name))
            _drop_reason(directory, name)
            moved += 1
    print(f"{moved} event(s) moved back to the queue; run `serfbridge flush` to deliver now")
    return EXIT_OK


def _purge(state: str, kind: str, args: argparse.Namespace) -> int:
    if kind == "queue":
        return _purge_waiting(state, args)
    if kind == "rejected":
        dirs = [spool_dir(state, "rejected")]
    else:
        root = spool_dir(state, kind)
        dirs = [os.path.join(root, s) for s in _sinks(root, args.sink)]
    removed = 0
    for directory in dirs:
        for name in _entries(directory, args.entries):
            os.unlink(os.path.join(directory, name))
            _drop_reason(directory, name)
            removed += 1
    print(f"{removed} {kind} event(s) removed")
    return EXIT_OK


def run(settings: Any, args: argparse.Namespace) -> int:
    state = settings.state_path
    kind = "queue" if args.queue else "rejected" if args.rejected else "dead"
    if args.action == "list":
        if not (args.queue or args.dead or args.rejected):
            return max(_list(state, k, args) for k in ("queue", "dead", "rejected"))
        return _list(state, kind, args)
    if args.action == "retry":
        if kind != "dead":
            print("serfbridge: retry works on dead letters (--dead)")
            return EXIT_USAGE
        return _retry(state, args)
    if not (args.queue or args.dead or args.rejected):
        print("serfbridge: purge needs --dead, --queue or --rejected: say what to delete")
        return EXIT_USAGE
    return _purge(state, kind, args)
