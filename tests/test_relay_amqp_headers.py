"""Credentials from AMQP message headers: any header table is read without an error."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from serfbridge.relay.sources.amqp import _header

VALUES = st.one_of(st.text(), st.binary(), st.integers(), st.booleans(), st.none())


@settings(database=None)
@given(st.dictionaries(st.text(max_size=30), VALUES, max_size=8), st.text(max_size=30))
def test_any_header_table_reads_cleanly(headers: dict[str, object], name: str) -> None:
    """Whatever a publisher puts in the headers (pika decodes to str, bytes, int, bool...),
    a lookup returns text or None, never raises."""
    value = _header(headers, name)
    assert value is None or isinstance(value, str)


def test_lookup_ignores_case_and_decodes_bytes() -> None:
    headers = {"x-serfbridge-signature": b"sha256=ab", "Token": "t", "void": None}
    assert _header(headers, "X-Serfbridge-Signature") == "sha256=ab"
    assert _header(headers, "void") is None
    assert _header(headers, "token") == "t"
    assert _header(headers, "missing") is None
