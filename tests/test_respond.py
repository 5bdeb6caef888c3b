"""capture.respond: Serf's query response size limit, cutting answers, picking responders."""

from __future__ import annotations

import re
import sys
from typing import TYPE_CHECKING, cast

import pytest

from serfbridge.capture import respond, route
from serfbridge.capture.event import parse_event

if TYPE_CHECKING:
    from serfbridge._types import Compiled, EventDoc, ResponderSpec

MARKER = re.compile(rb"\n\[truncated by serfbridge: (\d+) bytes, limit (\d+)\]\n\Z")


def _query(payload: bytes = b"?\n", node: str = "n2", ltime: int = 1) -> EventDoc:
    env = {
        "SERF_EVENT": "query",
        "SERF_SELF_NAME": node,
        "SERF_SELF_ROLE": "cache",
        "SERF_QUERY_NAME": "big",
        "SERF_QUERY_LTIME": str(ltime),
    }
    return parse_event(env, payload, 1763923126.125)


def _responder(
    text: str | None = None,
    command: list[str] | None = None,
    timeout: float = 5.0,
    query: str = "big",
) -> ResponderSpec:
    return {"query": query, "text": text, "command": command, "timeout": timeout}


@pytest.mark.parametrize("ltime", [0, 1, 5, 127])
def test_budget_matches_serf_measurement(ltime: int) -> None:
    """Limit 1024, node n2: Serf accepted 981 payload bytes; the budget is 970..981."""
    budget = respond.payload_budget(1024, "n2", ltime)
    assert 970 <= budget <= 981


def test_budget_shrinks_with_name_and_ltime() -> None:
    """A longer node name or a larger ltime leaves less room for the payload."""
    base = respond.payload_budget(1024, "n2", 1)
    assert respond.payload_budget(1024, "n2-with-a-long-name", 1) < base
    assert respond.payload_budget(1024, "n2", 70000) < base
    assert respond.payload_budget(2048, "n2", 1) > base


@pytest.mark.parametrize("limit", [8192 + 1024, 65536])
def test_budget_capped_by_serf_output_buffer(limit: int) -> None:
    """Serf keeps only the last 8192 bytes of output, so a larger limit does not help."""
    assert respond.payload_budget(limit, "n2", 1) == respond.SERF_OUTPUT_BUFFER == 8192


@pytest.mark.parametrize("size", [0, 1, 976, 977])
def test_fit_leaves_short_answers_alone(size: int) -> None:
    """An answer within the budget is returned unchanged."""
    answer = b"a" * size
    assert respond.fit(answer, 977) == answer


@pytest.mark.parametrize("size", [978, 1500, 8192, 100_000])
def test_fit_cuts_long_answers_with_marker(size: int) -> None:
    """An answer over the budget is cut to the budget and ends with the truncation marker."""
    out = respond.fit(b"a" * size, 977)
    assert len(out) <= 977
    found = MARKER.search(out)
    assert found is not None
    assert (int(found[1]), int(found[2])) == (size, 977)
    assert out.startswith(b"a" * 800)


@pytest.mark.parametrize("budget", range(200, 204))
@pytest.mark.parametrize("char", ["é", "€", "🚀"], ids=["2-byte", "3-byte", "4-byte"])
def test_fit_cuts_on_a_character_boundary(char: str, budget: int) -> None:
    """Cutting inside a multi-byte character keeps the answer valid UTF-8."""
    answer = (char * 400).encode()
    out = respond.fit(answer, budget)
    text = out.decode("utf-8")  # strict: raises on a split character
    assert len(out) <= budget
    assert text.startswith(char * 10)
    assert MARKER.search(out)


@pytest.mark.parametrize("budget", [0, 20, 43])
def test_fit_never_exceeds_a_small_budget(budget: int) -> None:
    """Even a budget smaller than the marker is never exceeded."""
    assert len(respond.fit(b"x" * 5000, budget)) <= budget


def test_small_limit_with_long_node_name_fits() -> None:
    """query_response_size_limit = 128 (the config minimum) with a 40-char node name fits."""
    budget = respond.payload_budget(128, "n" * 40, 1)
    assert budget > 0
    assert len(respond.fit(b"x" * 5000, budget)) <= budget


def test_answer_text_is_rendered_and_fitted() -> None:
    """A text responder's answer is the rendered template, cut to the budget."""
    doc = _query(payload=b"p" * 3000)
    out = respond.answer(_responder(text="{node}:{payload}"), doc, "{}", 1024)
    assert out.startswith(b"n2:ppp")
    assert len(out) <= respond.payload_budget(1024, "n2", 1)
    assert MARKER.search(out)


def test_answer_text_short() -> None:
    """A short rendered answer is exactly the template's expansion, no newline added."""
    doc = _query(payload=b"hello\n", ltime=7)
    responder = _responder(text="load from {node} ltime={ltime} payload=[{payload}]")
    out = respond.answer(responder, doc, "{}", 1024)
    assert out == b"load from n2 ltime=7 payload=[hello]"


def test_answer_command_reads_event_json() -> None:
    """A command responder gets the event JSON on stdin and its stdout is the answer."""
    code = "import json,sys; d=json.load(sys.stdin); sys.stdout.write(d['name']+'/'+d['payload'])"
    doc = _query(payload=b"ping\n")
    out = respond.answer(
        _responder(command=[sys.executable, "-c", code]),
        doc,
        '{"name":"big","payload":"ping"}',
        1024,
    )
    assert out == b"big/ping"


def test_responder_for_picks_first_matching_responder() -> None:
    """route.responder_for returns the first responder for the query name, or None."""
    first = _responder(text="1", query="load")
    second = _responder(text="2", query="load")
    other = _responder(text="3", query="other")
    cfg = cast("Compiled", {"responders": [other, first, second]})
    node = {"name": "n1", "role": "", "tags": {}}

    def query(name: str | None, event: str = "query") -> EventDoc:
        return cast("EventDoc", {"event": event, "name": name, "node": node})

    assert route.responder_for(cfg, query("load")) is first
    assert route.responder_for(cfg, query("missing")) is None
    assert route.responder_for(cfg, query(None)) is None
    assert route.responder_for(cfg, query("load", event="user")) is None
