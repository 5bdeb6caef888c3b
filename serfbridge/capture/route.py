"""The routing decision: which sinks take an event, which responder answers a query, and why
not. One copy, used by the handler run, by stream mode (``relay`` with ``stream = true``) and
by the dry run (``serfbridge route``, ``serfbridge.testing``), so that they cannot disagree.
"""

from __future__ import annotations

from serfbridge.capture import filters, when

TYPE_CHECKING = False
if TYPE_CHECKING:
    from serfbridge._types import Compiled, EventDoc, ResponderSpec, SinkSpec


def _label(doc: EventDoc) -> str:
    return doc["event"] + (f":{doc['name']}" if doc.get("name") is not None else "")


def sink_verdict(sink: SinkSpec, doc: EventDoc) -> tuple[bool, str]:
    """Whether ``sink`` takes ``doc``, and the reason in words (``events`` first, then
    ``when``: the order the handler tests them in)."""
    terms = sink.get("when")
    if not filters.matches(sink["filter"], doc["event"], doc.get("name")):
        return False, f"events {sink['events']!r} does not match {_label(doc)}"
    if not when.matches(terms, doc["node"]):
        return False, f"when {when.describe(terms)}: not this node"
    reason = f"events {sink['events']!r}"
    return True, reason + (f", when {when.describe(terms)}" if terms else "")


def sinks_for(cfg: Compiled, doc: EventDoc) -> list[SinkSpec]:
    """The sinks that take ``doc``, in config order."""
    return [
        sink
        for sink in cfg["sinks"]
        if filters.matches(sink["filter"], doc["event"], doc.get("name"))
        and when.matches(sink.get("when"), doc["node"])
    ]


def responder_for(cfg: Compiled, doc: EventDoc) -> ResponderSpec | None:
    """The first responder for a query's name whose ``when`` selects this node; None for
    other events."""
    if doc["event"] != "query":
        return None
    for responder in cfg["responders"]:
        if responder["query"] == doc["name"] and when.matches(responder.get("when"), doc["node"]):
            return responder
    return None
