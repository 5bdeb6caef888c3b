#!/usr/bin/env python3
"""The HTTP source under slow connections: latency of legitimate signed requests while
``--slow`` connections trickle their headers (slowloris), next to a reference row without
them, in one run.

Starts its own ``serf agent`` (one node) and ``serfbridge relay`` (one HTTP source with
``hmac_key``, default ``threads = 8``, ``header_timeout = 10``) on free 127.0.0.1 ports. The
attacker keeps ``--slow`` connections open: each sends a request line, then one header byte
every second, and is reopened at once when the relay closes it (as it does at
``header_timeout``). Meanwhile ``--requests`` signed ``POST /v1/event`` requests are sent one
after another (``--pace`` apart, so a row outlasts ``header_timeout``), each on a new
connection, with a 10 s client timeout (a timeout counts as an
error and as 10 s).

Usage::

    python tests/perf/bench_relay_slowloris.py [--slow 200] [--requests 300] [--rounds 2]
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import selectors
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_relay import free_port, start_agent, wait

KEY = "bench-key"
CLIENT_TIMEOUT = 10.0


def start_relay(work: Path, addr: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    config = work / "relay.toml"
    config.write_text(
        f'state_dir = "{work / "state"}"\nlog_file = "-"\nlog_level = "warning"\n'
        f'[serf]\nrpc_addr = "{addr}"\n'
        f'[[sources]]\ntype = "http"\nlisten = "127.0.0.1:{port}"\nhmac_key = "{KEY}"\n'
        'allow_events = ["bench"]\nrate = 100000\nburst = 100000\n'
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "serfbridge", "--config", str(config), "relay"],
        stdout=(work / "relay.log").open("wb"), stderr=subprocess.STDOUT,
    )  # fmt: skip

    def up() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
                return True
        except (OSError, urllib.error.URLError):
            return False

    wait(up, 20, "relay")
    return proc, port


class Slowloris:
    """``n`` connections trickling headers, kept open (reopened when closed), one thread."""

    def __init__(self, port: int, n: int) -> None:
        self.port, self.n = port, n
        self.stop = threading.Event()
        self.reopened = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _open(self, sel: selectors.BaseSelector) -> None:
        try:
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
            sock.sendall(b"POST /v1/event HTTP/1.1\r\nHost: bench\r\nX-Slow: ")
        except OSError:
            return
        sock.setblocking(False)
        sel.register(sock, selectors.EVENT_READ)

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        for _ in range(self.n):
            self._open(sel)
        next_tick = time.monotonic() + 1
        while not self.stop.is_set():
            for key, _ in sel.select(timeout=0.1):
                sock = key.fileobj
                try:
                    data = sock.recv(4096)  # type: ignore[union-attr]
                except OSError:
                    data = b""
                if not data:  # closed by the relay: the attacker comes straight back
                    sel.unregister(sock)
                    sock.close()  # type: ignore[union-attr]
                    self.reopened += 1
                    self._open(sel)
            if time.monotonic() >= next_tick:
                next_tick += 1
                for key in list(sel.get_map().values()):
                    try:
                        key.fileobj.send(b"x")  # type: ignore[union-attr]
                    except OSError:
                        pass
        for key in list(sel.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]

    def __enter__(self) -> Slowloris:
        self.thread.start()
        time.sleep(2.0)  # all connections open and trickling
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(10)


def signed_request(port: int, i: int) -> tuple[float, bool]:
    body = json.dumps({"type": "event", "name": "bench", "payload": f"p{i}"}).encode()
    stamp = str(int(time.time()))
    mac = hmac.new(KEY.encode(), stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/event", data=body, method="POST",
        headers={"X-Serfbridge-Timestamp": stamp, "X-Serfbridge-Signature": "sha256=" + mac},
    )  # fmt: skip
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=CLIENT_TIMEOUT) as resp:  # noqa: S310
            ok = resp.status == 202
    except (OSError, urllib.error.URLError):
        return CLIENT_TIMEOUT, False
    return time.perf_counter() - started, ok


def measure(port: int, n: int, pace: float) -> tuple[list[float], int]:
    latencies, errors = [], 0
    for i in range(n):
        time.sleep(pace)
        seconds, ok = signed_request(port, time.monotonic_ns() + i)
        latencies.append(seconds)
        errors += not ok
    return latencies, errors


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slow", type=int, default=200, help="slow connections")
    parser.add_argument("--requests", type=int, default=300, help="signed requests per row")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--pace",
        type=float,
        default=0.05,
        help="seconds between requests: a row outlasts header_timeout",
    )
    args = parser.parse_args()
    if not shutil.which("serf"):
        raise SystemExit("needs serf on PATH")
    work = Path(tempfile.mkdtemp(prefix="bench-slowloris-"))
    procs: list[subprocess.Popen[bytes]] = []
    rows: dict[str, tuple[list[float], int]] = {"reference": ([], 0), "slow": ([], 0)}
    reopened = 0
    try:
        agent, addr = start_agent(work)
        procs.append(agent)
        relay, port = start_relay(work, addr)
        procs.append(relay)
        measure(port, 20, 0)  # warm-up
        for _ in range(args.rounds):
            lat, err = measure(port, args.requests, args.pace)
            rows["reference"][0].extend(lat)
            rows["reference"] = (rows["reference"][0], rows["reference"][1] + err)
            with Slowloris(port, args.slow) as attack:
                lat, err = measure(port, args.requests, args.pace)
                reopened += attack.reopened
            rows["slow"][0].extend(lat)
            rows["slow"] = (rows["slow"][0], rows["slow"][1] + err)
    finally:
        for proc in reversed(procs):
            proc.terminate()
            proc.wait(10)
        shutil.rmtree(work, ignore_errors=True)
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, {args.rounds} rounds, "
          f"{args.requests} signed requests per row and round\n")  # fmt: skip
    print("| slow connections open | requests | p50 ms | p99 ms | max ms | errors |")
    print("|---|---:|---:|---:|---:|---:|")
    for label, slow in (("reference", 0), ("slow", args.slow)):
        lat, err = rows[label]
        print(f"| {slow} | {len(lat)} | {statistics.median(lat) * 1000:.1f} | "
              f"{pct(lat, 0.99) * 1000:.1f} | {max(lat) * 1000:.1f} | {err} |")  # fmt: skip
    print(f"\nslow connections the relay closed at header_timeout (reopened): {reopened}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
