"""Delivery numbers: per-sink counters and queue gauges, as Prometheus text and as a snapshot.

The deliverer counts what it does (``Counters``) and writes ``<state_dir>/serfbridge.prom``
atomically for node_exporter's textfile collector; ``serfbridge status`` and the relay's
``/metrics`` read the same numbers from the spool on disk (``snapshot``), so they are right
whether or not a deliverer runs.
"""

from __future__ import annotations

import json
import os
import threading
import time
from typing import Any

from serfbridge.capture.files import write_atomic
from serfbridge.capture.spool import entry_time, spool_dir
from serfbridge.delivery import entries

COUNTERS_FILE = "counters.json"
TEXTFILE = "serfbridge.prom"
COUNTER_NAMES = {
    "delivered": "serfbridge_delivery_delivered_total",
    "failed": "serfbridge_delivery_failed_attempts_total",
    "dead": "serfbridge_delivery_dead_lettered_total",
}
# Per-sink gauges: metric name -> the key of status's per-sink numbers it shows.
SINK_GAUGES = {
    "serfbridge_delivery_queue_depth": "queued",
    "serfbridge_delivery_oldest_age_seconds": "oldest_age",
    "serfbridge_delivery_dead_letters": "dead",
}
#: Every delivery metric, name -> (type, help): the one list of them, as relay/metrics.py's
#: METRICS is for the relay's own (the dashboard check reads both).
METRICS: dict[str, tuple[str, str]] = {
    "serfbridge_delivery_delivered_total": ("counter", "Events delivered, by sink."),
    "serfbridge_delivery_failed_attempts_total": ("counter", "Failed delivery attempts, by sink."),
    "serfbridge_delivery_dead_lettered_total": (
        "counter",
        "Events moved to dead letters, by sink.",
    ),
    "serfbridge_delivery_queue_depth": ("gauge", "Events waiting for the sink."),
    "serfbridge_delivery_oldest_age_seconds": ("gauge", "Age of the oldest waiting event."),
    "serfbridge_delivery_dead_letters": ("gauge", "Events in the sink's dead letters now."),
    "serfbridge_delivery_rejected_entries": ("gauge", "Entries in spool/rejected/."),
    "serfbridge_deliverer_running": ("gauge", "1 while a deliverer runs for this state dir."),
}


class Counters:
    """Totals kept across deliverer runs in ``spool/counters.json`` (not durable: a counter
    that loses its last increments in a power cut is still a counter)."""

    def __init__(self, state_dir: str) -> None:
        self.path = spool_dir(state_dir, COUNTERS_FILE)
        self._lock = threading.Lock()
        self.values: dict[str, dict[str, float]] = load_counters(state_dir)

    def inc(self, kind: str, sink: str, amount: float = 1.0) -> None:
        with self._lock:
            series = self.values.setdefault(kind, {})
            series[sink] = series.get(sink, 0.0) + amount

    def copy(self) -> dict[str, dict[str, float]]:
        with self._lock:
            return {k: dict(v) for k, v in self.values.items()}

    def save(self) -> None:
        write_atomic(self.path, json.dumps(self.copy()).encode(), durable=False)


def load_counters(state_dir: str) -> dict[str, dict[str, float]]:
    try:
        with open(spool_dir(state_dir, COUNTERS_FILE), "rb") as fh:
            data = json.loads(fh.read())
    except (OSError, ValueError):
        return {}
    out: dict[str, dict[str, float]] = {}
    if isinstance(data, dict):
        for kind, series in data.items():
            if kind in COUNTER_NAMES and isinstance(series, dict):
                out[kind] = {s: float(v) for s, v in series.items() if isinstance(v, int | float)}
    return out


def json_names(directory: str) -> list[str]:
    try:
        names = os.listdir(directory)
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(n for n in names if n.endswith(".json") and not n.startswith("."))


def progress_path(state_dir: str, sink: str) -> str:
    """``spool/progress/<sink>.done``: the entry names of ``incoming/`` the sink finished."""
    return spool_dir(state_dir, "progress", sink + ".done")


def read_done(state_dir: str, sink: str) -> set[str]:
    """Entry names of ``incoming/`` this sink has finished (``progress_path``)."""
    try:
        with open(progress_path(state_dir, sink), "rb") as fh:
            return {line.decode("ascii", "replace") for line in fh.read().split(b"\n") if line}
    except OSError:
        return set()


