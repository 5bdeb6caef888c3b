"""``type = "http"``: ``POST /v1/event``, ``POST /v1/query``, ``GET /healthz``.

Served by :mod:`serfbridge.relay.httpserver`: connections are read on one event loop (slow
or idle clients hold no thread), complete requests run on ``threads`` workers (a query can
take its full timeout).
"""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any

from serfbridge import log, signing
from serfbridge.errors import Rejected
from serfbridge.relay.auth import SIGNATURE_HEADER, TIMESTAMP_HEADER, Credentials
from serfbridge.relay.httpserver import HttpServer, Request, Response
from serfbridge.relay.sources.base import HTTP_STATUS, Source

if TYPE_CHECKING:
    from serfbridge.relay.metrics import Metrics

PATHS = {"/v1/event": "event", "/v1/query": "query"}
#: RFC 6750 section 3: the challenge a 401 carries, per rejection reason.
CHALLENGE_ERRORS = {"unauthorized": None, "bad_signature": "invalid_token",
                    "stale": "invalid_token", "replayed": "invalid_token"}  # fmt: skip


def _json(status: int, doc: Any, headers: list[tuple[str, str]] | None = None) -> Response:
    return Response(status, (json.dumps(doc) + "\n").encode(), headers=headers or [])


class HttpSource(Source):
    def start(self) -> None:
        cfg = self.config
        self.server = HttpServer(
            cfg.listen,
            self.app,
            name=f"source {self.name}",
            threads=cfg.threads,
            max_body=cfg.max_body,
            max_connections=cfg.max_connections,
            header_timeout=cfg.header_timeout,
            body_timeout=cfg.body_timeout,
            tls=(cfg.tls_cert, cfg.tls_key) if cfg.tls_cert else None,
        )
        self.server.start()
        log.info(
            "http source listening", source=self.name, listen=cfg.listen, tls=bool(cfg.tls_cert)
        )

    def stop(self) -> None:
        self.server.stop()

    def app(self, request: Request) -> Response:
        path, method = request.path, request.method
        if path == "/healthz":
            if method not in ("GET", "HEAD"):
                return _json(405, {"error": "use GET"}, [("Allow", "GET, HEAD")])
            serf_ok = self.relay.serf.healthy
            doc = {"status": "ok" if serf_ok else "degraded", "serf": serf_ok}
            return _json(200 if serf_ok else 503, doc)
        kind = PATHS.get(path)
        if kind is None:
            return _json(404, {"error": f"no such path {path}"})
        if method != "POST":
            return _json(405, {"error": "use POST"}, [("Allow", "POST")])
        try:
            return self._post(kind, request)
        except Rejected as exc:
            status = HTTP_STATUS.get(exc.reason, 400)
            doc = {"error": str(exc), "reason": exc.reason}
            return _json(status, doc, self._headers_for(exc, status))

    def _headers_for(self, exc: Rejected, status: int) -> list[tuple[str, str]]:
        if status == 401:
            challenge = f'Bearer realm="serfbridge-{self.name}"'
            error = CHALLENGE_ERRORS.get(exc.reason)
            if error is not None:
                challenge += f', error="{error}"'
            return [("WWW-Authenticate", challenge)]
        if status == 429:
            return [("Retry-After", str(max(1, math.ceil(1 / self.config.rate))))]
        if status == 503:
            return [("Retry-After", "1")]
        return []

    def _post(self, kind: str, request: Request) -> Response:
        body = self._body(request)
        headers = request.headers
        scheme, _, token = headers.get("authorization", "").partition(" ")
        bearer = token.strip() if scheme.lower() == "bearer" else None
        if self.config.signature == "standard-webhooks":
            msg_id, stamp, signature = (h.lower() for h in signing.STANDARD_HEADERS)
            creds = Credentials(
                token=bearer,
                timestamp=headers.get(stamp),
                signature=headers.get(signature),
                msg_id=headers.get(msg_id),
            )
        else:
            creds = Credentials(
                token=bearer,
                timestamp=headers.get(TIMESTAMP_HEADER.lower()),
                signature=headers.get(SIGNATURE_HEADER.lower()),
            )
        _, reply = self.gate.handle(body, creds, default_type=kind, peer=request.peer)
        if reply is None:
            return _json(202, {"accepted": True})
        return _json(200, reply)

    def _body(self, request: Request) -> bytes:
        limit = self.config.max_body
        if int(request.headers.get("content-length", "0") or "0") > limit:
            self._count("too_large")
            raise Rejected("too_large", f"body over max_body ({limit} bytes)")
        return request.body

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
        self.server = HttpServer(listen, self.app, name="metrics", threads=2)

    def start(self) -> None:
        self.server.start()

    def stop(self) -> None:
        self.server.stop()

    def app(self, request: Request) -> Response:
        if request.path != "/metrics":
            return _json(404, {"error": "see /metrics"})
        body = self.metrics.render().encode()
        return Response(200, body, "text/plain; version=0.0.4; charset=utf-8")
