"""Reading spool entries as untrusted input: every entry is checked before it is used.

An entry that fails is moved to ``spool/rejected/`` with a ``.reason`` file beside it and
delivery goes on; nothing read from the spool may stop the deliverer or reach outside the
spool (sink names become directory names, so they are held to the config's name pattern).

A batch file (``incoming/<stem>.jsonl``, the stream relay's group commit) holds one entry per
line; line ``k`` is the entry ``<stem>.<k:05d>.json`` everywhere else (progress, dead
letters, ``spool list``), so it sorts right after the entries captured before it and in
line order. A bad line is rejected alone: its bytes go to ``rejected/<stem>.<k:05d>.json``.
"""

from __future__ import annotations

import json
import os
import re
import time
from typing import Any

from serfbridge import log
from serfbridge.capture.files import write_atomic
from serfbridge.capture.spool import spool_dir

# The same pattern the config holds sink names to (sinks/base.py); it cannot start with a
# dot, so ``..`` and hidden names are impossible, and it has no separators.
SINK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
ENTRY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,200}\.json")
BATCH_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,190}\.jsonl")
BATCH_SUFFIX = ".jsonl"


class BadEntry(ValueError):
    """The entry cannot be delivered as it is; ``str(exc)`` says why."""


def valid_sink_name(name: object) -> bool:
    return isinstance(name, str) and SINK_NAME.fullmatch(name) is not None


def _member_ok(member: object) -> bool:
    return isinstance(member, dict) and isinstance(member.get("name"), str)


def check_event(event: object) -> dict[str, Any]:
    """The fields the deliverer itself relies on (``once`` ranking, dead letters, sinks)."""
    if not isinstance(event, dict):
        raise BadEntry(f"event is {type(event).__name__}, not an object")
    for key in ("id", "event"):
        if not isinstance(event.get(key), str):
            raise BadEntry(f"event.{key} missing or not a string")
    node = event.get("node")
    if not isinstance(node, dict) or not isinstance(node.get("name"), str):
        raise BadEntry("event.node.name missing or not a string")
    members = event.get("members", [])
    if not isinstance(members, list) or not all(_member_ok(m) for m in members):
        raise BadEntry("event.members is not a list of members")
    return event


def _decode(data: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise BadEntry(f"not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise BadEntry(f"entry is {type(doc).__name__}, not an object")
    return doc


def parse_incoming(data: bytes) -> tuple[list[str], dict[str, Any]]:
    """``{"sinks": [name, ...], "event": {...}}`` from a handler -> (sinks, event)."""
    doc = _decode(data)
    sinks = doc.get("sinks")
    if not isinstance(sinks, list) or not sinks:
        raise BadEntry("sinks missing, empty or not a list")
    for name in sinks:
        if not valid_sink_name(name):
            raise BadEntry(f"invalid sink name {str(name)[:80]!r}")
    return list(dict.fromkeys(sinks)), check_event(doc.get("event"))


def line_name(batch: str, index: int) -> str:
    """The entry name of line ``index`` (from 0) of batch file ``batch`` (``<stem>.jsonl``)."""
    return f"{batch[: -len(BATCH_SUFFIX)]}.{index:05d}.json"


def split_batch(data: bytes) -> list[bytes]:
    """The lines of a batch file, in order; blank lines (a trailing newline) are not entries
    and keep no index, so the names do not depend on how the file ends."""
    return [line for line in data.split(b"\n") if line.strip()]


def batch_names(name: str, data: bytes) -> list[str]:
    """Every entry name in ``incoming/<name>``: the file itself, or one per batch line."""
    if not name.endswith(BATCH_SUFFIX):
        return [name]
    return [line_name(name, k) for k in range(len(split_batch(data)))]


def read_incoming(name: str, data: bytes) -> list[tuple[str, list[str] | None]]:
    """(entry name, its sinks) of every entry in ``incoming/<name>``, in order; None for a bad
    one. For readers that only look (status, ``spool list``): the deliverer parses in full."""
    lines = split_batch(data) if name.endswith(BATCH_SUFFIX) else [data]
    out: list[tuple[str, list[str] | None]] = []
    for entry_name, line in zip(batch_names(name, data), lines, strict=True):
        try:
            out.append((entry_name, parse_incoming(line)[0]))
        except BadEntry:
            out.append((entry_name, None))
    return out


def incoming_names(directory: str) -> list[str]:
    """The entry and batch files of ``incoming/``, sorted (temp files and others left out)."""
    try:
        names = os.listdir(directory)
    except (FileNotFoundError, NotADirectoryError):
        return []
    wanted = (".json", BATCH_SUFFIX)
    return sorted(n for n in names if n.endswith(wanted) and not n.startswith("."))


def parse_queued(data: bytes) -> dict[str, Any]:
    """``{"event": {...}}`` in ``queue/<sink>/`` (a retried dead letter) -> the event."""
    return check_event(_decode(data).get("event"))


def reject(state_dir: str, src: str, reason: str) -> None:
    """Move an entry that cannot be delivered to ``rejected/``, with the reason beside it."""
    target = spool_dir(state_dir, "rejected")
    os.makedirs(target, exist_ok=True)
    base = os.path.basename(src)
    if not ENTRY_NAME.fullmatch(base):
        base = f"{time.time_ns():020d}-bad.json"
    # A name from another directory may already be taken here: never overwrite a kept entry.
    while os.path.exists(os.path.join(target, base)):
        base = base[: -len(".json")] + "-1.json"
    meta = {"reason": reason, "from": os.path.relpath(src, spool_dir(state_dir))}
    try:
        write_atomic(
            os.path.join(target, base[: -len(".json")] + ".reason"), json.dumps(meta).encode()
        )
    except OSError as exc:
        log.warning("cannot write the reason of a rejected entry", error=str(exc))
    os.replace(src, os.path.join(target, base))
    log.error("malformed spool entry moved to rejected/", entry=base, reason=reason)


def reject_line(state_dir: str, batch: str, name: str, data: bytes, reason: str) -> None:
    """Keep one bad line of a batch file in ``rejected/<name>`` (raw), with the reason beside
    it; the rest of the file is delivered. Raises OSError (the batch file then stays)."""
    target = spool_dir(state_dir, "rejected")
    if os.path.exists(os.path.join(target, name)):
        return  # kept before a restart: the batch file was still waiting for other lines
    stem = name[: -len(".json")]
    meta = {"reason": reason, "from": os.path.join("incoming", batch)}
    write_atomic(os.path.join(target, stem + ".reason"), json.dumps(meta).encode())
    write_atomic(os.path.join(target, name), data)
    log.error("malformed line of a batch file moved to rejected/", entry=name, reason=reason)
