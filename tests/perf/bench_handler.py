#!/usr/bin/env python3
"""Per-event cost of serfbridge as a Serf event handler, next to shell baselines.

Serf runs every event handler as ``/bin/sh -c SCRIPT``, one at a time, with the agent's
environment plus ``SERF_*`` variables, the payload on stdin and stdout+stderr captured into
one buffer (docs/serf.md sections 1, 2 and 4b). This script does exactly that
from ``subprocess.run`` and times each invocation with ``time.perf_counter()``.

Rows:

* ``/bin/true``: the floor (fork + exec of /bin/sh and one tiny binary);
* ``bash+curl``: a bash script that ``exec``s curl to POST stdin to a local HTTP receiver,
  the "tiny forwarder" that serfbridge is compared against;
* ``serfbridge/default``, ``serfbridge/file`` and, with ``--network``,
  ``serfbridge/network``: the handler under test, one state dir and config file each;
* ``--frozen LABEL=PATH``: another serfbridge executable (PyInstaller one-file / one-folder),
  rows ``LABEL/default`` ...;
* ``--deb PATH``: the .deb installed with ``dpkg --root`` into the temp dir, rows
  ``launcher/...`` (``/usr/bin/serfbridge``: the launcher, system Python for the handler) and
  ``deb-frozen/...`` (the frozen one-folder build it hands over to, run directly);
  ``--deb LABEL=PATH`` (repeatable) compares packages: ``LABEL-launcher/...``,
  ``LABEL-frozen/...``;
* ``--handler NAME=CMD``: anything else you want in the same table.

Besides wall time, each row shows the handler's median CPU time (``os.wait4``) and its peak
RSS (separate untimed runs under GNU time, see ``Runner.peak_rss``).

Runs are interleaved round-robin across handlers so machine noise hits all rows alike. The
numbers are for comparison within one run; nothing here is asserted by the unit tests.

Usage::

    python tests/perf/bench_handler.py [--runs N] [--warmup N] [--handler NAME=CMD ...]
                                       [--serfbridge PATH] [--frozen LABEL=PATH ...]
                                       [--configs default,file] [--network] [--json OUT]

Frozen builds next to the source install, in one run::

    python tests/perf/bench_handler.py --configs default \\
        --frozen onefile=dist/linux/serfbridge-onefile \\
        --frozen onedir=dist/linux/serfbridge/serfbridge

The installed Linux package (launcher and its frozen build) next to the baselines::

    python tests/perf/bench_handler.py --no-serfbridge --configs default \\
        --deb dist/linux/serfbridge_0.1.0_amd64.deb

Standard library only (with benchlib.py beside it), so it also runs against a frozen serfbridge
binary on a host without serfbridge installed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from benchlib import DEB_ROWS, deb_labels, install_deb

PAYLOAD = b'{"app":"web","version":"1.20.3"}'
assert len(PAYLOAD) == 32  # the documented baseline (docs/serf.md 4b) used 32 bytes
STDIN = PAYLOAD + b"\n"  # Serf appends one newline to a non-empty user-event payload

SERF_ENV = {
    "SERF_EVENT": "user",
    "SERF_SELF_NAME": "bench1",
    "SERF_SELF_ROLE": "web",
    "SERF_TAG_ROLE": "web",
    "SERF_TAG_DC": "east",
    "SERF_USER_EVENT": "deploy",
}

TRUE_NAME = "/bin/true"
CURL_NAME = "bash+curl"
CURL_SCRIPT = """#!/bin/bash
exec curl -s -m 2 -X POST -H 'Content-Type: application/json' --data-binary @- {url}
"""
HOOK_PATH = "/hook"  # serfbridge's webhook sink posts here, curl posts to "/"
SERF_OUTPUT_MAX = 8192  # Serf keeps only the last 8 KiB of a handler's output
MAX_BODY = 1 << 20
MAX_CHUNKS = 10_000
GNU_TIME = "/usr/bin/time"  # Debian package `time`; for the peak-RSS column only


# --------------------------------------------------------------------------- receiver


class Receiver(ThreadingHTTPServer):
    """Loopback HTTP server that answers every POST with 200 and an empty body."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _ReceiverHandler)
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"

    def record(self, path: str) -> None:
        with self._lock:
            self._counts[path] = self._counts.get(path, 0) + 1

    def count(self, path: str) -> int:
        with self._lock:
            return self._counts.get(path, 0)


