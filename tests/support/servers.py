"""Real sink servers on loopback free ports: redis, mosquitto, an HTTP receiver, a blackhole."""

from __future__ import annotations

import collections
import contextlib
import json
import os
import pwd
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from .ports import LOOPBACK, free_port, port_accepts, wait_for
from .proc import ManagedProcess, require_binary

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping
    from pathlib import Path
    from types import TracebackType


class RedisServer(ManagedProcess):
    """`redis-server` without persistence; `stop()` then `start()` reuses the same port."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        super().__init__("redis", workdir)
        self.binary = require_binary("redis-server", "redis-server")
        self.port = port or free_port()

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self.port}/0"

    def argv(self) -> list[str]:
        return [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            LOOPBACK,
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.workdir),
        ]

    def is_ready(self) -> bool:
        return self.ping(timeout=0.5)

    def ping(self, timeout: float = 1.0) -> bool:
        """PING over a raw socket, so readiness does not depend on the client library."""
        try:
            with socket.create_connection((LOOPBACK, self.port), timeout=timeout) as sock:
                sock.sendall(b"*1\r\n$4\r\nPING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def event_docs(self, key: str = "serf:events") -> list[dict[str, Any]]:
        """The event documents a redis sink added to stream ``key`` (field ``data``)."""
        import redis

        client = redis.Redis.from_url(self.url, decode_responses=True)
        try:
            entries: list[tuple[str, dict[str, str]]] = client.xrange(key)  # type: ignore[assignment]
            return [json.loads(fields["data"]) for _, fields in entries]
        finally:
            client.close()


class Mosquitto(ManagedProcess):
    """`mosquitto` with an anonymous listener on loopback.

    With ``persistent=True`` the broker saves sessions and queued messages in ``workdir`` when
    stopped (SIGTERM) and restores them on the next start, as a production broker would.
    """

    def __init__(
        self,
        workdir: Path,
        port: int | None = None,
        extra_config: Iterable[str] = (),
        *,
        persistent: bool = False,
    ) -> None:
        super().__init__("mosquitto", workdir)
        self.binary = require_binary("mosquitto", "mosquitto")
        self.port = port or free_port()
        self.extra_config = list(extra_config)
        self.persistent = persistent
        self.config_path = workdir / "mosquitto.conf"

    @property
    def host(self) -> str:
        return LOOPBACK

    @property
    def url(self) -> str:
        return f"mqtt://{LOOPBACK}:{self.port}"

    def prepare(self) -> None:
        lines = [
            f"listener {self.port} {LOOPBACK}",
            "allow_anonymous true",
            # Started as root, mosquitto drops to user "mosquitto", which can neither read the
            # test's files (passwords, certificates) nor write its persistence file here.
            f"user {pwd.getpwuid(os.geteuid()).pw_name}",
            *(
                ["persistence true", f"persistence_location {self.workdir}/"]
                if self.persistent
                else ["persistence false"]
            ),
            *self.extra_config,
        ]
        self.config_path.write_text("\n".join(lines) + "\n")

    def argv(self) -> list[str]:
        return [self.binary, "-c", str(self.config_path)]

    def is_ready(self) -> bool:
        return port_accepts(self.port)


# -- HTTP receiver --------------------------------------------------------------------------


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the receiver saw it. `time` is time.monotonic() at arrival.

    `status` is what was answered, or None when the receiver was hanging.
    """

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    time: float
    status: int | None

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass(frozen=True)
class PlannedResponse:
    status: int
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""


@dataclass
class _PlanEntry:
    response: PlannedResponse
    remaining: int


