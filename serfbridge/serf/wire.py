"""The wire side of :mod:`serfbridge.serf.rpc`: a connection, its reader thread, streams.

Serf's replies are concatenated msgpack objects with no length prefix: a header
``{"Seq", "Error"}``, then a body only if the command returns one (``COMMANDS``, read from
``cmd/serf/command/agent/ipc.go``). ``stream`` and ``query`` answer with a body-less header
first, then a header plus a record for each event, ack or response. A stopped stream can still
deliver a few records that were already queued in the agent, so a stream's Seq stays known (its
records are parsed and dropped) for as long as the connection lives.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass

import msgpack

from serfbridge.errors import SerfError as SerfRPCError
from serfbridge.errors import SerfUnavailable

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any, Protocol

    StreamRecord = dict[str, Any]

    class StreamOwner(Protocol):
        """What a Stream needs of its client (serf.rpc.SerfRPC): answer and stop on its
        connection."""

        def respond(self, query_id: int, payload: bytes) -> None: ...
        def stop(self, seq: int) -> None: ...


# command -> (the request has a body, the reply header is followed by a body)
COMMANDS: dict[str, tuple[bool, bool]] = {
    "handshake": (True, False),
    "auth": (True, False),
    "event": (True, False),
    "members": (False, True),
    "members-filtered": (True, True),
    "join": (True, True),
    "leave": (False, False),
    "force-leave": (True, False),
    "tags": (True, False),
    "stream": (True, False),  # then a header + record per event
    "stop": (True, False),
    "query": (True, False),  # then a header + record per ack / response / done
    "respond": (True, False),
    "stats": (False, True),
}
# Errors the agent sends before it dispatches the command: never followed by a body.
EARLY_ERRORS = frozenset({"Handshake required", "Authentication required", "Unsupported command"})
CALL, QUERY, STREAM = "call", "query", "stream"
TIMEOUT = object()  # Mailbox.get: nothing came in time
FINISHED = object()  # Mailbox.get: drained and ended cleanly (stream stopped, client closed)


def _ip_text(raw: object) -> str:
    """Go's ``net.IP`` (4 or 16 raw bytes) as text; IPv4-mapped IPv6 prints as IPv4, as in Go."""
    if isinstance(raw, bytes) and len(raw) == 4:
        return str(ipaddress.IPv4Address(raw))
    if isinstance(raw, bytes) and len(raw) == 16:
        ip = ipaddress.IPv6Address(raw)
        return str(ip.ipv4_mapped or ip)
    return raw if isinstance(raw, str) else ""


@dataclass(frozen=True, slots=True)
class Member:
    """One cluster member, from ``members`` or a member-* stream record."""

    name: str
    addr: str  # IP as text; Serf sends raw bytes
    port: int  # gossip port
    tags: dict[str, str]
    status: str  # alive, leaving, left, failed
    protocol_min: int = 0
    protocol_max: int = 0
    protocol_cur: int = 0
    delegate_min: int = 0
    delegate_max: int = 0
    delegate_cur: int = 0

    @classmethod
    def from_wire(cls, raw: Mapping[str, Any]) -> Member:
        """Build from Serf's ``Member`` map (Go field names)."""
        return cls(
            name=str(raw.get("Name") or ""),
            addr=_ip_text(raw.get("Addr")),
            port=int(raw.get("Port") or 0),
            tags=dict(raw.get("Tags") or {}),
            status=str(raw.get("Status") or ""),
            protocol_min=int(raw.get("ProtocolMin") or 0),
            protocol_max=int(raw.get("ProtocolMax") or 0),
            protocol_cur=int(raw.get("ProtocolCur") or 0),
            delegate_min=int(raw.get("DelegateMin") or 0),
            delegate_max=int(raw.get("DelegateMax") or 0),
            delegate_cur=int(raw.get("DelegateCur") or 0),
        )


