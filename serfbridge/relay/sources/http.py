"""``type = "http"``: ``POST /v1/event``, ``POST /v1/query``, ``GET /healthz`` on cheroot.

cheroot is CherryPy's threaded WSGI server: pure Python, maintained, TLS built in
(``BuiltinSSLAdapter``), works on Windows and under PyInstaller (plain imports). A query can
take its full timeout, so each request has its own worker thread (``threads``).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from serfbridge import log, signing
from serfbridge.errors import Rejected, RelayError
from serfbridge.relay.auth import SIGNATURE_HEADER, TIMESTAMP_HEADER, Credentials
from serfbridge.relay.sources.base import HTTP_STATUS, Source
from serfbridge.serf.rpc import parse_addr

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from serfbridge.relay.metrics import Metrics

    StartResponse = Callable[..., Any]

REASONS = {
    200: "OK",
    202: "Accepted",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    411: "Length Required",
    413: "Content Too Large",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
}
PATHS = {"/v1/event": "event", "/v1/query": "query"}


def _environ_key(header: str) -> str:
    return "HTTP_" + header.upper().replace("-", "_")


def _respond(
    start_response: StartResponse,
    status: int,
    body: bytes,
    content_type: str = "application/json",
    extra: list[tuple[str, str]] | None = None,
) -> list[bytes]:
    headers = [("Content-Type", content_type), ("Content-Length", str(len(body)))]
    start_response(f"{status} {REASONS.get(status, '')}", headers + (extra or []))
    return [body]


def _json(start_response: StartResponse, status: int, doc: Any) -> list[bytes]:
    return _respond(start_response, status, (json.dumps(doc) + "\n").encode())


def _server(listen: str, app: Any, threads: int, name: str) -> Any:
    from cheroot import wsgi

    host, port = parse_addr(listen)
    server = wsgi.Server((host, port), app, numthreads=threads, server_name=name)
    server.shutdown_timeout = 2
    return server


def _run_server(server: Any, what: str) -> Any:
    """Bind now (so start-up errors surface as exit 9), serve in a daemon thread."""
    import threading

    try:
        server.prepare()
    except OSError as exc:
        raise RelayError(f"{what}: cannot listen on {server.bind_addr}: {exc}") from None
    thread = threading.Thread(target=server.serve, name=what, daemon=True)
    thread.start()
    return thread


class HttpSource(Source):
    def start(self) -> None:
        cfg = self.config
        self.server = _server(cfg.listen, self.app, cfg.threads, f"serfbridge-{self.name}")
        if cfg.tls_cert:
            from cheroot.ssl.builtin import BuiltinSSLAdapter

            try:
                self.server.ssl_adapter = BuiltinSSLAdapter(cfg.tls_cert, cfg.tls_key)
            except (OSError, ValueError) as exc:
                raise RelayError(f"source {self.name}: cannot load TLS cert/key: {exc}") from None
        self.thread = _run_server(self.server, f"source {self.name}")
        log.info(
            "http source listening", source=self.name, listen=cfg.listen, tls=bool(cfg.tls_cert)
        )

    def stop(self) -> None:
        self.server.stop()
        self.thread.join(timeout=5)

    def app(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path, method = environ.get("PATH_INFO", ""), environ.get("REQUEST_METHOD", "")
        if path == "/healthz":
            if method != "GET":
                return _json(start_response, 405, {"error": "use GET"})
            serf_ok = self.relay.serf.healthy
            doc = {"status": "ok" if serf_ok else "degraded", "serf": serf_ok}
            return _json(start_response, 200 if serf_ok else 503, doc)
        kind = PATHS.get(path)
        if kind is None:
            return _json(start_response, 404, {"error": f"no such path {path}"})
        if method != "POST":
            return _json(start_response, 405, {"error": "use POST"})
        return self._post(kind, environ, start_response)

    def _post(
        self, kind: str, environ: dict[str, Any], start_response: StartResponse
    ) -> Iterable[bytes]:
        try:
            body = self._body(environ)
            auth = environ.get("HTTP_AUTHORIZATION", "")
            scheme, _, token = auth.partition(" ")
            bearer = token.strip() if scheme.lower() == "bearer" else None
            if self.config.signature == "standard-webhooks":
                msg_id, stamp, signature = (_environ_key(h) for h in signing.STANDARD_HEADERS)
                creds = Credentials(
                    token=bearer,
                    timestamp=environ.get(stamp),
                    signature=environ.get(signature),
                    msg_id=environ.get(msg_id),
                )
            else:
                creds = Credentials(
                    token=bearer,
                    timestamp=environ.get(_environ_key(TIMESTAMP_HEADER)),
                    signature=environ.get(_environ_key(SIGNATURE_HEADER)),
                )
            _, reply = self.gate.handle(body, creds, default_type=kind)
        except Rejected as exc:
            status = HTTP_STATUS.get(exc.reason, 400)
            return _json(start_response, status, {"error": str(exc), "reason": exc.reason})
        if reply is None:
            return _json(start_response, 202, {"accepted": True})
        return _json(start_response, 200, reply)

    def _body(self, environ: dict[str, Any]) -> bytes:
        limit = self.config.max_body
        raw_length = environ.get("CONTENT_LENGTH") or ""
        if raw_length:
            if not raw_length.isdigit():
                self._count("malformed")
                raise Rejected("malformed", "Content-Length is not a number")
            if int(raw_length) > limit:
                self._count("too_large")
                raise Rejected("too_large", f"body over max_body ({limit} bytes)")
        data: bytes = environ["wsgi.input"].read(int(raw_length) if raw_length else limit + 1)
        if len(data) > limit:
            self._count("too_large")
            raise Rejected("too_large", f"body over max_body ({limit} bytes)")
        return data

    def _count(self, reason: str) -> None:
        """Rejections before the gate (it counts its own)."""
        metrics = self.relay.metrics
        metrics.inc("serfbridge_relay_messages_in_total", source=self.name)
        metrics.inc("serfbridge_relay_messages_rejected_total", source=self.name, reason=reason)
        log.warning("message rejected", source=self.name, reason=reason)


class MetricsServer:
    """``GET /metrics`` in Prometheus text format on ``[relay] metrics_listen``."""

    def __init__(self, listen: str, metrics: Metrics) -> None:
        self.metrics = metrics
        self.server = _server(listen, self.app, 2, "serfbridge-metrics")

    def start(self) -> None:
        self.thread = _run_server(self.server, "metrics")

    def stop(self) -> None:
        self.server.stop()
        self.thread.join(timeout=5)

    def app(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != "/metrics":
            return _json(start_response, 404, {"error": "see /metrics"})
        body = self.metrics.render().encode()
        return _respond(start_response, 200, body, "text/plain; version=0.0.4; charset=utf-8")
