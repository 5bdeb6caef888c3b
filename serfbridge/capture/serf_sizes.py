"""Serf's message sizes: how many bytes a user event, a query and a query response take once
Serf has msgpack-encoded them, so the limits can be checked before Serf is called.

Serf encodes with hashicorp/go-msgpack's ``MsgpackHandle{}`` (``WriteExt`` false), the old
msgpack spec: strings and ``[]byte`` are both "raw", and there is **no 8-bit length form**
(``0xd9``/``0xc4``). A raw of 0-31 bytes has a 1-byte header, 32-65535 bytes a 3-byte one,
longer a 5-byte one. ``tests/test_serf_sizes.py`` settles this against a real agent: with
``user_event_size_limit = 100`` and the name ``deploy``, a 64-byte payload is accepted and a
65-byte one refused, which only the 3-byte header explains (docs/relay.md, Limits).

The relay (events, queries) and the query responder (responses) both count with this module.
"""

from __future__ import annotations

# Serf keeps only the last 8 KiB of handler output (armon/circbuf in invoke.go).
SERF_OUTPUT_BUFFER = 8192
# A uint Serf has not sent yet (Lamport time, query id) is counted at its 5-byte worst case
# below 2**32.
WORST_UINT = 5


def raw_size(n: int) -> int:
    """Header + data of a Go msgpack string or ``[]byte`` of ``n`` bytes (no str8/bin8)."""
    return n + (1 if n < 32 else 3 if n < 65536 else 5)


def uint_size(n: int) -> int:
    """A positive integer: fixint, uint8, uint16, uint32 or uint64."""
    return 1 if n < 128 else 2 if n < 256 else 3 if n < 65536 else 5 if n < 2**32 else 9


def event_size(name: str | bytes, payload_len: int, ltime: int | None = None) -> int:
    """Bytes of Serf's messageUserEvent {LTime, Name, Payload, CC} plus its type byte.

    ``ltime`` None counts the Lamport time at its 5-byte worst case (the relay cannot know
    the agent's clock); the real agent's boundary is exact with the real ``ltime``.
    """
    name_len = len(name.encode() if isinstance(name, str) else name)
    clock = WORST_UINT if ltime is None else uint_size(ltime)
    # type, map header, "LTime", "Name", "Payload", "CC" keys, CC's bool.
    return 1 + 1 + 6 + clock + 5 + raw_size(name_len) + 8 + raw_size(payload_len) + 3 + 1


def query_size(name: str, payload_len: int, nodes: list[str], tags: dict[str, str]) -> int:
    """Serf's messageQuery, counted at its worst case (16-byte Addr, 5-byte LTime and ID,
    9-byte Timeout): a little stricter than Serf, never looser."""
    filters = 0
    if nodes:
        inner = (1 if len(nodes) < 16 else 3) + sum(raw_size(len(n.encode())) for n in nodes)
        filters += raw_size(1 + inner)
    for key, expr in tags.items():
        inner = 1 + 4 + raw_size(len(key.encode())) + 5 + raw_size(len(expr.encode()))
        filters += raw_size(1 + inner)
    fixed = 1 + 1 + 6 + 5 + 3 + 5 + 5 + 17 + 5 + 3 + 8 + 1 + 6 + 5 + 12 + 1 + 8 + 9 + 5 + 8
    return fixed + filters + raw_size(len(name.encode())) + raw_size(payload_len)


def response_payload_budget(limit: int, node_name: str, ltime: int) -> int:
    """Largest payload that keeps Serf's encoded query response within ``limit``.

    The response is one type byte plus a map {LTime, ID, From, Flags, Payload}: 30 bytes of
    framing and keys, LTime, ID and Flags (ID and Flags at their 5-byte worst case), the From
    raw and Payload's raw header. Checked against docs/serf.md: limit 1024, node "n2",
    measured maximum 981 bytes; this allows 977.
    """
    fixed = 30 + uint_size(ltime) + WORST_UINT + raw_size(len(node_name.encode())) + WORST_UINT
    room = min(limit, SERF_OUTPUT_BUFFER + 64) - fixed
    header = 1 if room - 1 < 32 else 3 if room - 3 < 65536 else 5
    return max(0, min(room - header, SERF_OUTPUT_BUFFER))
