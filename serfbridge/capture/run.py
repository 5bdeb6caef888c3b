"""The capture path: one Serf event in, recorded durably, out in a few milliseconds.

See docs/design.md for why nothing here imports more than C builtins on the common path.
Each module a run imports costs it ~0.1 ms (path search, read, unmarshal, body, teardown), so
what only some events or configs need is imported where it is used: ``spool`` when an event
is spooled or rejected, ``relay_ids`` for a payload with a relay id trailer, the routing's
``filters`` and ``when`` for sinks that have them (tests/test_handler_cost.py).
"""

import os
import sys
import time

from serfbridge import log
from serfbridge.capture import cache, jsonenc, runtime
from serfbridge.capture import event as parse
from serfbridge.capture import route as route_decision
from serfbridge.capture.files import append_record
from serfbridge.errors import (
    EXIT_OK,
    EXIT_SPOOL,
    EXIT_TRUNCATED,
    EXIT_USAGE,
    ConfigError,
    InputError,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

    from serfbridge._types import Compiled, EventDoc

DEFAULT_MAX_INPUT = 4 * 1024 * 1024


def read_stdin(limit: int) -> tuple[bytes, bool]:
    """Read at most ``limit`` bytes; the flag says whether more was offered."""
    if sys.platform == "win32":
        import msvcrt

        msvcrt.setmode(0, os.O_BINARY)
    try:
        if os.isatty(0):
            # Run by hand at a terminal: there is no payload to wait for.
            return b"", False
    except OSError:
        return b"", False
    chunks: list[bytes] = []
    total = 0
    while total <= limit:
        try:
            chunk = os.read(0, min(1 << 16, limit + 1 - total))
        except OSError:
            break
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    data = b"".join(chunks)
    if total > limit:
        return data[:limit], True
    return data, False


def _left(cfg: "Compiled", started: float, wanted: float) -> float:
    """``wanted`` seconds, cut to what is left of the run's deadline (at least 10 ms)."""
    return max(0.01, min(wanted, started + cfg["deadline"] - time.monotonic()))


def _exact_tags(cfg: "Compiled", doc: "EventDoc", started: float) -> None:
    """Replace tags parsed from member lines (ambiguous with ``,``/``=`` in values) by the
    agent's own, for members the agent still knows."""
    serf = cfg["serf"]
    from serfbridge.errors import SerfError
    from serfbridge.serf.rpc import SerfRPC

    try:
        with SerfRPC(
            serf["rpc_addr"] or "",
            serf["rpc_auth"],
            timeout=_left(cfg, started, serf["rpc_timeout"]),
        ) as rpc:
            known = {m.name: m for m in rpc.members()}
    except (SerfError, ValueError) as exc:
        log.warning("exact_tags: agent not reachable, keeping parsed tags", error=str(exc))
        return
    for member in doc["members"]:
        exact = known.get(member["name"])
        if exact is not None and exact.addr == member["addr"]:
            member["tags"] = dict(sorted(exact.tags.items()))
            member["role"] = exact.tags.get("role", "")
    doc["id"] = parse.member_event_id(doc["event"], doc["members"])


def inline_files(cfg: "Compiled", doc: "EventDoc", event_json: str) -> list[str]:
    """Append to file sinks inline; returns the other matching sinks (and file sinks that
    failed), which the event must be spooled for."""
    spooled: list[str] = []
    line = b""
    for sink in route_decision.sinks_for(cfg, doc):
        if sink["type"] == "file" and not sink.get("once"):
            line = line or (event_json + "\n").encode("utf-8")
            try:
                append_record(sink["path"], line, fsync=sink.get("fsync", False))
                continue
            except OSError as exc:
                log.warning(
                    "file sink failed, spooling the event", sink=sink["name"], error=str(exc)
                )
        spooled.append(sink["name"])
    return spooled


def hand_over(cfg: "Compiled", entry: str, config_arg: str | None, suffix: str = ".json") -> None:
    """A running deliverer hears of the spooled ``entry`` at once; otherwise one is started."""
    from serfbridge.capture import spool

    state_dir = cfg["state_dir"]
    if spool.wake(state_dir, entry, suffix):
        return
    if cfg["spawn_deliverer"]:
        try:
            if not spool.deliverer_running(state_dir):
                spool.spawn_deliverer(config_arg)
        except OSError as exc:
            # The event is safe in the spool; the next handler run or `flush` delivers it.
            log.error("cannot start the deliverer", error=str(exc))


def route(cfg: "Compiled", doc: "EventDoc", event_json: str, config_arg: str | None) -> int:
    """Append to file sinks inline; spool the event for every other matching sink."""
    spooled = inline_files(cfg, doc, event_json)
    if not spooled:
        return EXIT_OK
    from serfbridge.capture import spool

    try:
        entry = spool.capture(cfg["state_dir"], spooled, event_json)
    except OSError as exc:
        log.error("cannot spool event", id=doc["id"], sinks=",".join(spooled), error=str(exc))
        if doc["event"] != "query":
            # Serf logs a handler's stderr: the operator sees why without the (full) disk's log.
            sys.stderr.write(f"serfbridge: cannot spool event {doc['id']}: {exc}\n")
        return EXIT_SPOOL
    hand_over(cfg, entry, config_arg)
    return EXIT_OK


def route_once(
    cfg: "Compiled", doc: "EventDoc", event_json: str, config_arg: str | None, relay_id: str | None
) -> int | None:
    """``route``, or None (nothing done) for a repeat of a relayed event this node already
    recorded (serfbridge.capture.relay_ids). An id whose event could not be recorded is
    forgotten, so the repeat gets its chance."""
    if relay_id is None:
        return route(cfg, doc, event_json, config_arg)
    if not first_time(cfg, doc, relay_id):
        return None
    status = route(cfg, doc, event_json, config_arg)
    if status != EXIT_OK:
        forget(cfg, relay_id)
    return status


def first_time(cfg: "Compiled", doc: "EventDoc", relay_id: str) -> bool:
    """Record the relay id; False (logged) for a repeat this node already recorded."""
    from serfbridge.capture import seen

    if seen.first_time(cfg["state_dir"], relay_id, time.time()):
        return True
    log.info("repeat of a relayed event dropped", id=doc["id"], name=doc["name"])
    return False


def forget(cfg: "Compiled", relay_id: str) -> None:
    """The event with this relay id could not be recorded after all: let its repeat in."""
    from serfbridge.capture import seen

    seen.forget(cfg["state_dir"], relay_id)


def _without_config(
    exc: ConfigError, environ: "Mapping[str, str]", received: float, config_arg: str | None
) -> int:
    """An unusable config must not lose the event: keep it raw in ``spool/rejected/`` of the
    state dir the user meant (``paths.fallback_state_dir``)."""
    if environ.get("SERF_EVENT") != "query":
        log.to_stderr_until_configured()
    log.error("configuration error; event kept in rejected/", error=str(exc))
    data, _ = read_stdin(DEFAULT_MAX_INPUT)
    from serfbridge.capture import paths, spool

    try:
        state_dir = paths.fallback_state_dir(config_arg)
        spool.reject(state_dir, f"config: {exc}", dict(environ), data, received)
    except OSError as err:
        log.error("cannot keep the rejected event", error=str(err))
    return exc.exit_code


def _answer(cfg: "Compiled", doc: "EventDoc", event_json: str, started: float) -> None:
    from serfbridge.capture import respond

    responder = route_decision.responder_for(cfg, doc)
    if responder is not None:
        responder = {**responder, "timeout": _left(cfg, started, responder["timeout"])}
        answer = respond.answer(responder, doc, event_json, cfg["query_response_size_limit"])
        os.write(1, answer)


def run(config_arg: str | None = None, environ: "Mapping[str, str] | None" = None) -> int:
    received = time.time()
    started = time.monotonic()
    env = os.environ if environ is None else environ
    if "SERF_EVENT" not in env:
        sys.stderr.write("serfbridge: SERF_EVENT is not set; nothing to handle\n")
        return EXIT_USAGE
    is_query = env.get("SERF_EVENT") == "query"
    try:
        cfg = cache.load(config_arg)
    except ConfigError as exc:
        return _without_config(exc, env, received, config_arg)
    if cfg["serf"]["exact_tags"] and env.get("SERF_EVENT", "").startswith("member-"):
        # The RPC client needs msgpack; decided before stdin is read, so a hand-off keeps it.
        runtime.need_full("exact_tags")
    log.configure(cfg["log_file"], cfg["log_level"])
    if is_query:
        log.silence()

    data, truncated = read_stdin(cfg["max_input_bytes"])
    relay_id = None
    if env.get("SERF_EVENT") == "user" and not truncated and parse.RELAY_ID_PREFIX in data:
        from serfbridge.capture import relay_ids

        data, relay_id = relay_ids.split_stdin(data)
    try:
        doc = parse.parse_event(env, data, received, truncated=truncated, relay_id=relay_id)
    except InputError as exc:
        log.error("bad event input; kept in rejected/", error=str(exc))
        from serfbridge.capture import spool

        try:
            spool.reject(cfg["state_dir"], str(exc), dict(env), data, received)
        except OSError as err:
            log.error("cannot keep the rejected input", error=str(err))
        return exc.exit_code

    if cfg["serf"]["exact_tags"] and doc["members"]:
        _exact_tags(cfg, doc, started)
    event_json = jsonenc.dumps(doc)
    status = route_once(cfg, doc, event_json, config_arg, relay_id)
    if status is None:
        return EXIT_OK

    if is_query:
        _answer(cfg, doc, event_json, started)

    if truncated:
        log.error(
            "stdin exceeded max_input_bytes; event recorded with truncated=true",
            limit=cfg["max_input_bytes"],
            id=doc["id"],
        )
        # Serf discards a query handler's output when it exits non-zero: keep the answer.
        return status if is_query else EXIT_TRUNCATED
    if status == EXIT_OK:
        log.debug("event captured", id=doc["id"], event=doc["event"], name=doc["name"])
    return status
