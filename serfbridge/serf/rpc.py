"""Synchronous, thread-safe client for Serf's RPC protocol (IPC version 1) over TCP.

One ``SerfRPC`` holds one connection. Requests may come from any thread; a reader thread
(:mod:`serfbridge.serf.wire`) routes every reply by its Seq, so a connection that is streaming
events can still send ``respond``, ``members`` and the rest. Protocol: docs/serf.md section 3.

Errors (defined in :mod:`serfbridge.errors`; ``SerfRPCError`` is ``SerfError``)::

    SerfRPCError            base; also a malformed reply (the connection is then dropped)
    ├── SerfUnavailable     retryable: refused, reset, closed by the agent, no reply in time
    └── SerfCommandError    the agent answered with its Error string; ``str(exc)`` is that text
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass, field

from serfbridge.errors import SerfCommandError, SerfUnavailable
from serfbridge.errors import SerfError as SerfRPCError
from serfbridge.serf.wire import Member

__all__ = ["Member", "SerfCommandError", "SerfRPC", "SerfRPCError", "SerfUnavailable"]


TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping, Sequence
    from typing import Any

    from serfbridge.serf.wire import Connection, Mailbox, Stream

IPC_VERSION = 1
DEFAULT_ADDR = "127.0.0.1:7373"
# Bound on waiting for a query's "done" when Serf picks the timeout (3.2 s for 1-9 LAN nodes).
DEFAULT_QUERY_WAIT = 60.0


def parse_addr(addr: str) -> tuple[str, int]:
    """``host:port`` or ``[ipv6]:port`` -> ``(host, port)``; raises ValueError."""
    host, sep, port = addr.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"put an IPv6 address in brackets, e.g. [::1]:7373, not {addr!r}")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected host:port or [ipv6]:port, got {addr!r}")
    return host, int(port)


def _payload(payload: bytes) -> bytes:
    if not isinstance(payload, bytes | bytearray | memoryview):
        raise TypeError(f"payload must be bytes, not {type(payload).__name__}")
    return bytes(payload)


@dataclass(frozen=True, slots=True)
class QueryRecord:
    """One record of a running query; ``elapsed`` is seconds since the query was sent."""

    type: str  # "ack", "response" or "done"
    node: str  # empty for "done"
    payload: bytes | None
    elapsed: float


@dataclass(slots=True)
class QueryResult:
    """What a query collected until Serf sent ``done``; times are seconds since sending."""

    name: str
    acks: list[str] = field(default_factory=list)
    responses: dict[str, bytes] = field(default_factory=dict)
    ack_times: dict[str, float] = field(default_factory=dict)
    response_times: dict[str, float] = field(default_factory=dict)
    duration: float = 0.0


class SerfRPC:
    """A client for one agent's RPC address, e.g. ``with SerfRPC("127.0.0.1:7373") as serf:``.

    ``timeout`` bounds connecting, each send, and the wait for each reply. A call that gets no
    reply in time raises SerfUnavailable; its late reply is read and dropped, and the
    connection stays usable. After SerfUnavailable from a lost connection, ``connect()`` again.
    """

    def __init__(
        self, addr: str = DEFAULT_ADDR, auth_key: str | None = None, timeout: float = 5.0
    ) -> None:
        self.addr = addr
        self.host, self.port = parse_addr(addr)
        self.auth_key = auth_key
        self.timeout = timeout
        self._conn: Connection | None = None
        self._lock = threading.Lock()

    # -- connection ------------------------------------------------------------------------

    def connect(self) -> SerfRPC:
        """Connect, handshake (IPC version 1) and authenticate; a no-op while connected."""
        from serfbridge.serf.wire import Connection

        with self._lock:
            if self._conn is not None and self._conn.error is None:
                return self
            if self._conn is not None:  # lost: release its socket before replacing it
                self._conn.close()
                self._conn = None
            try:
                sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
            except OSError as exc:
                raise SerfUnavailable(f"cannot connect to serf at {self.addr}: {exc}") from exc
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._conn = Connection(sock, self.addr)
        try:
            self._call("handshake", {"Version": IPC_VERSION})
            if self.auth_key:
                self._call("auth", {"AuthKey": self.auth_key})
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Close the connection; open streams end, waiting calls raise SerfUnavailable."""
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def __enter__(self) -> SerfRPC:
        return self.connect()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _connection(self) -> Connection:
        with self._lock:
            conn = self._conn
        if conn is None:
            raise SerfUnavailable(f"not connected to serf at {self.addr}")
        conn.raise_if_broken()
        return conn

    def _call(self, command: str, body: object = None, wait: float | None = None) -> Any:
        """Send one request and return its reply body (None for header-only replies)."""
        conn = self._connection()
        seq, box = conn.request(command, body, "call")
        error, reply = conn.wait(seq, box, self.timeout if wait is None else wait, repr(command))
        if error:
            raise SerfCommandError(error, command=command)
        return reply

    def _start(self, command: str, body: object, kind: str) -> tuple[Connection, int, Mailbox]:
        """Send a ``stream`` or ``query`` and wait for its first, body-less, header."""
        conn = self._connection()
        seq, box = conn.request(command, body, kind)
        error, _ = conn.wait(seq, box, self.timeout, repr(command))
        if error:
            raise SerfCommandError(error, command=command)
        return conn, seq, box

    # -- commands --------------------------------------------------------------------------

    def members(self) -> list[Member]:
        """Every member this agent knows, including failed and left ones."""
        reply = self._call("members")
        return [Member.from_wire(m) for m in reply.get("Members") or []]

    def members_filtered(
        self,
        tags: Mapping[str, str] | None = None,
        status: str | None = None,
        name: str | None = None,
    ) -> list[Member]:
        """Members matching Go regexps, anchored by Serf as ``^...$``.

        An invalid regexp makes the agent close the connection without an answer, which
        surfaces as SerfUnavailable.
        """
        body = {"Tags": dict(tags or {}), "Status": status or "", "Name": name or ""}
        reply = self._call("members-filtered", body)
        return [Member.from_wire(m) for m in reply.get("Members") or []]

    def event(self, name: str, payload: bytes = b"", coalesce: bool = True) -> None:
        """Fire a user event; size-limit errors come back as SerfCommandError."""
        self._call("event", {"Name": name, "Payload": _payload(payload), "Coalesce": coalesce})

    def events(
        self, events: Sequence[tuple[str, bytes, bool]]
    ) -> list[SerfCommandError | SerfUnavailable | None]:
        """Fire several user events pipelined: every request is written, then every reply
        read, so one round trip is paid per batch, not per event. Per event (in order): None
        when the agent took it, its SerfCommandError, or SerfUnavailable when the connection
        failed before its reply came (it may or may not have been taken)."""
        conn = self._connection()
        sent: list[tuple[int, Mailbox] | SerfUnavailable] = []
        for name, payload, coalesce in events:
            body = {"Name": name, "Payload": _payload(payload), "Coalesce": coalesce}
            try:
                sent.append(conn.request("event", body, "call"))
            except SerfUnavailable as exc:
                sent.append(exc)
        results: list[SerfCommandError | SerfUnavailable | None] = []
        for item in sent:
            if isinstance(item, SerfUnavailable):
                results.append(item)
                continue
            seq, box = item
            try:
                error, _ = conn.wait(seq, box, self.timeout, "'event'")
            except SerfUnavailable as exc:
                results.append(exc)
                continue
            results.append(SerfCommandError(error, command="event") if error else None)
        return results

    def query(
        self,
        name: str,
        payload: bytes = b"",
        *,
        filter_nodes: Iterable[str] | None = None,
        filter_tags: Mapping[str, str] | None = None,
        request_ack: bool = True,
        relay_factor: int = 0,
        timeout: float | None = None,
        on_record: Callable[[QueryRecord], None] | None = None,
    ) -> QueryResult:
        """Run a query and collect acks and responses until Serf sends ``done``.

        ``timeout`` is the query's own timeout (None: Serf's default). Tag filters are Go
        regexps, not anchored. ``on_record`` is called in this thread for each record.
        """
        if not 0 <= relay_factor <= 255:
            raise ValueError(f"relay_factor must be 0..255, got {relay_factor}")
        body = {
            "FilterNodes": list(filter_nodes or []),
            "FilterTags": dict(filter_tags or {}),
            "RequestAck": request_ack,
            "RelayFactor": relay_factor,
            "Timeout": int(timeout * 1e9) if timeout else 0,
            "Name": name,
            "Payload": _payload(payload),
        }
        sent = time.monotonic()
        conn, seq, box = self._start("query", body, "query")
        until = sent + (timeout or DEFAULT_QUERY_WAIT) + self.timeout
        result = QueryResult(name=name)
        try:
            while True:
                _, rec = conn.wait(seq, box, until - time.monotonic(), f"query {name!r}")
                rec = rec if isinstance(rec, dict) else {}
                elapsed = time.monotonic() - sent
                record = QueryRecord(
                    str(rec.get("Type") or ""),
                    str(rec.get("From") or ""),
                    rec.get("Payload"),
                    elapsed,
                )
                if record.type in ("ack", "response") and not record.node:
                    # Serf's stream loop (ipc_query_response_stream.go) keeps receiving from
                    # the query's ack/response channels after the query closed them until its
                    # own deadline timer fires, and forwards each zero value: records with no
                    # sender. They carry nothing; keep them out of the result.
                    continue
                if record.type == "ack" and record.node not in result.ack_times:
                    result.acks.append(record.node)
                    result.ack_times[record.node] = elapsed
                elif record.type == "response":
                    result.responses[record.node] = record.payload or b""
                    result.response_times.setdefault(record.node, elapsed)
                if on_record is not None:
                    on_record(record)
                if record.type == "done":
                    result.duration = elapsed
                    return result
        finally:
            conn.detach(seq)

    def stream(self, filter_: str = "*") -> Stream:
        """Subscribe to events; ``filter_`` uses ``-event-handler`` syntax, e.g. ``user:deploy``.

        Answer query records with ``respond(record["ID"], payload)`` on this same client.
        """
        from serfbridge.serf.wire import Stream

        _conn, seq, box = self._start("stream", {"Type": filter_}, "stream")
        return Stream(self, seq, box, filter_)

    def respond(self, query_id: int, payload: bytes) -> None:
        """Answer the query with this ``ID`` from a stream on this connection."""
        self._call("respond", {"ID": query_id, "Payload": _payload(payload)})

    def stop(self, seq: int) -> None:
        """End the stream started with Seq ``seq``; records already queued here stay readable."""
        self._connection().detach(seq, finish=True)
        self._call("stop", {"Stop": seq})

    def stats(self) -> dict[str, dict[str, str]]:
        """The agent's ``stats`` (agent, runtime, serf, tags, event_handlers); values are text."""
        reply: dict[str, dict[str, str]] = self._call("stats")
        return reply

    def tags(
        self, set_tags: Mapping[str, str] | None = None, delete_tags: Iterable[str] | None = None
    ) -> None:
        """Set and delete this agent's tags (it gossips a member-update)."""
        self._call("tags", {"Tags": dict(set_tags or {}), "DeleteTags": list(delete_tags or [])})

    def join(self, addrs: str | Iterable[str], replay: bool = False) -> int:
        """Join the agent to ``addrs``; returns how many were joined. Waits 10 s per address."""
        existing = [addrs] if isinstance(addrs, str) else list(addrs)
        body = {"Existing": existing, "Replay": replay}
        reply = self._call("join", body, wait=self.timeout + 10.0 * len(existing))
        return int(reply.get("Num") or 0)

    def force_leave(self, node: str, prune: bool = False) -> None:
        """Mark a failed node as left (``prune``: also remove it from the member list)."""
        self._call("force-leave", {"Node": node, "Prune": prune})

    def leave(self) -> None:
        """Leave the cluster gracefully; the agent then shuts down and closes the connection."""
        self._call("leave", wait=self.timeout + 15.0)
