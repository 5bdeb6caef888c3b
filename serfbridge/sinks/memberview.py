"""The membership view: pure update rules and the atomic JSON file (no pydantic, no I/O
libraries), used by the ``members`` sink (``serfbridge/sinks/members.py``, which documents the
format and the rules)."""

from __future__ import annotations

import json
import os
import time
from typing import Any

STATUS_BY_EVENT = {
    "member-join": "alive",
    "member-update": "alive",
    "member-leave": "left",
    "member-failed": "failed",
}
FORMAT_VERSION = 1


def _now() -> str:
    from serfbridge.capture.event import rfc3339

    return rfc3339(time.time())


def entry(
    name: str, addr: str, port: int | None, tags: dict[str, str], status: str
) -> dict[str, Any]:
    return {
        "name": name,
        "addr": addr,
        "port": port,
        "role": tags.get("role", ""),
        "tags": dict(sorted(tags.items())),
        "status": status,
    }


def _state(member: dict[str, Any]) -> tuple[Any, ...]:
    return (member["addr"], member["port"], member["tags"], member["status"])


def from_event(old: dict[str, dict[str, Any]], event: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The view after applying ``event`` to ``old`` (no agent to ask)."""
    new = {name: dict(m) for name, m in old.items()}
    kind = event["event"]
    for member in event.get("members") or []:
        name = member["name"]
        if kind == "member-reap":
            new.pop(name, None)
            continue
        before = new.get(name) or {}
        tags = dict(member.get("tags") or {})
        status = STATUS_BY_EVENT.get(kind, before.get("status", "alive"))
        new[name] = {**before, **entry(name, member["addr"], before.get("port"), tags, status)}
    return new


def build_view(
    old: dict[str, dict[str, Any]],
    current: dict[str, dict[str, Any]],
    event: dict[str, Any],
    source: str,
) -> tuple[dict[str, Any], list[str], list[str]]:
    """The file's document, the names that changed and the names that are gone."""
    now = _now()
    in_event = {m["name"] for m in event.get("members") or []}
    by_name: dict[str, dict[str, Any]] = {}
    changed = []
    for name in sorted(current):
        member = {k: current[name][k] for k in ("name", "addr", "port", "role", "tags", "status")}
        before = old.get(name)
        if before is None or _state(before) != _state(member):
            changed.append(name)
            member["changed_at"] = now
            member["changed_by"] = {
                "event": event["event"] if name in in_event else "reconcile",
                "id": event["id"],
                "ltime": event.get("ltime"),
            }
        else:
            member["changed_at"] = before.get("changed_at")
            member["changed_by"] = before.get("changed_by")
        by_name[name] = member
    removed = sorted(set(old) - set(current))
    by_role: dict[str, list[dict[str, Any]]] = {}
    for member in by_name.values():
        by_role.setdefault(member["role"], []).append(member)
    doc = {
        "version": FORMAT_VERSION,
        "node": event["node"]["name"],
        "updated_at": now,
        "source": source,
        "members": by_name,
        "roles": dict(sorted(by_role.items())),
    }
    return doc, changed, removed


def read_view(path: str) -> dict[str, dict[str, Any]]:
    """The members of the current file; empty if there is none (or it is unreadable)."""
    try:
        with open(path, "rb") as fh:
            doc = json.loads(fh.read())
        members = doc["members"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    return members if isinstance(members, dict) else {}


def write_view(path: str, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically; readers see the old or the new file."""
    from serfbridge.capture.files import write_atomic

    write_atomic(os.path.abspath(path), data, mode=0o644)
