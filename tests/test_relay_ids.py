"""Relay event ids: the payload trailer and the node's table of recorded ids."""

from __future__ import annotations

import threading
from collections import Counter
from typing import TYPE_CHECKING

import pytest

from serfbridge.capture import event as parse
from serfbridge.capture import relay_ids, seen
from serfbridge.relay.stream import event_doc

if TYPE_CHECKING:
    from pathlib import Path

    from serfbridge._types import Node

NODE: Node = {"name": "n1", "role": "", "tags": {}}
ENV = {"SERF_EVENT": "user", "SERF_USER_EVENT": "deploy", "SERF_SELF_NAME": "n1"}
PAYLOADS = [b"", b"v2", b"v2\n", b"a\nb", b"\xff\xfe binary", b"x" * 490]


def serf_stdin(payload: bytes) -> bytes:
    """What Serf writes to a handler's stdin (docs/serf.md): a '\\n' added unless there."""
    return payload if not payload or payload.endswith(b"\n") else payload + b"\n"


def test_make_is_deterministic_and_hex() -> None:
    a = relay_ids.make("redis\0run\0s\0g\x001-0")
    assert a == relay_ids.make("redis\0run\0s\0g\x001-0")
    assert a != relay_ids.make("redis\0run\0s\0g\x001-1")
    assert len(a) == relay_ids.DIGITS
    assert set(a) <= set("0123456789abcdef")
    assert len(relay_ids.attach(b"", a)) == relay_ids.SIZE == 22


@pytest.mark.parametrize("payload", PAYLOADS)
def test_split_gives_back_what_was_attached(payload: bytes) -> None:
    tagged = relay_ids.attach(payload, relay_ids.make("k"))
    assert relay_ids.split(tagged) == (payload, relay_ids.make("k"))
    assert relay_ids.split(payload) == (payload, None)


@pytest.mark.parametrize(
    "payload",
    [
        b"\x1esbid:0123456789ABCDEF",  # upper case is not what attach writes
        b"\x1esbid:0123456789abcdeg",
        b"\x1esbid:0123456789abcde",  # one digit short
        b"\x1esbid 0123456789abcdef",
        b"sbid:0123456789abcdef",
    ],
)
def test_split_leaves_near_misses_alone(payload: bytes) -> None:
    assert relay_ids.split(payload) == (payload, None)


@pytest.mark.parametrize("payload", PAYLOADS)
def test_tagged_event_reads_like_the_untagged_one(payload: bytes) -> None:
    """The handler's document of a tagged event has the payload as sent; its id ignores the
    Lamport time (a resend gets a new one) and differs from the untagged event's."""
    rid = relay_ids.make("m1")
    plain = parse.parse_event({**ENV, "SERF_USER_LTIME": "7"}, serf_stdin(payload), 0.0)
    docs = []
    for ltime in ("7", "9"):
        data, found = relay_ids.split_stdin(serf_stdin(relay_ids.attach(payload, rid)))
        assert found == rid
        env = {**ENV, "SERF_USER_LTIME": ltime}
        docs.append(parse.parse_event(env, data, 0.0, relay_id=found))
    assert docs[0]["payload"] == plain["payload"]
    assert docs[0]["payload_encoding"] == plain["payload_encoding"]
    assert docs[0]["id"] == docs[1]["id"] != plain["id"]
    assert [d["ltime"] for d in docs] == [7, 9]


@pytest.mark.parametrize("payload", PAYLOADS)
def test_stream_path_gives_the_handler_document(payload: bytes) -> None:
    """``stream = true`` gets the exact payload from the RPC stream; same document, same id."""
    rid = relay_ids.make("m1")
    record = {
        "Event": "user",
        "Name": "deploy",
        "LTime": 7,
        "Payload": relay_ids.attach(payload, rid),
    }
    found = event_doc(record, NODE, 0.0)
    assert found is not None
    doc, relay_id = found
    data, _ = relay_ids.split_stdin(serf_stdin(relay_ids.attach(payload, rid)))
    env = {**ENV, "SERF_USER_LTIME": "7"}
    assert relay_id == rid
    assert doc == parse.parse_event(env, data, 0.0, relay_id=rid)


def test_queries_are_never_split() -> None:
    tagged = relay_ids.attach(b"q", relay_ids.make("k"))
    found = event_doc({"Event": "query", "Name": "q", "LTime": 1, "Payload": tagged}, NODE, 0.0)
    assert found is not None
    assert found[1] is None
    assert found[0]["payload"] == tagged.decode()


# --------------------------------------------------------------------------- seen-ids


def test_first_time_then_repeat_then_forget(tmp_path: Path) -> None:
    state = str(tmp_path / "new-state")  # created on first use
    rid = relay_ids.make("a")
    assert seen.first_time(state, rid, 100.0)
    assert not seen.first_time(state, rid, 101.0)
    seen.forget(state, rid)
    assert seen.first_time(state, rid, 102.0)
    assert (tmp_path / "new-state" / seen.FILE).read_bytes()[8:31] == seen.MAGIC


def test_thousands_of_ids_are_all_remembered(tmp_path: Path) -> None:
    ids = [relay_ids.make(f"entry-{i}") for i in range(5000)]
    assert all(seen.first_time(str(tmp_path), i, 1.0 + n) for n, i in enumerate(ids))
    assert not any(seen.first_time(str(tmp_path), i, 9999.0) for i in ids)
    assert (tmp_path / seen.FILE).stat().st_size <= seen.HEADER + seen.BUCKETS * seen.WAYS * 16


def _same_bucket(count: int) -> list[str]:
    """``count`` ids that land in one bucket."""
    out: list[str] = []
    n = 0
    while len(out) < count:
        rid = relay_ids.make(f"b{n}")
        n += 1
        if int(rid, 16) % seen.BUCKETS == 0:
            out.append(rid)
    return out


def test_a_full_bucket_forgets_its_oldest_id(tmp_path: Path) -> None:
    state = str(tmp_path)
    ids = _same_bucket(seen.WAYS + 1)
    for t, rid in enumerate(ids[: seen.WAYS]):
        assert seen.first_time(state, rid, 10.0 + t)
    assert seen.first_time(state, ids[-1], 100.0)  # takes the slot of ids[0], the oldest
    assert seen.first_time(state, ids[0], 101.0)  # forgotten: let through, never dropped
    assert not seen.first_time(state, ids[-1], 102.0)
    assert all(not seen.first_time(state, rid, 103.0) for rid in ids[2 : seen.WAYS])


def test_unusable_table_lets_every_event_through(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    rid = relay_ids.make("x")
    assert seen.first_time(str(blocker), rid, 1.0)
    assert seen.first_time(str(blocker), rid, 2.0)


def test_concurrent_recorders_agree_on_one_first(tmp_path: Path) -> None:
    """Handlers and a stream relay share a state dir: each id is 'first' exactly once."""
    ids = [relay_ids.make(f"c{i}") for i in range(300)]
    firsts: Counter[str] = Counter()
    lock = threading.Lock()

    def work() -> None:
        for rid in ids:
            if seen.first_time(str(tmp_path), rid, 1.0):
                with lock:
                    firsts[rid] += 1

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert firsts == Counter(ids)