class _ReceiverHandler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        self._read_body()
        self.server.record(urlsplit(self.path).path)
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        return

    def _read_body(self) -> None:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            for _ in range(MAX_CHUNKS):
                size = int(self.rfile.readline(64).split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline(64)  # trailing CRLF (no trailers expected)
                    return
                self.rfile.read(min(size, MAX_BODY) + 2)
            return
        length = int(self.headers.get("Content-Length") or 0)
        if length > 0:
            self.rfile.read(min(length, MAX_BODY))


# --------------------------------------------------------------------------- handlers


@dataclass
class Handler:
    name: str
    kind: str  # "baseline" | "serfbridge" | "custom"
    command: str
    extra_env: dict[str, str] = field(default_factory=dict)
    config_text: str | None = None
    sink_file: str | None = None  # file the handler should append one line per event to
    hook_path: str | None = None  # receiver path the handler should POST one request to
    # results
    samples: list[float] = field(default_factory=list)
    cpu_ms: list[float] = field(default_factory=list)  # user+sys per measured call
    rss_mib: list[float] = field(default_factory=list)  # peak RSS per measured call
    ok_calls: int = 0
    preflight_ms: float | None = None
    error: str | None = None
    output: bytes = b""
    check: str = ""

    @property
    def failed(self) -> bool:
        return self.error is not None


def toml_str(value: str) -> str:
    """A TOML basic string (escapes quote, backslash and every control character)."""
    out = ['"']
    for ch in value:
        if ch in {'"', "\\"}:
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04X}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def default_serfbridge_command(explicit: str | None) -> tuple[str, str | None]:
    """Return (shell command, error) for the serfbridge binary under test."""
    if explicit:
        path = os.path.abspath(explicit)
        if not os.access(path, os.X_OK):
            return shlex.quote(path), f"not an executable file: {path}"
        return shlex.quote(path), None
    script = os.path.join(os.path.dirname(sys.executable), "serfbridge")
    if os.access(script, os.X_OK):
        return shlex.quote(script), None
    return f"{shlex.quote(sys.executable)} -m serfbridge", None


def serfbridge_handlers(
    args: argparse.Namespace,
    root: Path,
    receiver: Receiver,
    label: str = "serfbridge",
    binary: str | None = None,
) -> list[Handler]:
    """One row per config (default, file, network) for one serfbridge executable."""
    explicit = args.serfbridge if label == "serfbridge" else binary
    command, error = default_serfbridge_command(explicit)
    configs: list[tuple[str, str | None, str | None]] = []  # (name, sink_file, hook_path)
    if "default" in args.configs:
        configs.append(("default", "events.jsonl", None))
    if "file" in args.configs:
        configs.append(("file", "out.jsonl", None))
    if args.network:
        # With --webhook-url the deliveries go elsewhere and cannot be counted here.
        hook = None if args.webhook_url else f"{HOOK_PATH}/{label}"
        configs.append(("network", None, hook))
    handlers = []
    for name, sink_file, hook_path in configs:
        base = root / f"{label}-{name}"
        state = base / "state"
        state.mkdir(parents=True)
        conf = base / "serfbridge.toml"
        text = serfbridge_config(name, str(state), args, receiver, label)
        conf.write_text(text, encoding="utf-8")
        handler = Handler(
            name=f"{label}/{name}",
            kind="serfbridge",
            command=command,
            extra_env={"SERFBRIDGE_STATE_DIR": str(state), "SERFBRIDGE_CONFIG": str(conf)},
            config_text=text,
            sink_file=str(state / sink_file) if sink_file else None,
            hook_path=hook_path,
        )
        handler.error = error
        handlers.append(handler)
    return handlers


