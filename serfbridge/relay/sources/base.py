"""What every inbound source shares: the interface and the per-source gate."""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from dataclasses import replace
from typing import Any, TypeVar

from serfbridge import log
from serfbridge.capture import relay_ids
from serfbridge.delivery.backoff import Backoff
from serfbridge.errors import Rejected
from serfbridge.relay import messages
from serfbridge.relay.auth import Authenticator, Credentials

T = TypeVar("T")

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from serfbridge.config.relay import SourceConfigBase
    from serfbridge.relay.host import RelayHost

#: How each rejection reason maps to an HTTP status (other sources log and dead-letter).
HTTP_STATUS = {
    "unauthorized": 401,
    "bad_signature": 401,
    "stale": 401,
    "replayed": 401,
    "not_allowed": 403,
    "duplicate": 409,
    "too_large": 413,
    "malformed": 400,
    "loop": 400,
    "rate_limited": 429,
    "serf_error": 502,
    "serf_unavailable": 503,
    "internal": 500,
}
#: Reasons worth trying again later: the message itself is fine. (``internal`` is not: one
#: entry that trips a bug must not block a stream; it is dead-lettered with its reason.)
RETRYABLE = frozenset({"serf_unavailable", "rate_limited"})


def dead_letter_doc(exc: Rejected, data: bytes, max_data: int, **where: Any) -> dict[str, Any]:
    """The dead letter of a message refused for good, the same on every source: where it
    came from (``where``: the source's own key, e.g. ``topic``), ``reason``, ``error``, the
    first ``max_data`` bytes of its ``data`` and ``data_bytes``, its full length. Cut, so that
    a flood of large refused messages cannot fill the broker that keeps them."""
    return {
        **where,
        "reason": exc.reason,
        "error": str(exc),
        "data": data[:max_data],
        "data_bytes": len(data),
    }


def dead_letter_json(exc: Rejected, data: bytes, max_data: int, **where: Any) -> bytes:
    """``dead_letter_doc`` as the JSON body a broker message carries (``data`` decoded as
    UTF-8, anything else replaced: a cut may split a character)."""
    doc = dead_letter_doc(exc, data, max_data, **where)
    doc["data"] = doc["data"].decode("utf-8", "replace")
    return json.dumps(doc).encode()


class TokenBucket:
    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, float(burst)
        self._tokens, self._at = float(burst), time.monotonic()
        self._lock = threading.Lock()

    def take(self) -> bool:
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
            self._at = now
            if self._tokens >= 1:
                self._tokens -= 1
                return True
            return False


class PeerBuckets:
    """One token bucket per peer address for messages that failed authentication, so a
    flood without credentials spends its own budget, never the source's. Bounded: the
    least recently used peer is forgotten first."""

    def __init__(self, rate: float, burst: int, max_peers: int = 10_000) -> None:
        self.rate, self.burst, self.max_peers = rate, burst, max_peers
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()
        self._lock = threading.Lock()

    def take(self, peer: str) -> bool:
        with self._lock:
            bucket = self._buckets.pop(peer, None) or TokenBucket(self.rate, self.burst)
            self._buckets[peer] = bucket
            while len(self._buckets) > self.max_peers:
                self._buckets.popitem(last=False)
        return bucket.take()


class Source:
    """One configured ``[[sources]]`` entry. ``start`` raises RelayError if it cannot run;
    ``stop`` returns once nothing of the source is running."""

    def __init__(self, config: Any, relay: RelayHost) -> None:
        self.config = config
        self.relay = relay
        self.name: str = config.name
        self.gate = Gate(config, relay)
        #: A broker source's link: False while it is down. None: a listener, up while started
        #: (``serfbridge_relay_source_up``).
        self.connected: bool | None = None

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError


