"""serfbridge.serf.rpc against real `serf agent` processes on free loopback ports (no mocks)."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pytest
from support.proc import wait_stopped

from serfbridge.serf.rpc import (
    QueryRecord,
    SerfCommandError,
    SerfRPC,
    SerfRPCError,
    SerfUnavailable,
    parse_addr,
)

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping
    from pathlib import Path

    from serfbridge.serf.wire import StreamRecord

pytestmark = pytest.mark.e2e

BINARY_PAYLOAD = b"a\x00b\xffc\n"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Agent:
    name: str
    proc: subprocess.Popen[bytes]
    bind_port: int
    rpc_addr: str
    log: Path


@dataclass
class Agents:
    """Starts `serf agent`s on free 127.0.0.1 ports; `stop_all` kills them by PID."""

    workdir: Path
    started: list[Agent] = field(default_factory=list)

    def start(
        self,
        name: str,
        *,
        tags: Mapping[str, str] | None = None,
        join: Agent | None = None,
        config: Mapping[str, object] | None = None,
        auth: str | None = None,
    ) -> Agent:
        serf = shutil.which("serf")
        if serf is None:
            pytest.fail("`serf` is not on PATH", pytrace=False)
        bind_port, rpc_addr = _free_port(), f"127.0.0.1:{_free_port()}"
        args = [
            serf,
            "agent",
            f"-node={name}",
            f"-bind=127.0.0.1:{bind_port}",
            f"-rpc-addr={rpc_addr}",
            "-log-level=debug",
        ]
        args += [f"-tag={key}={value}" for key, value in (tags or {}).items()]
        if join is not None:
            args.append(f"-join=127.0.0.1:{join.bind_port}")
        if config is not None:
            config_file = self.workdir / f"{name}.json"
            config_file.write_text(json.dumps(config))
            args.append(f"-config-file={config_file}")
        log = self.workdir / f"{name}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
            )
        agent = Agent(name, proc, bind_port, rpc_addr, log)
        self.started.append(agent)
        auth_args = [f"-rpc-auth={auth}"] if auth else []
        self.wait_for(agent, [serf, "members", f"-rpc-addr={rpc_addr}", *auth_args], lines=1)
        return agent

    def wait_for(self, agent: Agent, argv: list[str], *, lines: int, timeout: float = 15.0) -> None:
        """Poll a `serf` CLI command until it succeeds with at least `lines` lines of output."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if agent.proc.poll() is not None:
                pytest.fail(f"serf agent {agent.name} exited:\n{agent.log.read_text()[-2000:]}")
            done = subprocess.run(argv, capture_output=True, timeout=5, check=False)
            if done.returncode == 0 and len(done.stdout.splitlines()) >= lines:
                return
            time.sleep(0.05)
        pytest.fail(f"timed out waiting for {argv}:\n{agent.log.read_text()[-2000:]}")

    def stop_all(self) -> None:
        for agent in self.started:
            if agent.proc.poll() is None:
                agent.proc.kill()
            agent.proc.wait(timeout=10)


@pytest.fixture
def agents(tmp_path: Path) -> Iterator[Agents]:
    """Per-test agents, killed at teardown."""
    started = Agents(tmp_path)
    try:
        yield started
    finally:
        started.stop_all()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Agent, Agent]]:
    """Two joined agents: n1 (role=web) and n2 (role=db), both dc=east."""
    started = Agents(tmp_path_factory.mktemp("cluster"))
    try:
        n1 = started.start("n1", tags={"role": "web", "dc": "east"})
        n2 = started.start("n2", tags={"role": "db", "dc": "east"}, join=n1)
        for agent in (n1, n2):
            argv = ["serf", "members", f"-rpc-addr={agent.rpc_addr}", "-status=alive"]
            started.wait_for(agent, argv, lines=2)
        yield n1, n2
    finally:
        started.stop_all()


