#!/usr/bin/env python3
"""End-to-end latency: from ``serf event`` on one agent to the webhook receiving the POST.

Two real ``serf agent`` processes on 127.0.0.1 form a cluster. Both run the same handler,
which POSTs every user event to a local HTTP receiver, tagging the path with the node name.
A user event is raised through agent ``a``'s RPC (what ``serf event`` does) and the receiver
notes when each node's POST arrives, so a row shows:

* ``local``: the agent that raised the event runs its handler, which delivers;
* ``remote``: the event crosses the cluster by gossip first.

Handlers, each in its own cluster, all clusters up at once:

* ``bash+curl``: a bash script that ``exec``s curl, POSTing stdin (the reference forwarder);
* ``serfbridge``: serfbridge with one webhook sink: captured to the spool by the handler,
  POSTed by the background deliverer (``--serfbridge [LABEL=]PATH``, repeatable; default
  this venv's ``serfbridge``);
* ``LABEL-launcher``: ``--deb LABEL=PATH`` (repeatable), the .deb installed into a temporary
  root as bench_handler.py installs it (benchlib.install_deb), its ``/usr/bin/serfbridge``
  (the launcher) as the handler; its deliverer is the package's frozen build.

Events go round-robin to the clusters, one every ``--interval`` / (number of clusters)
seconds, so load on the machine hits every row alike and one cluster's handler run rarely
overlaps another's; each cluster gets one event per ``--interval`` (``--burst``: back to back,
which shows what Serf's serial handler loop does under load). Times come from one process's
``time.monotonic()`` (the receiver runs in this process). Nothing here is asserted by the
tests; compare rows within one run.

Usage::

    python tests/perf/bench_latency.py [--events N] [--interval S] [--burst]
                                       [--serfbridge [LABEL=]PATH ...] [--deb LABEL=PATH ...]
                                       [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from benchlib import install_deb

from serfbridge.serf.rpc import SerfRPC

CURL_SCRIPT = """#!/bin/bash
[ "$SERF_EVENT" = user ] || exit 0
exec curl -s -m 2 -X POST -H 'Content-Type: application/json' --data-binary @- {url}
"""
NODES = ("a", "b")
SETTLE_TIMEOUT = 30.0
MEMBER_COALESCE = 4.0
# The local latency of a serfbridge row split at the handler's run() (the document's
# received_at): Serf's fork/exec, the shell and the interpreter's start before it; config,
# document, spool write, wake-up, the deliverer and the POST after it.
SPLIT = ("to run()", "run()->POST")


class Receiver(ThreadingHTTPServer):
    """Records the arrival time of each (node, event number) POST."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.lock = threading.Lock()
        self.arrivals: dict[tuple[str, int], float] = {}
        # serfbridge's documents: (wall clock at arrival, the document's ``received_at``)
        self.stamps: dict[tuple[str, int], tuple[float, float]] = {}

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"

    def record(self, node: str, seq: int, received_at: float | None) -> None:
        now = time.monotonic()
        with self.lock:
            self.arrivals.setdefault((node, seq), now)
            if received_at is not None:
                self.stamps.setdefault((node, seq), (time.time(), received_at))

    def count(self) -> int:
        with self.lock:
            return len(self.arrivals)


class _Handler(BaseHTTPRequestHandler):
    server: Receiver
    # Keep-alive, as real webhook receivers do: the deliverer keeps its connection, curl
    # opens one per run either way.
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        node = self.path.strip("/").split("/")[-1]
        try:
            seq, received_at = _seq(body)
        except ValueError:
            seq, received_at = -1, None
        self.server.record(node, seq, received_at)
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        return


def _seq(body: bytes) -> tuple[int, float | None]:
    """The event number: the payload itself (curl) or the document's payload (serfbridge),
    with the document's ``received_at`` (when the handler's ``run()`` began, ms precision)."""
    text = body.decode().strip()
    if not text.startswith("{"):
        return int(text), None
    doc = json.loads(text)
    stamp = doc.get("received_at")
    when = datetime.fromisoformat(stamp).timestamp() if isinstance(stamp, str) else None
    return int(str(doc.get("payload", "")).strip()), when


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"bench_latency: timed out waiting for {what}")
        time.sleep(0.02)


