#!/usr/bin/env python3
"""Stream mode: ``serfbridge relay`` with ``stream = true`` forwarding the agent's own events
to a webhook, a Redis stream and MQTT, against the rate at which the agent takes them.

Starts in a temporary directory, on free 127.0.0.1 ports: a one-node ``serf agent``,
``redis-server``, ``mosquitto``, the collector process (``collector.py``: the HTTP receiver,
an MQTT subscriber, and a bare RPC ``stream`` subscriber: when the agent hands each event to
a client that does nothing with it), and the relay. Each round raises N user events through
one RPC connection as fast as the agent accepts them (``Coalesce: false``), which is the
agent's rate, then waits (bounded) until every sink has them all or stops receiving.

Per sink: forwarded events/s (received / from the first event raised to the last arrival),
latency from raising an event to its arrival (median, p90), and the median **added**
latency: arrival at the sink minus arrival at the bare stream subscriber, event by event.
Redis arrival times come from the stream entry ids (milliseconds). Peak RSS (``VmHWM``) of
the relay and of the deliverer it started are read from ``/proc`` at the end.

Usage::

    python tests/perf/bench_stream.py [--events 2000] [--rounds 2] [--profile DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
from bench_drain import bare_http, bare_mqtt, bare_redis
from bench_relay import start_agent
from benchlib import (
    Collector,
    profile_top,
    py_spy,
    serfbridge_argv,
    serfbridge_env,
    tear_down,
    user_events,
)
from support.ports import free_port
from support.servers import Mosquitto, RedisServer

from serfbridge.serf.rpc import SerfRPC

STALL = 15.0  # seconds without a new arrival anywhere: the rest is lost


SINKS = ("webhook", "redis", "mqtt")


@dataclass(frozen=True)
class Setup:
    """Where the relay's sinks point, and which of them this run configures."""

    addr: str
    http: int
    redis_url: str
    mqtt: int
    sinks: tuple[str, ...] = SINKS
    in_flight: int = 1  # the webhook's max_in_flight


def write_config(work: Path, setup: Setup, name: str = "stream") -> Path:
    config = work / f"{name}.toml"
    spawn = "false" if name == "capture" else "true"
    blocks = {
        "webhook": f'[[sinks]]\ntype = "webhook"\nname = "hook"\n'
        f'url = "http://127.0.0.1:{setup.http}/hook"\nmax_in_flight = {setup.in_flight}\n',
        "redis": f'[[sinks]]\ntype = "redis"\nname = "redis"\nurl = "{setup.redis_url}"\n'
        'stream = "bench"\nmaxlen = 1000000\n',
        "mqtt": f'[[sinks]]\ntype = "mqtt"\nname = "mqtt"\nurl = "mqtt://127.0.0.1:{setup.mqtt}"\n'
        'topic = "bench/{event}"\nqos = 1\n',
    }
    config.write_text(
        f'state_dir = "{work / name}"\nlog_file = "{work / name}.log"\n'
        f'log_level = "warning"\nspawn_deliverer = {spawn}\n[serf]\nrpc_addr = "{setup.addr}"\n'
        '[relay]\nstream = true\nstream_filter = "user:bench"\n'
        + "".join(blocks[sink] for sink in setup.sinks)
    )
    return config


def redis_arrivals(url: str) -> list[tuple[str, float]]:
    """(payload, time) of every entry of stream ``bench``, then deletes it."""
    client = redis.Redis.from_url(url, protocol=2, decode_responses=True)
    entries: Any = client.xrange("bench")
    client.delete("bench")
    client.close()
    out = []
    for entry_id, fields in entries:
        payload = str(json.loads(fields["data"]).get("payload"))
        out.append((payload, int(entry_id.split("-")[0]) / 1000))
    return out


