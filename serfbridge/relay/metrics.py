"""The relay's counters and latency histograms, rendered in Prometheus text format 0.0.4."""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

Labels = tuple[tuple[str, str], ...]

HELP = {
    "serfbridge_relay_messages_in_total": "Inbound messages received, by source.",
    "serfbridge_relay_messages_out_total": "Events and queries Serf accepted, by source and type.",
    "serfbridge_relay_messages_rejected_total": "Inbound messages refused, by source and reason.",
    "serfbridge_relay_stream_events_total": "Events read from the agent's stream, by type.",
    "serfbridge_relay_stream_repeats_total": "Relayed events dropped as repeats (event_ids).",
}


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(labels: Labels, extra: str = "") -> str:
    parts = [f'{k}="{_escape(v)}"' for k, v in labels]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counters: dict[str, dict[Labels, float]] = defaultdict(dict)
        self._hist: dict[Labels, list[float]] = {}  # bucket counts..., sum, count
        self.gauges: dict[str, tuple[str, Callable[[], float]]] = {}
        # Whole blocks of text from elsewhere (the delivery metrics of the shared state dir).
        self.extra: list[Callable[[], str]] = []

    def inc(self, name: str, amount: float = 1.0, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            series = self._counters[name]
            series[key] = series.get(key, 0.0) + amount

    def observe_serf(self, call: str, seconds: float) -> None:
        key = (("call", call),)
        with self._lock:
            hist = self._hist.setdefault(key, [0.0] * (len(BUCKETS) + 2))
            for i, bound in enumerate(BUCKETS):
                if seconds <= bound:
                    hist[i] += 1
            hist[-2] += seconds
            hist[-1] += 1

    def render(self) -> str:
        lines: list[str] = []
        with self._lock:
            counters = {k: dict(v) for k, v in self._counters.items()}
            hists = {k: list(v) for k, v in self._hist.items()}
        for name in sorted(set(HELP) | set(counters)):
            lines.append(f"# HELP {name} {HELP.get(name, name)}")
            lines.append(f"# TYPE {name} counter")
            for labels, value in sorted(counters.get(name, {}).items()):
                lines.append(f"{name}{_labels(labels)} {value:g}")
        hname = "serfbridge_relay_serf_call_seconds"
        lines.append(f"# HELP {hname} Latency of calls into Serf (event, query).")
        lines.append(f"# TYPE {hname} histogram")
        for labels, hist in sorted(hists.items()):
            for bound, count in zip(BUCKETS, hist, strict=False):
                le = f'le="{bound:g}"'
                lines.append(f"{hname}_bucket{_labels(labels, le)} {count:g}")
            inf = 'le="+Inf"'
            lines.append(f"{hname}_bucket{_labels(labels, inf)} {hist[-1]:g}")
            lines.append(f"{hname}_sum{_labels(labels)} {hist[-2]:.6f}")
            lines.append(f"{hname}_count{_labels(labels)} {hist[-1]:g}")
        for name, (help_text, read) in sorted(self.gauges.items()):
            lines.append(f"# HELP {name} {help_text}")
            lines.append(f"# TYPE {name} gauge")
            lines.append(f"{name} {read():g}")
        text = "\n".join(lines) + "\n"
        return text + "".join(block() for block in self.extra)