def serfbridge_config(
    name: str, state: str, args: argparse.Namespace, receiver: Receiver, label: str
) -> str:
    if name == "default":
        # No sinks: the embedded default file sink writes <state>/events.jsonl.
        return f"state_dir = {toml_str(state)}\n"
    if name == "file":
        path = os.path.join(state, "out.jsonl")
        return f'[[sinks]]\ntype = "file"\nname = "local"\npath = {toml_str(path)}\n'
    hook = args.webhook_url or receiver.url(f"{HOOK_PATH}/{label}")
    return (
        f'[[sinks]]\ntype = "webhook"\nname = "hook"\nurl = {toml_str(hook)}\n\n'
        f'[[sinks]]\ntype = "redis"\nname = "stream"\nurl = {toml_str(args.redis_url)}\n'
        f'stream = "serfbridge-bench"\n\n'
        f'[[sinks]]\ntype = "mqtt"\nname = "bus"\nurl = {toml_str(args.mqtt_url)}\n'
        f'topic = "serfbridge/bench/{{event}}"\n'
    )


def baseline_handlers(root: Path, receiver: Receiver) -> list[Handler]:
    script = root / "forward.sh"
    script.write_text(CURL_SCRIPT.format(url=receiver.url("/")), encoding="utf-8")
    script.chmod(0o755)
    return [
        Handler(name=TRUE_NAME, kind="baseline", command="/bin/true"),
        Handler(name=CURL_NAME, kind="baseline", command=shlex.quote(str(script)), hook_path="/"),
    ]


# --------------------------------------------------------------------------- running


class Runner:
    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.ltime = 0
        base = {k: v for k, v in os.environ.items() if not k.startswith(("SERF_", "SERFBRIDGE_"))}
        self.base_env = {**base, **SERF_ENV}
        self.last_cpu_ms = 0.0  # user+sys of the last invoke

    def invoke(self, handler: Handler, wrap: tuple[str, ...] = ()) -> tuple[float, int, bytes]:
        """Run the handler once the way Serf does; return (ms, exit status, output).

        The child is reaped with ``os.wait4``, so its CPU time is known too
        (``self.last_cpu_ms``). ``sh -c`` execs a simple command, so that is the handler's own
        process; an exec'd hand-off (the launcher's) counts in the same process. ``wrap`` goes
        before ``/bin/sh`` (the peak-RSS pass).
        """
        self.ltime += 1
        env = {**self.base_env, **handler.extra_env, "SERF_USER_LTIME": str(self.ltime)}
        argv = [*wrap, "/bin/sh", "-c", handler.command]
        start = time.perf_counter()
        proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env
        )
        killer = threading.Timer(self.timeout, proc.kill)
        killer.start()
        try:
            assert proc.stdin is not None
            assert proc.stdout is not None
            try:
                proc.stdin.write(STDIN)
                proc.stdin.close()
            except BrokenPipeError:
                pass
            out = proc.stdout.read()  # EOF: the handler and anything holding its output ended
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            killer.cancel()
        elapsed = (time.perf_counter() - start) * 1000.0
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
        proc.stdout.close()
        self.last_cpu_ms = (usage.ru_utime + usage.ru_stime) * 1000.0
        if proc.returncode == -9 and elapsed >= self.timeout * 1000.0:
            return elapsed, -1, out + f"\n[bench] killed after {self.timeout:g} s\n".encode()
        return elapsed, proc.returncode, out

    def call(self, handler: Handler, phase: str, wrap: tuple[str, ...] = ()) -> float | None:
        """Invoke; on failure mark the handler failed (it is not run again)."""
        ms, rc, out = self.invoke(handler, wrap)
        if rc != 0:
            handler.error = f"exit {rc} ({phase})"
            handler.output = out[-SERF_OUTPUT_MAX:]
            return None
        handler.ok_calls += 1
        return ms

    def rounds(self, handlers: list[Handler], count: int, *, measured: bool) -> None:
        phase = "measured run" if measured else "warm-up"
        for r in range(count):
            active = [h for h in handlers if not h.failed]
            if not active:
                return
            shift = r % len(active)  # rotate the start so no row always follows the same one
            for handler in active[shift:] + active[:shift]:
                ms = self.call(handler, f"{phase} {r + 1}")
                if measured and ms is not None:
                    handler.samples.append(ms)
                    handler.cpu_ms.append(self.last_cpu_ms)

    def peak_rss(self, handlers: list[Handler], count: int, root: Path) -> None:
        """Peak RSS per handler run, from GNU time's ``%M``, after the timed rounds.

        Not from the benchmark's own ``wait4``: a child forked from this process inherits its
        resident pages until ``exec``, and Linux folds that into the child's ``ru_maxrss``.
        ``time`` is a small process, so its child starts small; the ``/bin/true`` row shows
        that floor. Not timed.
        """
        if not os.access(GNU_TIME, os.X_OK):
            return
        out = root / "rss.txt"
        for r in range(count):
            for handler in [h for h in handlers if not h.failed]:
                wrap = (GNU_TIME, "-f", "%M", "-o", str(out))
                if self.call(handler, f"peak-RSS run {r + 1}", wrap) is not None:
                    handler.rss_mib.append(int(out.read_text().split()[-1]) / 1024.0)


