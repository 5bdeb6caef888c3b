"""Compact JSON for the capture path.

``import json`` costs ~7 ms per event because ``json.decoder`` pulls in ``re`` and ``enum``;
a string escaper is all the encoder side needs for the event document's plain dicts, lists,
strings, ints, bools and None. The C one in ``_json`` is a shared library on most builds
(Debian's included): loading it costs a handler run more than escaping the short strings of
an event does in Python, so it is loaded only for a long string that needs escapes.
"""

# JSON's escapes (what json.encoder's ESCAPE_DCT holds): `"`, `\` and U+0000-U+001F.
_ESCAPES = {i: f"\\u{i:04x}" for i in range(0x20)}
_ESCAPES.update(
    {0x22: '\\"', 0x5C: "\\\\", 0x08: "\\b", 0x0C: "\\f", 0x0A: "\\n", 0x0D: "\\r", 0x09: "\\t"}
)
# Above this length str.translate (a dict lookup per character) is slower than _json's load.
_SHORT = 1024


def _quote(text: str) -> str:
    """``text`` as a JSON string, non-ASCII kept as is (``ensure_ascii=False``)."""
    if text.isprintable():
        # No control characters: only `"` and `\` need escapes.
        if '"' in text or "\\" in text:
            text = text.replace("\\", "\\\\").replace('"', '\\"')
        return '"' + text + '"'
    if len(text) <= _SHORT:
        return '"' + text.translate(_ESCAPES) + '"'
    try:
        from _json import encode_basestring
    except ImportError:  # pragma: no cover - CPython always has _json; other interpreters may not
        from json.encoder import py_encode_basestring as encode_basestring
    return encode_basestring(text)


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
