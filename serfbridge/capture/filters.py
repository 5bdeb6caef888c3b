"""Serf's event filter syntax, exactly as ``serf agent -event-handler`` parses it.

Spaces around terms are ignored (Serf would reject them).
``*`` (or empty) matches everything; ``member-join,member-leave`` lists types;
``user:deploy`` and ``query:load`` name one user event or query; ``user`` or ``user:``
matches every user event. Names match exactly, as in Serf (no globs).
"""

from serfbridge.capture.event import EVENT_TYPES

TYPE_CHECKING = False
if TYPE_CHECKING:
    from serfbridge._types import FilterTerm

_VALID = (*EVENT_TYPES, "*")


def parse(spec: str) -> "list[FilterTerm]":
    """Parse a filter; raises ValueError naming the first invalid term."""
    terms: list[FilterTerm] = []
    for raw in (spec or "*").split(","):
        term = raw.strip()
        name: str | None = None
        if term.startswith(("user:", "query:")):
            term, _, name = term.partition(":")
        if term not in _VALID:
            raise ValueError(
                f"invalid event filter term {raw!r}: expected one of {', '.join(_VALID)}, "
                "user:NAME or query:NAME"
            )
        terms.append((term, name or None))
    return terms


def matches(terms: "list[FilterTerm]", event: str, name: str | None) -> bool:
    for kind, want in terms:
        if kind == "*" or (kind == event and (want is None or want == name)):
            return True
    return False