def preflight(runner: Runner, handlers: list[Handler]) -> None:
    """One untimed call per serfbridge config: it validates and caches the config."""
    for handler in handlers:
        if handler.kind == "serfbridge" and not handler.failed:
            ms, rc, out = runner.invoke(handler)
            handler.preflight_ms = ms
            if rc != 0:
                handler.error = f"exit {rc} (first call)"
                handler.output = out[-SERF_OUTPUT_MAX:]
            else:
                handler.ok_calls += 1


def count_lines(path: str) -> int | None:
    try:
        with open(path, "rb") as fh:
            return sum(1 for _ in fh)
    except FileNotFoundError:
        return None


def run_checks(handlers: list[Handler], receiver: Receiver, drain_timeout: float) -> None:
    """Did each handler do its work? One line in its file / one POST per successful call."""
    deadline = time.monotonic() + drain_timeout
    for handler in handlers:
        if handler.failed:
            continue
        expected = handler.ok_calls
        if handler.sink_file is not None:
            got = count_lines(handler.sink_file)
            where = os.path.basename(handler.sink_file)
            handler.check = f"{where}: {'missing' if got is None else got}/{expected}"
            if got != expected:
                handler.check += " MISMATCH"
        elif handler.hook_path is not None:
            # Network sinks deliver from a background process: wait (bounded) for it.
            while receiver.count(handler.hook_path) < expected and time.monotonic() < deadline:
                time.sleep(0.1)
            got_posts = receiver.count(handler.hook_path)
            handler.check = f"POST {handler.hook_path}: {got_posts}/{expected}"
            if got_posts != expected:
                handler.check += " MISMATCH"


def tcp_reachable(url: str) -> bool:
    parts = urlsplit(url)
    if not parts.hostname or not parts.port:
        return False
    try:
        with socket.create_connection((parts.hostname, parts.port), timeout=1.0):
            return True
    except OSError:
        return False


# --------------------------------------------------------------------------- report


