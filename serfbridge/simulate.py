"""Dry run: which sinks and responders an event would reach on a node, sending nothing.

The decisions use exactly what the handler uses: the compiled config (``compile_settings``),
``capture.route``; the event document comes from
``parse.parse_event`` fed with the ``SERF_*`` variables and stdin Serf would give the handler.
Only what has no side effect is evaluated: chat messages and text answers are rendered;
programs (command sinks and responders) are never run and nothing is sent or written.

Public API: ``serfbridge.testing`` (for users' tests) and ``serfbridge route`` (CLI).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, cast

from serfbridge.capture import event as parse
from serfbridge.capture import respond, route, when
from serfbridge.errors import InputError

if TYPE_CHECKING:
    from serfbridge._types import Compiled, EventDoc, SinkSpec

MEMBER_EVENTS = tuple(sorted(parse.MEMBER_EVENTS))


@dataclass(frozen=True)
class SinkDecision:
    """One sink's fate for the event on this node."""

    name: str
    type: str
    fires: bool
    reason: str  # why it fires or not, in words
    action: str  # what it would do: "append to PATH", "POST https://host (slack)", ...
    message: str | None = None  # chat sinks: the rendered message text
    once: bool = False  # fires here, but only one node of the cluster forwards it


@dataclass(frozen=True)
class ResponderDecision:
    """The responder that answers a query on this node."""

    index: int  # position in [[responders]]
    query: str
    kind: str  # "text" or "command"
    answer: str | None  # text responders: the answer as Serf would send it (fitted)
    command: list[str] | None = None  # command responders: not run in a dry run


@dataclass(frozen=True)
class RouteResult:
    event: dict[str, Any]
    sinks: list[SinkDecision]
    responder: ResponderDecision | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def fired(self) -> list[str]:
        """Names of the sinks that would get the event, in config order."""
        return [s.name for s in self.sinks if s.fires]

    @property
    def answer(self) -> str | None:
        """The query answer of a text responder; None if no responder or a command one."""
        return self.responder.answer if self.responder else None

    def sink(self, name: str) -> SinkDecision:
        for decision in self.sinks:
            if decision.name == name:
                return decision
        raise KeyError(f"no sink named {name!r}; sinks: {', '.join(s.name for s in self.sinks)}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "event": self.event,
            "fired": self.fired,
            "sinks": [asdict(s) for s in self.sinks],
            "responder": asdict(self.responder) if self.responder else None,
            "notes": list(self.notes),
        }


# --------------------------------------------------------------------------- the event


def _clean(text: str) -> str:
    # Serf's eventClean: TAB and LF inside a member line field become \t and \n.
    return text.replace("\t", "\\t").replace("\n", "\\n")


def _member_line(member: str | dict[str, Any]) -> str:
    if isinstance(member, str):
        name, _, addr = member.partition("@")
        member = {"name": name, "addr": addr or "127.0.0.1"}
    tags = dict(member.get("tags") or {})
    role = str(member.get("role", tags.get("role", "")))
    if role and "role" not in tags:
        tags["role"] = role
    tag_text = ",".join(f"{_clean(k)}={_clean(v)}" for k, v in tags.items())
    addr = member.get("addr") or "127.0.0.1"
    return f"{_clean(member['name'])}\t{addr}\t{_clean(role)}\t{tag_text}\n"


def node_environ(node: str, role: str | None, tags: dict[str, str] | None) -> dict[str, str]:
    """``SERF_SELF_*`` and ``SERF_TAG_*`` as Serf sets them for a node with these tags."""
    all_tags = dict(tags or {})
    if role is not None:
        all_tags["role"] = role
    env = {"SERF_SELF_NAME": node, "SERF_SELF_ROLE": all_tags.get("role", "")}
    for key, value in all_tags.items():
        env["SERF_TAG_" + when.tag_key(key).upper()] = value
    return env


