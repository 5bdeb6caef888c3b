#!/usr/bin/env python3
"""Backlog drain: events spooled while the network sinks are down, drained when they return.

Starts in a temporary directory, on free 127.0.0.1 ports: the HTTP receiver and an MQTT
subscriber in their own process (``collector.py``), ``redis-server`` and ``mosquitto``.
Then:

1. **outage**: N events are captured into the spool exactly as the handler does it
   (``spool.capture``: write, fsync, rename into ``incoming/``) for four sinks (webhook, a
   second webhook with ``max_in_flight = 4`` on its own receiver, Redis stream, MQTT QoS 1)
   whose servers are all down, and ``serfbridge flush`` runs once: it reads the backlog,
   tries each sink's head once and fails. Nothing is copied: each event stays one
   ``incoming/`` file until its last sink is done with it;
2. per sink, the server comes back and two rows are measured, one after the other:
   the **bare loop**, the sink's client library sending the same N bodies one by one over
   one connection (httpx keep-alive POST; redis-py ``XADD``; paho ``publish`` QoS 1 and wait
   for the PUBACK), and **serfbridge**, ``serfbridge flush`` draining that sink's backlog
   (the sinks still down fail their head once and wait); both checked at the receiver:
   every event, once, in capture order. The sinks come back in the order of the table, so
   the rows before MQTT each record their progress (``progress/<sink>.done``) and the MQTT
   row, the last sink of every entry, also removes the 10,000 entries;
3. a ``flush`` with nothing queued: the fixed start-up cost inside the serfbridge rows.

Rates of the serfbridge rows are N / the wall time of the ``flush`` process, start-up
included; ``peak RSS`` and ``CPU`` come from ``wait4``. Ceiling rows show what the client
library does with its own batching (a redis-py pipeline; paho with 20 PUBLISHes in flight).
``--compare DIR`` runs a second source tree (``git archive main | tar -x -C DIR``) on its
own copy of the backlog in the same run, its flush right before this tree's in each step.
Nothing here is asserted by the tests; compare rows within one run.

Usage::

    python tests/perf/bench_drain.py [--events 10000] [--compare DIR] [--profile DIR] [--keep]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import redis
from benchlib import (
    Collector,
    Run,
    order_check,
    profile_top,
    run_measured,
    serfbridge_argv,
    tear_down,
    user_events,
    wait_until,
)
from support.ports import free_port
from support.servers import Mosquitto, RedisServer

from serfbridge.capture import spool

SINKS = ["hook", "hook4", "redis", "mqtt"]
WAIT = 600.0  # any one step; the loops are bounded by --events


def write_config(
    work: Path, tag: str, http: int, http4: int, redis_url: str, mqtt: int, in_flight: bool
) -> Path:
    config = work / f"drain-{tag}.toml"
    hook4 = (
        f'[[sinks]]\ntype = "webhook"\nname = "hook4"\nurl = "http://127.0.0.1:{http4}/hook4"\n'
        "max_in_flight = 4\n"
    )
    config.write_text(
        f'state_dir = "{work / ("state-" + tag)}"\nlog_file = "{work / "serfbridge.log"}"\n'
        'log_level = "warning"\n'
        f'[[sinks]]\ntype = "webhook"\nname = "hook"\nurl = "http://127.0.0.1:{http}/hook"\n'
        + (hook4 if in_flight else "")
        + f'[[sinks]]\ntype = "redis"\nname = "redis"\nurl = "{redis_url}"\n'
        f'stream = "bench-{tag}"\nmaxlen = 1000000\n'
        f'[[sinks]]\ntype = "mqtt"\nname = "mqtt"\nurl = "mqtt://127.0.0.1:{mqtt}"\n'
        'topic = "bench/{event}"\nqos = 1\n'
    )
    return config


@dataclass
class Tree:
    """One serfbridge source tree under test, with its own spool and config."""

    label: str  # "" for this checkout
    source: str | None
    config: Path
    state: Path

    def row(self, what: str) -> str:
        return f"{what} [{self.label}]" if self.label else what


def bare_http(url: str, bodies: list[bytes]) -> float:
    headers = {"Content-Type": "application/json"}
    with httpx.Client() as client:
        started = time.perf_counter()
        for body in bodies:
            client.post(url, content=body, headers=headers).raise_for_status()
        return time.perf_counter() - started


def bare_redis(url: str, docs: list[tuple[dict[str, Any], str]], pipeline: int = 0) -> float:
    client = redis.Redis.from_url(url, protocol=2)
    started = time.perf_counter()
    if pipeline:
        for k in range(0, len(docs), pipeline):
            pipe = client.pipeline(transaction=False)
            for doc, text in docs[k : k + pipeline]:
                fields = {"id": doc["id"], "event": doc["event"], "name": doc["name"], "data": text}
                pipe.xadd("bare", fields)  # type: ignore[arg-type]
            pipe.execute()
    else:
        for doc, text in docs:
            fields = {"id": doc["id"], "event": doc["event"], "name": doc["name"], "data": text}
            client.xadd("bare", fields)  # type: ignore[arg-type]
    seconds = time.perf_counter() - started
    client.close()
    return seconds


def redis_ids(url: str, key: str) -> list[str]:
    client = redis.Redis.from_url(url, protocol=2, decode_responses=True)
    entries: Any = client.xrange(key)
    client.delete(key)
    client.close()
    return [fields["id"] for _, fields in entries]


def bare_mqtt(port: int, bodies: list[bytes], window: bool = False) -> float:
    from paho.mqtt.client import Client
    from paho.mqtt.enums import CallbackAPIVersion

    client = Client(CallbackAPIVersion.VERSION2, client_id="bench-bare")
    client.connect("127.0.0.1", port)
    client.loop_start()
    started = time.perf_counter()
    if window:
        # In slices: paho scans its whole queue on every PUBACK.
        for k in range(0, len(bodies), 500):
            infos = [client.publish("bench/bare", body, qos=1) for body in bodies[k : k + 500]]
            for info in infos:
                info.wait_for_publish(WAIT)
    else:
        for body in bodies:
            client.publish("bench/bare", body, qos=1).wait_for_publish(WAIT)
    seconds = time.perf_counter() - started
    client.disconnect()
    client.loop_stop()
    return seconds


def print_table(
    n: int,
    rows: list[tuple[str, str, float, Run, str]],
    trees: list[Tree],
    idle: dict[str, Run],
    left: dict[str, int],
) -> None:
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}, {n} events per row; entries "
          f"left in incoming/ after the last drain: {left}\n")  # fmt: skip
    print("| sink | path | seconds | events/s | x bare loop | in order, none lost | "
          "CPU s | CPU ms/event | peak RSS |")  # fmt: skip
    print("|---|---|---:|---:|---:|---|---:|---:|---:|")
    base: dict[str, float] = {}
    for sink, label, seconds, run, check in rows:
        rate = n / seconds
        if label.startswith("bare"):
            base[sink] = rate
        rss = f"{run.rss_mb:.0f} MB" if run.rss_mb else ""
        print(f"| {sink} | {label} | {seconds:.2f} | {rate:.0f} | {rate / base[sink]:.2f} | "
              f"{check} | {run.cpu:.1f} | {1000 * run.cpu / n:.2f} | {rss} |")  # fmt: skip
    for tree in trees:
        run = idle[tree.label]
        print(f"| - | {tree.row('serfbridge flush, nothing queued (start-up)')} | "
              f"{run.seconds:.2f} | | | | {run.cpu:.1f} | | {run.rss_mb:.0f} MB |")  # fmt: skip
    print(
        "\nCPU s: the flush process (wait4), or this process around the bare loop; the "
        "receivers run elsewhere."
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument(
        "--compare", type=Path, help="also run this source tree's flush, e.g. main's code"
    )
    parser.add_argument("--compare-label", default="main", help="its rows' label")
    parser.add_argument(
        "--profile", type=Path, help="py-spy profile of each flush into this directory"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument(
        "--no-in-flight",
        action="store_true",
        help="skip the max_in_flight webhook (for a serfbridge without it, via BENCH_SOURCE)",
    )
    args = parser.parse_args()
    n = args.events
    work = Path(tempfile.mkdtemp(prefix="bench-drain-"))
    collector = Collector()
    http_port = free_port()
    rserver = RedisServer(work / "redis")
    broker = Mosquitto(work / "mqtt", extra_config=["max_queued_messages 0"])
    http4_port = free_port()
    ports = (http_port, http4_port, rserver.url, broker.port, not args.no_in_flight)
    trees = [Tree("", None, write_config(work, "now", *ports), work / "state-now")]
    if args.compare:
        source = str(args.compare.resolve())
        label = args.compare_label
        tree = Tree(label, source, write_config(work, label, *ports), work / f"state-{label}")
        trees.insert(0, tree)
    sinks = [s for s in SINKS if s != "hook4" or not args.no_in_flight]
    log = work / "flush.log"
    rows: list[tuple[str, str, float, Run, str]] = []

    def flush(tree: Tree, label: str) -> Run:
        profile = None
        if args.profile:
            profile = args.profile / f"flush-{label}{'-' + tree.label if tree.label else ''}.txt"
            profile.parent.mkdir(parents=True, exist_ok=True)
        argv = serfbridge_argv(tree.config, "flush", profile=profile)
        return run_measured(argv, log, tree.source)

    def waiting(tree: Tree) -> int:
        incoming = tree.state / "spool/incoming"
        return sum(1 for name in os.listdir(incoming) if name.endswith(".json"))

    try:
        events = user_events(n, "d")
        expected = [doc["id"] for doc, _ in events]
        bodies = [text.encode() for _, text in events]
        for tree in trees:
            started = time.perf_counter()
            for _, text in events:
                spool.capture(str(tree.state), sinks, text)
            captured = time.perf_counter() - started
            outage = flush(tree, "outage")
            print(f"{tree.row('spool')}: {n} events captured in {captured:.1f}s "
                  f"({n / captured:.0f}/s, spool.capture); the outage flush left "
                  f"{waiting(tree)} entries in incoming/ after {outage.seconds:.1f}s "
                  f"(peak RSS {outage.rss_mb:.0f} MB)", file=sys.stderr)  # fmt: skip

        def bare(sink: str, label: str, send: Any, received: Any) -> None:
            cpu = time.process_time()
            seconds = send()
            used = Run(seconds, time.process_time() - cpu, 0.0, 0)
            rows.append((sink, label, seconds, used, order_check(expected, received())))

        def drain(sink: str, label: str, received: Any, what: str = "serfbridge flush") -> None:
            for tree in trees:
                run = flush(tree, label)
                check = order_check(expected, received(tree))
                rows.append((sink, tree.row(what), run.seconds, run, check))

        def http_ids(_tree: Tree | None = None) -> list[str]:
            return [i for i, _, _ in collector.ids()["http"]]

        def mqtt_ids(_tree: Tree | None = None) -> list[str]:
            wait_until(lambda: collector.counts()[1] >= n, 60, f"{n} MQTT messages")
            time.sleep(0.2)  # duplicates, if any, arrive too
            return [i for i, _, _ in collector.ids()["mqtt"]]

        def stream_ids(tree: Tree) -> list[str]:
            return redis_ids(rserver.url, f"bench-{tree.label or 'now'}")

        collector.http(http_port)
        url = f"http://127.0.0.1:{http_port}/hook"
        bare("webhook", "bare loop: httpx, one keep-alive connection",
             lambda: bare_http(url, bodies), http_ids)  # fmt: skip
        drain("webhook", "webhook", http_ids)
        if not args.no_in_flight:
            collector.http(http4_port)
            drain("webhook", "webhook4", http_ids, "serfbridge flush, max_in_flight = 4")

        rserver.start()
        bare_ids = lambda: redis_ids(rserver.url, "bare")  # noqa: E731
        bare("redis", "bare loop: redis-py XADD, no pipeline",
             lambda: bare_redis(rserver.url, events), bare_ids)  # fmt: skip
        drain("redis", "redis", stream_ids)
        bare("redis", "ceiling: redis-py pipelines of 500",
             lambda: bare_redis(rserver.url, events, 500), bare_ids)  # fmt: skip

        broker.start()
        collector.mqtt(broker.port)
        bare("mqtt", "bare loop: paho QoS 1, wait for each PUBACK",
             lambda: bare_mqtt(broker.port, bodies), mqtt_ids)  # fmt: skip
        drain("mqtt", "mqtt", mqtt_ids)
        bare("mqtt", "ceiling: paho, 20 in flight, slices of 500",
             lambda: bare_mqtt(broker.port, bodies, window=True), mqtt_ids)  # fmt: skip
        left = {tree.row("left"): waiting(tree) for tree in trees}
        idle = {tree.label: flush(tree, "idle") for tree in trees}
    finally:
        collector.close()
        tear_down([rserver, broker], work, keep=args.keep)

    print_table(n, rows, trees, idle, left)
    if args.profile:
        for path in sorted(args.profile.glob("flush-*.txt")):
            print("\n" + profile_top(path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
