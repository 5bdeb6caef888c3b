"""Answering Serf queries: pick the responder, produce the answer, fit Serf's size limit.

Serf sends a handler's output as the query response only if the handler exits 0, and drops
it entirely (the querier sees only the ack) when the encoded response exceeds the agent's
``query_response_size_limit``. So the answer is cut to fit, visibly, before it is written.
"""

from __future__ import annotations

from serfbridge import log
from serfbridge.capture import render

TYPE_CHECKING = False
if TYPE_CHECKING:
    from serfbridge._types import EventDoc, ResponderSpec

# Serf keeps only the last 8 KiB of handler output (armon/circbuf in invoke.go).
SERF_OUTPUT_BUFFER = 8192


def _uint_size(n: int) -> int:
    return 1 if n < 128 else 2 if n < 256 else 3 if n < 65536 else 5 if n < 2**32 else 9


def _str_size(n: int) -> int:
    return 1 + n if n < 32 else 2 + n if n < 256 else 3 + n if n < 65536 else 5 + n


def payload_budget(limit: int, node_name: str, ltime: int) -> int:
    """Largest payload that keeps serf's encoded query response within ``limit``.

    The response is one type byte plus a msgpack map {LTime, ID, From, Flags, Payload}: 30
    bytes of framing and keys, LTime, ID and Flags (counted at their 5-byte worst case), the
    From string and Payload's bin header. Checked against docs/serf.md: limit 1024, node "n2",
    measured maximum 981 bytes; this formula allows 977.
    """
    fixed = 30 + _uint_size(ltime) + 5 + _str_size(len(node_name.encode())) + 5
    room = min(limit, SERF_OUTPUT_BUFFER + 64) - fixed
    header = 2 if room - 2 < 256 else 3 if room - 3 < 65536 else 5
    return max(0, min(room - header, SERF_OUTPUT_BUFFER))


def fit(answer: bytes, budget: int) -> bytes:
    if len(answer) <= budget:
        return answer
    marker = f"\n[truncated by serfbridge: {len(answer)} bytes, limit {budget}]\n".encode()
    if budget < len(marker) * 2:
        # Too little room to say so: an answer cut short still beats one serf drops.
        marker = b""
    keep = budget - len(marker)
    # Cut on a character boundary so the kept text stays valid UTF-8.
    head = answer[:keep].decode("utf-8", "ignore").encode("utf-8")
    return head + marker


def _run(responder: ResponderSpec, event_json: str) -> bytes:
    from serfbridge.capture import procrun

    argv = responder["command"] or []
    try:
        done = procrun.run(argv, event_json.encode(), responder["timeout"])
    except OSError as exc:
        log.error("responder could not start", query=responder["query"], error=str(exc))
        return f"serfbridge: responder could not start: {exc.strerror}\n".encode()
    if done.timed_out:
        log.error("responder timed out", query=responder["query"], timeout=responder["timeout"])
        return f"serfbridge: responder timed out after {responder['timeout']:.3g} s\n".encode()
    if done.stderr:
        log.warning(
            "responder wrote to stderr",
            query=responder["query"],
            stderr=done.stderr.decode("utf-8", "replace")[-2000:],
        )
    if done.returncode != 0:
        log.error("responder failed", query=responder["query"], status=done.returncode)
        return f"serfbridge: responder failed with exit status {done.returncode}\n".encode()
    return done.stdout


def answer(responder: ResponderSpec, doc: EventDoc, event_json: str, limit: int) -> bytes:
    """The bytes to write to stdout for this query, already cut to fit."""
    if responder["text"] is not None:
        raw = render.render(responder["text"], doc).encode()
    else:
        raw = _run(responder, event_json)
    budget = payload_budget(limit, doc["node"]["name"], doc["ltime"] or 0)
    return fit(raw, budget)