@dataclass
class Cluster:
    name: str
    root: Path
    handler_for: Any  # (node name) -> (handler command, extra env)
    agents: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    rpc_ports: dict[str, int] = field(default_factory=dict)

    def start(self, *, settle: bool = True) -> None:
        first_bind = ""
        for node in NODES:
            bind, rpc = free_port(), free_port()
            command, env = self.handler_for(node)
            argv = [
                shutil.which("serf") or "serf",
                "agent",
                f"-node={self.name}-{node}",
                f"-bind=127.0.0.1:{bind}",
                f"-rpc-addr=127.0.0.1:{rpc}",
                f"-event-handler={command}",
                "-log-level=warn",
            ]
            if first_bind:
                argv.append(f"-join={first_bind}")
            log = (self.root / f"{self.name}-{node}.log").open("wb")
            self.agents[node] = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **env}
            )
            self.rpc_ports[node] = rpc
            first_bind = first_bind or f"127.0.0.1:{bind}"
            wait(lambda rpc=rpc: _accepts(rpc), SETTLE_TIMEOUT, f"{node}'s RPC port")
        wait(self._joined, SETTLE_TIMEOUT, "both agents alive in one cluster")
        if settle:
            # Member events are coalesced for up to 3 s (docs/serf.md); let their handler runs
            # pass so they don't queue in front of the measured events.
            time.sleep(MEMBER_COALESCE)

    def _joined(self) -> bool:
        with SerfRPC(f"127.0.0.1:{self.rpc_ports['a']}") as rpc:
            return sum(m.status == "alive" for m in rpc.members()) == len(NODES)

    def stop(self) -> None:
        for proc in self.agents.values():
            proc.send_signal(signal.SIGINT)
        for proc in self.agents.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), 0.2).close()
    except OSError:
        return False
    return True


def serfbridge_handler(binary: str, root: Path, receiver: Receiver) -> Any:
    def handler_for(node: str) -> tuple[str, dict[str, str]]:
        state = root / f"sb-{node}"
        state.mkdir(parents=True)
        conf = state / "serfbridge.toml"
        conf.write_text(
            f'state_dir = "{state}"\n'
            "[[sinks]]\n"
            'type = "webhook"\nname = "hook"\nevents = "user"\n'
            f'url = "{receiver.url("/" + node)}"\n'
        )
        return binary, {"SERFBRIDGE_CONFIG": str(conf)}

    return handler_for


def curl_handler(root: Path, receiver: Receiver) -> Any:
    def handler_for(node: str) -> tuple[str, dict[str, str]]:
        script = root / f"curl-{node}.sh"
        script.write_text(CURL_SCRIPT.format(url=receiver.url("/" + node)))
        script.chmod(0o755)
        return str(script), {}

    return handler_for


def measure(
    clusters: list[Cluster], receiver: Receiver, events: int, interval: float
) -> list[dict[str, list[float]]]:
    """Per cluster, the local and remote latencies of ``events`` events; cluster ``i`` numbers
    its events from ``(i + 1) * 1000``."""
    bases = [(index + 1) * 1000 for index in range(len(clusters))]
    sent: list[dict[int, float]] = [{} for _ in clusters]
    sent_wall: list[dict[int, float]] = [{} for _ in clusters]
    rpcs = [SerfRPC(f"127.0.0.1:{c.rpc_ports['a']}") for c in clusters]
    for rpc in rpcs:
        rpc.__enter__()
    try:
        # Untimed: serfbridge validates and caches its config on the first event, and a
        # deliverer is started.
        for rpc, base in zip(rpcs, bases, strict=True):
            rpc.event("bench", str(base - 1).encode(), coalesce=False)
        warm = {(node, base - 1) for node in NODES for base in bases}
        wait(lambda: warm <= receiver.arrivals.keys(), 120, "the warm-up events")
        tick = interval / len(clusters)
        for i in range(events):
            for k, rpc in enumerate(rpcs):
                seq = bases[k] + i
                sent[k][seq] = time.monotonic()
                sent_wall[k][seq] = time.time()
                rpc.event("bench", str(seq).encode(), coalesce=False)
                if tick:
                    time.sleep(tick)
    finally:
        for rpc in rpcs:
            rpc.__exit__(None, None, None)
    expected = {(node, seq) for node in NODES for one in sent for seq in one}

    def arrived() -> bool:
        with receiver.lock:
            return expected <= receiver.arrivals.keys()

    wait(arrived, 60 + events * len(clusters) * 0.5, f"{len(expected)} POSTs at the receiver")
    out: list[dict[str, list[float]]] = []
    with receiver.lock:
        for one, walls in zip(sent, sent_wall, strict=True):
            samples: dict[str, list[float]] = {"local": [], "remote": []}
            for seq, t0 in one.items():
                samples["local"].append((receiver.arrivals[("a", seq)] - t0) * 1000)
                samples["remote"].append((receiver.arrivals[("b", seq)] - t0) * 1000)
                stamps = receiver.stamps.get(("a", seq))
                if stamps is not None:
                    arrived_wall, began = stamps
                    samples.setdefault(SPLIT[0], []).append((began - walls[seq]) * 1000)
                    samples.setdefault(SPLIT[1], []).append((arrived_wall - began) * 1000)
            out.append(samples)
    return out


def row(name: str, where: str, samples: list[float]) -> dict[str, Any]:
    ordered = sorted(samples)
    p90 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.9))]
    return {
        "handler": name,
        "node": where,
        "n": len(samples),
        "median_ms": statistics.median(samples),
        "p90_ms": p90,
        "max_ms": ordered[-1],
    }