def stats(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    if len(ordered) >= 2:
        p90 = statistics.quantiles(ordered, n=10, method="inclusive")[8]
        stdev = statistics.stdev(ordered)
    else:
        p90, stdev = ordered[0], 0.0
    return {
        "median_ms": statistics.median(ordered),
        "min_ms": ordered[0],
        "p90_ms": p90,
        "max_ms": ordered[-1],
        "mean_ms": statistics.fmean(ordered),
        "stdev_ms": stdev,
    }


def medians(handlers: list[Handler]) -> dict[str, float]:
    return {h.name: statistics.median(h.samples) for h in handlers if h.samples and not h.failed}


def ratio(value: float | None, base: float | None) -> float | None:
    if value is None or not base:
        return None
    return value / base


def fmt(value: float | None, digits: int = 2, suffix: str = "") -> str:
    return "-" if value is None else f"{value:.{digits}f}{suffix}"


def table(handlers: list[Handler]) -> str:
    med = medians(handlers)
    curl, true = med.get(CURL_NAME), med.get(TRUE_NAME)
    lines = [
        "| handler | n | median ms | min ms | p90 ms | max ms "
        "| x bash+curl | x /bin/true | CPU ms | peak RSS MiB | check |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for h in handlers:
        if h.failed:
            lines.append(
                f"| {h.name} | {len(h.samples)} | ERROR: {h.error} | | | | | | | | {h.check} |"
            )
            continue
        s = stats(h.samples)
        m = s["median_ms"]
        lines.append(
            f"| {h.name} | {len(h.samples)} | {m:.2f} | {s['min_ms']:.2f} | {s['p90_ms']:.2f} "
            f"| {s['max_ms']:.2f} | {fmt(ratio(m, curl), suffix='x')} "
            f"| {fmt(ratio(m, true), suffix='x')} | {statistics.median(h.cpu_ms):.1f} "
            f"| {fmt(max(h.rss_mib) if h.rss_mib else None, 1)} | {h.check} |"
        )
    return "\n".join(lines)


def summary(handlers: list[Handler], target: float) -> list[str]:
    med = medians(handlers)
    curl = med.get(CURL_NAME)
    out = []
    for h in handlers:
        if h.kind == "baseline":
            continue
        if h.failed:
            out.append(f"{h.name} FAILED: {h.error}")
            continue
        m = med[h.name]
        r = ratio(m, curl)
        if r is None or curl is None:
            out.append(f"{h.name} median {m:.1f} ms (no bash+curl baseline to compare)")
            continue
        verdict = "within target" if r <= target else "OVER target"
        if h.check.endswith("MISMATCH"):
            verdict += f", but CHECK FAILED ({h.check}): the timing is not trustworthy"
        out.append(
            f"{h.name} median {m:.1f} ms = {r:.2f} x bash+curl ({curl:.1f} ms), "
            f"target <= {target:g} x -> {verdict}"
        )
    return out


def tool_version(argv: list[str]) -> str | None:
    if shutil.which(argv[0]) is None:
        return None
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=10)
    return (proc.stdout or proc.stderr).splitlines()[0] if (proc.stdout or proc.stderr) else None


def meta(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": platform.node(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "loadavg": list(os.getloadavg()),
        "python": sys.version.split()[0],
        "executable": sys.executable,
        "curl": tool_version(["curl", "--version"]),
        "runs": args.runs,
        "warmup": args.warmup,
        "payload": PAYLOAD.decode(),
        "stdin_bytes": len(STDIN),
        "target_ratio": args.target,
    }


def json_report(args: argparse.Namespace, handlers: list[Handler]) -> dict[str, Any]:
    med = medians(handlers)
    rows = []
    for h in handlers:
        row: dict[str, Any] = {
            "name": h.name,
            "kind": h.kind,
            "command": h.command,
            "env": h.extra_env,
            "config": h.config_text,
            "status": "error" if h.failed else "ok",
            "error": h.error,
            "output": h.output.decode("utf-8", "replace") if h.failed else None,
            "preflight_ms": h.preflight_ms,
            "successful_calls": h.ok_calls,
            "check": h.check,
            "samples_ms": h.samples,
            "cpu_ms": h.cpu_ms,
            "peak_rss_mib": h.rss_mib,
        }
        if h.samples and not h.failed:
            row.update(stats(h.samples))
            row["ratio_bash_curl"] = ratio(med[h.name], med.get(CURL_NAME))
            row["ratio_true"] = ratio(med[h.name], med.get(TRUE_NAME))
        rows.append(row)
    return {"meta": meta(args), "handlers": rows}


# --------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Time serfbridge per event the way Serf runs handlers, next to baselines.",
        allow_abbrev=False,
    )
    p.add_argument("--runs", type=int, default=40, help="measured runs per handler (40)")
    p.add_argument("--warmup", type=int, default=3, help="untimed warm-up runs (3)")
    p.add_argument(
        "--handler",
        action="append",
        default=[],
        metavar="NAME=CMD",
        help="extra handler; CMD is shell code run by /bin/sh -c (repeatable). "
        "Unquoted words after it up to the next option of this script are joined.",
    )
    p.add_argument(
        "--serfbridge",
        metavar="PATH",
        default=os.environ.get("SERFBRIDGE_BIN") or None,
        help="serfbridge executable (frozen binary); default $SERFBRIDGE_BIN, else the "
        "console script next to sys.executable, else `sys.executable -m serfbridge`",
    )
    p.add_argument(
        "--frozen",
        action="append",
        default=[],
        metavar="LABEL=PATH",
        help="another serfbridge executable (e.g. onefile=dist/linux/serfbridge-onefile "
        "onedir=dist/linux/serfbridge/serfbridge), timed in the same run as LABEL/<config> "
        "rows (repeatable)",
    )
    p.add_argument(
        "--deb",
        action="append",
        default=[],
        metavar="[LABEL=]PATH",
        help="install this .deb into the temp dir (dpkg --root) and time its launcher "
        "(/usr/bin/serfbridge) and its frozen build as launcher/... and deb-frozen/... rows; "
        "repeat with LABEL=PATH to compare packages (rows LABEL-launcher/..., LABEL-frozen/...)",
    )
    p.add_argument(
        "--configs",
        default="default,file",
        help="serfbridge configs to time per executable, comma-separated from default,file "
        "(default both; --network adds network)",
    )
    p.add_argument("--network", action="store_true", help="also measure webhook+redis+mqtt")
    p.add_argument("--webhook-url", help="webhook sink URL (default: the local receiver)")
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/15")
    p.add_argument("--mqtt-url", default="mqtt://127.0.0.1:1883")
    p.add_argument("--no-serfbridge", action="store_true", help="skip the serfbridge rows")
    p.add_argument("--only-baselines", action="store_true", help="only /bin/true and bash+curl")
    p.add_argument("--target", type=float, default=1.5, help="target ratio to bash+curl (1.5)")
    p.add_argument("--timeout", type=float, default=30.0, help="per-invocation limit, s (30)")
    p.add_argument(
        "--drain-timeout",
        type=float,
        default=20.0,
        help="wait this long for background webhook deliveries before checking (20)",
    )
    p.add_argument(
        "--rss-runs",
        type=int,
        default=3,
        help="untimed runs per handler under /usr/bin/time for the peak RSS column (3; 0: none)",
    )
    p.add_argument("--json", metavar="OUT", help="write raw numbers as JSON to OUT")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (state, configs)")
    return p


