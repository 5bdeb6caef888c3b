"""``serfbridge relay``: the long-running process that turns inbound messages into Serf
events and queries (and, with ``[relay] stream = true``, Serf's event stream into sinks).

Lifecycle: validate -> connect nothing eagerly (Serf is reconnected on demand with backoff)
-> start every source (any failure stops the others and exits 9) -> wait for SIGTERM /
SIGINT (Ctrl-C, CTRL_BREAK on Windows) -> stop sources, stream and metrics listener.
"""

from __future__ import annotations

import ipaddress
import os
import signal
import sys
import threading
from typing import Any

from serfbridge import buildinfo, log
from serfbridge.errors import ConfigError, RelayError
from serfbridge.relay.callers import CliCaller, RpcCaller
from serfbridge.relay.host import Dedupe
from serfbridge.relay.metrics import Labels, Metrics
from serfbridge.relay.sources import source_class
from serfbridge.relay.sources.base import Source
from serfbridge.serf.rpc import DEFAULT_ADDR, parse_addr

TYPE_CHECKING = False
if TYPE_CHECKING:
    from serfbridge.config.models import Settings


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_listeners(settings: Settings) -> None:
    """Refuse an unauthenticated listener on a non-loopback address unless ``insecure``."""
    for source in settings.sources:
        if not source.allow_events and not source.allow_queries:
            log.warning(
                "source allows nothing: set allow_events / allow_queries", source=source.name
            )
        if source.type != "http":
            continue
        try:
            host, _ = parse_addr(source.listen)
        except ValueError as exc:
            raise ConfigError(f"sources ({source.name}).listen: {exc}") from None
        open_ = source.token is None and source.hmac_key is None
        if open_ and not is_loopback(host) and not source.insecure:
            raise ConfigError(
                f"sources ({source.name}): refusing an unauthenticated listener on "
                f"{source.listen}: set token or hmac_key, listen on 127.0.0.1, or say "
                "insecure = true"
            )
        if open_:
            log.warning("listener without authentication", source=source.name, listen=source.listen)
    if not settings.sources and not settings.relay.stream:
        raise ConfigError("nothing to relay: add [[sources]] or set [relay] stream = true")


class Relay:
    def __init__(self, settings: Settings, config_path: str | None) -> None:
        self.settings = settings
        self.config = settings.relay
        self.config_path = config_path
        self.metrics = Metrics()
        self.stopping = threading.Event()
        self.dedupe = Dedupe(self.config.dedupe_window)
        serf = settings.serf
        addr = serf.rpc_addr or DEFAULT_ADDR
        auth = serf.rpc_auth.get_secret_value() if serf.rpc_auth else None
        self.serf: RpcCaller | CliCaller
        if self.config.serf_cli:
            self.serf = CliCaller(self.config.serf_cli, addr, auth, serf.rpc_timeout, self.metrics)
        else:
            self.serf = RpcCaller(
                addr, auth, serf.rpc_timeout, self.metrics, self.config.reconnect_max
            )
        self.sources: list[Source] = [source_class(cfg.type)(cfg, self) for cfg in settings.sources]
        self._started: list[Any] = []
        self.metrics.gauge("serfbridge_relay_spool_depth", self._spool_depth)
        self.metrics.gauge("serfbridge_relay_source_up", self._sources_up)
        build = tuple(sorted(buildinfo.labels().items()))
        self.metrics.gauge("serfbridge_build_info", lambda: {build: 1.0})
        self.metrics.extra.append(self._delivery_metrics)

    def _spool_depth(self) -> float:
        from serfbridge.delivery.deliverer import count_pending

        try:
            return float(count_pending(self.settings))
        except OSError:
            return float("nan")

    def _delivery_metrics(self) -> str:
        """The deliverer's per-sink numbers for the state dir this relay shares with it."""
        from serfbridge.capture.spool import deliverer_running
        from serfbridge.delivery import stats

        state = self.settings.state_path
        try:
            snap = stats.snapshot(state, [s.name for s in self.settings.effective_sinks()])
            return stats.render(snap, stats.load_counters(state), deliverer_running(state))
        except OSError as exc:
            log.warning("cannot read delivery metrics", error=str(exc))
            return ""

    def _sources_up(self) -> dict[Labels, float]:
        started = {id(part) for part in list(self._started)}
        return {
            (("source", s.name),): float(id(s) in started and s.connected is not False)
            for s in self.sources
        }

    def start(self) -> None:
        try:
            for source in self.sources:
                source.start()
                self._started.append(source)
                log.info("source started", source=source.name, type=source.config.type)
            if self.config.metrics_listen:
                from serfbridge.relay.sources.http import MetricsServer

                metrics = MetricsServer(self.config.metrics_listen, self.metrics)
                metrics.start()
                self._started.append(metrics)
            if self.config.stream:
                from serfbridge.relay.stream import StreamFeeder

                feeder = StreamFeeder(self)
                feeder.start()
                self._started.append(feeder)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        self.stopping.set()
        while self._started:
            part = self._started.pop()
            try:
                part.stop()
            except Exception as exc:  # noqa: BLE001 - one part failing must not keep the rest running
                log.error("error while stopping", part=type(part).__name__, error=str(exc))
        self.serf.close()

    def run(self) -> None:
        """Start, then block until a stop signal; always stops cleanly."""
        _install_signals(self.stopping)
        self.start()
        log.info("relay ready", sources=",".join(s.name for s in self.sources) or "-")
        try:
            while not self.stopping.wait(0.5):
                pass
        finally:
            log.info("relay stopping")
            self.stop()
            log.info("relay stopped")


def _install_signals(stopping: threading.Event) -> None:
    def handler(signum: int, _frame: object) -> None:
        log.info("stop signal received", signal=signum)
        stopping.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    if sys.platform == "win32":
        signal.signal(signal.SIGBREAK, handler)


def serve(settings: Settings, config_path: str | None) -> None:
    """Entry point of ``serfbridge relay`` (after ``check_listeners``); raises RelayError."""
    os.makedirs(settings.state_path, exist_ok=True)
    relay = Relay(settings, config_path)
    try:
        relay.run()
    except OSError as exc:
        raise RelayError(f"relay failed: {exc}") from None
