"""serfbridge.exe under wine: the same documents as on Linux, Windows paths, queries, sinks.

Run after `installers/windows/build-wine.sh`: `pytest --artifacts -m wine` (docs/building.md).
Every exe start costs seconds under wine, so the cases are few and batched per test; nothing
here measures time.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from typing import TYPE_CHECKING, Any

import pytest
from support.bridge import BridgeNode
from support.handler import run_handler
from support.ports import free_port, wait_for
from support.proc import MissingBinaryError
from support.relay import RelayProcess, Watcher, http_source, post
from support.serf import SerfAgent
from support.wine import Wine, prefix_from_dist, windows_serf_agent

from serfbridge import __version__

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from support.serf import SerfClusterFactory
    from support.servers import HttpReceiver, Mosquitto, RedisServer

pytestmark = [pytest.mark.artifact, pytest.mark.wine]

NODE = {"SERF_SELF_NAME": "n1", "SERF_SELF_ROLE": "web", "SERF_TAG_ROLE": "web",
        "SERF_TAG_DC": "east"}  # fmt: skip
LINE = b"n2\t127.0.0.1\tdb\tdc=east,role=db\n"
# (SERF_* beyond the node's, stdin) for every event type Serf runs a handler for.
CASES: list[tuple[dict[str, str], bytes]] = [
    ({"SERF_EVENT": "member-join"}, LINE + b"n3\t127.0.0.1\t\t\n"),
    ({"SERF_EVENT": "member-leave"}, LINE),
    ({"SERF_EVENT": "member-failed"}, LINE),
    ({"SERF_EVENT": "member-update"}, b"n2\t127.0.0.1\tdb\tdc=west,role=db,v=x\\ty\n"),
    ({"SERF_EVENT": "member-reap"}, LINE),
    ({"SERF_EVENT": "user", "SERF_USER_EVENT": "deploy", "SERF_USER_LTIME": "5"},
     b"v9 \xe2\x9c\x93\n"),
    ({"SERF_EVENT": "user", "SERF_USER_EVENT": "bin", "SERF_USER_LTIME": "6"}, b"\x00\xff\r\n"),
    ({"SERF_EVENT": "query", "SERF_QUERY_NAME": "ping", "SERF_QUERY_LTIME": "3"}, b"hi\n"),
]  # fmt: skip
RESPONDER = '[[responders]]\nquery = "ping"\ntext = "pong from {node}"\n'
PROGRAM_DATA_CONFIG = r"C:\ProgramData\serfbridge\serfbridge.toml"
# Fields that differ by nature between two runs or two platforms.
PLATFORM_FIELDS = ("received_at",)


@pytest.fixture(scope="module")
def windows_dist(dist_dir: Path) -> Path:
    path = dist_dir / "windows"
    if not (path / "serfbridge" / "serfbridge.exe").exists():
        pytest.fail(
            f"no Windows build in {path}: run installers/windows/build-wine.sh", pytrace=False
        )
    return path


@pytest.fixture(scope="module")
def wine(windows_dist: Path) -> Iterator[Wine]:
    try:
        w = Wine(prefix_from_dist(windows_dist))
    except MissingBinaryError as exc:
        pytest.fail(str(exc), pytrace=False)
    w.start()
    yield w
    w.stop()


@pytest.fixture
def exe(windows_dist: Path) -> str:
    return str(windows_dist / "serfbridge" / "serfbridge.exe")


class WindowsNode:
    r"""A config at %ProgramData%\serfbridge (the default location) and a state dir on C:."""

    def __init__(self, wine: Wine) -> None:
        self.wine = wine
        self.state = rf"C:\serfbridge-test\{uuid.uuid4().hex[:12]}\state"
        self.config = wine.host_path(PROGRAM_DATA_CONFIG)

    def write_config(self, body: str = "") -> None:
        self.config.parent.mkdir(parents=True, exist_ok=True)
        # TOML literal string: backslashes stay as they are.
        self.config.write_text(f"state_dir = '{self.state}'\nlog_level = \"debug\"\n{body}")

    def host(self, *parts: str) -> Path:
        return self.wine.host_path("\\".join([self.state, *parts]))

    def events(self) -> list[dict[str, Any]]:
        path = self.host("events.jsonl")
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]

    def log_tail(self) -> str:
        log = self.host("serfbridge.log")
        return log.read_text(encoding="utf-8")[-3000:] if log.exists() else "(no serfbridge.log)"


@pytest.fixture
def win_node(wine: Wine) -> Iterator[WindowsNode]:
    node = WindowsNode(wine)
    yield node
    node.config.unlink(missing_ok=True)


def _comparable(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k not in PLATFORM_FIELDS}


def test_exe_version(wine: Wine, exe: str) -> None:
    """serfbridge.exe --version: frozen, running on win32, built on Windows, one line."""
    proc = wine.run([exe, "--version"])
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.decode()
    assert out.startswith(f"serfbridge {__version__} (frozen onedir, python 3.11."), out
    assert ", win32-AMD64; built on windows-amd64 " in out, out
    assert out.count("\n") == 1


def test_every_event_type_same_document_as_linux(
    wine: Wine,
    exe: str,
    win_node: WindowsNode,
    serfbridge_cmd: list[str],
    tmp_path: Path,
) -> None:
    r"""Each event type from env + stdin gives the Linux document; state on C:\, config from
    %ProgramData%, and the query's answer on stdout."""
    win_node.write_config(RESPONDER)
    linux = BridgeNode(tmp_path, "n1")
    linux.write_config(RESPONDER)
    for extra, stdin in CASES:
        env = {**NODE, **extra}
        win = wine.run([exe], env=env, stdin=stdin)
        assert win.returncode == 0, win.stderr.decode(errors="replace") + win_node.log_tail()
        lin = run_handler(serfbridge_cmd, linux, extra["SERF_EVENT"], stdin=stdin,
                          extra={**NODE, **extra})  # fmt: skip
        assert lin.returncode == 0, lin.stderr
        assert win.stdout == lin.stdout, extra
        if extra["SERF_EVENT"] == "query":
            assert win.stdout == b"pong from n1"
        else:
            assert win.stdout == b""
    win_docs, lin_docs = win_node.events(), linux.events()
    assert len(win_docs) == len(CASES), win_node.log_tail()
    assert [_comparable(d) for d in win_docs] == [_comparable(d) for d in lin_docs]
    assert {d["event"] for d in win_docs} == {
        "member-join", "member-leave", "member-failed", "member-update", "member-reap",
        "user", "query",
    }  # fmt: skip
    # The document really came from the Windows run: its log sits next to it on C:.
    assert win_node.host("serfbridge.log").exists()


