"""The relay's counters and latency histograms, rendered in Prometheus text format 0.0.4."""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

Labels = tuple[tuple[str, str], ...]

#: Every metric the relay exposes, name -> (type, help): the one list of names. ``render``
#: declares each one (HELP and TYPE) even before it has a sample, and the Grafana dashboard
#: in docs/ may use only these (tests/test_dashboard.py).
METRICS: dict[str, tuple[str, str]] = {
    "serfbridge_relay_messages_in_total": ("counter", "Inbound messages received, by source."),
    "serfbridge_relay_messages_out_total": (
        "counter",
        "Events and queries Serf accepted, by source and type.",
    ),
    "serfbridge_relay_messages_rejected_total": (
        "counter",
        "Inbound messages refused, by source and reason.",
    ),
    "serfbridge_relay_stream_events_total": (
        "counter",
        "Events read from the agent's stream, by type.",
    ),
    "serfbridge_relay_stream_repeats_total": (
        "counter",
        "Relayed events dropped as repeats (event_ids).",
    ),
    "serfbridge_relay_serf_call_seconds": (
        "histogram",
        "Latency of calls into Serf (event, query).",
    ),
    "serfbridge_relay_spool_depth": ("gauge", "Events waiting in the spool for delivery to sinks."),
    "serfbridge_relay_source_up": (
        "gauge",
        "1 while the source runs (and, for a broker, is connected), else 0; by source.",
    ),
    "serfbridge_build_info": (
        "gauge",
        "Always 1: the labels name the version and commit of this build.",
    ),
}
#: A gauge's reading: one value, or one per label set.
Reading = float | dict[Labels, float]


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
        # (name, labels) -> bucket counts..., sum, count
        self._hist: dict[tuple[str, Labels], list[float]] = {}
        self._gauges: dict[str, Callable[[], Reading]] = {}
        # Whole blocks of text from elsewhere (the delivery metrics of the shared state dir).
        self.extra: list[Callable[[], str]] = []

    def gauge(self, name: str, read: Callable[[], Reading]) -> None:
        """Read ``read()`` at every scrape for the gauge ``name`` (one of METRICS)."""
        if METRICS.get(name, ("",))[0] != "gauge":
            raise ValueError(f"{name} is not a gauge of METRICS")
        self._gauges[name] = read

    def inc(self, name: str, amount: float = 1.0, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            series = self._counters[name]
            series[key] = series.get(key, 0.0) + amount

    def observe_serf(self, call: str, seconds: float) -> None:
        key = ("serfbridge_relay_serf_call_seconds", (("call", call),))
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
        for name in sorted(set(METRICS) | set(counters)):
            kind, help_text = METRICS.get(name, ("counter", name))
            lines.append(f"# HELP {name} {help_text}")
            lines.append(f"# TYPE {name} {kind}")
            if kind == "counter":
                for labels, value in sorted(counters.get(name, {}).items()):
                    lines.append(f"{name}{_labels(labels)} {value:g}")
            elif kind == "histogram":
                lines.extend(_histogram(name, {k[1]: v for k, v in hists.items() if k[0] == name}))
            elif name in self._gauges:
                reading = self._gauges[name]()
                series = reading if isinstance(reading, dict) else {(): reading}
                for labels, value in sorted(series.items()):
                    lines.append(f"{name}{_labels(labels)} {value:g}")
        text = "\n".join(lines) + "\n"
        return text + "".join(block() for block in self.extra)


def _histogram(name: str, hists: dict[Labels, list[float]]) -> list[str]:
    lines = []
    for labels, hist in sorted(hists.items()):
        for bound, count in zip(BUCKETS, hist, strict=False):
            le = f'le="{bound:g}"'
            lines.append(f"{name}_bucket{_labels(labels, le)} {count:g}")
        inf = 'le="+Inf"'
        lines.append(f"{name}_bucket{_labels(labels, inf)} {hist[-1]:g}")
        lines.append(f"{name}_sum{_labels(labels)} {hist[-2]:.6f}")
        lines.append(f"{name}_count{_labels(labels)} {hist[-1]:g}")
    return lines
