"""HMAC-SHA256 request signatures, one copy for the webhook sink and the relay's inbound auth.

Standard library only, imported by both ``serfbridge.sinks.webhook`` (outbound) and
``serfbridge.relay.auth`` (inbound), so the scheme can never drift between the two.

Three schemes (docs/sink-webhook.md)::

    serfbridge         "sha256=" + hex(HMAC(secret, timestamp + "." + body))
    standard-webhooks  "v1," + base64(HMAC(key, id + "." + timestamp + "." + body)),
                       key = base64-decoded secret after an optional "whsec_" prefix
    github             "sha256=" + hex(HMAC(secret, body))

A header may carry several signatures separated by spaces (one per secret while keys are
rotated); a receiver accepts the request when any one of them matches.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

SCHEMES = ("serfbridge", "standard-webhooks", "github")
WHSEC_PREFIX = "whsec_"
# Standard Webhooks header names (https://www.standardwebhooks.com/).
STANDARD_HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature")
GITHUB_HEADER = "X-Hub-Signature-256"


def hmac_sha256(key: bytes, message: bytes) -> bytes:
    """The one HMAC every scheme is built on."""
    return hmac.new(key, message, hashlib.sha256).digest()


def sign(key: bytes, timestamp: str, body: bytes) -> str:
    """serfbridge scheme: ``sha256=`` + hex HMAC of ``b"<timestamp>." + body``."""
    return "sha256=" + hmac_sha256(key, timestamp.encode("ascii") + b"." + body).hex()


def sign_github(key: bytes, body: bytes) -> str:
    """GitHub's ``X-Hub-Signature-256``: ``sha256=`` + hex HMAC of the body alone."""
    return "sha256=" + hmac_sha256(key, body).hex()


def sign_standard(key: bytes, msg_id: str, timestamp: str, body: bytes) -> str:
    """Standard Webhooks: ``v1,`` + base64 HMAC of ``b"<id>.<timestamp>." + body``."""
    mac = hmac_sha256(key, f"{msg_id}.{timestamp}.".encode() + body)
    return "v1," + base64.b64encode(mac).decode("ascii")


def standard_key(secret: str) -> bytes:
    """The key bytes of a Standard Webhooks secret (``whsec_`` + base64); ValueError if bad."""
    text = secret.removeprefix(WHSEC_PREFIX)
    try:
        # The reference libraries accept unpadded base64 too.
        key = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(
            "a standard-webhooks secret is 'whsec_' followed by base64 "
            '(e.g. from: python3 -c "import base64,os; '
            "print('whsec_' + base64.b64encode(os.urandom(32)).decode())\")"
        ) from None
    if not key:
        raise ValueError("a standard-webhooks secret may not be empty")
    return key


def matches(expected: str, header: str) -> bool:
    """True if one of the space-separated signatures in ``header`` is ``expected``.

    Every candidate is compared in constant time, and all of them are compared.
    """
    found = False
    for candidate in header.split(" "):
        if hmac.compare_digest(candidate.encode(), expected.encode()):
            found = True
    return found