def join_handler_words(argv: list[str], options: set[str]) -> list[str]:
    """Make ``--handler py=/usr/bin/python3 -c pass`` (unquoted) mean one handler.

    The words after ``--handler`` up to the next option of this script are joined into one
    ``--handler=VALUE``; the first word is kept as shell code, later words are shell-quoted.
    """

    def is_option(tok: str) -> bool:
        return tok.split("=", 1)[0] in options or tok == "--"

    out: list[str] = []
    i = 0
    while i < len(argv):
        tok = argv[i]
        if tok == "--handler" and i + 1 < len(argv):
            words, i = [argv[i + 1]], i + 2
        elif tok.startswith("--handler="):
            words, i = [tok.removeprefix("--handler=")], i + 1
        else:
            out.append(tok)
            i += 1
            continue
        while i < len(argv) and not is_option(argv[i]):
            words.append(argv[i])
            i += 1
        out.append("--handler=" + " ".join([words[0], *map(shlex.quote, words[1:])]))
    return out


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = build_parser()
    options = {s for a in parser._actions for s in a.option_strings if s.startswith("--")}
    args = parser.parse_args(join_handler_words(argv, options))
    if args.runs < 1 or args.runs > 100_000 or args.warmup < 0 or args.warmup > 10_000:
        parser.error("--runs must be 1..100000 and --warmup 0..10000")
    if args.only_baselines and args.handler:
        parser.error("--only-baselines excludes --handler (use --no-serfbridge instead)")
    names = {TRUE_NAME, CURL_NAME}
    custom: list[tuple[str, str]] = []
    for spec in args.handler:
        name, sep, cmd = spec.partition("=")
        name = name.strip()
        if not sep or not name or not cmd.strip():
            parser.error(f"--handler wants NAME=CMD, got {spec!r}")
        if name in names or name.startswith("serfbridge/"):
            parser.error(f"duplicate or reserved handler name: {name!r}")
        names.add(name)
        custom.append((name, cmd))
    args.custom = custom
    args.configs = {c.strip() for c in args.configs.split(",") if c.strip()}
    if not args.configs <= {"default", "file"}:
        parser.error("--configs takes default and/or file")
    frozen: list[tuple[str, str]] = []
    for spec in args.frozen:
        label, sep, path = spec.partition("=")
        label = label.strip()
        if not sep or not label or "/" in label or not path:
            parser.error(f"--frozen wants LABEL=PATH, got {spec!r}")
        if label in {"serfbridge", *DEB_ROWS} or any(label == f[0] for f in frozen):
            parser.error(f"duplicate or reserved --frozen label: {label!r}")
        if any(n.startswith(label + "/") for n in names):
            parser.error(f"--frozen label {label!r} clashes with a --handler name")
        frozen.append((label, path))
    args.debs = parse_debs(parser, args.deb, {f[0] for f in frozen})
    args.frozen_bins = frozen
    return args


