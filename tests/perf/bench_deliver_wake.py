#!/usr/bin/env python3
"""How soon after a handler run the deliverer's POST leaves: the delivery core's own latency.

One webhook sink pointing at a local ``ThreadingHTTPServer``; a deliverer already running
(``linger = 120``), as on a busy node. Each event runs the handler as Serf would (``SERF_*``
variables, no shell) and notes when the handler process has exited and when the receiver got
the POST. ``exit->POST`` is what the deliverer adds after the handler is done (negative: the
POST arrived while the handler process was still exiting); ``start->POST`` includes the
handler's own start-up, which bench_handler.py measures separately.

Rows are serfbridge commands, interleaved round by round so load hits them alike: give the
tree under test as ``--serfbridge`` and an older tree as ``--reference LABEL=CMD`` to compare
(for example the previous commit's checkout run with ``python -P -m serfbridge``). Nothing
here is asserted by the tests.

Usage::

    python tests/perf/bench_deliver_wake.py [--events N] [--rounds R] [--profile DIR]
                                            [--serfbridge CMD] [--reference LABEL=CMD ...]
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from benchlib import profile_top, py_spy


class Receiver(ThreadingHTTPServer):
    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.arrivals: list[float] = []


class Handler(BaseHTTPRequestHandler):
    server: Receiver
    # Keep-alive, as real webhook receivers do: the deliverer keeps its connection, curl
    # opens one per run either way.
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.arrivals.append(time.monotonic())
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


def one_row(
    cmd: list[str], receiver: Receiver, events: int, profile: Path | None = None
) -> tuple[list[float], list[float]]:
    """One deliverer's events; ``profile``: py-spy (every thread) on it after the warm-ups."""
    with tempfile.TemporaryDirectory(prefix="bench-wake-") as tmp:
        root = Path(tmp)
        conf = root / "serfbridge.toml"
        conf.write_text(
            f'state_dir = "{root / "state"}"\n[delivery]\nlinger = 120\n'
            '[[sinks]]\ntype = "webhook"\nname = "hook"\n'
            f'url = "http://127.0.0.1:{receiver.server_port}/"\n'
        )
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "SERFBRIDGE_CONFIG": str(conf),
            "SERFBRIDGE_CACHE_DIR": str(root / "cache"),
            "SERF_EVENT": "user",
            "SERF_USER_EVENT": "bench",
            "SERF_SELF_NAME": "bench1",
        }
        after_exit: list[float] = []
        after_start: list[float] = []
        pid_file = root / "state" / "spool" / "deliver.pid"
        spy: subprocess.Popen[bytes] | None = None
        try:
            for i in range(events + 2):  # two warm-ups: config compile, deliverer start
                if i == 2 and profile is not None:
                    spy = py_spy(int(pid_file.read_text()), profile, rate=400, threads=True)
                env["SERF_USER_LTIME"] = str(i + 1)
                before = len(receiver.arrivals)
                start = time.monotonic()
                subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL, check=True)
                done = time.monotonic()
                deadline = done + 10.0
                while len(receiver.arrivals) == before and time.monotonic() < deadline:
                    time.sleep(0.0002)
                if len(receiver.arrivals) == before:
                    raise SystemExit(f"{shlex.join(cmd)}: no POST within 10 s")
                if i >= 2:
                    after_exit.append((receiver.arrivals[-1] - done) * 1000)
                    after_start.append((receiver.arrivals[-1] - start) * 1000)
                time.sleep(0.1)
        finally:
            if spy is not None:
                spy.send_signal(signal.SIGINT)  # py-spy writes its profile on SIGINT
                spy.wait(60)
            try:
                os.kill(int(pid_file.read_text()), 9)
            except (OSError, ValueError):
                pass
        return after_exit, after_start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=40, help="events per row and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--serfbridge", help="command under test (default: this venv's)")
    parser.add_argument("--reference", action="append", default=[], metavar="LABEL=CMD")
    parser.add_argument(
        "--profile", type=Path, metavar="DIR", help="py-spy each row's deliverer (first round)"
    )
    args = parser.parse_args()
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    mine = shlex.split(args.serfbridge) if args.serfbridge else [sys.executable, "-m", "serfbridge"]
    rows = [("serfbridge", mine)]
    rows += [(ref.split("=", 1)[0], shlex.split(ref.split("=", 1)[1])) for ref in args.reference]
    receiver = Receiver()
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    results: dict[str, tuple[list[float], list[float]]] = {label: ([], []) for label, _ in rows}
    for r in range(args.rounds):
        for label, cmd in rows:
            out = args.profile / f"deliverer-{label}.txt" if args.profile and r == 0 else None
            after_exit, after_start = one_row(cmd, receiver, min(args.events, 500), out)
            results[label][0].extend(after_exit)
            results[label][1].extend(after_start)
    receiver.shutdown()
    print(f"deliverer already running, {args.events} events x {args.rounds} rounds, interleaved")
    print(f"{'row':<14}{'n':>5}{'exit->POST median ms':>23}{'start->POST median ms':>24}")
    for label, (after_exit, after_start) in results.items():
        print(
            f"{label:<14}{len(after_exit):>5}{statistics.median(after_exit):>23.1f}"
            f"{statistics.median(after_start):>24.1f}"
        )
    for label, _ in rows if args.profile else ():
        path = args.profile / f"deliverer-{label}.txt"
        if path.exists():
            print("\n" + profile_top(path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