def _head_info(queue: str) -> dict[str, Any]:
    try:
        with open(os.path.join(queue, ".head.json"), "rb") as fh:
            data = json.loads(fh.read())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def waiting(
    state_dir: str, configured: list[str] | None = None
) -> dict[str, list[tuple[str, str, bool]]]:
    """Per sink, what still waits for it, oldest first: (entry name, path, from incoming/)."""
    names = set(configured or [])
    for kind in ("queue", "dead"):
        root = spool_dir(state_dir, kind)
        if os.path.isdir(root):
            names.update(n for n in os.listdir(root) if entries.valid_sink_name(n))
    found: dict[str, list[tuple[str, str, bool]]] = {n: [] for n in names}
    incoming = spool_dir(state_dir, "incoming")
    done_sets: dict[str, set[str]] = {}
    for fname in entries.incoming_names(incoming):
        path = os.path.join(incoming, fname)
        try:
            with open(path, "rb") as fh:
                listed = entries.read_incoming(fname, fh.read())
        except OSError:
            continue
        for name, targets in listed:
            for sink in targets or ():
                if sink not in done_sets:  # once per sink, not per entry: the file is long
                    done_sets[sink] = read_done(state_dir, sink)
                if name not in done_sets[sink]:
                    found.setdefault(sink, []).append((name, path, True))
    for sink, items in found.items():
        queue = spool_dir(state_dir, "queue", sink)
        items += [(n, os.path.join(queue, n), False) for n in json_names(queue)]
        items.sort()
    return found


def snapshot(state_dir: str, configured: list[str], now: float | None = None) -> dict[str, Any]:
    """Per sink: queued, oldest_age, attempts, last_error, dead; and the rejected count."""
    found = waiting(state_dir, configured)
    return summary(state_dir, {s: (len(i), i[0][0] if i else "") for s, i in found.items()}, now)


def summary(
    state_dir: str, queued: dict[str, tuple[int, str]], now: float | None = None
) -> dict[str, Any]:
    """``snapshot`` from what waits per sink, ``(count, oldest entry name)``: the deliverer
    knows that without reading the spool. Sinks with only dead letters are added."""
    now = time.time() if now is None else now
    queued = dict(queued)
    for kind in ("queue", "dead"):
        root = spool_dir(state_dir, kind)
        if os.path.isdir(root):
            for name in os.listdir(root):
                if entries.valid_sink_name(name):
                    queued.setdefault(name, (0, ""))
    sinks: dict[str, Any] = {}
    for sink, (count, first) in sorted(queued.items()):
        head = _head_info(spool_dir(state_dir, "queue", sink))
        same_head = bool(count) and head.get("name") == first
        oldest = entry_time(first) if count else 0.0
        sinks[sink] = {
            "queued": count,
            "oldest_age": round(max(0.0, now - oldest), 3) if count and oldest else 0.0,
            "attempts": int(head.get("attempts", 0)) if same_head else 0,
            "last_error": str(head.get("last_error", "")) if same_head else "",
            "dead": len(json_names(spool_dir(state_dir, "dead", sink))),
        }
    return {"sinks": sinks, "rejected": len(json_names(spool_dir(state_dir, "rejected")))}


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render(snap: dict[str, Any], counters: dict[str, dict[str, float]], running: bool) -> str:
    """Prometheus text format 0.0.4."""
    lines: list[str] = []
    sinks = sorted(set(snap["sinks"]) | {s for c in counters.values() for s in c})

    def head(metric: str) -> list[str]:
        kind, help_text = METRICS[metric]
        return [f"# HELP {metric} {help_text}", f"# TYPE {metric} {kind}"]

    for kind, metric in COUNTER_NAMES.items():
        series = counters.get(kind, {})
        lines += head(metric)
        lines += [f'{metric}{{sink="{_escape(s)}"}} {series.get(s, 0.0):g}' for s in sinks]
    for metric, key in SINK_GAUGES.items():
        lines += head(metric)
        for s in sinks:
            value = snap["sinks"].get(s, {}).get(key, 0)
            lines.append(f'{metric}{{sink="{_escape(s)}"}} {float(value):g}')
    lines += head("serfbridge_delivery_rejected_entries")
    lines.append(f"serfbridge_delivery_rejected_entries {snap['rejected']:g}")
    lines += head("serfbridge_deliverer_running")
    lines.append(f"serfbridge_deliverer_running {1 if running else 0}")
    return "\n".join(lines) + "\n"


def write_textfile(state_dir: str, text: str) -> None:
    """node_exporter reads ``*.prom`` whole: replace it atomically, never append."""
    write_atomic(os.path.join(state_dir, TEXTFILE), text.encode(), durable=False, mode=0o644)