def labelled(spec: str, default: str) -> tuple[str, str]:
    """``LABEL=PATH`` or ``PATH`` (labelled ``default``)."""
    label, sep, path = spec.partition("=")
    if not sep or "/" in label:
        return default, spec
    return label, path


def serfbridge_commands(args: argparse.Namespace, root: Path) -> list[tuple[str, str]]:
    """(row label, handler command) for every serfbridge under test."""
    commands = []
    for spec in args.serfbridge:
        label, path = labelled(spec, "serfbridge")
        commands.append((label, shlex.quote(os.path.abspath(path))))
    for spec in args.deb:
        label, path = labelled(spec, "deb")
        rows = install_deb(path, root / f"deb-root-{label}", label)
        commands.append((f"{label}-launcher", shlex.quote(dict(rows)[f"{label}-launcher"])))
    if not commands:
        script = Path(sys.executable).with_name("serfbridge")
        if os.access(script, os.X_OK):
            commands.append(("serfbridge", shlex.quote(str(script))))
        else:
            commands.append(("serfbridge", f"{shlex.quote(sys.executable)} -m serfbridge"))
    labels = [label for label, _ in commands]
    if len(set(labels)) != len(labels):
        raise SystemExit(f"bench_latency: labels must differ: {labels}")
    return commands


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=30, help="events per handler (max 500)")
    parser.add_argument("--interval", type=float, default=0.25, help="seconds between events")
    parser.add_argument("--burst", action="store_true", help="no pause between events")
    parser.add_argument(
        "--serfbridge",
        action="append",
        default=[],
        metavar="[LABEL=]PATH",
        help="serfbridge command, repeatable (default: this venv's)",
    )
    parser.add_argument(
        "--deb",
        action="append",
        default=[],
        metavar="LABEL=PATH",
        help="a .deb, installed into a temporary root; row LABEL-launcher (repeatable)",
    )
    parser.add_argument("--json", help="also write the rows to this file")
    parser.add_argument("--keep", metavar="DIR", help="work in DIR and keep the agents' logs")
    args = parser.parse_args(argv)
    events = max(1, min(args.events, 500))
    interval = 0.0 if args.burst else args.interval
    if shutil.which("serf") is None or shutil.which("curl") is None:
        print("bench_latency: needs serf and curl on PATH", file=sys.stderr)
        return 2
    receiver = Receiver()
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    rows: list[dict[str, Any]] = []
    # The deliverers linger after the last event (and may still write their state): keep going.
    with tempfile.TemporaryDirectory(prefix="bench-latency-", ignore_cleanup_errors=True) as tmp:
        root = Path(args.keep or tmp)
        root.mkdir(parents=True, exist_ok=True)
        handlers = [("bash+curl", curl_handler(root, receiver))]
        for label, command in serfbridge_commands(args, root):
            handlers.append((label, serfbridge_handler(command, root / label, receiver)))
        clusters = [Cluster(name.replace("+", "-"), root, h) for name, h in handlers]
        try:
            for cluster in clusters:
                cluster.start(settle=False)
            # Member events are coalesced for up to 3 s (docs/serf.md); let their handler
            # runs pass so they don't queue in front of the measured events.
            time.sleep(MEMBER_COALESCE)
            results = measure(clusters, receiver, events, interval)
        finally:
            for cluster in clusters:
                cluster.stop()
        splits: list[dict[str, Any]] = []
        for (name, _), samples in zip(handlers, results, strict=True):
            rows += [row(name, where, s) for where, s in samples.items() if where not in SPLIT]
            splits += [row(name, where, s) for where, s in samples.items() if where in SPLIT]
    receiver.shutdown()
    mode = "burst" if args.burst else f"one every {interval:g} s per handler"
    print(f"serf event -> webhook POST, {events} events, {mode}, 2 agents on 127.0.0.1 each")
    print(f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    base = {r["node"]: r["median_ms"] for r in rows if r["handler"] == "bash+curl"}
    print(
        f"{'handler':<18} {'node':<7} {'n':>4} {'median ms':>10} {'p90 ms':>8} {'max ms':>8}"
        f" {'x bash+curl':>11}"
    )
    for r in rows:
        print(
            f"{r['handler']:<18} {r['node']:<7} {r['n']:>4} {r['median_ms']:>10.1f}"
            f" {r['p90_ms']:>8.1f} {r['max_ms']:>8.1f} {r['median_ms'] / base[r['node']]:>11.2f}"
        )
    if splits:
        print(
            "\nlocal latency split at the handler's run() (received_at, ms precision; wall clock)"
        )
        print(f"{'handler':<18} {'part':<12} {'n':>4} {'median ms':>10} {'p90 ms':>8}")
        for r in splits:
            print(
                f"{r['handler']:<18} {r['node']:<12} {r['n']:>4} {r['median_ms']:>10.1f}"
                f" {r['p90_ms']:>8.1f}"
            )
    if args.json:
        Path(args.json).write_text(json.dumps(rows + splits, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
