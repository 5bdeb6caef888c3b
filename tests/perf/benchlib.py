"""What the benchmarks share: the collector process, events, serfbridge runs, RSS, the .deb
installed into a temporary root. Standard library only at import (bench_handler.py also runs
against a frozen build on a host without serfbridge installed): what needs serfbridge imports
it where it is used."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

from support.deb import install  # noqa: E402
from support.proc import clean_environ  # noqa: E402


class Collector:
    """tests/perf/collector.py in its own process: the HTTP receiver and MQTT subscriber."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("collector.py"))],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        self._expect("ready")

    def _expect(self, want: str) -> None:
        line = self.ask(None)
        if line != want:
            raise SystemExit(f"collector said {line!r}, expected {want!r}")

    def ask(self, command: str | None) -> str:
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        if command is not None:
            self.proc.stdin.write(command + "\n")
            self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"the collector exited (status {self.proc.poll()})")
        return line.strip()

    def http(self, port: int) -> None:
        self.ask(f"http {port}")

    def mqtt(self, port: int) -> None:
        self.ask(f"mqtt {port}")

    def serf(self, addr: str) -> None:
        self.ask(f"serf {addr}")

    def counts(self) -> tuple[int, int, int]:
        http, mqtt, serf = self.ask("count").split()
        return int(http), int(mqtt), int(serf)

    def ids(self) -> dict[str, list[tuple[str, str, float]]]:
        """Per channel: ``(id, payload, arrival time)`` in arrival order."""
        answer: dict[str, list[tuple[str, str, float]]] = json.loads(self.ask("ids"))
        return answer

    def close(self) -> None:
        try:
            self.ask("quit") if self.proc.poll() is None else None
        except (SystemExit, BrokenPipeError):
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def wait_until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise SystemExit(f"timed out after {timeout:g}s waiting for {what}")


def user_events(n: int, tag: str) -> list[tuple[dict[str, Any], str]]:
    """``n`` user events as the handler builds them, and their JSON; payload ``<tag><i>``."""
    from serfbridge.capture import jsonenc
    from serfbridge.capture.event import parse_event

    out = []
    for i in range(n):
        environ = {
            "SERF_EVENT": "user",
            "SERF_USER_EVENT": "bench",
            "SERF_USER_LTIME": str(i + 1),
            "SERF_SELF_NAME": "bench1",
            "SERF_SELF_ROLE": "web",
        }
        doc: dict[str, Any] = dict(parse_event(environ, f"{tag}{i}".encode(), time.time()))
        out.append((doc, jsonenc.dumps(doc)))
    return out


def serfbridge_env(source: str | None = None) -> dict[str, str]:
    """The environment of serfbridge runs; ``source`` or ``BENCH_SOURCE=DIR`` runs another
    checkout's code (``git archive main | tar -x -C DIR``) for a before/after comparison."""
    return clean_environ({"PYTHONPATH": source or os.environ.get("BENCH_SOURCE", str(ROOT))})


@dataclass
class Run:
    """One child process's wall time, CPU time and peak RSS (``wait4``)."""

    seconds: float
    cpu: float
    rss_mb: float
    status: int


def run_measured(argv: list[str], log: Path, source: str | None = None) -> Run:
    started = time.perf_counter()
    with log.open("ab") as out:
        env = serfbridge_env(source)
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return Run(
        time.perf_counter() - started,
        usage.ru_utime + usage.ru_stime,
        usage.ru_maxrss / 1024,
        proc.returncode,
    )


def py_spy_binary() -> str:
    """py-spy on PATH, else the one installed beside this interpreter."""
    return shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))


def serfbridge_argv(config: Path, *command: str, profile: Path | None = None) -> list[str]:
    """``python -m serfbridge``; with ``profile``, under ``py-spy record`` (every thread,
    collapsed stacks, so ``profile_top`` can sum them)."""
    argv = [sys.executable, "-m", "serfbridge", "--config", str(config), *command]
    if profile is None:
        return argv
    return [py_spy_binary(), "record", "--format", "raw", "--rate", "200", "--nonblocking",
            "-o", str(profile), "--", *argv]  # fmt: skip


def profile_top(path: Path, limit: int = 12) -> str:
    """The frames most often on the stack (inclusive, serfbridge's own) and at its top
    (self time, any code) in a py-spy raw profile: lines ``frame;frame;... count``."""
    import collections

    inclusive: collections.Counter[str] = collections.Counter()
    leaf: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        samples = int(count)
        total += samples
        frames = stack.split(";")
        leaf[frames[-1]] += samples
        for frame in set(frames):
            if "serfbridge/" in frame:
                inclusive[frame] += samples
    lines = [f"{path.name}: {total} samples; inclusive, serfbridge code:"]
    lines += [f"  {100 * c / max(total, 1):5.1f}%  {f}" for f, c in inclusive.most_common(limit)]
    lines.append("  self time:")
    lines += [f"  {100 * c / max(total, 1):5.1f}%  {f}" for f, c in leaf.most_common(limit)]
    return "\n".join(lines)


def order_check(expected: list[str], got: list[str]) -> str:
    """``ok`` when ``got`` is ``expected`` exactly, else what differs."""
    if got == expected:
        return "ok"
    if sorted(got) == sorted(expected):
        return "none lost, arrival order differs"
    missing = len(set(expected) - set(got))
    dups = len(got) - len(set(got))
    in_order = [i for i in got if i in set(expected)]
    first = sorted(set(in_order), key=in_order.index)
    reordered = first != [i for i in expected if i in set(first)]
    return f"FAIL: {len(got)}/{len(expected)}, {missing} missing, {dups} dup, reordered={reordered}"


DEB_ROWS = {"launcher": "usr/bin/serfbridge", "deb-frozen": "usr/lib/serfbridge/serfbridge-frozen"}


def deb_labels(label: str) -> dict[str, str]:
    """Row label -> path in the root: ``launcher``/``deb-frozen``, or ``L-launcher``/``L-frozen``
    for ``--deb L=PATH``."""
    if not label:
        return DEB_ROWS
    return {f"{label}-launcher": DEB_ROWS["launcher"], f"{label}-frozen": DEB_ROWS["deb-frozen"]}


def install_deb(deb: str, root: Path, label: str = "") -> list[tuple[str, str]]:
    """The .deb in an empty root exactly as the artifact tests install it (support.deb: dpkg
    chrootless, so the maintainer scripts byte-compile the launcher's modules as on a real
    host); (row label, path) per row."""
    install(Path(os.path.abspath(deb)), root)
    return [(row, str(root / rel)) for row, rel in deb_labels(label).items()]


def py_spy(
    pid: int, out: Path, *, rate: int, seconds: float | None = None, threads: bool = False
) -> subprocess.Popen[bytes]:
    """py-spy recording ``pid`` into ``out`` (collapsed stacks): for ``seconds``, or until
    it gets SIGINT (it writes the profile then); ``threads`` names each thread's stacks."""
    argv = [py_spy_binary(), "record", "--pid", str(pid), "--format", "raw", "--rate", str(rate)]
    argv += ["--nonblocking", "-o", str(out)]
    argv += ["--duration", str(int(seconds))] if seconds is not None else []
    argv += ["--threads"] if threads else []
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def tear_down(servers: list[Any], work: Path, *, keep: bool) -> None:
    """Stop the servers a benchmark started (those still running) and remove its work
    directory, or say where it was kept."""
    for server in servers:
        if server.is_running:
            server.stop()
    if keep:
        print(f"kept {work}", file=sys.stderr)
    else:
        shutil.rmtree(work, ignore_errors=True)