class Mailbox:
    """``(error, body)`` items the reader thread hands to one waiter, ended clean or by an error."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._items: deque[tuple[str, Any]] = deque()
        self._ended = False
        self._error: SerfRPCError | None = None

    def put(self, item: tuple[str, Any]) -> None:
        with self._cond:
            if not self._ended:
                self._items.append(item)
                self._cond.notify()

    def end(self, error: SerfRPCError | None) -> None:
        with self._cond:
            if not self._ended:
                self._ended, self._error = True, error
                self._cond.notify_all()

    def get(self, timeout: float | None) -> Any:
        """The next item, ``TIMEOUT`` or ``FINISHED``; raises the error it ended with, if any."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not self._items:
                if self._ended:
                    if self._error is not None:
                        raise type(self._error)(str(self._error)) from self._error.__cause__
                    return FINISHED
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return TIMEOUT
                self._cond.wait(remaining)
            return self._items.popleft()


class Route:
    __slots__ = ("box", "command", "kind", "seq", "started")

    def __init__(self, seq: int, kind: str, command: str, box: Mailbox) -> None:
        self.seq, self.kind, self.command, self.started = seq, kind, command, False
        self.box: Mailbox | None = box

    def deliver(self, error: str, body: Any) -> None:
        if self.box is not None:
            self.box.put((error, body))


class Connection:
    """One TCP connection to an agent: sends requests; a reader thread routes replies by Seq."""

    def __init__(self, sock: socket.socket, addr: str) -> None:
        self.sock, self.addr = sock, addr
        self.lock = threading.Lock()  # routes, seq, error
        self.write_lock = threading.Lock()
        self.routes: dict[int, Route] = {}
        self.seq = 0
        self.error: SerfRPCError | None = None
        self.closing = False
        self.thread = threading.Thread(target=self._read_loop, name=f"serf-rpc {addr}", daemon=True)
        self.thread.start()

    def request(self, command: str, body: object, kind: str) -> tuple[int, Mailbox]:
        """Send one request; its replies go to the returned mailbox."""
        if COMMANDS[command][0] != (body is not None):
            raise ValueError(f"{command!r} takes {'a' if body is None else 'no'} request body")
        box = Mailbox()
        with self.lock:
            self.raise_if_broken()
            self.seq += 1
            seq = self.seq
            self.routes[seq] = Route(seq, kind, command, box)  # before sending: replies are quick
        data = msgpack.packb({"Command": command, "Seq": seq}, use_bin_type=True)
        if body is not None:
            data += msgpack.packb(body, use_bin_type=True)
        try:
            with self.write_lock:
                self.sock.sendall(data)
        except OSError as exc:  # a partial write desynchronises the stream: drop the connection
            error = SerfUnavailable(f"sending {command!r} to serf at {self.addr} failed: {exc}")
            error.__cause__ = exc
            self.fail(error)
            raise error from exc
        return seq, box

    def wait(self, seq: int, box: Mailbox, timeout: float, what: str) -> tuple[str, Any]:
        """The next ``(error, body)`` for ``seq``; SerfUnavailable if none comes in time."""
        item = box.get(max(0.0, timeout))
        if item is TIMEOUT:
            self.detach(seq)
            raise SerfUnavailable(f"no reply to {what} from serf at {self.addr} in time")
        if item is FINISHED:
            raise SerfUnavailable(f"connection to serf at {self.addr} was closed")
        reply: tuple[str, Any] = item
        return reply

    def raise_if_broken(self) -> None:
        if self.error is not None:
            raise type(self.error)(str(self.error)) from self.error.__cause__

    def detach(self, seq: int, *, finish: bool = False) -> None:
        """Drop later replies for ``seq`` (they are still parsed); ``finish`` ends its mailbox."""
        with self.lock:
            route = self.routes.get(seq)
            box = route.box if route else None
            if route:
                route.box = None
        if box is not None and finish:
            box.end(None)

    def fail(self, error: SerfRPCError) -> None:
        """The connection is unusable: end every waiter with ``error`` (first call wins)."""
        with self.lock:
            if self.error is not None:
                return
            self.error = error
            routes = list(self.routes.values())
            self.routes.clear()
        for route in routes:
            if route.box is not None:
                clean = self.closing and route.kind == STREAM and route.started
                route.box.end(None if clean else error)

    def close(self) -> None:
        self.closing = True
        self.fail(SerfUnavailable(f"connection to serf at {self.addr} was closed by the client"))
        with contextlib.suppress(OSError):  # already disconnected
            self.sock.shutdown(socket.SHUT_RDWR)
        if self.thread is not threading.current_thread():
            self.thread.join(5.0)
        self.sock.close()

    def _read_loop(self) -> None:
        unpacker = msgpack.Unpacker(raw=False)
        body_for: tuple[Route, str] | None = None
        try:
            while True:
                try:
                    data = self.sock.recv(65536)
                except TimeoutError:
                    continue  # the socket timeout is there to bound sends; an idle reader waits
                if not data:
                    raise SerfUnavailable(f"serf at {self.addr} closed the connection")
                unpacker.feed(data)
                for obj in unpacker:
                    if body_for is None:
                        body_for = self._on_header(obj)
                    else:
                        self._on_body(*body_for, obj)
                        body_for = None
        except SerfRPCError as exc:
            self.fail(exc)
        except (OSError, ValueError, TypeError, msgpack.UnpackException) as exc:
            broken = (
                SerfUnavailable(f"connection to serf at {self.addr} lost: {exc}")
                if isinstance(exc, OSError)
                else SerfRPCError(f"malformed reply from serf at {self.addr}: {exc}")
            )
            broken.__cause__ = exc
            self.fail(broken)
        finally:  # anything else: still never leave a waiter hanging
            self.fail(SerfRPCError(f"reading from serf at {self.addr} stopped"))

    def _on_header(self, header: Any) -> tuple[Route, str] | None:
        """Route one reply header; returns ``(route, error)`` when a body follows it."""
        if not isinstance(header, dict) or not isinstance(header.get("Seq"), int):
            raise SerfRPCError(f"malformed reply header from serf at {self.addr}: {header!r}")
        seq, error = header["Seq"], str(header.get("Error") or "")
        with self.lock:
            route = self.routes.get(seq)
            if route is None:  # cannot tell whether a body follows: the stream is lost
                raise SerfRPCError(f"serf at {self.addr} replied to unknown Seq {seq}")
            first, route.started = not route.started, True
            if route.kind == CALL or (first and error):
                del self.routes[seq]
        if route.kind == CALL:
            if COMMANDS[route.command][1] and error not in EARLY_ERRORS:
                return route, error
        elif not first:
            return route, error
        route.deliver(error, None)
        return None

    def _on_body(self, route: Route, error: str, body: Any) -> None:
        if route.kind == QUERY and isinstance(body, dict) and body.get("Type") == "done":
            with self.lock:
                self.routes.pop(route.seq, None)
        if (
            route.kind == STREAM
            and isinstance(body, dict)
            and isinstance(body.get("Members"), list)
        ):
            body["Members"] = [Member.from_wire(m) for m in body["Members"]]
        route.deliver(error, body)


