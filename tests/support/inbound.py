"""Signing inbound messages the way a sender would (independent of serfbridge's code)."""

from __future__ import annotations

import hashlib
import hmac


def signature(key: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(key.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def sign_headers(key: str, body: bytes, timestamp: int) -> dict[str, str]:
    return {
        "X-Serfbridge-Timestamp": str(timestamp),
        "X-Serfbridge-Signature": signature(key, timestamp, body),
    }
