"""``once = true``: exactly one node of the cluster forwards each event, with no coordinator.

Every node runs the handler for every event. Each one asks its local agent for the members
it sees alive and ranks them by rendezvous hashing, ``blake2b(event id + member name)``; the
node that ranks first forwards, the others drop the event for that sink. Because every node
computes the same ranking from the same id, they agree without talking to each other.

* Membership events are split per member, and the member the event is about is never a
  candidate: the node that failed, left or was reaped cannot forward its own failure, so the
  next-ranked live node does.
* If the agent cannot be asked (RPC down), the node forwards anyway: a duplicate is better
  than a lost event. Receivers dedupe by ``id``.
* Limits: nodes decide from their own view. While a failure is still being detected, or a
  node has just joined, views can differ for a moment, and an event may be forwarded twice,
  or not at all if the chosen node dies before its handler runs.
"""

from __future__ import annotations

import copy
from typing import Any

from serfbridge import log
from serfbridge.capture.event import MEMBER_EVENTS, member_event_id

try:
    from _blake2 import blake2b
except ImportError:  # pragma: no cover
    from hashlib import blake2b

DEFAULT_RPC_ADDR = "127.0.0.1:7373"


def owner(key: str, candidates: list[str]) -> str | None:
    """The candidate that ranks first for ``key`` (highest rendezvous hash)."""
    best: tuple[bytes, str] | None = None
    for name in candidates:
        score = blake2b(f"{key}\x00{name}".encode(), digest_size=8).digest()
        if best is None or (score, name) > best:
            best = (score, name)
    return best[1] if best else None


def split(event: dict[str, Any]) -> list[dict[str, Any]]:
    """One document per member for membership events; the event itself otherwise."""
    if event["event"] not in MEMBER_EVENTS or len(event["members"]) <= 1:
        return [event]
    parts = []
    for member in event["members"]:
        doc = copy.deepcopy(event)
        doc["members"] = [member]
        doc["id"] = member_event_id(event["event"], [member])
        parts.append(doc)
    return parts


def select(event: dict[str, Any], self_name: str, alive: list[str]) -> list[dict[str, Any]]:
    """The documents of ``event`` that this node forwards."""
    mine = []
    for doc in split(event):
        subjects = {m["name"] for m in doc["members"]}
        candidates = [n for n in alive if n not in subjects]
        chosen = owner(doc["id"], candidates)
        if chosen is None or chosen == self_name:
            mine.append(doc)
    return mine


class Membership:
    """Asks the local agent which members are alive, once per fan-out batch at most."""

    def __init__(self, serf: Any) -> None:
        self.addr: str = serf.rpc_addr or DEFAULT_RPC_ADDR
        self.auth: str | None = serf.rpc_auth.get_secret_value() if serf.rpc_auth else None
        self.timeout: float = max(serf.rpc_timeout, 2.0)

    def alive(self) -> list[str] | None:
        from serfbridge.serf.rpc import SerfRPC, SerfRPCError

        try:
            with SerfRPC(self.addr, self.auth, timeout=self.timeout) as rpc:
                return [m.name for m in rpc.members() if m.status == "alive"]
        except (SerfRPCError, OSError, ValueError) as exc:
            log.warning(
                "once: agent not reachable, forwarding anyway", addr=self.addr, error=str(exc)
            )
            return None

    def mine(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        alive = self.alive()
        if alive is None:
            return split(event)
        return select(event, event["node"]["name"], alive)
