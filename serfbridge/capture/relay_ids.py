"""Relay event ids: a 22-byte trailer on a user event's payload that lets handlers drop repeats.

A Serf user event has a name, a payload and a Lamport time, and no id: when a relay resends
an event it cannot know Serf already took (killed between Serf's answer and ``XACK``; an
``XACK`` that failed), the resend gets a new Lamport time and every node runs its handlers
again. With ``event_ids = true`` on a relay source, the relay appends::

    b"\\x1esbid:" + 16 lowercase hex digits

to the payload, derived from the message's identity (the Redis entry, or the message's
``id``), so a resend carries the same trailer. serfbridge handlers (and ``stream = true``)
strip it, so documents show the payload as sent, and record the id in ``seen-ids``
(:mod:`serfbridge.capture.seen`) to drop the second copy. Other handlers in the cluster see the
trailer as part of the payload: that is why it is opt-in (docs/relay.md).

Printable bytes only (``\\x1e`` is ASCII RS): the ``serf`` CLI mode passes payloads in argv,
where a NUL cannot go. Capture path: builtins only; a handler run imports this module only for
a payload that carries the trailer.
"""

from serfbridge.capture.event import RELAY_ID_PREFIX as PREFIX

DIGITS = 16
#: Bytes the trailer adds to a payload (and takes from Serf's user event size limit).
SIZE = len(PREFIX) + DIGITS
_HEX = frozenset(b"0123456789abcdef")


def make(identity: str) -> str:
    """The id of a message identity (BLAKE2b-64, hex): the same identity, the same id."""
    try:
        from _blake2 import blake2b
    except ImportError:  # pragma: no cover - CPython builds always ship _blake2
        from hashlib import blake2b

    return blake2b(identity.encode("utf-8", "surrogatepass"), digest_size=DIGITS // 2).hexdigest()


def attach(payload: bytes, event_id: str) -> bytes:
    return payload + PREFIX + event_id.encode("ascii")


def split(payload: bytes) -> tuple[bytes, str | None]:
    """An exact payload (as the RPC stream gives it) -> (payload as sent, id or None)."""
    if len(payload) < SIZE or payload[-SIZE:-DIGITS] != PREFIX:
        return payload, None
    digits = payload[-DIGITS:]
    if not _HEX.issuperset(digits):
        return payload, None
    return payload[:-SIZE], digits.decode("ascii")


def split_stdin(data: bytes) -> tuple[bytes, str | None]:
    """A handler's stdin -> (stdin as Serf would give it for the payload as sent, id or None).

    Serf appends one ``\\n`` to a payload that does not end in one, and a trailer never does;
    without the trailer the payload is returned as is, which ``parse`` then reads exactly as
    it reads an untagged event (so ``x`` and ``x\\n`` still both read as ``x``).
    """
    if not data.endswith(b"\n"):
        return data, None
    payload, event_id = split(data[:-1])
    return (payload, event_id) if event_id is not None else (data, None)