def test_exe_forwards_to_webhook_redis_mqtt(
    wine: Wine,
    exe: str,
    win_node: WindowsNode,
    http_receiver: HttpReceiver,
    redis_server: RedisServer,
    mosquitto: Mosquitto,
) -> None:
    r"""One user event: spooled under C:\...\spool, then delivered by the detached Windows
    deliverer to a webhook, a Redis stream and an MQTT broker on 127.0.0.1."""
    from paho.mqtt.client import Client
    from paho.mqtt.enums import CallbackAPIVersion

    got: list[dict[str, Any]] = []
    sub = Client(CallbackAPIVersion.VERSION2)
    sub.on_message = lambda _c, _u, msg: got.append(json.loads(msg.payload))
    sub.connect("127.0.0.1", mosquitto.port)
    sub.subscribe("serf/#", qos=1)
    sub.loop_start()
    try:
        win_node.write_config(
            f'[[sinks]]\ntype = "webhook"\nname = "hook"\nurl = "{http_receiver.url_for("w")}"\n'
            f'[[sinks]]\ntype = "redis"\nname = "stream"\nurl = "{redis_server.url}"\n'
            'stream = "serf:events"\n'
            f'[[sinks]]\ntype = "mqtt"\nname = "bus"\nurl = "mqtt://127.0.0.1:{mosquitto.port}"\n'
            'topic = "serf/{event}"\n'
            "[delivery]\nlinger = 2\nbackoff_initial = 0.2\nbackoff_max = 1\n"
        )
        env = {**NODE, "SERF_EVENT": "user", "SERF_USER_EVENT": "deploy", "SERF_USER_LTIME": "9"}
        proc = wine.run([exe], env=env, stdin=b"v9\n")
        assert proc.returncode == 0, proc.stderr.decode(errors="replace") + win_node.log_tail()
        assert win_node.host("spool").is_dir()  # the spool lives on the Windows path

        def delivered() -> bool:
            hooks = [r for r in http_receiver.requests if r.path == "/w"]
            return bool(hooks and redis_server.event_docs() and got)

        wait_for(delivered, timeout=120, what="webhook, redis and mqtt", detail=win_node.log_tail)
    finally:
        sub.loop_stop()
        sub.disconnect()
    ids = {
        "http": {r.json()["id"] for r in http_receiver.requests if r.path == "/w"},
        "redis": {d["id"] for d in redis_server.event_docs()},
        "mqtt": {d["id"] for d in got},
    }
    assert ids["http"] == ids["redis"] == ids["mqtt"]
    assert len(ids["http"]) == 1
    (doc,) = [r.json() for r in http_receiver.requests if r.path == "/w"]
    assert (doc["event"], doc["name"], doc["payload"], doc["node"]["name"]) == (
        "user", "deploy", "v9", "n1",
    )  # fmt: skip


