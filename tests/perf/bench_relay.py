#!/usr/bin/env python3
"""Inbound throughput: Redis stream -> ``serfbridge relay`` -> Serf user events, next to a
loop of ``serf event`` CLI calls and a loop of raw RPC ``event`` calls, in one run.

Starts its own ``serf agent`` (one node, no handler), ``redis-server`` and relay on free
127.0.0.1 ports in a temporary directory, and stops them at the end. Every event is
non-coalescing (``-coalesce=false``), so Serf delivers each one. Rounds are interleaved
(CLI, RPC, relay, CLI, ...) so machine noise hits every row alike; the table shows the
median rate of the rounds and its ratio to the CLI loop.

Usage::

    python tests/perf/bench_relay.py [--events N] [--cli-events N] [--rounds R] [--relays K]

A second group of relays on another stream has ``event_ids = true`` (the row "event_ids"):
what the id trailer costs the relay. The last column compares each row with the raw RPC
loop: the relay reads ``batch = 100`` entries at a time and sends their events pipelined on
one connection, acknowledging them with one ``XACK``, so it is not bound by one round trip
per event as the loop is.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import redis

from serfbridge.serf.rpc import SerfRPC

BATCH = 100  # entries per XREADGROUP; events of one read go into Serf pipelined


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.02)
    raise SystemExit(f"timed out waiting for {what}")


def start_agent(work: Path) -> tuple[subprocess.Popen[bytes], str]:
    port, rpc = free_port(), free_port()
    addr = f"127.0.0.1:{rpc}"
    proc = subprocess.Popen(
        ["serf", "agent", "-node=bench", f"-bind=127.0.0.1:{port}", f"-rpc-addr={addr}",
         "-log-level=warn"],
        stdout=(work / "agent.log").open("wb"), stderr=subprocess.STDOUT,
    )  # fmt: skip

    def up() -> bool:
        try:
            SerfRPC(addr, timeout=0.5).connect().close()
        except Exception:
            return False
        return True

    wait(up, 15, "serf agent")
    return proc, addr


def start_redis(work: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(work)],
        stdout=(work / "redis.log").open("wb"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)

    def up() -> bool:
        try:
            return bool(client.ping())
        except redis.ConnectionError:
            return False

    wait(up, 15, "redis-server")
    return proc, url


def start_relay(
    work: Path, addr: str, url: str, name: str, stream: str, event_ids: bool
) -> tuple[subprocess.Popen[bytes], int]:
    metrics = free_port()
    config = work / f"{name}.toml"
    config.write_text(
        f'state_dir = "{work / name}"\nlog_file = "-"\nlog_level = "warning"\n'
        f'[serf]\nrpc_addr = "{addr}"\n'
        f'[relay]\nmetrics_listen = "127.0.0.1:{metrics}"\n'
        f'[[sources]]\ntype = "redis"\nurl = "{url}"\nstream = "{stream}"\ngroup = "g"\n'
        f'consumer = "{name}"\nrate = 1000000\nburst = 1000000\nbatch = {BATCH}\n'
        f'allow_events = ["bench"]\nevent_ids = {"true" if event_ids else "false"}\n'
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "serfbridge", "--config", str(config), "relay"],
        stdout=(work / f"{name}.log").open("wb"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    wait(lambda: relayed([metrics]) >= 0, 15, "relay metrics")
    return proc, metrics


def relayed(ports: list[int]) -> float:
    total = 0.0
    for port in ports:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                text = r.read().decode()
        except OSError:
            return -1
        for line in text.splitlines():
            if line.startswith("serfbridge_relay_messages_out_total{"):
                total += float(line.rsplit(" ", 1)[1])
    return total


def cli_round(addr: str, n: int) -> float:
    started = time.perf_counter()
    for i in range(n):
        subprocess.run(
            ["serf", "event", f"-rpc-addr={addr}", "-coalesce=false", "bench", f"c{i}"],
            check=True, capture_output=True,
        )  # fmt: skip
    return n / (time.perf_counter() - started)


def rpc_round(addr: str, n: int) -> float:
    with SerfRPC(addr) as rpc:
        started = time.perf_counter()
        for i in range(n):
            rpc.event("bench", f"r{i}".encode(), coalesce=False)
        return n / (time.perf_counter() - started)


def relay_round(url: str, stream: str, ports: list[int], n: int) -> float:
    client = redis.Redis.from_url(url)
    before = relayed(ports)
    pipe = client.pipeline(transaction=False)
    body = [json.dumps({"type": "event", "name": "bench", "payload": f"x{i}"}) for i in range(n)]
    started = time.perf_counter()
    for data in body:
        pipe.xadd(stream, {"data": data})
    pipe.execute()
    wait(lambda: relayed(ports) >= before + n, 300, "relay to drain the stream")
    return n / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=2000, help="per RPC / relay round")
    parser.add_argument("--cli-events", type=int, default=200, help="per CLI round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--relays", type=int, default=1, help="relays in the consumer group")
    args = parser.parse_args()
    if not shutil.which("serf") or not shutil.which("redis-server"):
        raise SystemExit("needs serf and redis-server on PATH")
    work = Path(tempfile.mkdtemp(prefix="bench-relay-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        agent, addr = start_agent(work)
        procs.append(agent)
        rserver, url = start_redis(work)
        procs.append(rserver)
        groups: dict[str, list[int]] = {"bench": [], "bench-ids": []}
        for stream, ports in groups.items():
            for k in range(args.relays):
                name = f"{stream}-relay{k}"
                relay, port = start_relay(work, addr, url, name, stream, stream == "bench-ids")
                procs.append(relay)
                ports.append(port)
            relay_round(url, stream, ports, 50)  # warm-up: group creation, connections
        rates: dict[str, list[float]] = {"cli": [], "rpc": [], "relay": [], "ids": []}
        for _ in range(args.rounds):
            rates["cli"].append(cli_round(addr, args.cli_events))
            rates["rpc"].append(rpc_round(addr, args.events))
            rates["relay"].append(relay_round(url, "bench", groups["bench"], args.events))
            rates["ids"].append(relay_round(url, "bench-ids", groups["bench-ids"], args.events))
    finally:
        for proc in reversed(procs):
            proc.terminate()
            proc.wait(10)
        shutil.rmtree(work, ignore_errors=True)
    base = statistics.median(rates["cli"])
    rows = [
        (f"`serf event` CLI loop ({args.cli_events}/round)", rates["cli"]),
        (f"raw RPC `event` loop, one connection ({args.events}/round)", rates["rpc"]),
        (f"Redis stream -> relay x{args.relays} -> Serf ({args.events}/round)", rates["relay"]),
        (f"same, `event_ids = true` ({args.events}/round)", rates["ids"]),
    ]
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, {args.rounds} rounds\n")
    rpc = statistics.median(rates["rpc"])
    print("| path | events/s (median) | min..max | x CLI | x RPC loop |")
    print("|---|---:|---:|---:|---:|")
    for label, values in rows:
        med = statistics.median(values)
        print(f"| {label} | {med:.0f} | {min(values):.0f}..{max(values):.0f} | "
              f"{med / base:.1f} | {med / rpc:.2f} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