class Gate:
    """Authentication -> rate limit -> validation and loop check -> allowlist -> Serf.

    Authentication comes first so that only authenticated messages spend the source's
    budget; one that fails authentication spends its peer's own budget (``PeerBuckets``)
    and, once that is empty, is answered ``rate_limited`` instead of ``unauthorized``."""

    def __init__(self, config: SourceConfigBase, relay: RelayHost) -> None:
        self.config = config
        self.relay = relay
        self.name = config.name
        self.bucket = TokenBucket(config.rate, config.burst)
        self.unauthenticated = PeerBuckets(config.rate, config.burst)
        self.auth = Authenticator(
            config.token.get_secret_value() if config.token else None,
            config.hmac_key.get_secret_value() if config.hmac_key else None,
            max_skew=config.max_skew,
            require_signature=config.require_signature,
            # Only the HTTP source has a choice of signature headers.
            scheme=getattr(config, "signature", "serfbridge"),
        )

    def handle_patiently(
        self, body: bytes, creds: Credentials, stop: threading.Event
    ) -> tuple[messages.Message, dict[str, Any] | None] | None:
        """``handle``, retried in place on the one backoff schedule while the refusal is one
        that waiting can change (``RETRYABLE``: Serf unavailable, rate limit spent). None
        when ``stop`` is set while waiting (the caller leaves the message unacknowledged, so
        the broker redelivers it); any other refusal, or one at shutdown, raises Rejected."""
        retry = Backoff(0.2, 10.0)
        while True:
            try:
                return self.handle(body, creds)
            except Rejected as exc:
                if exc.reason not in RETRYABLE or stop.is_set():
                    raise
                if stop.wait(retry.failed()):
                    return None

    def handle(
        self,
        body: bytes,
        creds: Credentials,
        default_type: str | None = None,
        origin: str | None = None,
        peer: str = "-",
    ) -> tuple[messages.Message, dict[str, Any] | None]:
        """Run one message; returns it with its query reply (None for events) or raises
        Rejected. ``peer`` is the sender's address where the source knows it (HTTP).

        ``origin`` names the message where the source can (a Redis entry), so that with
        ``event_ids`` a resend of it carries the same id as the first send.

        Every rejection is counted and logged with its reason, never with the body or the
        credentials.
        """
        return self._counted(
            lambda: self._call(*self._admit(body, creds, default_type, origin, peer))
        )

    def admit(
        self, body: bytes, creds: Credentials, origin: str | None = None
    ) -> tuple[messages.Message, str | None]:
        """Everything before Serf (counted and logged as ``handle`` does): the message and
        its dedupe key, for ``relay_events`` or ``call``; raises Rejected."""
        return self._counted(lambda: self._admit(body, creds, None, origin, "-"))

    def call(self, msg: messages.Message, key: str | None) -> dict[str, Any] | None:
        """Serf's part of ``handle`` for an admitted message (its rejections counted)."""
        return self._counted(lambda: self._call(msg, key), count_in=False)[1]

    def relay_events(
        self, admitted: list[tuple[messages.Message, str | None]]
    ) -> list[Rejected | None]:
        """Admitted events into Serf at once (pipelined on RPC), in order; per event None
        when Serf accepted it, else its counted and logged refusal."""
        results = self.relay.serf.events([msg for msg, _ in admitted])
        metrics = self.relay.metrics
        for (_, key), result in zip(admitted, results, strict=True):
            if result is None:
                metrics.inc("serfbridge_relay_messages_out_total", source=self.name, type="event")
                continue
            if key is not None:
                self.relay.dedupe.forget(key)
            metrics.inc(
                "serfbridge_relay_messages_rejected_total", source=self.name, reason=result.reason
            )
            log.warning("message rejected", source=self.name, reason=result.reason,
                        detail=str(result))  # fmt: skip
        return results

    def _counted(self, run: Callable[[], T], count_in: bool = True) -> T:
        """Every rejection is counted and logged with its reason, never with the body or the
        credentials; a bug is ``internal``, logged without a traceback."""
        metrics = self.relay.metrics
        if count_in:
            metrics.inc("serfbridge_relay_messages_in_total", source=self.name)
        try:
            return run()
        except Rejected as exc:
            metrics.inc(
                "serfbridge_relay_messages_rejected_total", source=self.name, reason=exc.reason
            )
            log.warning("message rejected", source=self.name, reason=exc.reason, detail=str(exc))
            raise
        except Exception as exc:  # noqa: BLE001 - a bug answers 500 and is logged, never a traceback
            metrics.inc(
                "serfbridge_relay_messages_rejected_total", source=self.name, reason="internal"
            )
            log.error("internal error handling a message", source=self.name, error=repr(exc))
            raise Rejected("internal", "internal error; see the relay's log") from None

    def refused(self, reason: str, text: str) -> Rejected:
        """Count and log a message the source refuses before the gate could read it."""
        metrics = self.relay.metrics
        metrics.inc("serfbridge_relay_messages_in_total", source=self.name)
        metrics.inc("serfbridge_relay_messages_rejected_total", source=self.name, reason=reason)
        log.warning("message rejected", source=self.name, reason=reason, detail=text)
        return Rejected(reason, text)

    def _admit(
        self,
        body: bytes,
        creds: Credentials,
        default_type: str | None,
        origin: str | None,
        peer: str,
    ) -> tuple[messages.Message, str | None]:
        try:
            self.auth.check(creds, body)
        except Rejected:
            if not self.unauthenticated.take(peer):
                raise Rejected(
                    "rate_limited",
                    f"over {self.config.rate:g} unauthenticated messages/s from this peer",
                ) from None
            raise
        if not self.bucket.take():
            raise Rejected("rate_limited", f"over {self.config.rate:g} messages/s")
        relay = self.relay.config
        msg = messages.parse(
            body,
            event_limit=relay.user_event_size_limit,
            query_limit=relay.query_size_limit,
            default_type=default_type,
            event_extra=relay_ids.SIZE if self.config.event_ids else 0,
        )
        allow = self.config.allow_events if msg.type == "event" else self.config.allow_queries
        if not messages.allowed(allow, msg.name):
            setting = "allow_events" if msg.type == "event" else "allow_queries"
            raise Rejected("not_allowed", f"{msg.type} {msg.name!r} is not in {setting}")
        key = None if msg.id is None else f"{msg.type}:{msg.id}"
        if key is not None and not self.relay.dedupe.first_time(key):
            raise Rejected("duplicate", f"message id {msg.id!r} was already relayed")
        if msg.type == "event" and self.config.event_ids:
            msg = _with_event_id(msg, origin)
        return msg, key

    def _call(
        self, msg: messages.Message, key: str | None
    ) -> tuple[messages.Message, dict[str, Any] | None]:
        try:
            if msg.type == "event":
                self.relay.serf.event(msg)
                reply = None
            else:
                reply = self.relay.serf.query(msg)
        except Rejected:
            if key is not None:
                self.relay.dedupe.forget(key)  # not relayed: a retry must get through
            raise
        self.relay.metrics.inc(
            "serfbridge_relay_messages_out_total", source=self.name, type=msg.type
        )
        log.debug("relayed", source=self.name, type=msg.type, name=msg.name)
        return msg, reply


def _with_event_id(msg: messages.Message, origin: str | None) -> messages.Message:
    """The message's own ``id`` names it first (a client resending under the same id means
    the same event, whichever source it comes through); else where it came from."""
    identity = f"id\0{msg.id}" if msg.id is not None else origin
    if identity is None:
        return msg
    return replace(msg, payload=relay_ids.attach(msg.payload, relay_ids.make(identity)))
