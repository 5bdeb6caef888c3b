"""Authenticating inbound relay messages: bearer token or HMAC-SHA256 over timestamp + body.

Signature scheme (the same on every source; see docs/relay.md)::

    timestamp = Unix time in whole seconds, as decimal text
    signature = "sha256=" + hex(HMAC-SHA256(key, timestamp + "." + body))

HTTP carries them in ``X-Serfbridge-Timestamp`` / ``X-Serfbridge-Signature``, MQTT 5 in user
properties of the same names, AMQP in message headers of the same names, Redis in entry
fields ``timestamp`` / ``signature``. An HTTP
source with ``signature = "standard-webhooks"`` takes the Standard Webhooks headers instead
(``webhook-id``, ``webhook-timestamp``, ``webhook-signature``). A timestamp further than
``max_skew`` seconds from now is stale; a signature seen within the window is a replay. Every
comparison of secret material is in constant time. The signatures themselves are
:mod:`serfbridge.signing`, shared with the webhook sink.
"""

from __future__ import annotations

import hmac
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

from serfbridge import signing
from serfbridge.errors import Rejected

TIMESTAMP_HEADER = "X-Serfbridge-Timestamp"
SIGNATURE_HEADER = "X-Serfbridge-Signature"


class ReplayCache:
    """Signatures accepted within the last ``window`` seconds, bounded in size."""

    def __init__(self, window: float, max_entries: int = 100_000) -> None:
        self.window = window
        self.max_entries = max_entries
        self._seen: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    def check_and_add(self, signature: str, now: float) -> bool:
        """True if new (and now remembered); False if it was already seen in the window."""
        with self._lock:
            while self._seen:
                oldest, at = next(iter(self._seen.items()))
                if now - at <= self.window and len(self._seen) < self.max_entries:
                    break
                del self._seen[oldest]
            if signature in self._seen:
                return False
            self._seen[signature] = now
            return True

    def forget(self, key: str) -> None:
        """Let ``key`` through again (it was not acted on after all)."""
        with self._lock:
            self._seen.pop(key, None)


@dataclass(frozen=True, slots=True)
class Credentials:
    """What a sender presented: a bearer token and/or a timestamp + signature."""

    token: str | None = None
    timestamp: str | None = None
    signature: str | None = None
    msg_id: str | None = None  # webhook-id (Standard Webhooks): part of the signed string


class Authenticator:
    """Checks one source's credentials. With neither ``token`` nor ``hmac_key`` configured
    everything passes (the config layer allows that only where it is safe or said so)."""

    def __init__(
        self,
        token: str | None,
        hmac_key: str | None,
        *,
        max_skew: float = 300.0,
        require_signature: bool = False,
        scheme: str = "serfbridge",
    ) -> None:
        self._token = token.encode() if token else None
        self.scheme = scheme
        if hmac_key and scheme == "standard-webhooks":
            self._key: bytes | None = signing.standard_key(hmac_key)
        else:
            self._key = hmac_key.encode() if hmac_key else None
        self.max_skew = max_skew
        self.require_signature = require_signature
        self._replays = ReplayCache(2 * max_skew)

    @property
    def enabled(self) -> bool:
        return self._token is not None or self._key is not None

    def check(self, creds: Credentials, body: bytes, now: float | None = None) -> None:
        """Raise ``Rejected`` (unauthorized, bad_signature, stale, replayed) or return."""
        if not self.enabled:
            return
        if creds.signature is not None and self._key is not None:
            self._check_signature(creds, body, time.time() if now is None else now)
            return
        if self._token is not None and creds.token is not None and not self.require_signature:
            if hmac.compare_digest(creds.token.encode(), self._token):
                return
            raise Rejected("unauthorized", "wrong bearer token")
        if self._key is not None and (self._token is None or self.require_signature):
            raise Rejected("unauthorized", "a signature is required and none was given")
        raise Rejected("unauthorized", "no credentials given (bearer token or signature)")

    def _check_signature(self, creds: Credentials, body: bytes, now: float) -> None:
        key = self._key or b""
        stamp = creds.timestamp or ""
        if not (stamp.isascii() and stamp.isdigit()):
            raise Rejected("bad_signature", "timestamp missing or not whole Unix seconds")
        if self.scheme == "standard-webhooks":
            if not creds.msg_id:
                raise Rejected("bad_signature", "webhook-id header missing")
            expected = signing.sign_standard(key, creds.msg_id, stamp, body)
        else:
            expected = signing.sign(key, stamp, body)
        if not signing.matches(expected, creds.signature or ""):
            raise Rejected("bad_signature", "signature does not match the body and timestamp")
        if abs(now - int(stamp)) > self.max_skew:
            raise Rejected(
                "stale",
                f"timestamp is {now - int(stamp):.0f} s off, over max_skew {self.max_skew:g}",
            )
        if not self._replays.check_and_add(expected, now):
            raise Rejected("replayed", "this signature was already used")
