"""Answering Serf queries: pick the responder, produce the answer, fit Serf's size limit.

Serf sends a handler's output as the query response only if the handler exits 0, and drops
it entirely (the querier sees only the ack) when the encoded response exceeds the agent's
``query_response_size_limit``. So the answer is cut to fit, visibly, before it is written.
"""

from __future__ import annotations

from serfbridge import log
from serfbridge.capture import render, serf_sizes

TYPE_CHECKING = False
if TYPE_CHECKING:
    from serfbridge._types import EventDoc, ResponderSpec

SERF_OUTPUT_BUFFER = serf_sizes.SERF_OUTPUT_BUFFER


def payload_budget(limit: int, node_name: str, ltime: int) -> int:
    """Largest payload that keeps serf's encoded query response within ``limit``."""
    return serf_sizes.response_payload_budget(limit, node_name, ltime)


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
