"""``serfbridge send``: one message to the relay's ``local`` source, its answer back.

The client side of :mod:`serfbridge.relay.sources.local`: a line on the Unix socket, or one
``multiprocessing.connection`` frame on the Windows named pipe. It exists so that a Windows
host, which has no ``socat``, can raise events and run queries from cmd or PowerShell, and so
that scripts need no JSON quoting.
"""

from __future__ import annotations

import base64
import json
import socket
import sys
from typing import Any

from serfbridge.errors import EXIT_UNREACHABLE, ConfigError, RelayError, SerfbridgeError
from serfbridge.relay.sources.local import MAX_LINE

EXIT_REFUSED = RelayError.exit_code
#: Seconds for the relay's answer beyond a query's own timeout (Serf's default is 3.2 s at
#: up to 9 nodes; the relay also waits for the agent).
ANSWER_MARGIN = 15.0
DEFAULT_QUERY_WAIT = 60.0


class LocalUnreachable(SerfbridgeError):
    """Nothing answers at the local source's path (no relay, or a different path)."""

    exit_code = EXIT_UNREACHABLE


def message(
    kind: str,
    name: str,
    payload: bytes,
    *,
    coalesce: bool = False,
    nodes: list[str] | None = None,
    tags: dict[str, str] | None = None,
    timeout: float | None = None,
    msg_id: str | None = None,
) -> dict[str, Any]:
    """The relay message for the command line's arguments (docs/relay.md, Messages)."""
    doc: dict[str, Any] = {"type": kind, "name": name}
    try:
        doc["payload"] = payload.decode("utf-8")
    except UnicodeDecodeError:
        doc["payload"] = base64.b64encode(payload).decode("ascii")
        doc["payload_encoding"] = "base64"
    if kind == "event":
        doc["coalesce"] = coalesce
    else:
        if nodes:
            doc["nodes"] = nodes
        if tags:
            doc["tags"] = tags
        if timeout is not None:
            doc["timeout"] = timeout
    if msg_id is not None:
        doc["id"] = msg_id
    return doc


def send(path: str, doc: dict[str, Any], wait: float) -> dict[str, Any]:
    """Send one message and return the relay's answer document."""
    body = json.dumps(doc).encode()
    if sys.platform == "win32":
        raw = _exchange_pipe(path, body, wait)
    else:
        raw = _exchange_unix(path, body, wait)
    try:
        answer = json.loads(raw)
    except ValueError:
        raise RelayError(f"the relay at {path} answered something that is not JSON") from None
    if not isinstance(answer, dict):
        raise RelayError(f"the relay at {path} answered {type(answer).__name__}, not an object")
    return answer


def _exchange_unix(path: str, body: bytes, wait: float) -> bytes:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(wait)
    try:
        try:
            sock.connect(path)
        except OSError as exc:
            raise LocalUnreachable(f"no relay listening at {path}: {exc.strerror or exc}") from None
        try:
            sock.sendall(body + b"\n")
            with sock.makefile("rb") as reader:
                line = reader.readline(MAX_LINE + 1)
        except TimeoutError:
            raise RelayError(f"no answer from the relay at {path} within {wait:g} s") from None
        except OSError as exc:
            raise RelayError(f"the relay at {path} closed the connection: {exc}") from None
    finally:
        sock.close()
    if not line:
        raise RelayError(f"the relay at {path} closed the connection without an answer")
    return line


def _exchange_pipe(path: str, body: bytes, wait: float) -> bytes:
    from multiprocessing.connection import Client

    try:
        conn = Client(path, family="AF_PIPE")
    except OSError as exc:
        raise LocalUnreachable(f"no relay listening at {path}: {exc}") from None
    with conn:
        try:
            conn.send_bytes(body)
            if not conn.poll(wait):
                raise RelayError(f"no answer from the relay at {path} within {wait:g} s")
            return conn.recv_bytes(MAX_LINE)
        except (EOFError, OSError) as exc:
            raise RelayError(f"the relay at {path} closed the connection: {exc}") from None


def local_source_path(settings: Any, where: str, name: str | None) -> str:
    """The socket or pipe of the config's local source (``name`` picks one of several)."""
    local = [s for s in settings.sources if s.type == "local"]
    if name is not None:
        local = [s for s in local if s.name == name]
        if not local:
            raise ConfigError(f"no local source named {name!r} in {where}")
    if not local:
        raise ConfigError(f'no [[sources]] with type = "local" in {where}: add one, or give --path')
    if len(local) > 1:
        names = ", ".join(s.name for s in local)
        raise ConfigError(f"{where} has several local sources ({names}): pick one with --source")
    path: str = local[0].path
    return path


def answer_wait(kind: str, timeout: float | None, base: float) -> float:
    """How long to wait for the answer: a query's answer comes after the query ends."""
    if kind == "event":
        return base
    return (timeout if timeout is not None else DEFAULT_QUERY_WAIT) + ANSWER_MARGIN