# -- mixed-OS cluster --------------------------------------------------------------------


@pytest.fixture
def serf_exe(windows_dist: Path) -> Path:
    path = windows_dist / "serf.exe"
    if not path.exists():
        pytest.fail(f"{path} missing: run installers/windows/build-serf.sh", pytrace=False)
    return path


def test_mixed_cluster_events_and_queries_cross_platforms(
    wine: Wine,
    exe: str,
    serf_exe: Path,
    serf_bin: str,
    serfbridge_handler: str,
    serfbridge_cmd: list[str],
    win_node: WindowsNode,
    http_receiver: HttpReceiver,
    tmp_path: Path,
) -> None:
    """A Linux serf agent and a wine serf.exe agent, each with its own platform's serfbridge:
    a user event fired on either side reaches both handlers and their webhook sinks, a query
    from Linux gets the Windows node's answer, and the Linux relay raises an event that the
    Windows handler sees."""
    # A file sink next to the webhook: events.jsonl is what each handler itself recorded.
    sinks = (
        '[[sinks]]\ntype = "file"\nname = "local"\npath = \'{file}\'\n'
        '[[sinks]]\ntype = "webhook"\nname = "hook"\nurl = "{url}"\n'
        "[delivery]\nlinger = 5\nbackoff_initial = 0.2\nbackoff_max = 1\n"
    )
    win_file = win_node.state + "\\events.jsonl"
    linux = BridgeNode(tmp_path, "lin")
    lin_file = linux.state / "events.jsonl"
    linux.write_config(RESPONDER + sinks.format(file=lin_file, url=http_receiver.url_for("lin")))

    lin = SerfAgent("lin", tmp_path / "agent-lin", env=linux.env(), serf_bin=serf_bin,
                    handlers=["*=" + serfbridge_handler])  # fmt: skip
    win = windows_serf_agent(wine, serf_exe, "win", tmp_path / "agent-win", serf_bin=serf_bin,
                             handlers=[exe])  # fmt: skip
    # The Windows node also keeps the membership view on a C:\ path, reconciled against its
    # own agent over RPC by the Windows deliverer.
    win_members = win_node.state + "\\members.json"
    win_node.write_config(
        f'[serf]\nrpc_addr = "{win.rpc_addr}"\n'
        + RESPONDER
        + sinks.format(file=win_file, url=http_receiver.url_for("win"))
        + f'[[sinks]]\ntype = "members"\nname = "members"\npath = \'{win_members}\'\n'
    )
    agents: list[SerfAgent | RelayProcess] = [lin, win]
    try:
        lin.start()
        win.start(timeout=60)
        win.serf("join", lin.bind_addr, check=True)
        wait_for(lambda: lin.sees_alive(["lin", "win"]) and win.sees_alive(["lin", "win"]), 30,
                 what="both agents alive on both sides")  # fmt: skip

        def view() -> dict[str, str]:
            path = win_node.host("members.json")
            if not path.exists():
                return {}
            members = json.loads(path.read_text(encoding="utf-8"))["members"]
            return {name: m["status"] for name, m in members.items()}

        wait_for(lambda: view() == {"lin": "alive", "win": "alive"}, 120,
                 what="the Windows members view", detail=win_node.log_tail)  # fmt: skip

        lin.event("from-linux", "L1")
        # Fired on the Windows side with the Windows serf CLI.
        fired = wine.run([str(serf_exe), "event", f"-rpc-addr={win.rpc_addr}",
                          "-coalesce=false", "from-windows", "W1"], timeout=60)  # fmt: skip
        assert fired.returncode == 0, fired.stdout + fired.stderr

        def users(docs: list[dict[str, Any]]) -> set[tuple[str, str]]:
            return {(d["name"], d["payload"]) for d in docs if d["event"] == "user"}

        want = {("from-linux", "L1"), ("from-windows", "W1")}
        wait_for(lambda: want <= users(linux.events()), 60, what="linux handler saw both",
                 detail=linux.log_tail)  # fmt: skip
        wait_for(lambda: want <= users(win_node.events()), 120, what="windows handler saw both",
                 detail=win_node.log_tail)  # fmt: skip

        def hooked(path: str) -> set[tuple[str, str]]:
            return users([r.json() for r in http_receiver.requests if r.path == path])

        wait_for(lambda: want <= hooked("/lin") and want <= hooked("/win"), 120,
                 what="both webhook sinks got both events", detail=win_node.log_tail)  # fmt: skip
        # Same event, same id, whichever platform's handler produced the document.
        lin_ids = {d["id"] for d in linux.events() if d["event"] == "user"}
        win_ids = {d["id"] for d in win_node.events() if d["event"] == "user"}
        assert lin_ids == win_ids

        answer = lin.query("ping", None, "-timeout=20s")  # the CLI call itself allows 30 s
        assert answer["Responses"].get("win") == "pong from win", answer
        assert answer["Responses"].get("lin") == "pong from lin", answer
        assert {"lin", "win"} <= set(answer["Acks"])

        # The relay beside the Linux agent, driven over HTTP (a chatops bot, a CI job).
        port, token = free_port(), uuid.uuid4().hex
        relay = RelayProcess(
            tmp_path / "relay",
            serfbridge_cmd,
            http_source(port, token=token, allow_events=["from-relay"]),
            rpc_addr=lin.rpc_addr,
        )
        agents.append(relay)
        relay.start()
        status, _ = post(port, "/v1/event", {"name": "from-relay", "payload": "R1"}, token=token)
        assert status == 202
        wait_for(
            lambda: ("from-relay", "R1") in users(win_node.events()),
            120,
            what="windows handler saw the relayed event",
            detail=win_node.log_tail,
        )
    finally:
        for agent in reversed(agents):
            agent.stop()
        linux.kill_deliverer()