def parse_debs(
    parser: argparse.ArgumentParser, specs: list[str], frozen: set[str]
) -> list[tuple[str, str]]:
    """``--deb PATH`` (rows launcher, deb-frozen) or ``--deb LABEL=PATH`` ...: (label, path)."""
    debs: list[tuple[str, str]] = []
    for spec in specs:
        label, sep, path = spec.partition("=")
        if not sep or "/" in label:
            label, path = "", spec
        label = label.strip()
        if not path or any(label == d[0] for d in debs):
            parser.error(f"--deb wants PATH once, or LABEL=PATH with distinct labels: {spec!r}")
        if frozen & set(deb_labels(label)):
            parser.error(f"--deb label {label!r} clashes with a --frozen label")
        debs.append((label, path))
    return debs


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    root = Path(tempfile.mkdtemp(prefix="serfbridge-bench-"))
    receiver = Receiver()
    server = threading.Thread(
        target=receiver.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
    )
    server.start()
    try:
        handlers = baseline_handlers(root, receiver)
        if not (args.only_baselines or args.no_serfbridge):
            handlers += serfbridge_handlers(args, root, receiver)
        if not args.only_baselines:
            for label, deb in args.debs:
                args.frozen_bins += install_deb(deb, root / f"deb-root-{label or 'deb'}", label)
        if not args.only_baselines:
            for label, path in args.frozen_bins:
                handlers += serfbridge_handlers(args, root, receiver, label, path)
        handlers += [Handler(name=n, kind="custom", command=c) for n, c in args.custom]
        return run(args, handlers, receiver, root)
    finally:
        receiver.shutdown()
        receiver.server_close()
        server.join(timeout=5)
        if args.keep:
            print(f"kept {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)


def run(args: argparse.Namespace, handlers: list[Handler], receiver: Receiver, root: Path) -> int:
    if args.network and not args.only_baselines and not args.no_serfbridge:
        for url in (args.redis_url, args.mqtt_url):
            if not tcp_reachable(url):
                print(f"warning: nothing listening for {url}", file=sys.stderr)
    runner = Runner(args.timeout)
    preflight(runner, handlers)
    runner.rounds(handlers, args.warmup, measured=False)
    runner.rounds(handlers, args.runs, measured=True)
    runner.peak_rss(handlers, args.rss_runs, root)
    run_checks(handlers, receiver, args.drain_timeout)

    m = meta(args)
    print(
        f"# serfbridge handler benchmark: {args.runs} runs + {args.warmup} warm-up, "
        f"interleaved; python {m['python']}, {m['cpus']} CPUs, "
        f"load {m['loadavg'][0]:.2f}; stdin {len(STDIN)} bytes\n"
    )
    print(table(handlers))
    print()
    for h in handlers:
        if h.preflight_ms is not None and not h.failed:
            print(f"{h.name}: first call (config validate + cache) {h.preflight_ms:.1f} ms")
    commands: dict[str, str] = {}
    for h in handlers:
        if h.kind == "serfbridge":
            commands.setdefault(h.name.split("/", 1)[0], h.command)
    for label, command in commands.items():
        print(f"{label} command: {command}")
    for line in summary(handlers, args.target):
        print(line)

    if args.json:
        report = json_report(args, handlers)
        report["meta"]["tmpdir"] = str(root) if args.keep else None
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")

    failed = [h for h in handlers if h.failed]
    for h in failed:
        print(f"\n--- {h.name}: {h.error}; command: {h.command}", file=sys.stderr)
        sys.stderr.write(h.output.decode("utf-8", "replace") or "(no output)\n")
    mismatched = [h for h in handlers if h.check.endswith("MISMATCH")]
    for h in mismatched:
        print(f"\n--- {h.name}: did not do its work: {h.check}", file=sys.stderr)
    return 1 if failed or mismatched else 0


if __name__ == "__main__":
    sys.exit(main())