def peak_rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def raise_events(
    addr: str, payloads: list[str], rate: float = 0.0
) -> tuple[float, dict[str, float]]:
    """One ``event`` call per payload on one connection: as fast as the agent takes them, or
    paced to ``rate`` per second."""
    sent: dict[str, float] = {}
    with SerfRPC(addr, timeout=30) as rpc:
        started = time.time()
        for k, payload in enumerate(payloads):
            if rate and (ahead := started + k / rate - time.time()) > 0:
                time.sleep(ahead)
            rpc.event("bench", payload.encode(), coalesce=False)
            sent[payload] = time.time()
    return started, sent


def capture_only(work: Path, setup: Setup, n: int, profile: Path | None) -> float:
    """The relay's own part: records -> spool/incoming with no deliverer running, events/s
    from the first event raised until all ``n`` entries are in the spool."""
    addr = setup.addr
    config = write_config(work, setup, name="capture")
    incoming = work / "capture/spool/incoming"
    with (work / "relay-capture.log").open("wb") as log:
        relay = subprocess.Popen(
            serfbridge_argv(config, "relay"), env=serfbridge_env(), stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:

        def entries() -> int:
            """Entries in the spool: a file each, or a line each of a batch file."""
            try:
                names = os.listdir(incoming)
            except FileNotFoundError:
                return 0
            total = sum(1 for name in names if name.endswith(".json"))
            for name in names:
                if name.endswith(".jsonl"):
                    try:
                        total += (incoming / name).read_bytes().count(b"\n")
                    except FileNotFoundError:
                        pass
            return total

        deadline = time.monotonic() + 60
        while entries() < 1 and time.monotonic() < deadline:
            raise_events(addr, [f"warm-{time.time()}"])
            time.sleep(1)
        before = entries()
        spies = (
            [py_spy(relay.pid, profile / "relay-capture-only.txt", rate=200, seconds=10)]
            if profile
            else []
        )
        started, _ = raise_events(addr, [f"c-{i}" for i in range(n)])
        last, last_change = entries(), time.time()
        while last < before + n and time.time() - last_change < STALL:
            time.sleep(0.05)
            if (now := entries()) != last:
                last, last_change = now, time.time()
        for proc in spies:
            proc.wait(60)
        return (last - before) / (last_change - started)
    finally:
        relay.terminate()
        relay.wait(15)


def bare_loops(setup: Setup, n: int) -> dict[str, float]:
    """Each configured sink's ceiling here: a bare client sending the same documents to the
    same receiver (bench_drain.py's loops: one keep-alive connection and one POST at a time;
    Redis pipelines of 500; MQTT QoS 1 with PUBLISHes in flight), events/s."""
    docs = user_events(n, "bare-")
    bodies = [text.encode() for _, text in docs]
    loops = {
        "webhook": lambda: bare_http(f"http://127.0.0.1:{setup.http}/bare", bodies),
        "redis": lambda: bare_redis(setup.redis_url, docs, pipeline=500),
        "mqtt": lambda: bare_mqtt(setup.mqtt, bodies, window=True),
    }
    return {f"bare client loop -> {sink}": n / loops[sink]() for sink in setup.sinks}


def round_stats(
    channels: dict[str, list[tuple[str, float]]],
    payloads: list[str],
    sent: dict[str, float],
    started: float,
) -> dict[str, dict[str, float]]:
    """Per channel: rate, count, order, latency p50/p90 and added latency of one round."""
    bare = dict(channels["bare RPC stream subscriber"])
    out = {}
    for label, arrivals in channels.items():
        first = {p: t for p, t in reversed(arrivals) if p in sent}
        latency = sorted(1000 * (first[p] - sent[p]) for p in first)
        added = [1000 * (first[p] - bare[p]) for p in first if p in bare]
        end = max(first.values()) if first else started + 1
        nan = float("nan")
        out[label] = {
            "rate": len(first) / (end - started),
            "got": len(first),
            "order": float([p for p, _ in arrivals if p in sent] == payloads[: len(first)]),
            "p50": statistics.median(latency) if latency else nan,
            "p90": latency[int(0.9 * (len(latency) - 1))] if latency else nan,
            "added": statistics.median(added) if added else nan,
        }
    return out


def print_table(
    results: dict[str, list[dict[str, float]]],
    capture_rate: float,
    rss: dict[str, float],
    n: int,
    rounds: int,
    rate: float = 0.0,
) -> None:
    load = os.getloadavg()[0]
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load {load:.1f}, "
          f"{rounds} rounds of {n} events, medians of rounds"
          + (f"; the rounds' events paced to {rate:g}/s (the agent row)" if rate else "")
          + "\n")  # fmt: skip
    print("| path | events/s | x agent | received | in order | latency p50 / p90 ms | "
          "added p50 ms |")  # fmt: skip
    print("|---|---:|---:|---:|---|---:|---:|")
    agent = statistics.median(r["rate"] for r in results["agent: RPC `event` loop, one connection"])
    print(f"| relay -> spool only (no deliverer running; 1 round) | {capture_rate:.0f} | "
          f"{capture_rate / agent:.2f} | | | | |")  # fmt: skip
    for label, per_round in results.items():
        rate = statistics.median(r["rate"] for r in per_round)
        got = min(r["got"] for r in per_round)
        if "p50" not in per_round[0]:
            print(f"| {label} | {rate:.0f} | {rate / agent:.2f} | {got}/{n} | | | |")
            continue
        p50 = statistics.median(r["p50"] for r in per_round)
        p90 = statistics.median(r["p90"] for r in per_round)
        added = statistics.median(r["added"] for r in per_round)
        order = "yes" if all(r["order"] for r in per_round) else "NO"
        print(f"| {label} | {rate:.0f} | {rate / agent:.2f} | {got}/{n} | {order} | "
              f"{p50:.1f} / {p90:.1f} | {added:.1f} |")  # fmt: skip
    print(f"\npeak RSS: relay {rss.get('relay', 0):.0f} MB, "
          f"deliverer {rss.get('deliverer', 0):.0f} MB")  # fmt: skip


