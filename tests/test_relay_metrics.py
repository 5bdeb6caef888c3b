"""The relay's /metrics: build info, per-source up gauges, and the Grafana dashboard in
docs/ referencing only metrics a running relay exposes."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from support.ports import free_port, wait_for
from support.relay import RelayProcess, get_text, http_source, metric

from serfbridge import __version__
from serfbridge.delivery.stats import METRICS as DELIVERY_METRICS
from serfbridge.relay.metrics import METRICS

if TYPE_CHECKING:
    from collections.abc import Iterator

    from support.servers import Mosquitto, RedisServer

pytestmark = pytest.mark.e2e

DASHBOARD = Path(__file__).resolve().parent.parent / "docs/grafana/serfbridge.json"
TOKEN = "metrics-t0ken"  # noqa: S105 - test value
ALLOW = 'allow_events = ["deploy"]\n'


class Relay:
    def __init__(self, process: RelayProcess, port: int) -> None:
        self.process, self.port = process, port

    def scrape(self) -> str:
        status, text = get_text(self.port, "/metrics")
        assert status == 200, text
        return text


@pytest.fixture
def relay(
    tmp_path: Path, serfbridge_cmd: list[str], mosquitto: Mosquitto, redis_server: RedisServer
) -> Iterator[Relay]:
    port = free_port()
    body = (
        f'[relay]\nmetrics_listen = "127.0.0.1:{port}"\n'
        + http_source(free_port(), token=TOKEN, allow_events=["deploy"])
        + f'[[sources]]\ntype = "mqtt"\nname = "broker"\nurl = "{mosquitto.url}"\n'
        + f'topic = "relay/in"\n{ALLOW}'
        + f'[[sources]]\ntype = "redis"\nname = "stream"\nurl = "{redis_server.url}"\n'
        + f'stream = "relay:in"\ngroup = "relays"\n{ALLOW}'
    )
    # Serf is called only for a message that passed the gate: none is sent here.
    process = RelayProcess(tmp_path / "relay", serfbridge_cmd, body, rpc_addr="127.0.0.1:1")
    try:
        process.start()
        yield Relay(process, port)
    finally:
        process.stop()
    assert "Traceback" not in process.log_text()


def _families(text: str) -> dict[str, str]:
    """Metric family -> type, from the exposition's # TYPE lines."""
    return dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M))


def _source_names(text: str) -> dict[str, float]:
    found = re.findall(r'^serfbridge_relay_source_up\{source="([^"]+)"\} (\S+)$', text, re.M)
    return {name: float(value) for name, value in found}


def _expressions(node: Any) -> list[str]:
    """Every PromQL text in the dashboard: panel targets' ``expr`` and template queries."""
    found: list[str] = []
    if isinstance(node, dict):
        for key, value in node.items():
            # A template's "query" is PromQL when it calls something (label_values(...)).
            promql = key in ("expr", "definition") or (key == "query" and "(" in str(value))
            if promql and isinstance(value, str):
                found.append(value)
            else:
                found.extend(_expressions(value))
    elif isinstance(node, list):
        for item in node:
            found.extend(_expressions(item))
    return found


def _metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers not followed by "(" (functions),
    not in a label matcher or a by/without list, not string contents."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # label values, regexps
    expr = re.sub(r"\{[^}]*\}", "{}", expr)  # label matchers
    expr = re.sub(r"\b(by|without)\s*\([^)]*\)", "", expr)  # grouping labels
    expr = re.sub(r"\[[^\]]*\]", "[]", expr)  # range selectors ($__rate_interval)
    names = set()
    for match in re.finditer(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\b(\s*\()?", expr):
        if match.group(2) is None and match.group(1).startswith("serfbridge_"):
            names.add(match.group(1))
        elif match.group(2) is None and match.group(1) not in ("instance", "le"):
            raise AssertionError(f"unexpected identifier {match.group(1)!r} in {expr!r}")
    return names


def _family(sample: str, exposed: dict[str, str]) -> str:
    """A histogram's _bucket/_sum/_count series belong to its family."""
    for suffix in ("_bucket", "_sum", "_count"):
        base = sample.removesuffix(suffix)
        if base != sample and exposed.get(base) == "histogram":
            return base
    return sample


def test_dashboard_references_only_metrics_the_relay_exposes(relay: Relay) -> None:
    """Every metric name in docs/grafana/serfbridge.json is a family a running relay
    declares on /metrics, and what the relay declares is exactly its own METRICS plus the
    delivery METRICS of its state directory."""
    exposed = _families(relay.scrape())
    assert exposed == {name: kind for name, (kind, _) in {**METRICS, **DELIVERY_METRICS}.items()}
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    expressions = _expressions(dashboard)
    assert len(expressions) >= 10
    used = {_family(name, exposed) for expr in expressions for name in _metric_names(expr)}
    assert used, expressions
    assert used <= set(exposed), used - set(exposed)
    # Every metric has a panel: a new one without a panel is a gap in the dashboard.
    assert used == set(exposed), set(exposed) - used


def test_metric_name_parser_sees_through_promql() -> None:
    """The dashboard check's parser: functions, labels, grouping and ranges are not names."""
    expr = (
        'histogram_quantile(0.95, sum by (le, call) (rate(serfbridge_x_bucket{instance=~"a|b",'
        'call="serfbridge_not_me"}[$__rate_interval]))) / serfbridge_y'
    )
    assert _metric_names(expr) == {"serfbridge_x_bucket", "serfbridge_y"}
    with pytest.raises(AssertionError):
        _metric_names("rate(up[5m])")


def test_build_info_and_source_up_follow_the_brokers(
    relay: Relay, mosquitto: Mosquitto, redis_server: RedisServer
) -> None:
    """build_info names this version; each source is up; stopping a broker takes its
    source down and leaves the others up."""
    text = relay.scrape()
    build = re.findall(r"^serfbridge_build_info\{(.*)\} 1$", text, re.M)
    assert len(build) == 1, text
    labels = dict(re.findall(r'(\w+)="([^"]*)"', build[0]))
    assert labels["version"] == __version__
    assert re.fullmatch(r"source|unknown|[0-9a-f]{12}(-dirty)?", labels["commit"]), labels
    everyone = {"http": 1.0, "broker": 1.0, "stream": 1.0}
    wait_for(lambda: _source_names(relay.scrape()) == everyone, 20, what="every source up")

    mosquitto.stop()
    wait_for(
        lambda: _source_names(relay.scrape()) == {**everyone, "broker": 0.0},
        20,
        what="the mqtt source down, the others up",
    )
    redis_server.stop()
    wait_for(
        lambda: _source_names(relay.scrape()) == {**everyone, "broker": 0.0, "stream": 0.0},
        30,
        what="the redis source down too",
    )
    mosquitto.start()
    wait_for(
        lambda: metric(relay.scrape(), "serfbridge_relay_source_up", source="broker") == 1.0,
        30,
        what="the mqtt source up again",
    )