def make_event(
    event: str,
    payload: str | bytes = b"",
    *,
    node: str = "node1",
    role: str | None = None,
    tags: dict[str, str] | None = None,
    members: list[str | dict[str, Any]] | None = None,
    ltime: int = 1,
) -> dict[str, Any]:
    """The event document the handler would build for ``event`` on this node.

    ``event``: ``user:NAME``, ``query:NAME`` or a membership event type. ``members``: names
    (``"n2"`` or ``"n2@10.0.0.2"``) or dicts with name, addr, role, tags.
    """
    kind, _, name = event.partition(":")
    env = {"SERF_EVENT": kind, **node_environ(node, role, tags)}
    data = payload.encode() if isinstance(payload, str) else bytes(payload)
    if kind in ("user", "query"):
        if not name:
            raise InputError(f"give the {kind} name: --event {kind}:NAME")
        prefix = "SERF_USER" if kind == "user" else "SERF_QUERY"
        env[f"{prefix}_EVENT" if kind == "user" else f"{prefix}_NAME"] = name
        env[f"{prefix}_LTIME"] = str(ltime)
        stdin = data + b"\n" if data and not data.endswith(b"\n") else data
    elif kind in parse.MEMBER_EVENTS:
        if name:
            raise InputError(f"{kind} takes no name (got {event!r})")
        if data:
            raise InputError(f"{kind} has no payload: give --member NAME instead")
        stdin = "".join(_member_line(m) for m in members or []).encode()
    else:
        kinds = ", ".join(MEMBER_EVENTS)
        raise InputError(f"unknown event {event!r}: use user:NAME, query:NAME or one of {kinds}")
    doc: dict[str, Any] = dict(parse.parse_event(env, stdin, time.time()))
    return doc


def with_node(
    doc: dict[str, Any], node: str | None, role: str | None, tags: dict[str, str] | None
) -> dict[str, Any]:
    """A recorded document, seen from another node (only what is given changes)."""
    if node is None and role is None and tags is None:
        return doc
    old = doc.get("node") or {}
    merged_tags = dict(old.get("tags") or {}) if tags is None else {}
    merged_tags.update(tags or {})
    if role is None and tags is not None and "role" not in tags:
        role = old.get("role")
    env = node_environ(node or old.get("name") or "node1", role, merged_tags)
    return {**doc, "node": parse.node_from_env(env)}


def load_recorded(text: str, source: str) -> list[dict[str, Any]]:
    """Documents from a recorded file: one JSON document, JSON lines, or spool entries."""
    try:
        found: list[Any] = [json.loads(text)]
    except ValueError:
        try:
            found = [json.loads(line) for line in text.splitlines() if line.strip()]
        except ValueError as exc:
            raise InputError(f"{source}: not JSON or JSON lines: {exc}") from None
    docs = []
    for number, item in enumerate(found, 1):
        doc = item.get("event") if isinstance(item, dict) else None
        doc = doc if isinstance(doc, dict) else item  # a spool entry wraps the document
        if not isinstance(doc, dict) or doc.get("event") not in parse.EVENT_TYPES:
            raise InputError(f"{source}: document {number} is not a serfbridge event document")
        if not isinstance(doc.get("node"), dict):
            raise InputError(f"{source}: document {number} has no node object")
        doc.setdefault("members", [])
        docs.append(doc)
    if not docs:
        raise InputError(f"{source}: no event in the file")
    return docs


# --------------------------------------------------------------------------- decisions


