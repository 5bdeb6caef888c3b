"""``when``: limit a sink or responder to nodes by their own role and tags.

One config file is deployed to every node; each node acts on the parts meant for it::

    when = { role = "web" }                          # the node's role tag is web
    when = { role = ["web", "api"], dc = "east" }    # (web or api) and dc is east
    when = { rack = "r1-*" }                          # glob: * any run, ? one character

Keys are tag names; ``role`` is the ``role`` tag. Every key must match (and); a list matches
if any of its values does (or). A node without the tag never matches, except ``role``: Serf
always sets ``SERF_SELF_ROLE`` (empty without a role tag), so ``role = ""`` selects nodes
that have none. In values only ``*`` and ``?`` are special; nothing can be escaped.

The node's role and tags come from the handler's environment (``SERF_SELF_ROLE`` and
``SERF_TAG_*``), where Serf upper-cases tag names and turns every character outside
``[A-Z0-9_]`` into ``_``. Keys go through the same folding here, so ``my-tag.v`` finds
``SERF_TAG_MY_TAG_V``. Two keys that fold to the same name are a configuration error.

The config is compiled (``compile``) when the cache is built; the handler evaluates it
(``matches``) with plain string operations, importing nothing.
"""

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

    from serfbridge._types import Node, WhenTerm


def tag_key(name: str) -> str:
    """A tag name as it reads back from ``SERF_TAG_*`` (see ``parse.node_from_env``)."""
    out = []
    for char in name.upper():
        ok = "A" <= char <= "Z" or "0" <= char <= "9" or char == "_"
        out.append(char if ok else "_")
    return "".join(out).lower()


def compile_when(
    spec: "Mapping[str, str | list[str]] | None",
) -> "list[WhenTerm] | None":
    """``{"role": ["web", "a*"]}`` -> ``[("role", ["web"], [["a", ""]])]``; ValueError if bad.

    Each term is (folded key, exact values, globs); a glob is its text split on ``*``.
    """
    if spec is None:
        return None
    if not spec:
        raise ValueError('when must name at least one tag, e.g. when = { role = "web" }')
    terms: list[WhenTerm] = []
    seen: dict[str, str] = {}
    for key, raw in spec.items():
        if not key:
            raise ValueError("when has an empty tag name")
        folded = tag_key(key)
        if folded in seen:
            raise ValueError(
                f"when keys {seen[folded]!r} and {key!r} are the same tag to Serf "
                f"(SERF_TAG_{folded.upper()})"
            )
        seen[folded] = key
        values = [raw] if isinstance(raw, str) else list(raw)
        if not values:
            raise ValueError(f"when.{key}: give at least one value")
        exact = [v for v in values if "*" not in v and "?" not in v]
        globs = [v.split("*") for v in values if "*" in v or "?" in v]
        terms.append((folded, exact, globs))
    return terms


def check_spec(raw: object) -> object:
    """Clear messages for the wrong shapes (pydantic's own name every union branch)."""
    if raw is None or not isinstance(raw, dict):
        return raw
    for key, value in raw.items():
        values = value if isinstance(value, list) else [value]
        if not all(isinstance(v, str) for v in values):
            raise ValueError(f"when.{key}: give a string or a list of strings, not {value!r}")
    return raw


def _part_at(text: str, pos: int, part: str) -> bool:
    """``part`` (``?`` = any one character) matches ``text`` starting at ``pos``."""
    if len(text) - pos < len(part):
        return False
    if "?" not in part:
        return text.startswith(part, pos)
    return all(c in ("?", t) for c, t in zip(part, text[pos : pos + len(part)], strict=True))


def _find(text: str, start: int, part: str) -> int:
    if "?" not in part:
        return text.find(part, start)
    for pos in range(start, len(text) - len(part) + 1):
        if _part_at(text, pos, part):
            return pos
    return -1


def glob_match(parts: list[str], text: str) -> bool:
    """``fnmatch.fnmatchcase`` for patterns with only ``*`` and ``?``, pre-split on ``*``."""
    if len(parts) == 1:
        return len(text) == len(parts[0]) and _part_at(text, 0, parts[0])
    first, last = parts[0], parts[-1]
    if not _part_at(text, 0, first):
        return False
    pos = len(first)
    end = len(text) - len(last)
    if end < pos or not _part_at(text, end, last):
        return False
    # Leftmost placement of each middle part is always safe: it leaves the most room.
    for part in parts[1:-1]:
        found = _find(text, pos, part)
        if found < 0 or found + len(part) > end:
            return False
        pos = found + len(part)
    return True


def matches(terms: "list[WhenTerm] | None", node: "Node") -> bool:
    """Whether the node (the event document's ``node``) is selected by ``terms``."""
    if not terms:
        return True
    tags = node["tags"]
    for key, exact, globs in terms:
        value = node["role"] if key == "role" else tags.get(key)
        if value is None:
            return False
        if value in exact:
            continue
        for parts in globs:
            if glob_match(parts, value):
                break
        else:
            return False
    return True


def describe(terms: "list[WhenTerm] | None") -> str:
    """``role=web|api dc=east`` (compiled keys, globs with their ``*``) for dry-run output."""
    if not terms:
        return "every node"
    out = []
    for key, exact, globs in terms:
        values = [*exact, *("*".join(parts) for parts in globs)]
        out.append(f"{key}={'|'.join(values)}")
    return " ".join(out)
