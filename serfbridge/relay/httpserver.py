"""A small HTTP/1.1 server for the relay: connections on one asyncio loop, handlers on a
bounded thread pool.

Why not a thread per connection (cheroot, the stdlib servers): a client that trickles its
headers holds its thread for as long as it keeps sending, so a few dozen slow connections
stall every caller. Here reading a request costs no thread: the loop reads the line, the
headers (within ``header_timeout``) and the body (within ``body_timeout``) of every
connection at once, and only a complete request takes one of ``threads`` workers, so slow
or idle clients cannot use them up. At most ``max_connections`` are open; further ones wait
in the kernel's accept queue.

Bodies need ``Content-Length`` (``Transfer-Encoding`` is answered 411); ``Expect:
100-continue`` is honoured; keep-alive as HTTP/1.1 says.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from serfbridge import log
from serfbridge.errors import RelayError
from serfbridge.serf.rpc import parse_addr

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

MAX_HEAD = 16 * 1024
REASONS = {
    100: "Continue",
    200: "OK",
    202: "Accepted",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    409: "Conflict",
    411: "Length Required",
    413: "Content Too Large",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
}


@dataclass(slots=True)
class Request:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names; values decoded as latin-1 (RFC 9110)
    body: bytes
    peer: str


@dataclass(slots=True)
class Response:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: list[tuple[str, str]] = field(default_factory=list)


class HttpError(Exception):
    """A request the server answers itself, before any handler (and then closes)."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status


def _encode(response: Response, keep_alive: bool) -> bytes:
    lines = [
        f"HTTP/1.1 {response.status} {REASONS.get(response.status, '')}",
        f"Content-Type: {response.content_type}",
        f"Content-Length: {len(response.body)}",
        f"Connection: {'keep-alive' if keep_alive else 'close'}",
        *(f"{k}: {v}" for k, v in response.headers),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + response.body


def _parse_head(raw: bytes) -> tuple[str, str, str, dict[str, str]]:
    text = raw.decode("latin-1")
    request_line, *header_lines = text.split("\r\n")
    parts = request_line.split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise HttpError(400, "bad request line")
    headers: dict[str, str] = {}
    for line in header_lines:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise HttpError(400, "bad header line")
        key = name.lower()
        value = value.strip()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return parts[0], parts[1].split("?", 1)[0], parts[2], headers


class HttpServer:
    """``handler(Request) -> Response`` runs on one of ``threads`` worker threads."""

    def __init__(
        self,
        listen: str,
        handler: Callable[[Request], Response],
        *,
        name: str,
        threads: int = 8,
        max_body: int = 65536,
        max_connections: int = 1000,
        header_timeout: float = 10.0,
        body_timeout: float = 30.0,
        tls: tuple[str, str] | None = None,
    ) -> None:
        self.listen, self.handler, self.name = listen, handler, name
        self.max_body, self.max_connections = max_body, max_connections
        self.header_timeout, self.body_timeout = header_timeout, body_timeout
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix=name)
        self.ssl: ssl.SSLContext | None = None
        if tls is not None:
            try:
                self.ssl = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
                self.ssl.load_cert_chain(*tls)
            except (OSError, ssl.SSLError, ValueError) as exc:
                raise RelayError(f"{name}: cannot load TLS cert/key: {exc}") from None
        self._loop = asyncio.new_event_loop()
        self._open = 0
        self._slots: asyncio.Semaphore | None = None
        self._stopped: asyncio.Event | None = None
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        """Bind now (so start-up errors surface as exit 9), serve in a daemon thread."""
        try:
            host, port = parse_addr(self.listen)
        except ValueError as exc:
            raise RelayError(f"{self.name}: cannot listen on {self.listen}: {exc}") from None
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            sock = socket.create_server((host, port), family=family, backlog=1024)
        except OSError as exc:
            raise RelayError(
                f"{self.name}: cannot listen on {(host, port)!r}: [Errno {exc.errno}] "
                f"{exc.strerror}"
            ) from None
        sock.setblocking(False)
        self._sock = sock
        self.thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        if self._stopped is not None:
            self._loop.call_soon_threadsafe(self._stopped.set)
        if self.thread is not None:
            self.thread.join(timeout=5)
        self.pool.shutdown(wait=False, cancel_futures=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._main())
        finally:
            self._loop.close()

    async def _main(self) -> None:
        self._stopped = asyncio.Event()
        self._slots = asyncio.Semaphore(self.max_connections)
        server = await asyncio.start_server(
            self._connection,
            sock=self._sock,
            ssl=self.ssl,
            ssl_handshake_timeout=self.header_timeout if self.ssl else None,
            limit=MAX_HEAD,
        )
        async with server:
            await self._stopped.wait()
            server.close()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._slots is None:  # not started: cannot happen, the server starts after it
            return
        peername = writer.get_extra_info("peername")
        peer = str(peername[0]) if isinstance(peername, tuple) else "-"
        try:
            async with self._slots:
                await self._serve(reader, writer, peer)
        except (OSError, asyncio.IncompleteReadError, ssl.SSLError):
            pass  # the client went away
        except Exception as exc:  # noqa: BLE001 - one connection's bug must not end the server
            log.error("http connection failed", server=self.name, error=repr(exc))
        finally:
            writer.close()

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: str
    ) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                request, keep_alive = await self._read(reader, writer, peer)
            except HttpError as exc:
                body = (f'{{"error": "{exc}", "reason": "malformed"}}\n').encode()
                writer.write(_encode(Response(exc.status, body), False))
                await writer.drain()
                return
            if request is None:
                return
            response = await loop.run_in_executor(self.pool, self.handler, request)
            writer.write(_encode(response, keep_alive))
            await writer.drain()
            if not keep_alive:
                return

    async def _read(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: str
    ) -> tuple[Request | None, bool]:
        """One request, or (None, False) when the client closed between requests."""
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.header_timeout)
        except asyncio.IncompleteReadError as exc:
            if exc.partial.strip():
                raise HttpError(400, "connection closed inside the headers") from None
            return None, False
        except asyncio.LimitOverrunError:
            raise HttpError(431, f"headers over {MAX_HEAD} bytes") from None
        except TimeoutError:
            raise HttpError(408, f"headers not received within {self.header_timeout:g} s") from None
        method, path, version, headers = _parse_head(head[:-4])
        connection = headers.get("connection", "").lower()
        keep_alive = "close" not in connection and (
            version == "HTTP/1.1" or "keep-alive" in connection
        )
        if "transfer-encoding" in headers:
            raise HttpError(411, "send the body with Content-Length")
        raw_length = headers.get("content-length", "0") or "0"
        if not raw_length.isdigit() or len(raw_length) > 12:
            raise HttpError(400, "Content-Length is not a number")
        length = int(raw_length)
        if length > self.max_body:
            # Answered by the handler (it counts the refusal); the body is never read.
            return Request(method, path, headers, b"", peer), False
        if length and headers.get("expect", "").lower() == "100-continue":
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            await writer.drain()
        try:
            body = await asyncio.wait_for(reader.readexactly(length), self.body_timeout)
        except TimeoutError:
            raise HttpError(408, f"body not received within {self.body_timeout:g} s") from None
        return Request(method, path, headers, body, peer), keep_alive