def _action(sink: dict[str, Any], doc: dict[str, Any]) -> tuple[str, str | None]:
    """What the sink would do with ``doc`` (nothing is done), and a chat message if any."""
    from serfbridge.capture import render

    kind = sink["type"]
    message = None
    if kind == "file":
        action = f"append to {sink['path']}"
    elif kind == "webhook":
        from serfbridge.sinks.answers import origin
        from serfbridge.sinks.webhook import CHAT_FORMATS

        fmt = sink["format"]
        action = f"POST {origin(sink['url'])} ({fmt})"
        if fmt in CHAT_FORMATS:
            from serfbridge.sinks import chat

            message = chat.text_for(fmt, doc, sink.get("template"))
    elif kind == "mqtt":
        action = f"publish to {render.render(sink['topic'], doc)!r} at {sink['url']}"
    elif kind == "redis":
        action = f"XADD {render.render(sink['stream'], doc)!r}"
    elif kind == "command":
        action = "run " + " ".join(sink["command"])
    elif kind == "members":
        action = f"update the membership view {sink['path']}"
    else:
        action = kind
    return action, message


def decide(cfg: dict[str, Any], doc: dict[str, Any]) -> RouteResult:
    """What the handler and deliverer would do with ``doc``, given the compiled ``cfg``."""
    decisions = []
    for sink in cfg["sinks"]:
        action, message = _action(sink, doc)
        fires, reason = route.sink_verdict(cast("SinkSpec", sink), cast("EventDoc", doc))
        decisions.append(
            SinkDecision(
                name=sink["name"],
                type=sink["type"],
                fires=fires,
                reason=reason,
                action=action,
                message=message if fires else None,
                once=bool(sink.get("once")),
            )
        )
    notes = []
    responder = None
    if doc["event"] == "query":
        found = route.responder_for(cast("Compiled", cfg), cast("EventDoc", doc))
        if found is None:
            notes.append(f"no responder answers query {doc.get('name')!r} on this node")
        else:
            index = cfg["responders"].index(found)
            answer = None
            if found["text"] is not None:
                from serfbridge.capture import jsonenc

                raw_answer = respond.answer(
                    found,
                    cast("EventDoc", doc),
                    jsonenc.dumps(doc),
                    cfg["query_response_size_limit"],
                )
                answer = raw_answer.decode("utf-8", "replace")
            responder = ResponderDecision(
                index=index,
                query=found["query"],
                kind="text" if found["text"] is not None else "command",
                answer=answer,
                command=found["command"],
            )
    return RouteResult(event=doc, sinks=decisions, responder=responder, notes=notes)


# --------------------------------------------------------------------------- text output


def _describe_event(doc: dict[str, Any]) -> str:
    event = doc["event"]
    if event in ("user", "query"):
        text = f"{event} {doc['name']!r} (ltime {doc['ltime']})"
        payload = doc.get("payload") or ""
        if doc.get("payload_encoding") == "base64":
            return text + f", binary payload ({len(payload)} base64 chars)"
        return text + (f", payload {payload!r}" if payload else ", no payload")
    names = ", ".join(m["name"] for m in doc.get("members") or []) or "no members"
    return f"{event} ({names})"


def format_text(result: RouteResult) -> str:
    doc = result.event
    node = doc["node"]
    tags = ", ".join(f"{k}={v}" for k, v in node["tags"].items()) or "none"
    lines = [
        f"event: {_describe_event(doc)}",
        f"node:  {node['name']} (role {node['role']!r}; tags {tags})",
        "sinks:",
    ]
    if not result.sinks:
        lines.append("  (no sinks configured)")
    for s in result.sinks:
        mark = "FIRE" if s.fires else "skip"
        once = ", once per cluster" if s.once and s.fires else ""
        lines.append(f"  {mark}  {s.name} ({s.type}{once}): {s.reason}")
        if s.fires:
            lines.append(f"        would {s.action}")
        if s.message is not None:
            lines.append(f"        message: {s.message}")
    if doc["event"] == "query":
        r = result.responder
        if r is None:
            lines.append("responder: none on this node: no response is sent (only the ack)")
        elif r.kind == "text":
            lines.append(f"responder: responders[{r.index}] (text) answers: {r.answer!r}")
        else:
            argv = " ".join(r.command or [])
            lines.append(
                f"responder: responders[{r.index}] (command) would run {argv}; "
                "its output is the answer (not run in a dry run)"
            )
    return "\n".join(lines) + "\n"
