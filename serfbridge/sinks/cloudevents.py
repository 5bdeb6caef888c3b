"""CloudEvents 1.0: one attribute mapping, and the bindings for HTTP, NATS and MQTT.

Attributes of one Serf event::

    specversion      "1.0"
    id               the event document's id (deterministic: receivers dedupe on it)
    source           config ``source``, else ``serf://<node name>``
    type             ``io.serf.<event>``: io.serf.member-join, io.serf.user, io.serf.query ...
    subject          user event / query name; member events: the member names, comma-separated
    time             ``received_at``
    datacontenttype  application/json; ``data`` is the whole event document

Bindings (structured mode is the same JSON envelope on every transport):

    HTTP   binary: ``ce-*`` headers, percent-encoded, ``Content-Type`` = datacontenttype
    NATS   binary: ``ce-*`` headers for every attribute including ``ce-datacontenttype``,
           percent-encoded as in HTTP; structured: header ``Content-Type`` =
           application/cloudevents+json
    MQTT   binary (MQTT 5 only): attribute names unchanged as user properties, values as
           they are (user properties are UTF-8), Content Type property = datacontenttype;
           structured: Content Type property = application/cloudevents+json (implied in 3.1.1)

Structured mode splices the document's bytes into the envelope unchanged, so ``data`` is
exactly what the ``json`` format would have posted.
"""

from __future__ import annotations

import json
from urllib.parse import quote

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

SPECVERSION = "1.0"
STRUCTURED_CONTENT_TYPE = "application/cloudevents+json; charset=utf-8"
DATA_CONTENT_TYPE = "application/json"
SUBJECT_MEMBERS = 20  # member names in `subject` before "+N more"
# HTTP binding §3.1.3.2: printable ASCII except space, '"' and '%' goes into a header as is.
_HEADER_SAFE = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in ' "%')


def default_source(doc: Mapping[str, Any]) -> str:
    return "serf://" + quote(doc["node"]["name"], safe="")


def subject(doc: Mapping[str, Any]) -> str | None:
    if doc.get("name") is not None:
        name: str = doc["name"]
        return name
    names = [m["name"] for m in doc.get("members") or []]
    if not names:
        return None
    text = ",".join(names[:SUBJECT_MEMBERS])
    if len(names) > SUBJECT_MEMBERS:
        text += f",+{len(names) - SUBJECT_MEMBERS} more"
    return text


def attributes(doc: Mapping[str, Any], source: str | None = None) -> dict[str, str]:
    """The context attributes of ``doc`` (everything but ``data``), in spec order."""
    attrs = {
        "specversion": SPECVERSION,
        "id": doc["id"],
        "source": source or default_source(doc),
        "type": f"io.serf.{doc['event']}",
    }
    subj = subject(doc)
    if subj is not None:
        attrs["subject"] = subj
    attrs["time"] = doc["received_at"]
    attrs["datacontenttype"] = DATA_CONTENT_TYPE
    return attrs


def structured(doc: Mapping[str, Any], body: bytes, source: str | None = None) -> bytes:
    """The structured-mode request body; ``body`` is the document's canonical JSON."""
    envelope = json.dumps(attributes(doc, source), ensure_ascii=False, separators=(",", ":"))
    return envelope[:-1].encode("utf-8") + b',"data":' + body + b"}"


def binary_headers(doc: Mapping[str, Any], source: str | None = None) -> dict[str, str]:
    """HTTP binary-mode headers (``ce-*`` plus Content-Type); the body is the document."""
    headers = {"Content-Type": DATA_CONTENT_TYPE}
    for key, value in attributes(doc, source).items():
        if key != "datacontenttype":
            headers[f"ce-{key}"] = quote(value, safe=_HEADER_SAFE)
    return headers


def nats_headers(doc: Mapping[str, Any], source: str | None = None) -> dict[str, str]:
    """NATS binary-mode headers: every attribute, ``datacontenttype`` too, as ``ce-<name>``."""
    return {f"ce-{k}": quote(v, safe=_HEADER_SAFE) for k, v in attributes(doc, source).items()}


def user_properties(doc: Mapping[str, Any], source: str | None = None) -> list[tuple[str, str]]:
    """MQTT 5 binary-mode user properties; ``datacontenttype`` is the Content Type property."""
    return [(k, v) for k, v in attributes(doc, source).items() if k != "datacontenttype"]