@pytest.mark.parametrize(
    ("addr", "expected"),
    [("127.0.0.1:7373", ("127.0.0.1", 7373)), ("[::1]:7374", ("::1", 7374)), ("h:1", ("h", 1))],
)
def test_parse_addr(addr: str, expected: tuple[str, int]) -> None:
    """host:port and [ipv6]:port are split into host and port."""
    assert parse_addr(addr) == expected


@pytest.mark.parametrize("addr", ["127.0.0.1", "::1:7373", ":7373", "h:0", "h:70000", "h:x"])
def test_parse_addr_rejects(addr: str) -> None:
    """A missing port, an unbracketed IPv6 address or a bad port is a ValueError."""
    with pytest.raises(ValueError, match=r"host:port|brackets"):
        parse_addr(addr)


def test_members_on_two_node_cluster(cluster: tuple[Agent, Agent]) -> None:
    """After the handshake, members() lists both nodes with text IP, gossip port and tags."""
    with SerfRPC(cluster[0].rpc_addr) as serf:
        members = {member.name: member for member in serf.members()}
    assert set(members) == {"n1", "n2"}
    for agent in cluster:
        member = members[agent.name]
        assert (member.addr, member.port, member.status) == ("127.0.0.1", agent.bind_port, "alive")
        assert member.protocol_min <= member.protocol_cur <= member.protocol_max
        assert 0 < member.delegate_min <= member.delegate_cur <= member.delegate_max
    assert members["n1"].tags == {"role": "web", "dc": "east"}
    assert members["n2"].tags == {"role": "db", "dc": "east"}


def test_members_filtered_uses_anchored_regexps(cluster: tuple[Agent, Agent]) -> None:
    """members_filtered() matches whole tag values and names, as Serf anchors them."""
    with SerfRPC(cluster[0].rpc_addr) as serf:
        assert serf.members_filtered(tags={"role": "d"}) == []
        assert [m.name for m in serf.members_filtered(tags={"role": "d.*"})] == ["n2"]
        assert [m.name for m in serf.members_filtered(name="n1", status="alive")] == ["n1"]


def test_event_reaches_stream_on_other_node(cluster: tuple[Agent, Agent]) -> None:
    """A user event fired on n1 reaches a stream on n2 with its binary payload byte for byte."""
    n1, n2 = cluster
    with SerfRPC(n2.rpc_addr) as receiver, SerfRPC(n1.rpc_addr) as sender:
        with receiver.stream("user:bin") as stream:
            sender.event("bin", BINARY_PAYLOAD, coalesce=False)
            record = stream.get(timeout=10)
        assert record is not None
        assert (record["Event"], record["Name"], record["Coalesce"]) == ("user", "bin", False)
        assert record["Payload"] == BINARY_PAYLOAD


def test_query_answered_by_stream_responder(cluster: tuple[Agent, Agent]) -> None:
    """A stream on n2 answers a query with respond() on the same connection; n1 gets it + done."""
    n1, n2 = cluster
    seen: list[StreamRecord] = []
    records: list[QueryRecord] = []
    with SerfRPC(n2.rpc_addr) as responder, SerfRPC(n1.rpc_addr) as querier:
        stream = responder.stream("query:ping")

        def answer() -> None:
            record = stream.get(timeout=10)
            if record is not None:
                seen.append(record)
                responder.respond(record["ID"], b"pong " + record["Payload"])

        thread = threading.Thread(target=answer, daemon=True)
        thread.start()
        result = querier.query(
            "ping", b"?", filter_nodes=["n2"], timeout=1.5, on_record=records.append
        )
        thread.join(timeout=10)
        assert not thread.is_alive()
        assert responder.members()  # the connection is still in sync after stream + respond
        stream.close()
    assert [(r["Event"], r["Name"], r["Payload"]) for r in seen] == [("query", "ping", b"?")]
    assert result.acks == ["n2"]
    assert result.responses == {"n2": b"pong ?"}
    # Serf's IPC loop selects between the ack and response channels at random when both are
    # ready (ipc_query_response_stream.go), so either may come first; done is always last.
    assert max(result.ack_times["n2"], result.response_times["n2"]) < result.duration
    assert sorted(r.type for r in records[:2]) == ["ack", "response"]
    assert [r.type for r in records[2:]] == ["done"]
    assert result.duration >= 1.4  # a query always lasts its full timeout