# -- NSIS installer and the service host --------------------------------------------------

INSTALL_DIR = r"C:\Program Files\serfbridge"
ENV_KEY = r"HKLM\SYSTEM\CurrentControlSet\Control\Session Manager\Environment"
SERVICES_KEY = r"HKLM\SYSTEM\CurrentControlSet\Services"


def _reg_value(wine: Wine, key: str, name: str) -> str | None:
    proc = wine.run(["reg", "query", key, "/v", name], timeout=60)
    for line in proc.stdout.decode(errors="replace").splitlines():
        parts = line.split(None, 2)
        if len(parts) == 3 and parts[0] == name:
            return parts[2].strip()
    return None


def _sc(wine: Wine, *args: str) -> str:
    proc = wine.run(["sc", *args], timeout=60)
    return proc.stdout.decode(errors="replace")


def _service_state(wine: Wine, name: str) -> str:
    for line in _sc(wine, "query", name).splitlines():
        if "STATE" in line:
            return line.split()[-1]
    return "MISSING"


@pytest.fixture
def setup_exe(windows_dist: Path) -> Path:
    found = sorted(windows_dist.glob("serfbridge-*-setup.exe"))
    if len(found) != 1:
        pytest.fail(f"expected one installer in {windows_dist}: run build-installer.sh",
                    pytrace=False)  # fmt: skip
    return found[0]


