"""Compact JSON for the capture path.

``import json`` costs ~7 ms per event because ``json.decoder`` pulls in ``re`` and ``enum``;
the C string escaper from ``_json`` is all the encoder side needs for the event document's
plain dicts, lists, strings, ints, bools and None.
"""

from __future__ import annotations

try:
    from _json import encode_basestring as _quote
except ImportError:  # pragma: no cover - CPython always has _json; other interpreters may not
    from json.encoder import py_encode_basestring as _quote


def _encode(obj: object, out: list[str]) -> None:
    if isinstance(obj, str):
        out.append(_quote(obj))
    elif obj is None:
        out.append("null")
    elif obj is True:
        out.append("true")
    elif obj is False:
        out.append("false")
    elif isinstance(obj, int | float):
        out.append(repr(obj))
    elif isinstance(obj, dict):
        out.append("{")
        first = True
        for key, value in obj.items():
            if not first:
                out.append(",")
            first = False
            out.append(_quote(str(key)))
            out.append(":")
            _encode(value, out)
        out.append("}")
    elif isinstance(obj, list | tuple):
        out.append("[")
        for i, value in enumerate(obj):
            if i:
                out.append(",")
            _encode(value, out)
        out.append("]")
    else:
        raise TypeError(f"cannot encode {type(obj).__name__} as JSON")


def dumps(obj: object) -> str:
    out: list[str] = []
    _encode(obj, out)
    return "".join(out)