def test_query_size_limit_is_command_error(cluster: tuple[Agent, Agent]) -> None:
    """An oversized query or event raises SerfCommandError with Serf's message; the link lives."""
    with SerfRPC(cluster[0].rpc_addr) as serf:
        with pytest.raises(SerfCommandError, match=r"^query exceeds limit of 1024 bytes$"):
            serf.query("big", b"x" * 2000, timeout=1.0)
        with pytest.raises(SerfCommandError, match="user event exceeds configured limit of 512"):
            serf.event("big", b"x" * 600)
        assert len(serf.members()) == 2


def test_stream_stop_ends_iteration(cluster: tuple[Agent, Agent]) -> None:
    """Closing a stream ends its iterator; an invalid filter is Serf's command error."""
    with SerfRPC(cluster[0].rpc_addr) as serf:
        with pytest.raises(SerfCommandError, match=r"^Invalid event filter$"):
            serf.stream("member-bogus")
        stream = serf.stream("user:never")
        stream.close()
        assert list(stream) == []
        with pytest.raises(SerfRPCError, match="is stopped"):
            stream.get(timeout=0.1)
        assert serf.stats()["agent"]["name"] == "n1"


def test_rpc_auth(agents: Agents) -> None:
    """With rpc_auth set, a wrong key is refused, no key gets errors, the right key works."""
    agent = agents.start("a1", config={"rpc_auth": "s3cret"}, auth="s3cret")
    with pytest.raises(SerfCommandError, match=r"^Invalid authentication token$"):
        SerfRPC(agent.rpc_addr, auth_key="wrong").connect()
    with SerfRPC(agent.rpc_addr) as anonymous:
        for _ in range(2):  # the body-less error reply must not desynchronise the connection
            with pytest.raises(SerfCommandError, match=r"^Authentication required$"):
                anonymous.members()
    with SerfRPC(agent.rpc_addr, auth_key="s3cret") as serf:
        assert [member.name for member in serf.members()] == ["a1"]


def test_tags_update_shows_in_stats(agents: Agents) -> None:
    """tags() sets and deletes the agent's tags, as stats() then reports."""
    agent = agents.start("t1", tags={"role": "web", "dc": "east"})
    with SerfRPC(agent.rpc_addr) as serf:
        serf.tags({"role": "cache"}, delete_tags=["dc"])
        assert serf.stats()["tags"] == {"role": "cache"}
        assert serf.members()[0].tags == {"role": "cache"}


def test_closed_port_is_unavailable_quickly() -> None:
    """Connecting to a port nobody listens on raises SerfUnavailable at once."""
    started = time.monotonic()
    with pytest.raises(SerfUnavailable, match="cannot connect"):
        SerfRPC(f"127.0.0.1:{_free_port()}", timeout=3.0).connect()
    assert time.monotonic() - started < 1.0


def test_agent_killed_mid_stream(agents: Agents) -> None:
    """Killing the agent ends a blocked stream iterator with SerfUnavailable."""
    agent = agents.start("k1")
    outcome: dict[str, object] = {}
    with SerfRPC(agent.rpc_addr) as serf:
        stream = serf.stream("*")
        first = threading.Event()

        def consume() -> None:
            try:
                for _record in stream:
                    first.set()
                outcome["ended"] = True
            except SerfRPCError as exc:
                outcome["error"] = exc

        thread = threading.Thread(target=consume, daemon=True)
        thread.start()
        serf.event("alive", b"1", coalesce=False)
        assert first.wait(timeout=10)
        agent.proc.kill()
        agent.proc.wait(timeout=10)
        thread.join(timeout=10)
        assert not thread.is_alive()
        assert isinstance(outcome.get("error"), SerfUnavailable), outcome
        with pytest.raises(SerfUnavailable):
            serf.members()
        with pytest.raises(SerfUnavailable, match="cannot connect"):
            serf.connect()


