"""Property tests of spool-entry reading: whatever bytes or JSON sit in ``incoming/`` and
``queue/<sink>/``, the deliverer neither stops nor loses the good entries beside them."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from serfbridge.config.models import load_settings
from serfbridge.delivery import entries
from serfbridge.delivery.deliverer import flush

GOOD_EVENT = {"id": "good", "event": "user", "node": {"name": "n1"}, "members": []}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)
event_like = st.fixed_dictionaries(
    {},
    optional={
        "id": json_values,
        "event": json_values,
        "node": json_values | st.fixed_dictionaries({"name": json_values}),
        "members": json_values | st.lists(st.fixed_dictionaries({"name": json_values})),
    },
)
entry_like = st.fixed_dictionaries(
    {},
    optional={
        "sinks": json_values | st.lists(st.sampled_from(["file", "gone", "../x", "", "a/b"])),
        "event": json_values | event_like,
    },
)
blobs = st.binary(max_size=200) | json_values.map(lambda v: json.dumps(v).encode())
blobs |= entry_like.map(lambda v: json.dumps(v).encode())


def _run(incoming: list[bytes], queued: list[bytes]) -> tuple[Path, list[dict[str, Any]]]:
    root = Path(tempfile.mkdtemp(prefix="spool-prop-"))
    state = root / "state"
    spool = state / "spool"
    (spool / "incoming").mkdir(parents=True)
    (spool / "queue" / "file").mkdir(parents=True)
    for i, data in enumerate(incoming):
        (spool / "incoming" / f"{i + 1:020d}-0000001-0001.json").write_bytes(data)
    for i, data in enumerate(queued):
        (spool / "queue" / "file" / f"{i + 1:020d}-0000002-0001.json").write_bytes(data)
    good = json.dumps({"sinks": ["file"], "event": GOOD_EVENT}).encode()
    (spool / "incoming" / f"{10**6:020d}-0000003-0001.json").write_bytes(good)
    config = root / "c.toml"
    sink = state / "events.jsonl"
    config.write_text(
        f"state_dir = {json.dumps(str(state))}\nlog_file = {json.dumps(str(root / 'log'))}\n"
        f'[[sinks]]\ntype = "file"\nname = "file"\npath = {json.dumps(str(sink))}\n'
    )
    left = flush(load_settings(str(config)), timeout=30.0, config=str(config))
    assert left == 0
    lines = sink.read_text(encoding="utf-8").splitlines() if sink.exists() else []
    return root, [json.loads(line) for line in lines]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(incoming=st.lists(blobs, max_size=5), queued=st.lists(blobs, max_size=3))
def test_any_spool_content_never_stops_the_deliverer(
    incoming: list[bytes], queued: list[bytes]
) -> None:
    root, delivered = _run(incoming, queued)
    assert GOOD_EVENT in delivered
    spool = root / "state" / "spool"
    assert not list((spool / "incoming").glob("*.json"))
    assert not list((spool / "queue" / "file").glob("*.json"))
    # Nothing escaped the state directory (a sink named ../x or a/b).
    assert set(os.listdir(root)) <= {"c.toml", "log", "state"}


@given(blobs)
def test_parse_incoming_either_returns_valid_names_or_raises_bad_entry(data: bytes) -> None:
    try:
        sinks, event = entries.parse_incoming(data)
    except entries.BadEntry:
        return
    assert sinks
    assert all(entries.valid_sink_name(s) for s in sinks)
    assert isinstance(event["id"], str)
    assert isinstance(event["node"]["name"], str)


def _good_line(n: int) -> bytes:
    return json.dumps({"sinks": ["file"], "event": {**GOOD_EVENT, "id": f"good-{n}"}}).encode()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    batches=st.lists(st.lists(blobs, max_size=4), max_size=3),
    raw=st.lists(st.binary(max_size=300), max_size=2),
)
def test_any_batch_file_content_never_stops_the_deliverer(
    batches: list[list[bytes]], raw: list[bytes]
) -> None:
    """Batch files of arbitrary lines (and arbitrary bytes) beside a batch whose good lines
    sit among bad ones: every good line is delivered, in order, and no file stays."""
    root = Path(tempfile.mkdtemp(prefix="spool-batch-prop-"))
    state = root / "state"
    incoming = state / "spool" / "incoming"
    incoming.mkdir(parents=True)
    files = [b"\n".join(lines) for lines in batches] + raw
    for i, data in enumerate(files):
        (incoming / f"{i + 1:020d}-0000001-0001.jsonl").write_bytes(data)
    mixed = [_good_line(0), *(b for lines in batches for b in lines[:1]), _good_line(1)]
    mixed = [b.replace(b"\n", b" ") for b in mixed] + [_good_line(2)]
    (incoming / f"{10**6:020d}-0000003-0001.jsonl").write_bytes(b"\n".join(mixed) + b"\n")
    config = root / "c.toml"
    sink = state / "events.jsonl"
    config.write_text(
        f"state_dir = {json.dumps(str(state))}\nlog_file = {json.dumps(str(root / 'log'))}\n"
        f'[[sinks]]\ntype = "file"\nname = "file"\npath = {json.dumps(str(sink))}\n'
    )
    assert flush(load_settings(str(config)), timeout=30.0, config=str(config)) == 0
    lines = sink.read_text(encoding="utf-8").splitlines() if sink.exists() else []
    ids = [json.loads(line)["id"] for line in lines]
    good = [i for i in ids if i.startswith("good-")]
    assert good == ["good-0", "good-1", "good-2"]
    assert not list(incoming.iterdir())
    assert set(os.listdir(root)) <= {"c.toml", "log", "state"}


@given(st.binary(max_size=400))
def test_read_incoming_of_any_batch_names_every_line(data: bytes) -> None:
    listed = entries.read_incoming("a.jsonl", data)
    assert [name for name, _ in listed] == entries.batch_names("a.jsonl", data)
    assert all(entries.ENTRY_NAME.fullmatch(name) for name, _ in listed)
