"""The routing decision: which sinks take an event, which responder answers a query, and why
not. One copy, used by the handler run, by stream mode (``relay`` with ``stream = true``) and
by the dry run (``serfbridge route``, ``serfbridge.testing``), so that they cannot disagree.
"""

TYPE_CHECKING = False
if TYPE_CHECKING:
    from serfbridge._types import Compiled, EventDoc, FilterTerm, ResponderSpec, SinkSpec, WhenTerm

#: A sink's compiled ``events = "*"`` (the default, and the built-in file sink's).
_EVERY_EVENT = [("*", None)]


def _label(doc: "EventDoc") -> str:
    return doc["event"] + (f":{doc['name']}" if doc.get("name") is not None else "")


def _events_match(terms: "list[FilterTerm]", doc: "EventDoc") -> bool:
    """``filters.matches``; the module is imported only for a filter narrower than ``*``,
    since a handler run pays for every module it imports."""
    if terms == _EVERY_EVENT:
        return True
    from serfbridge.capture import filters

    return filters.matches(terms, doc["event"], doc.get("name"))


def _node_matches(terms: "list[WhenTerm] | None", doc: "EventDoc") -> bool:
    """``when.matches``, imported only for a sink or responder that has a ``when``."""
    if not terms:
        return True
    from serfbridge.capture import when

    return when.matches(terms, doc["node"])


def sink_verdict(sink: "SinkSpec", doc: "EventDoc") -> tuple[bool, str]:
    """Whether ``sink`` takes ``doc``, and the reason in words (``events`` first, then
    ``when``: the order the handler tests them in)."""
    from serfbridge.capture import when

    terms = sink.get("when")
    if not _events_match(sink["filter"], doc):
        return False, f"events {sink['events']!r} does not match {_label(doc)}"
    if not _node_matches(terms, doc):
        return False, f"when {when.describe(terms)}: not this node"
    reason = f"events {sink['events']!r}"
    return True, reason + (f", when {when.describe(terms)}" if terms else "")


def sinks_for(cfg: "Compiled", doc: "EventDoc") -> "list[SinkSpec]":
    """The sinks that take ``doc``, in config order."""
    return [
        sink
        for sink in cfg["sinks"]
        if _events_match(sink["filter"], doc) and _node_matches(sink.get("when"), doc)
    ]


def responder_for(cfg: "Compiled", doc: "EventDoc") -> "ResponderSpec | None":
    """The first responder for a query's name whose ``when`` selects this node; None for
    other events."""
    if doc["event"] != "query":
        return None
    for responder in cfg["responders"]:
        if responder["query"] == doc["name"] and _node_matches(responder.get("when"), doc):
            return responder
    return None