def test_late_reply_after_timeout_is_dropped(agents: Agents) -> None:
    """A reply that misses its deadline is SerfUnavailable; when it comes late it is dropped."""
    agent = agents.start("p1")
    with SerfRPC(agent.rpc_addr, timeout=0.5) as serf:
        agent.proc.send_signal(signal.SIGSTOP)
        wait_stopped(agent.proc.pid)
        try:
            with pytest.raises(SerfUnavailable, match="no reply to 'members'"):
                serf.members()
        finally:
            agent.proc.send_signal(signal.SIGCONT)
        # The resumed agent may need more than 0.5 s on a busy machine; same connection still.
        serf.timeout = 10.0
        assert serf.stats()["agent"]["name"] == "p1"  # the late members body did not desync us
        assert [member.name for member in serf.members()] == ["p1"]


def test_concurrent_calls_share_one_connection(cluster: tuple[Agent, Agent]) -> None:
    """Calls from several threads, while a stream is open, each get their own reply."""
    errors: list[BaseException] = []
    with SerfRPC(cluster[0].rpc_addr) as serf, serf.stream("user:many") as stream:

        def work() -> None:
            try:
                for _ in range(50):
                    assert len(serf.members()) == 2
                    assert serf.stats()["agent"]["name"] == "n1"
                    serf.event("many", b"x", coalesce=False)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=work, daemon=True) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        assert not errors
        assert not any(thread.is_alive() for thread in threads)
        received = 0
        while received < 200 and stream.get(timeout=10) is not None:
            received += 1
        assert received == 200


def test_join_and_leave(agents: Agents) -> None:
    """join() returns how many joined, a failed join is a command error, leave() stops the agent."""
    j1, j2 = agents.start("j1"), agents.start("j2")
    with SerfRPC(j2.rpc_addr) as serf:
        assert serf.join([f"127.0.0.1:{j1.bind_port}"]) == 1
        assert {member.name for member in serf.members()} == {"j1", "j2"}
        with pytest.raises(SerfCommandError, match="connection refused"):
            serf.join(f"127.0.0.1:{_free_port()}")
        serf.force_leave("no-such-node")
        serf.leave()
        assert j2.proc.wait(timeout=20) == 0
        with pytest.raises(SerfUnavailable):
            serf.members()


def _replay_serf(sock: socket.socket, records: list[dict[str, object]]) -> None:
    """Answer a handshake and one query the way Serf's IPC does, then send ``records``."""
    import msgpack

    conn, _ = sock.accept()
    unpacker = msgpack.Unpacker(raw=False)
    requests: list[dict[str, object]] = []

    def read(count: int) -> dict[str, object]:
        """The header of the request that completes ``count`` objects (header, body)."""
        while len(requests) < count:
            unpacker.feed(conn.recv(65536))
            requests.extend(unpacker)
        return requests[count - 2]

    with conn:
        conn.sendall(msgpack.packb({"Seq": read(2)["Seq"], "Error": ""}))  # handshake
        seq = read(4)["Seq"]
        conn.sendall(msgpack.packb({"Seq": seq, "Error": ""}))  # the query was accepted
        for record in records:
            conn.sendall(msgpack.packb({"Seq": seq, "Error": ""}) + msgpack.packb(record))
        conn.recv(1)  # until the client hangs up


def test_query_ignores_records_without_a_sender() -> None:
    """Serf forwards zero values from closed channels as acks/responses from "": dropped."""
    records: list[dict[str, object]] = [
        {"Type": "ack", "From": "n1", "Payload": None},
        {"Type": "response", "From": "n1", "Payload": b"up"},
        {"Type": "ack", "From": "", "Payload": None},
        {"Type": "response", "From": "", "Payload": None},
        {"Type": "done", "From": "", "Payload": None},
    ]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        server = threading.Thread(target=_replay_serf, args=(sock, records), daemon=True)
        server.start()
        with SerfRPC(f"127.0.0.1:{sock.getsockname()[1]}", timeout=5) as rpc:
            result = rpc.query("load", timeout=1)
        server.join(5)
    assert result.acks == ["n1"]
    assert result.responses == {"n1": b"up"}