def run_rounds(
    args: argparse.Namespace,
    work: Path,
    addr: str,
    http_port: int,
    collector: Collector,
    rserver: RedisServer,
    broker: Mosquitto,
    procs: list[subprocess.Popen[bytes]],
) -> tuple[dict[str, list[dict[str, float]]], float, dict[str, float]]:
    """The capture-only round, then the rounds through the relay and its deliverer."""
    n = args.events
    results: dict[str, list[dict[str, float]]] = {}
    rss: dict[str, float] = {}
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    setup = Setup(addr, http_port, rserver.url, broker.port, args.sinks, args.webhook_in_flight)
    capture_rate = capture_only(work, setup, n, args.profile)
    config = write_config(work, setup)
    with (work / "relay.log").open("wb") as log:
        relay = subprocess.Popen(
            serfbridge_argv(config, "relay"),
            env=serfbridge_env(), stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    procs.append(relay)
    hook = "webhook"
    if args.webhook_in_flight != 1:
        hook += f", max_in_flight = {args.webhook_in_flight}"

    def arrived() -> tuple[int, ...]:
        """What each configured sink received so far, in ``args.sinks`` order."""
        http, mqtt, _ = collector.counts()
        client = redis.Redis.from_url(rserver.url, protocol=2)
        try:
            xlen = int(client.xlen("bench"))
        finally:
            client.close()
        counts = {"webhook": http, "redis": xlen, "mqtt": mqtt}
        return tuple(counts[sink] for sink in args.sinks)

    # Warm-up: the subscription, the deliverer, the sinks' connections.
    deadline = time.monotonic() + 60
    while min(arrived()) < 1 and time.monotonic() < deadline:
        raise_events(addr, [f"warm-{time.time()}"])
        time.sleep(1)
    time.sleep(2)
    collector.ids()
    redis_arrivals(rserver.url)

    spies: list[subprocess.Popen[bytes]] = []
    for r in range(args.rounds):
        payloads = [f"r{r}-{i}" for i in range(n)]
        if args.profile and r == 0:
            args.profile.mkdir(parents=True, exist_ok=True)
            deliverer = int((work / "stream/spool/deliver.pid").read_text())
            spies = [py_spy(relay.pid, args.profile / "relay.txt", rate=200, seconds=20),
                     py_spy(deliverer, args.profile / "deliverer.txt", rate=200,
                            seconds=20)]  # fmt: skip
        started, sent = raise_events(addr, payloads, args.rate)
        agent_rate = n / (max(sent.values()) - started)
        last, last_change = arrived(), time.monotonic()
        while min(last) < n and time.monotonic() - last_change < STALL:
            time.sleep(0.1)
            now = arrived()
            if now != last:
                last, last_change = now, time.monotonic()
        received = collector.ids()
        by_sink = {
            "webhook": [(p, t) for _, p, t in received["http"]],
            "redis": redis_arrivals(rserver.url),
            "mqtt": [(p, t) for _, p, t in received["mqtt"]],
        }
        channels = {"bare RPC stream subscriber": [(p, t) for _, p, t in received["serf"]]}
        for sink in args.sinks:
            channels[f"relay -> {hook if sink == 'webhook' else sink}"] = by_sink[sink]
        results.setdefault("agent: RPC `event` loop, one connection", []).append(
            {"rate": agent_rate, "got": n}
        )
        for label, stats in round_stats(channels, payloads, sent, started).items():
            results.setdefault(label, []).append(stats)
    for proc in spies:
        proc.wait(60)
    for label, rate in bare_loops(setup, n).items():
        results[label] = [{"rate": rate, "got": n}]
    collector.ids()
    rss["relay"] = peak_rss_mb(relay.pid)
    try:
        pid = int((work / "stream/spool/deliver.pid").read_text())
        rss["deliverer"] = peak_rss_mb(pid)
    except (OSError, ValueError):
        rss["deliverer"] = 0.0
    return results, capture_rate, rss


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=2000, help="per round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--profile", type=Path, help="run the relay under py-spy, output here")
    parser.add_argument("--keep", action="store_true")
    parser.add_argument(
        "--sinks",
        default=",".join(SINKS),
        help="the relay's sinks, all in one deliverer (default: %(default)s)",
    )
    parser.add_argument(
        "--webhook-in-flight", type=int, default=1, help="the webhook's max_in_flight (1-32)"
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=0.0,
        help="events/s raised in the rounds (default 0: as fast as the agent takes them); "
        "below what the sinks keep up with, the added latency is the pipeline's own",
    )
    parser.add_argument(
        "--mosquitto-nodelay",
        action="store_true",
        help="start mosquitto with set_tcp_nodelay true (its default is off)",
    )
    args = parser.parse_args()
    args.sinks = tuple(s.strip() for s in args.sinks.split(",") if s.strip())
    if not args.sinks or set(args.sinks) - set(SINKS):
        parser.error(f"--sinks: a comma-separated subset of {', '.join(SINKS)}")
    n = args.events
    work = Path(tempfile.mkdtemp(prefix="bench-stream-"))
    procs: list[subprocess.Popen[bytes]] = []
    collector = Collector()
    rserver = RedisServer(work / "redis")
    nodelay = ["set_tcp_nodelay true"] if args.mosquitto_nodelay else []
    broker = Mosquitto(work / "mqtt", extra_config=["max_queued_messages 0", *nodelay])
    results: dict[str, list[dict[str, float]]] = {}
    rss: dict[str, float] = {}
    capture_rate = 0.0
    try:
        agent, addr = start_agent(work)
        procs.append(agent)
        rserver.start()
        broker.start()
        http_port = free_port()
        collector.http(http_port)
        collector.mqtt(broker.port)
        collector.serf(addr)
        results, capture_rate, rss = run_rounds(
            args, work, addr, http_port, collector, rserver, broker, procs
        )
    finally:
        collector.close()
        for proc in reversed(procs):
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
        tear_down([rserver, broker], work, keep=args.keep)
    print_table(results, capture_rate, rss, n, args.rounds, args.rate)
    if args.profile:
        for name in ("relay-capture-only.txt", "relay.txt", "deliverer.txt"):
            if (args.profile / name).exists():
                print("\n" + profile_top(args.profile / name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
