"""Static shapes of the plain dicts that travel through the capture path.

Imported only under ``TYPE_CHECKING``: ``typing`` costs ~10 ms of import time, which the
handler would pay on every Serf event.
"""

from __future__ import annotations

import os
from typing import NotRequired, TypedDict


class Member(TypedDict):
    name: str
    addr: str
    role: str
    tags: dict[str, str]


class Node(TypedDict):
    name: str
    role: str
    tags: dict[str, str]


class EventDoc(TypedDict):
    version: int
    id: str
    event: str
    name: str | None
    ltime: int | None
    payload: str | None
    payload_encoding: str | None
    members: list[Member]
    node: Node
    received_at: str
    truncated: bool


# One parsed filter term of Serf's -event-handler syntax: (event type or "*", name or None).
FilterTerm = tuple[str, str | None]

# One compiled ``when`` key: (folded tag name, exact values, globs split on "*").
WhenTerm = tuple[str, list[str], list[list[str]]]


class SinkSpec(TypedDict):
    """A sink as the compiled config carries it: validated fields plus the parsed filter."""

    type: str
    name: str
    events: str
    filter: list[FilterTerm]
    when: NotRequired[list[WhenTerm] | None]
    once: NotRequired[bool]
    path: NotRequired[str]
    fsync: NotRequired[bool]


class ResponderSpec(TypedDict):
    query: str
    text: str | None
    command: list[str] | None
    timeout: float
    when: NotRequired[list[WhenTerm] | None]


class SerfSpec(TypedDict):
    rpc_addr: str | None
    rpc_auth: str | None
    exact_tags: bool
    rpc_timeout: float


class Inputs(TypedDict):
    """What a compile read besides the config file: secret files and environment variables."""

    env: list[str]
    files: list[str]
    digest: NotRequired[str]  # stored in the cache: of the values below, never them
    observed: NotRequired[tuple[list[str | None], list[os.stat_result]]]  # at compile time only


class Compiled(TypedDict):
    """The validated configuration as stored in the marshal cache."""

    source: str | None
    state_dir: str
    log_file: str
    log_level: str
    max_input_bytes: int
    query_response_size_limit: int
    spawn_deliverer: bool
    deadline: float
    serf: SerfSpec
    sinks: list[SinkSpec]
    responders: list[ResponderSpec]
    raw: dict[str, object]
    inputs: NotRequired[Inputs]
