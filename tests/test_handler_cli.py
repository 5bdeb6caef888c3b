"""The installed CLI run the way Serf runs it: SERF_* environment, bytes on stdin, a subprocess."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest
from jsonschema.validators import validator_for

from serfbridge import __version__
from serfbridge.capture import paths, relay_ids, respond
from serfbridge.schema import EVENT_SCHEMA

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping, Sequence
    from pathlib import Path

    from support.servers import BlackholeServer, HttpReceiver, Mosquitto, RedisServer

from support.ports import free_port

N2_JOIN = b"n2\t127.0.0.1\tdb\tdc=east,role=db\n"
N3_LINE = b"n3\t127.0.0.1\tweb\tmy-tag.v=a,b=c,role=web,dc=east,tv=x\\ty\\nz\n"
NODE = {"SERF_SELF_NAME": "n2", "SERF_SELF_ROLE": "cache", "SERF_TAG_ROLE": "cache"}
MARKER = re.compile(rb"\n\[truncated by serfbridge: \d+ bytes, limit \d+\]\n\Z")
RUN_TIMEOUT = 60.0


def member_env(event: str) -> dict[str, str]:
    return {"SERF_EVENT": event, **NODE}


def user_env(name: str = "deploy", ltime: int = 1) -> dict[str, str]:
    return {"SERF_EVENT": "user", **NODE, "SERF_USER_EVENT": name, "SERF_USER_LTIME": str(ltime)}


def query_env(name: str = "load", ltime: int = 1) -> dict[str, str]:
    return {"SERF_EVENT": "query", **NODE, "SERF_QUERY_NAME": name, "SERF_QUERY_LTIME": str(ltime)}


def toml(value: object) -> str:
    """A TOML value for a str or a list of str (JSON strings are TOML basic strings)."""
    return json.dumps(value, ensure_ascii=False)


def assert_no_traceback(proc: subprocess.CompletedProcess[bytes]) -> None:
    assert b"Traceback" not in proc.stdout, proc.stdout
    assert b"Traceback" not in proc.stderr, proc.stderr


@dataclass
class Bridge:
    """One serfbridge installation under test: config, state and cache under ``root``."""

    cmd: list[str]
    root: Path

    @property
    def config(self) -> Path:
        return self.root / "serfbridge.toml"

    @property
    def state(self) -> Path:
        return self.root / "state"

    @property
    def log(self) -> Path:
        return self.root / "serfbridge.log"

    def write_config(self, body: str = "", *, log_file: str | None = None) -> Path:
        """Top-level settings first (state, log, no deliverer), then ``body``."""
        head = (
            f"state_dir = {toml(str(self.state))}\n"
            f"log_file = {toml(log_file or str(self.log))}\n"
            "spawn_deliverer = false\n"
        )
        self.config.write_text(head + body, encoding="utf-8")
        return self.config

    def env(self, serf: Mapping[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ)  # SERF_*/SERFBRIDGE_* already scrubbed by conftest
        env.update(
            {
                "HOME": str(self.root / "home"),
                "XDG_STATE_HOME": str(self.root / "xdg-state"),
                "XDG_CACHE_HOME": str(self.root / "xdg-cache"),
                "SERFBRIDGE_CACHE_DIR": str(self.root / "cache"),
                "SERFBRIDGE_CONFIG": str(self.config),
            }
        )
        env.update(serf or {})
        return env

    def popen(
        self, serf: Mapping[str, str] | None, args: Sequence[str] = ()
    ) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [*self.cmd, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=self.env(serf),
            cwd=self.root,
        )

    def run(
        self,
        serf: Mapping[str, str] | None,
        stdin: bytes = b"",
        args: Sequence[str] = (),
        timeout: float = RUN_TIMEOUT,
    ) -> subprocess.CompletedProcess[bytes]:
        proc = subprocess.run(
            [*self.cmd, *args],
            input=stdin,
            capture_output=True,
            env=self.env(serf),
            cwd=self.root,
            timeout=timeout,
            check=False,
        )
        assert_no_traceback(proc)
        return proc

    def lines(self, path: Path | None = None) -> list[bytes]:
        target = path or self.state / "events.jsonl"
        if not target.exists():
            return []
        data = target.read_bytes()
        assert not data or data.endswith(b"\n"), "the last record is not a whole line"
        return data.splitlines()

    def events(self, path: Path | None = None) -> list[Any]:
        return [json.loads(line) for line in self.lines(path)]

    def rejected(self, state: Path | None = None) -> list[Any]:
        folder = (state or self.state) / "spool" / "rejected"
        if not folder.exists():
            return []
        return [json.loads(p.read_bytes()) for p in sorted(folder.glob("*.json"))]


@pytest.fixture
def bridge(tmp_path: Path, serfbridge_cmd: list[str]) -> Bridge:
    """A Bridge with the default config (every event to <state>/events.jsonl)."""
    b = Bridge(serfbridge_cmd, tmp_path)
    b.write_config()
    return b


@pytest.fixture(scope="module")
def schema_validator() -> Any:
    cls = validator_for(EVENT_SCHEMA)
    return cls(EVENT_SCHEMA)


# --------------------------------------------------------------------------- capture

EVERY_EVENT = [
    pytest.param(member_env("member-join"), N2_JOIN, id="member-join"),
    pytest.param(member_env("member-leave"), N3_LINE, id="member-leave"),
    pytest.param(member_env("member-failed"), N2_JOIN, id="member-failed"),
    pytest.param(member_env("member-update"), N2_JOIN + N3_LINE, id="member-update"),
    pytest.param(member_env("member-reap"), N2_JOIN, id="member-reap"),
    pytest.param(user_env(), b"payload\n", id="user"),
    pytest.param(user_env(), b"\xff\xfe\x01\x02hello\x80\n", id="user-binary"),
    pytest.param(user_env(), b"", id="user-empty"),
    pytest.param(query_env(), b"?\n", id="query-without-responder"),
]


@pytest.mark.parametrize(("serf", "stdin"), EVERY_EVENT)
def test_every_event_type_gives_one_line(
    bridge: Bridge, schema_validator: Any, serf: dict[str, str], stdin: bytes
) -> None:
    """Each event appends exactly one JSON line; stdout and stderr stay empty."""
    proc = bridge.run(serf, stdin)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, b"", b"")
    events = bridge.events()
    assert len(events) == 1
    schema_validator.validate(events[0])
    assert events[0]["event"] == serf["SERF_EVENT"]
    assert events[0]["node"]["name"] == "n2"
    assert events[0]["truncated"] is False


def test_relayed_repeat_is_recorded_once(bridge: Bridge) -> None:
    """A relay's resend (same id trailer, new Lamport time) is dropped; the event is recorded
    once, with the payload as sent. Another id is another event."""
    first = relay_ids.attach(b"v2", relay_ids.make("entry-1"))
    other = relay_ids.attach(b"v2", relay_ids.make("entry-2"))
    for ltime, stdin in ((5, first), (8, first), (9, other)):
        proc = bridge.run(user_env(ltime=ltime), stdin + b"\n")
        assert (proc.returncode, proc.stdout, proc.stderr) == (0, b"", b"")
    events = bridge.events()
    assert [(e["ltime"], e["payload"]) for e in events] == [(5, "v2"), (9, "v2")]
    assert "repeat of a relayed event dropped" in bridge.log.read_text()


def test_events_accumulate_in_order(bridge: Bridge) -> None:
    """Successive events append successive lines."""
    for ltime in range(1, 4):
        assert bridge.run(user_env(ltime=ltime), b"p\n").returncode == 0
    assert [e["ltime"] for e in bridge.events()] == [1, 2, 3]


def test_bare_handler_with_explicit_config_flag(bridge: Bridge) -> None:
    """`serfbridge --config PATH` with SERF_EVENT set handles the event (no subcommand)."""
    env = {**user_env(), "SERFBRIDGE_CONFIG": str(bridge.root / "unused.toml")}
    proc = bridge.run(env, b"x\n", args=["--config", str(bridge.config)])
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, b"", b"")
    assert len(bridge.events()) == 1


def test_sink_filter(bridge: Bridge) -> None:
    """A sink with events = "user:deploy" only gets deploy user events."""
    deploys, everything = bridge.root / "deploys.jsonl", bridge.root / "all.jsonl"
    bridge.write_config(
        "[[sinks]]\ntype = 'file'\nname = 'deploys'\n"
        f"path = {toml(str(deploys))}\nevents = 'user:deploy'\n"
        f"[[sinks]]\ntype = 'file'\nname = 'all'\npath = {toml(str(everything))}\n"
    )
    inputs = [
        (user_env("deploy"), b"v1\n"),
        (user_env("other"), b"v2\n"),
        (user_env("deployx"), b"v3\n"),
        (member_env("member-join"), N2_JOIN),
        (query_env("deploy"), b"v4\n"),
    ]
    for serf, stdin in inputs:
        proc = bridge.run(serf, stdin)
        assert (proc.returncode, proc.stdout, proc.stderr) == (0, b"", b"")
    assert [(e["event"], e["name"]) for e in bridge.events(deploys)] == [("user", "deploy")]
    assert len(bridge.events(everything)) == len(inputs)
    assert not (bridge.state / "events.jsonl").exists()


def test_no_sinks_records_nothing(bridge: Bridge) -> None:
    """sinks = [] records nothing and still succeeds."""
    bridge.write_config("sinks = []\n")
    proc = bridge.run(user_env(), b"x\n")
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, b"", b"")
    assert bridge.lines() == []


# --------------------------------------------------------------------------- bad input

BAD_INPUT = [
    pytest.param([], member_env("member-bogus"), N2_JOIN, "unknown SERF_EVENT", id="unknown-type"),
    pytest.param(
        [], member_env("member-join"), b"garbage\n\x00\xff", "member line 1", id="garbage"
    ),
    pytest.param([], user_env(ltime=-1), b"x\n", "negative", id="negative-ltime"),
]


@pytest.mark.parametrize(("args", "serf", "stdin", "reason"), BAD_INPUT)
def test_bad_input_exits_4_and_keeps_raw(
    bridge: Bridge, args: list[str], serf: dict[str, str], stdin: bytes, reason: str
) -> None:
    """Bad input exits 4 and is kept raw (env + stdin) in spool/rejected."""
    proc = bridge.run(serf, stdin, args=args)
    assert proc.returncode == 4
    assert proc.stdout == b""
    assert bridge.lines() == []
    (kept,) = bridge.rejected()
    assert reason in kept["reason"]
    assert base64.b64decode(kept["stdin_base64"]) == stdin
    assert kept["env"] == serf
    assert reason in bridge.log.read_text()


def test_stdin_over_limit_exits_5_and_records(bridge: Bridge) -> None:
    """A payload over max_input_bytes exits 5; the cut event is recorded with truncated=true."""
    bridge.write_config("max_input_bytes = 1024\n")
    proc = bridge.run(user_env(), b"x" * 5000 + b"\n")
    assert (proc.returncode, proc.stdout) == (5, b"")
    (event,) = bridge.events()
    assert event["truncated"] is True
    assert event["payload"] == "x" * 1024


def test_member_stdin_over_limit_keeps_whole_lines(bridge: Bridge) -> None:
    """Member stdin over the limit keeps only the whole lines within it."""
    bridge.write_config("max_input_bytes = 1024\n")
    stdin = b"".join(b"m%02d\t127.0.0.1\tweb\tdc=east,role=web\n" % i for i in range(60))
    proc = bridge.run(member_env("member-join"), stdin)
    assert proc.returncode == 5
    (event,) = bridge.events()
    assert event["truncated"] is True
    whole = stdin[:1024].count(b"\n")
    assert [m["name"] for m in event["members"]] == [f"m{i:02d}" for i in range(whole)]


@dataclass
class DefaultState:
    """The default state dir a handler falls back to when it has no usable config.

    HOME and XDG_STATE_HOME point into tmp_path, but as root the default is
    /var/lib/serfbridge whatever they say; so records are found by a per-test marker tag,
    and exactly those (plus directories this test created) are removed afterwards.
    """

    rejected_dir: str
    marker: str

    def tag(self, serf: Mapping[str, str]) -> dict[str, str]:
        return {**serf, "SERF_TAG_SERFBRIDGE_TEST": self.marker}

    def records(self) -> dict[str, Any]:
        found: dict[str, Any] = {}
        if not os.path.isdir(self.rejected_dir):
            return found
        for name in os.listdir(self.rejected_dir):
            path = os.path.join(self.rejected_dir, name)
            try:
                with open(path, "rb") as fh:
                    record = json.load(fh)
            except (OSError, ValueError):
                continue
            if record.get("env", {}).get("SERF_TAG_SERFBRIDGE_TEST") == self.marker:
                found[path] = record
        return found


@pytest.fixture
def default_state(bridge: Bridge, monkeypatch: pytest.MonkeyPatch) -> Iterator[DefaultState]:
    for key in ("HOME", "XDG_STATE_HOME"):
        monkeypatch.setenv(key, bridge.env()[key])
    state = paths.default_state_dir()
    chain = [state, os.path.join(state, "spool"), os.path.join(state, "spool", "rejected")]
    created = [d for d in chain if not os.path.exists(d)]
    helper = DefaultState(chain[-1], f"t-{uuid.uuid4().hex}")
    try:
        yield helper
    finally:
        for path in helper.records():
            os.unlink(path)
        for directory in reversed(created):
            try:
                os.rmdir(directory)
            except OSError:
                pass  # not empty: something else uses it now


def test_invalid_config_exits_3_and_keeps_raw(bridge: Bridge) -> None:
    """An invalid config exits 3 and keeps the raw event in the state_dir the file states."""
    bridge.write_config("bogus_key = 1\n")
    serf = user_env()
    proc = bridge.run(serf, b"kept\n")
    assert proc.returncode == 3
    assert proc.stdout == b""
    assert b"bogus_key" in proc.stderr
    assert proc.stderr.count(b"\n") == 1
    (record,) = bridge.rejected()
    assert base64.b64decode(record["stdin_base64"]) == b"kept\n"
    assert record["env"] == serf
    assert "bogus_key" in record["reason"]
    assert not (bridge.state / "events.jsonl").exists()


def test_unreadable_config_keeps_raw_in_serfbridge_state_dir(bridge: Bridge) -> None:
    """Invalid TOML: the event is kept under SERFBRIDGE_STATE_DIR when that is set."""
    bridge.config.write_text("state_dir = [unclosed\n", encoding="utf-8")
    elsewhere = bridge.root / "env-state"
    proc = bridge.run({**user_env(), "SERFBRIDGE_STATE_DIR": str(elsewhere)}, b"kept\n")
    assert proc.returncode == 3
    assert b"invalid TOML" in proc.stderr
    (record,) = bridge.rejected(elsewhere)
    assert base64.b64decode(record["stdin_base64"]) == b"kept\n"


def test_missing_explicit_config_exits_3(bridge: Bridge, default_state: DefaultState) -> None:
    """SERFBRIDGE_CONFIG naming a missing file: a query exits 3 with no output, event kept."""
    missing = str(bridge.root / "missing.toml")
    serf = {**default_state.tag(query_env()), "SERFBRIDGE_CONFIG": missing}
    proc = bridge.run(serf, b"?\n")
    assert (proc.returncode, proc.stdout, proc.stderr) == (3, b"", b"")
    (record,) = default_state.records().values()
    assert f"config file {missing} does not exist" in record["reason"]


# --------------------------------------------------------------------------- commands


def test_bare_without_serf_event_exits_2(bridge: Bridge) -> None:
    """Bare `serfbridge` outside Serf exits 2 with a one-line message on stderr."""
    proc = bridge.run(None)
    assert proc.returncode == 2
    assert proc.stdout == b""
    assert proc.stderr.endswith(b"\n")
    assert proc.stderr.count(b"\n") == 1
    assert b"SERF_EVENT" in proc.stderr


def test_version(bridge: Bridge) -> None:
    """`serfbridge --version` prints the version on one line and exits 0."""
    proc = bridge.run(None, args=["--version"])
    assert proc.returncode == 0
    assert re.fullmatch(
        rb"serfbridge " + re.escape(__version__.encode()) + rb" \(.*\)\n", proc.stdout
    )


def test_schema_command(bridge: Bridge) -> None:
    """`serfbridge schema` prints the event JSON Schema as valid JSON."""
    proc = bridge.run(None, args=["schema"])
    assert proc.returncode == 0
    printed = json.loads(proc.stdout)
    assert printed == EVENT_SCHEMA
    validator_for(printed).check_schema(printed)


def test_check_good_config(bridge: Bridge) -> None:
    """`serfbridge check` exits 0 for a valid config and lists the sinks."""
    proc = bridge.run(None, args=["check"])
    assert proc.returncode == 0
    assert b"ok" in proc.stdout
    assert b"sink default: type=file" in proc.stdout
    assert proc.stderr == b""


def test_check_bad_config(bridge: Bridge) -> None:
    """`serfbridge check` exits 3 and names the bad key for an invalid config."""
    bridge.write_config("[serf]\nrpc_adr = '127.0.0.1:7373'\n")
    proc = bridge.run(None, args=["check"])
    assert proc.returncode == 3
    assert b"rpc_adr" in proc.stderr
    assert str(bridge.config).encode() in proc.stderr


def _network_sinks(hook: str, redis_url: str, mqtt_url: str) -> str:
    return (
        f'[[sinks]]\ntype = "webhook"\nname = "hook"\nurl = {toml(hook)}\ntimeout = 1\n'
        f'[[sinks]]\ntype = "redis"\nname = "stream"\nurl = {toml(redis_url)}\ntimeout = 1\n'
        f'[[sinks]]\ntype = "mqtt"\nname = "bus"\nurl = {toml(mqtt_url)}\ntimeout = 1\n'
    )


def test_check_connect_reaches_every_sink(
    bridge: Bridge, http_receiver: HttpReceiver, redis_server: RedisServer, mosquitto: Mosquitto
) -> None:
    """`check --connect` connects to a real receiver, redis-server and mosquitto: exit 0."""
    bridge.write_config(_network_sinks(http_receiver.url, redis_server.url, mosquitto.url))
    proc = bridge.run(None, args=["check", "--connect"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for name in ("hook", "stream", "bus"):
        assert re.search(rf"^sink {name}: .*: reachable$", proc.stdout.decode(), re.M)


def test_check_connect_names_each_unreachable_sink(
    bridge: Bridge, redis_server: RedisServer, mosquitto: Mosquitto
) -> None:
    """A closed webhook port, a stopped redis-server and a stopped broker: each named, exit 6."""
    bridge.write_config(
        _network_sinks(f"http://127.0.0.1:{free_port()}/", redis_server.url, mosquitto.url)
    )
    redis_server.stop()
    mosquitto.stop()
    started = time.monotonic()
    proc = bridge.run(None, args=["check", "--connect"])
    elapsed = time.monotonic() - started
    out = proc.stdout.decode()
    assert proc.returncode == 6, out
    for name in ("hook", "stream", "bus"):
        assert re.search(rf"^sink {name}: .*: UNREACHABLE: \S", out, re.M), out
    assert elapsed < RUN_TIMEOUT, "every sink's timeout bounds the check"


def test_check_connect_https_webhook_does_the_tls_handshake(
    bridge: Bridge, blackhole: BlackholeServer
) -> None:
    """https to a server that accepts TCP but never speaks TLS is unreachable within timeout."""
    bridge.write_config(
        f'[[sinks]]\ntype = "webhook"\nname = "hook"\n'
        f'url = "https://127.0.0.1:{blackhole.port}/"\ntimeout = 1\n'
    )
    proc = bridge.run(None, args=["check", "--connect"], timeout=15)
    assert proc.returncode == 6
    assert re.search(r"^sink hook: .*: UNREACHABLE: .*timed out", proc.stdout.decode(), re.M)


def test_check_rejects_unknown_responder_field(bridge: Bridge) -> None:
    """`serfbridge check` rejects a responder text with an unknown {field}."""
    bridge.write_config("[[responders]]\nquery = 'load'\ntext = 'load {bogus}'\n")
    proc = bridge.run(None, args=["check"])
    assert proc.returncode == 3


# --------------------------------------------------------------------------- queries


def _responder(bridge: Bridge, spec: str, *, extra: str = "") -> None:
    """Config with one responder for query "load"; logs go to stderr at debug level."""
    bridge.write_config(
        f"log_level = 'debug'\n{extra}[[responders]]\nquery = 'load'\n{spec}", log_file="-"
    )


def test_text_responder(bridge: Bridge) -> None:
    """A text responder writes exactly the rendered text; stderr stays empty with log_file "-"."""
    _responder(bridge, "text = 'load from {node} role={role} ltime={ltime} payload=[{payload}]'\n")
    proc = bridge.run(query_env(ltime=7), b"hello\n")
    assert proc.returncode == 0
    assert proc.stdout == b"load from n2 role=cache ltime=7 payload=[hello]"
    assert proc.stderr == b""
    (event,) = bridge.events()
    assert (event["event"], event["name"], event["payload"]) == ("query", "load", "hello")


def test_other_query_gets_no_answer(bridge: Bridge) -> None:
    """A query without a matching responder gets no output at all."""
    _responder(bridge, "text = 'x'\n")
    proc = bridge.run(query_env("other"), b"hello\n")
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, b"", b"")


def test_non_query_logs_to_stderr_with_dash(bridge: Bridge) -> None:
    """With log_file "-", a non-query event may log to stderr, but never to stdout."""
    _responder(bridge, "text = 'x'\n")
    proc = bridge.run(user_env(), b"x\n")
    assert proc.returncode == 0
    assert proc.stdout == b""


COMMAND_ECHO = (
    "import json, sys; d = json.load(sys.stdin); "
    "sys.stdout.write(d['name'] + ':' + d['payload'] + ':' + d['node']['name'])"
)


def test_command_responder(bridge: Bridge) -> None:
    """A command responder reads the event JSON on stdin; its stdout is the answer."""
    _responder(bridge, f"command = {toml([sys.executable, '-c', COMMAND_ECHO])}\n")
    proc = bridge.run(query_env(), b"ping\n")
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, b"load:ping:n2", b"")


def test_command_exit_3_gives_visible_error(bridge: Bridge) -> None:
    """A command that exits 3 yields a visible error answer (exit 0 so Serf sends it)."""
    code = "import sys; sys.stderr.write('oops-private'); sys.exit(3)"
    _responder(bridge, f"command = {toml([sys.executable, '-c', code])}\n")
    proc = bridge.run(query_env(), b"ping\n")
    assert proc.returncode == 0
    assert b"exit status 3" in proc.stdout
    assert b"oops-private" not in proc.stdout
    assert proc.stderr == b""


SLEEPER = (
    "import os, sys, time; open(sys.argv[1], 'w').write(str(os.getpid())); "
    "sys.stdout.write('never'); sys.stdout.flush(); time.sleep(60)"
)


@contextmanager
def _query_a_sleeper(
    bridge: Bridge, keys: str, extra: str = ""
) -> Iterator[tuple[subprocess.CompletedProcess[bytes], float, int]]:
    """A command responder that sleeps 60 s, with ``keys`` (e.g. its timeout): one query.

    Yields (the handler run, its duration, the responder's pid); a responder that survived
    is killed afterwards.
    """
    pidfile = bridge.root / "responder.pid"
    argv = [sys.executable, "-c", SLEEPER, str(pidfile)]
    _responder(bridge, f"command = {toml(argv)}\n{keys}", extra=extra)
    assert bridge.run(user_env(), b"warm the config cache\n").returncode == 0

    started = time.monotonic()
    proc = bridge.run(query_env(), b"ping\n", timeout=30)
    elapsed = time.monotonic() - started
    pid = int(pidfile.read_text())
    try:
        yield proc, elapsed, pid
    finally:
        _kill_if_ours(pid, SLEEPER)


def test_command_timeout_is_killed(bridge: Bridge) -> None:
    """A command that sleeps past its timeout is killed and answered within timeout + 1 s."""
    with _query_a_sleeper(bridge, "timeout = 1.0\n") as (proc, elapsed, pid):
        assert proc.returncode == 0
        assert b"timed out" in proc.stdout
        assert b"never" not in proc.stdout
        assert proc.stderr == b""
        assert elapsed < 1.0 + 1.0, f"answered after {elapsed:.2f} s"
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_deadline_cuts_a_longer_responder_timeout(bridge: Bridge) -> None:
    """`deadline = 1` bounds the whole run: a responder allowed 30 s is killed after ~1 s."""
    with _query_a_sleeper(bridge, "timeout = 30\n", extra="deadline = 1\n") as (
        proc,
        elapsed,
        pid,
    ):
        assert proc.returncode == 0
        assert b"timed out" in proc.stdout
        assert elapsed < 10, f"answered after {elapsed:.2f} s, not at the 1 s deadline"
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def _kill_if_ours(pid: int, marker: str) -> None:
    """Clean up a responder that survived (only if /proc shows it is ours)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            cmdline = fh.read()
    except OSError:
        return
    if marker.encode() in cmdline:
        os.kill(pid, 9)


@pytest.mark.parametrize("limit", [1024, 4096])
def test_long_answer_is_cut_to_fit(bridge: Bridge, limit: int) -> None:
    """An answer over query_response_size_limit is cut to the payload budget with a marker."""
    code = "import sys; sys.stdout.write('y' * 20000)"
    _responder(
        bridge,
        f"command = {toml([sys.executable, '-c', code])}\n",
        extra=f"query_response_size_limit = {limit}\n",
    )
    proc = bridge.run(query_env(ltime=300), b"big\n")
    assert proc.returncode == 0
    assert len(proc.stdout) <= respond.payload_budget(limit, "n2", 300)
    assert len(proc.stdout) >= respond.payload_budget(limit, "n2", 300) - 60
    assert proc.stdout.startswith(b"yyyy")
    assert MARKER.search(proc.stdout)
    assert proc.stderr == b""


def test_truncated_query_still_answers(bridge: Bridge) -> None:
    """A query whose payload exceeds max_input_bytes is still answered (exit 0)."""
    _responder(bridge, "text = 'ok'\n", extra="max_input_bytes = 1024\n")
    proc = bridge.run(query_env(), b"q" * 2000 + b"\n")
    assert proc.stdout == b"ok"
    assert proc.returncode == 0


# --------------------------------------------------------------------------- robustness


def test_non_utf8_tag_value_is_not_lost(bridge: Bridge) -> None:
    """A SERF_TAG_* value with invalid UTF-8 bytes is recorded or kept, never lost."""
    serf = {**user_env(), "SERF_TAG_BIN": os.fsdecode(b"a\xffb")}
    proc = bridge.run(serf, b"x\n")
    assert proc.returncode in (0, 4)
    assert len(bridge.lines()) + len(bridge.rejected()) == 1


def test_concurrent_appends_stay_whole(bridge: Bridge) -> None:
    """20 handlers started at once each append one whole, parseable line."""
    assert bridge.run(user_env(ltime=0), b"warm\n").returncode == 0
    payloads = {i: f"{i:02d}" + "p" * 6000 for i in range(1, 21)}
    procs = [(i, bridge.popen(user_env(ltime=i))) for i in payloads]
    results: dict[int, tuple[int, bytes, bytes]] = {}
    try:
        for i, proc in procs:
            out, err = proc.communicate((payloads[i] + "\n").encode(), timeout=RUN_TIMEOUT)
            results[i] = (proc.returncode, out, err)
    finally:
        for _, proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert all(r == (0, b"", b"") for r in results.values()), results
    events = bridge.events()[1:]
    assert len(events) == 20
    assert {e["ltime"]: e["payload"] for e in events} == payloads