class _Server(ThreadingHTTPServer):
    # Handler threads are joined on close (bounded by the handler's socket timeout), so no
    # thread outlives the fixture.
    daemon_threads = False
    block_on_close = True

    allow_reuse_address = True

    def __init__(self, receiver: HttpReceiver, port: int = 0) -> None:
        self.receiver = receiver
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__((LOOPBACK, port), _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.connections_lock:
            self.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.connections_lock:
            self.connections.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hangs up mid-request is normal in fault tests: keep it off stderr.
        self.receiver._log_line(f"error while handling {client_address}")

    def abort_connections(self) -> None:
        with self.connections_lock:
            conns = list(self.connections)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    # HTTP/1.1 keep-alive, like real webhook receivers, so client connection pooling is exercised.
    protocol_version = "HTTP/1.1"
    # Bounds how long an idle keep-alive connection can delay teardown.
    timeout = 10

    def _receiver(self) -> HttpReceiver:
        server = self.server
        assert isinstance(server, _Server)
        return server.receiver

    def _handle(self) -> None:
        body = self._read_body()
        receiver = self._receiver()
        headers: dict[str, str] = {}
        for key, value in self.headers.items():
            lower = key.lower()
            headers[lower] = f"{headers[lower]}, {value}" if lower in headers else value
        gate, response = receiver._plan_next()
        receiver._record(
            RecordedRequest(
                method=self.command,
                path=self.path,
                headers=headers,
                body=body,
                time=time.monotonic(),
                status=None if gate is not None else response.status,
            )
        )
        if gate is not None:
            gate.wait(timeout=receiver.max_hang)
            # Still no answer: drop the connection, as a dead upstream would.
            self.close_connection = True
            return
        self.send_response(response.status)
        for key, value in response.headers.items():
            self.send_header(key, value)
        if response.status >= 200 and response.status not in (204, 304):
            self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        if self.command != "HEAD" and response.body:
            self.wfile.write(response.body)

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    # Trailers, if any, end with an empty line.
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    # The stdlib dispatches on these exact names.
    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _handle  # noqa: N815

    def log_message(self, format: str, *args: Any) -> None:
        self._receiver()._log_line(format % args)


class HttpReceiver:
    """ThreadingHTTPServer on a free loopback port that records every request.

    Responses follow a plan: queued `respond_with()` entries first, then the default (200).
    `hang()` makes it read and record requests but never answer until `unhang()`.
    """

    def __init__(self, max_hang: float = 60.0) -> None:
        self.max_hang = max_hang
        self._lock = threading.Lock()
        self._requests: list[RecordedRequest] = []
        self._plan: collections.deque[_PlanEntry] = collections.deque()
        self._default = PlannedResponse(200)
        self._gate: threading.Event | None = None
        self._all_gates: list[threading.Event] = []
        self.log: list[str] = []
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    def start(self) -> HttpReceiver:
        """Listen; after a stop(), on the same port again (outage tests)."""
        self._server = _Server(self, self.port)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"http-receiver-{self.port}",
            daemon=True,
        )
        self._thread.start()
        wait_for(lambda: port_accepts(self.port), timeout=5.0, what="HTTP receiver to listen")
        return self

    def stop(self) -> None:
        """Idempotent: release hung requests, close connections, join threads."""
        server, self._server = self._server, None
        if server is None:
            return
        with self._lock:
            for gate in self._all_gates:
                gate.set()
        server.shutdown()
        server.abort_connections()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10.0)

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}/"

    def url_for(self, path: str) -> str:
        return f"http://{LOOPBACK}:{self.port}/{path.lstrip('/')}"

    # -- response plan --------------------------------------------------------------------

    def respond_with(
        self,
        status: int,
        headers: Mapping[str, str] | None = None,
        times: int = 1,
        body: bytes = b"",
    ) -> None:
        """Queue `status` for the next `times` requests (after anything queued earlier)."""
        if times < 1:
            raise ValueError("times must be at least 1")
        with self._lock:
            self._plan.append(_PlanEntry(PlannedResponse(status, dict(headers or {}), body), times))

    def set_default(
        self, status: int = 200, headers: Mapping[str, str] | None = None, body: bytes = b""
    ) -> None:
        """The answer once the queue is empty."""
        with self._lock:
            self._default = PlannedResponse(status, dict(headers or {}), body)

    def hang(self) -> None:
        """From now on, read and record requests but never answer them."""
        with self._lock:
            if self._gate is None:
                self._gate = threading.Event()
                self._all_gates.append(self._gate)

    def unhang(self) -> None:
        """Answer new requests again; requests already hung get their connection closed."""
        with self._lock:
            if self._gate is not None:
                self._gate.set()
                self._gate = None

    def _plan_next(self) -> tuple[threading.Event | None, PlannedResponse]:
        with self._lock:
            if self._gate is not None:
                return self._gate, self._default
            if not self._plan:
                return None, self._default
            entry = self._plan[0]
            entry.remaining -= 1
            if entry.remaining <= 0:
                self._plan.popleft()
            return None, entry.response

    # -- recorded requests ----------------------------------------------------------------

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(request)

    def _log_line(self, line: str) -> None:
        with self._lock:
            self.log.append(line)

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def clear(self) -> None:
        with self._lock:
            self._requests.clear()

    def wait_for_count(self, n: int, timeout: float = 10.0) -> list[RecordedRequest]:
        """Wait until at least `n` requests arrived; return all of them."""
        wait_for(
            lambda: len(self.requests) >= n,
            timeout=timeout,
            what=f"{n} request(s) at {self.url}",
            detail=lambda: f"received {len(self.requests)}: {self.requests!r:.2000}",
        )
        return self.requests

    def __enter__(self) -> HttpReceiver:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# -- blackhole ------------------------------------------------------------------------------


class BlackholeServer:
    """Accepts TCP connections and never reads or answers: connect succeeds, then silence."""

    def __init__(self) -> None:
        self._sock: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.port = 0

    def start(self) -> BlackholeServer:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((LOOPBACK, 0))
        sock.listen(128)
        # Short accept timeout so stop() is noticed promptly.
        sock.settimeout(0.05)
        self._sock = sock
        self.port = sock.getsockname()[1]
        self._thread = threading.Thread(
            target=self._accept_loop, name=f"blackhole-{self.port}", daemon=True
        )
        self._thread.start()
        return self

    def _accept_loop(self) -> None:
        assert self._sock is not None
        while not self._stopping.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self._conns.append(conn)

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}/"

    @property
    def accepted(self) -> int:
        with self._lock:
            return len(self._conns)

    def wait_for_connections(self, n: int, timeout: float = 10.0) -> None:
        wait_for(lambda: self.accepted >= n, timeout, what=f"{n} connection(s) to the blackhole")

    def stop(self) -> None:
        """Idempotent: stop accepting and close every held connection."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        with self._lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            conn.close()

    def __enter__(self) -> BlackholeServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