class Stream:
    """The records of one ``stream`` subscription, in arrival order.

    Iterating blocks for the next record, ends when the stream is stopped (``close``/``stop``)
    or the client is closed, and raises SerfUnavailable if the connection is lost. ``get``
    waits at most ``timeout`` seconds. Member events carry ``Members`` as a list of Member.
    Records are queued without a bound, so consume them promptly.
    """

    def __init__(self, client: StreamOwner, seq: int, box: Mailbox, filter_: str) -> None:
        self._client, self._box = client, box
        self.seq, self.filter = seq, filter_
        self.closed = False

    def __iter__(self) -> Stream:
        return self

    def __next__(self) -> StreamRecord:
        item = self._box.get(None)
        if item is FINISHED:
            raise StopIteration
        record: StreamRecord = item[1]
        return record

    def get(self, timeout: float | None = None) -> StreamRecord | None:
        """The next record, or None if none came within ``timeout`` seconds."""
        item = self._box.get(timeout)
        if item is FINISHED:
            raise SerfRPCError(f"stream {self.seq} ({self.filter!r}) is stopped")
        if item is TIMEOUT:
            return None
        record: StreamRecord = item[1]
        return record

    def respond(self, query_id: int, payload: bytes) -> None:
        """Answer a query record (its ``ID``) on this stream's connection."""
        self._client.respond(query_id, payload)

    def close(self) -> None:
        """Stop the subscription; records still buffered here can be read, then iteration ends."""
        if not self.closed:
            self.closed = True
            with contextlib.suppress(SerfRPCError):  # lost connection: the agent's stream is gone
                self._client.stop(self.seq)

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
