"""JSON Schema (draft 2020-12) of the version 1 event document."""

from __future__ import annotations

from typing import Any

from serfbridge.capture.event import EVENT_TYPES

_TAGS: dict[str, Any] = {"type": "object", "additionalProperties": {"type": "string"}}

EVENT_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "https://serfbridge.invalid/schema/event-v1.json",
    "title": "serfbridge event, version 1",
    "type": "object",
    "required": [
        "version",
        "id",
        "event",
        "name",
        "ltime",
        "payload",
        "payload_encoding",
        "members",
        "node",
        "received_at",
        "truncated",
    ],
    "additionalProperties": False,
    "properties": {
        "version": {"const": 1},
        "id": {
            "type": "string",
            "pattern": "^[0-9a-f]{32}$",
            "description": "Deterministic: the same event has the same id on every node "
            "(BLAKE2b-128 of type, name, ltime and payload, or of type and members; a "
            "relayed event with an event_ids trailer hashes the trailer instead of ltime).",
        },
        "event": {"enum": list(EVENT_TYPES)},
        "name": {"type": ["string", "null"], "description": "User event or query name."},
        "ltime": {"type": ["integer", "null"], "minimum": 0},
        "payload": {
            "type": ["string", "null"],
            "description": "User event or query payload without Serf's trailing newline.",
        },
        "payload_encoding": {"enum": ["utf-8", "base64", None]},
        "members": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name", "addr", "role", "tags"],
                "additionalProperties": False,
                "properties": {
                    "name": {"type": "string"},
                    "addr": {"type": "string", "description": "IP address, no port."},
                    "role": {"type": "string"},
                    "tags": _TAGS,
                },
            },
        },
        "node": {
            "type": "object",
            "required": ["name", "role", "tags"],
            "additionalProperties": False,
            "properties": {
                "name": {"type": "string"},
                "role": {"type": "string"},
                "tags": {
                    **_TAGS,
                    "description": "From SERF_TAG_*: names lower-cased, as Serf upper-cases them.",
                },
            },
        },
        "received_at": {
            "type": "string",
            "pattern": r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$",
            "description": "RFC 3339 UTC with milliseconds.",
        },
        "truncated": {
            "type": "boolean",
            "description": "True when stdin exceeded max_input_bytes and was cut.",
        },
    },
    "allOf": [
        {
            "if": {"properties": {"event": {"enum": ["user", "query"]}}},
            "then": {
                "properties": {
                    "name": {"type": "string"},
                    "ltime": {"type": "integer"},
                    "payload": {"type": "string"},
                    "payload_encoding": {"enum": ["utf-8", "base64"]},
                    "members": {"maxItems": 0},
                }
            },
            "else": {
                "properties": {
                    "name": {"type": "null"},
                    "ltime": {"type": "null"},
                    "payload": {"type": "null"},
                    "payload_encoding": {"type": "null"},
                }
            },
        }
    ],
}