def test_installer_installs_service_path_config_and_uninstalls_clean(
    wine: Wine, setup_exe: Path, win_node: WindowsNode
) -> None:
    """setup.exe /S: Program Files, %ProgramData% config, PATH, the serfbridge-relay service;
    the installed service host starts and stops its command; uninstall removes all but data."""
    config = wine.host_path(PROGRAM_DATA_CONFIG)
    config.unlink(missing_ok=True)
    installed = wine.host_path(INSTALL_DIR)
    assert not installed.exists(), "a previous install was not removed"
    uninstaller = INSTALL_DIR + r"\uninstall.exe"
    key = SERVICES_KEY + r"\serfbridge-relay"
    try:
        proc = wine.run([str(setup_exe), "/S"], timeout=300)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        for name in ("serfbridge.exe", "_internal", "uninstall.exe", "serfbridge.example.toml"):
            assert (installed / name).exists(), name
        assert not list(installed.rglob("bcryptprimitives.dll"))
        assert config.read_text() == (installed / "serfbridge.example.toml").read_text()
        path = _reg_value(wine, ENV_KEY, "Path") or ""
        assert INSTALL_DIR in path.split(";"), path
        assert _reg_value(wine, key, "ImagePath") == (
            f'"{INSTALL_DIR}\\serfbridge.exe" --config "{PROGRAM_DATA_CONFIG}" service'
        )
        assert _reg_value(wine, key, "Start") == "0x3"  # manual, like the disabled Linux unit
        version = wine.run([INSTALL_DIR + r"\serfbridge.exe", "--version"])
        assert version.stdout.startswith(f"serfbridge {__version__} (frozen onedir".encode())

        # The service host under the real service manager: a second service, same exe, that
        # supervises `deliver` (which, unlike the relay, exists on every branch and stays up
        # for `linger` seconds), started and stopped with sc.exe.
        win_node.write_config("[delivery]\nlinger = 600\n")
        test_service = "serfbridge-host-test"
        command = (
            f'"{INSTALL_DIR}\\serfbridge.exe" --config "{PROGRAM_DATA_CONFIG}" service deliver'
        )
        _sc(wine, "create", test_service, "binPath=", command)
        try:
            _sc(wine, "start", test_service)
            wait_for(lambda: _service_state(wine, test_service) == "RUNNING", 60,
                     what="service RUNNING", detail=win_node.log_tail)  # fmt: skip
            wait_for(lambda: "deliverer started" in win_node.log_tail(), 60,
                     what="the deliverer to start", detail=win_node.log_tail)  # fmt: skip
            _sc(wine, "stop", test_service)
            wait_for(lambda: _service_state(wine, test_service) == "STOPPED", 60,
                     what="service STOPPED", detail=win_node.log_tail)  # fmt: skip
            assert 'msg="service: stopped"' in win_node.log_tail()
        finally:
            _sc(wine, "stop", test_service)
            _sc(wine, "delete", test_service)

        proc = wine.run([uninstaller, "/S"], timeout=120)
        assert proc.returncode == 0
        # The uninstaller re-runs itself from %TEMP% and returns at once: wait for it.
        wait_for(lambda: not installed.exists(), 120, what="the install dir to go away")
    finally:
        if installed.exists():
            wine.run([uninstaller, "/S"], timeout=120)
    assert _reg_value(wine, key, "ImagePath") is None
    assert INSTALL_DIR not in (_reg_value(wine, ENV_KEY, "Path") or "").split(";")
    uninst_key = r"HKLM\Software\Microsoft\Windows\CurrentVersion\Uninstall\serfbridge"
    assert _reg_value(wine, uninst_key, "DisplayName") is None
    assert config.exists()  # configuration and spool are the user's data: kept


class WineRelay(RelayProcess):
    """serfbridge.exe relay under wine. Its log goes through `| cat`: a Windows Python whose
    stderr is a Linux regular file dies (WINDOWS.md); Linux paths reach it as Z:\\ paths."""

    def __init__(self, wine: Wine, exe: str, workdir: Path, body: str, rpc_addr: str) -> None:
        super().__init__(workdir, [exe], body, rpc_addr=rpc_addr, env=wine.env())
        self.exe = exe

    def argv(self) -> list[str]:
        command = [self.exe, "--config", Wine.z_path(self.config), "relay"]
        return ["sh", "-c", 'wine "$@" 2>&1 | cat', "sh", *command]


def test_relay_named_pipe_and_send(
    wine: Wine, exe: str, serf_cluster: SerfClusterFactory, tmp_path: Path
) -> None:
    """On Windows the local source is a named pipe: serfbridge.exe relay serves it, and
    serfbridge.exe send raises an event and runs a query through it, against Linux agents."""
    cluster = serf_cluster(2)
    watch = Watcher(cluster[0])
    pipe = rf"\\.\pipe\serfbridge-test-{uuid.uuid4().hex[:8]}"
    body = (
        f"[[sources]]\ntype = 'local'\npath = '{pipe}'\n"
        "allow_events = ['deploy']\nallow_queries = ['load']\n"
    )
    relay = WineRelay(wine, exe, tmp_path / "relay", body, cluster[0].rpc_addr)
    config = Wine.z_path(relay.config)

    def send(*args: str) -> subprocess.CompletedProcess[bytes]:
        return wine.run([exe, "--config", config, "send", *args], timeout=120)

    try:
        with relay:
            relay.start(timeout=120)
            sent = send("event", "deploy", "via-pipe")
            assert sent.returncode == 0, sent.stdout + sent.stderr
            assert json.loads(sent.stdout) == {"accepted": True}
            wait_for(lambda: b"via-pipe" in watch.payloads(), 20, what="the event from the pipe")
            query = send("query", "load", "--timeout", "2")
            assert query.returncode == 0, query.stdout + query.stderr
            assert sorted(json.loads(query.stdout)["acks"]) == ["n1", "n2"]
            refused = send("event", "other")
            assert refused.returncode == 9
            assert json.loads(refused.stdout)["reason"] == "not_allowed"
        gone = send("event", "deploy")
        assert gone.returncode == 6, gone.stdout + gone.stderr
    finally:
        watch.close()
    assert "Traceback" not in relay.log_text()
