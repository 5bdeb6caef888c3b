"""capture.jsonenc, the one encoder of the event document (handler and deliverer alike)."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from serfbridge.capture import jsonenc
from serfbridge.delivery.worker import canonical

# What an event document holds: text (any code point but lone surrogates, which the handler
# never produces), ints, bools, None, lists and string-keyed objects.
TEXT = st.text(st.characters(exclude_categories=["Cs"]))
VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | TEXT,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(TEXT, inner, max_size=5),
    max_leaves=30,
)


@given(VALUES)
def test_same_bytes_as_the_standard_encoder(value: Any) -> None:
    """jsonenc writes exactly what json.dumps writes compact with ensure_ascii off."""
    assert jsonenc.dumps(value) == json.dumps(value, ensure_ascii=False, separators=(",", ":"))


@given(st.dictionaries(TEXT, VALUES, max_size=8))
def test_deliverer_and_handler_write_identical_bytes(doc: dict[str, Any]) -> None:
    """The deliverer's file-sink bytes are the handler's line, and they read back equal."""
    assert canonical(doc) == jsonenc.dumps(doc).encode("utf-8")
    assert json.loads(canonical(doc)) == doc


def _standard(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def test_every_code_point_escaped_as_the_standard_encoder() -> None:
    """Each of the three ways a string is escaped (printable text; short text with control
    characters; long text, by _json) agrees with json for every code point."""
    points = [chr(c) for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF]
    for ch in points[:0x3000]:
        assert jsonenc.dumps(ch) == _standard(ch)
        assert jsonenc.dumps(ch + '"\\\n') == _standard(ch + '"\\\n')
    for start in range(0, len(points), 500):
        chunk = "".join(points[start : start + 500])
        assert jsonenc.dumps(chunk) == _standard(chunk)
        long = chunk + "x" * jsonenc._SHORT + "\x01"
        assert len(long) > jsonenc._SHORT
        assert jsonenc.dumps(long) == _standard(long)
