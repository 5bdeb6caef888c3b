"""Every subcommand except the bare handler (see ``cli.py``)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from serfbridge import __version__, log
from serfbridge.capture import paths
from serfbridge.errors import (
    EXIT_CONFIG,
    EXIT_OK,
    EXIT_SERF,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    SerfbridgeError,
)

EXIT_PENDING = 8


def key_values(items: list[str], flag: str, form: str) -> dict[str, str]:
    """Repeated ``KEY=VALUE`` arguments as a dict; UsageError names the bad one."""
    from serfbridge.errors import UsageError

    found = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"{flag} {item!r}: expected {form}")
        found[key] = value
    return found


def _settings(config: str | None) -> Any:
    from serfbridge.config.models import load_for

    return load_for(config)


def _configure_log(settings: Any) -> None:
    state = settings.state_path
    log.configure(settings.log_file or os.path.join(state, "serfbridge.log"), settings.log_level)


def _when_text(spec: Any) -> str:
    from serfbridge.capture import when

    return f" when {when.describe(when.compile_when(spec))}" if spec else ""


def cmd_check(args: argparse.Namespace) -> int:
    settings = _settings(args.config)
    path = paths.config_path(args.config)
    source = path if os.path.exists(path) else "built-in defaults (no config file)"
    from serfbridge.config.models import placeholders

    suspicious = placeholders(settings)
    print(f"config: {source}: " + ("ok" if not suspicious else "SUSPICIOUS"))
    for item in suspicious:
        print(f"  looks like an unexpanded placeholder: {item}", file=sys.stderr)
    from serfbridge.config.models import unknown_variables

    for name in unknown_variables():
        print(f"warning: {name} is set but configures nothing (a misspelled setting?)")
    print(f"state_dir: {settings.state_path}")
    failures = 0
    for sink in settings.effective_sinks():
        line = f"sink {sink.name}: type={sink.type} events={sink.events}" + (
            " once" if sink.once else ""
        )
        line += _when_text(sink.when)
        if args.connect:
            from serfbridge.sinks import sink_class

            try:
                sink_class(sink.type)(sink).check()
                line += ": reachable"
            except SerfbridgeError as exc:
                failures += 1
                line += f": UNREACHABLE: {exc}"
        print(line)
    for source in settings.sources:
        events = ",".join(source.allow_events) or "-"
        queries = ",".join(source.allow_queries) or "-"
        line = f"source {source.name}: type={source.type} events={events} queries={queries}"
        if args.connect and getattr(source, "url", None):
            problem = _server_problem(source.url)
            failures += bool(problem)
            line += f": UNREACHABLE: {problem}" if problem else ": reachable"
        print(line)
    if settings.sources or settings.relay.stream:
        from serfbridge.relay.app import check_listeners

        check_listeners(settings)  # the relay's own start checks; ConfigError names the source
    for responder in settings.responders:
        kind = "text" if responder.text is not None else "command"
        print(f"responder {responder.query}: {kind}{_when_text(responder.when)}")
    if suspicious:
        # A "$REDIS_PW" that nobody expanded would be used as the literal password.
        print(
            "config: interpolation is ${VAR} or ${VAR:-default}; $$ is a literal $",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    serf_failed = args.connect and not _check_serf(settings)
    if serf_failed:
        return EXIT_SERF
    return EXIT_OK if not failures else EXIT_UNREACHABLE


def _server_problem(url: str) -> str:
    """A source's server answers a TCP connect, or the reason it does not."""
    from serfbridge.delivery import probe

    addr = probe.url_address(url)
    if addr is None:
        return f"cannot tell host and port from {url!r}"
    return "" if probe.reachable(addr, timeout=3.0) else f"no answer at {addr[0]}:{addr[1]}"


def _check_serf(settings: Any) -> bool:
    """``check --connect``: the Serf RPC handshake (and auth) at ``[serf] rpc_addr``, when
    the config uses the agent (rpc_addr, once or members sinks, the relay)."""
    from serfbridge.serf.rpc import DEFAULT_ADDR, SerfRPC

    serf = settings.serf
    uses_agent = (
        serf.rpc_addr is not None
        or settings.sources
        or settings.relay.stream
        or any(s.once or s.type == "members" for s in settings.effective_sinks())
    )
    if not uses_agent:
        return True  # nothing in this config talks to the agent
    addr = serf.rpc_addr or DEFAULT_ADDR
    auth = serf.rpc_auth.get_secret_value() if serf.rpc_auth else None
    try:
        with SerfRPC(addr, auth, timeout=max(serf.rpc_timeout, 2.0)) as rpc:
            rpc.members()
    except SerfbridgeError as exc:
        print(f"serf {addr}: UNREACHABLE: {exc}")
        return False
    print(f"serf {addr}: handshake{' and auth' if auth else ''} ok")
    return True


def cmd_schema(_: argparse.Namespace) -> int:
    from serfbridge.schema import EVENT_SCHEMA

    print(json.dumps(EVENT_SCHEMA, indent=2))
    return EXIT_OK


def cmd_deliver(args: argparse.Namespace) -> int:
    from serfbridge.delivery.deliverer import serve

    settings = _settings(args.config)
    _configure_log(settings)
    log.follow_rotation()
    serve(settings, args.config)
    return EXIT_OK


def cmd_flush(args: argparse.Namespace) -> int:
    from serfbridge.delivery.deliverer import flush

    settings = _settings(args.config)
    _configure_log(settings)
    left = flush(settings, args.timeout, args.config)
    print(f"{left} event(s) still pending" if left else "spool empty")
    return EXIT_OK if not left else EXIT_PENDING


def cmd_status(args: argparse.Namespace) -> int:
    from serfbridge.delivery import status

    return status.run(_settings(args.config), args.json, args.stuck_after)


def cmd_spool(args: argparse.Namespace) -> int:
    from serfbridge.delivery import admin as spoolcmd

    settings = _settings(args.config)
    return spoolcmd.run(settings, args)


def cmd_route(args: argparse.Namespace) -> int:
    from serfbridge import simulate
    from serfbridge.config.models import compile_settings

    tags = key_values(args.tag, "--tag", "KEY=VALUE") or None
    node, role = args.node, args.role
    if args.from_env:
        from serfbridge.capture.event import node_from_env

        found = node_from_env(os.environ)
        node = node or found["name"] or None
        role = found["role"] if role is None else role
        tags = {**found["tags"], **(tags or {})}
    settings = _settings(args.config)
    cfg: Any = compile_settings(settings, paths.config_path(args.config))
    if args.event_file:
        try:
            with open(args.event_file, encoding="utf-8") as fh:
                text = fh.read()
        except (OSError, UnicodeDecodeError) as exc:
            from serfbridge.errors import InputError

            raise InputError(f"cannot read {args.event_file}: {exc}") from None
        docs = [
            simulate.with_node(d, node, role, tags)
            for d in simulate.load_recorded(text, args.event_file)
        ]
    else:
        members = list(args.member)
        docs = [
            simulate.make_event(
                args.event,
                args.payload,
                node=node or "node1",
                role=role,
                tags=tags,
                members=members,
                ltime=args.ltime,
            )
        ]
    out = []
    for doc in docs:
        result = simulate.decide(cfg, doc)
        if args.json:
            out.append(json.dumps(result.to_dict(), ensure_ascii=False) + "\n")
        else:
            out.append(simulate.format_text(result))
    sys.stdout.write(("" if args.json else "\n").join(out))
    return EXIT_OK


def cmd_relay(args: argparse.Namespace) -> int:
    from serfbridge.relay.app import check_listeners, serve

    settings = _settings(args.config)
    # Refusals go to stderr, where the operator starting the relay looks.
    check_listeners(settings)
    _configure_log(settings)
    log.follow_rotation()
    path = paths.config_path(args.config)
    serve(settings, path if os.path.exists(path) else None)
    return EXIT_OK


def cmd_send(args: argparse.Namespace) -> int:
    from serfbridge.relay import send as sendlocal

    if args.kind == "event" and (args.node or args.tag or args.timeout is not None):
        sys.stderr.write("serfbridge: --node, --tag and --timeout are for queries\n")
        return EXIT_USAGE
    tags = key_values(args.tag, "--tag", "KEY=REGEXP")
    if args.path:
        path = args.path
    else:
        where = paths.config_path(args.config)
        path = sendlocal.local_source_path(_settings(args.config), where, args.source)
    # os.fsencode: the argument's own bytes, even where they are not UTF-8.
    payload = sys.stdin.buffer.read() if args.payload == "-" else os.fsencode(args.payload)
    doc = sendlocal.message(
        args.kind, args.name, payload, coalesce=args.coalesce, nodes=args.node, tags=tags,
        timeout=args.timeout, msg_id=args.id,
    )  # fmt: skip
    answer = sendlocal.send(path, doc, sendlocal.answer_wait(args.kind, args.timeout, args.wait))
    sys.stdout.write(json.dumps(answer) + "\n")
    if "error" in answer:
        log.error("the relay refused the message", reason=answer.get("reason"),
                  error=answer.get("error"))  # fmt: skip
        return sendlocal.EXIT_REFUSED
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from serfbridge.demo import run_demo

    return run_demo(args.nodes, args.dir)


def cmd_service(args: argparse.Namespace) -> int:
    from serfbridge.winservice import run_service

    settings = _settings(args.config)
    return run_service(args.config, list(args.service_command), lambda: _configure_log(settings))


COMMANDS = {
    "check": cmd_check,
    "schema": cmd_schema,
    "deliver": cmd_deliver,
    "flush": cmd_flush,
    "spool": cmd_spool,
    "status": cmd_status,
    "demo": cmd_demo,
    "route": cmd_route,
    "relay": cmd_relay,
    "send": cmd_send,
    "service": cmd_service,
}


def run_command(argv: list[str]) -> int:
    from serfbridge.arguments import build_parser

    args = build_parser().parse_args(argv)
    if args.command in (None, "handle"):
        from serfbridge.capture import run as handler

        if "SERF_EVENT" not in os.environ:
            sys.stderr.write("serfbridge: SERF_EVENT is not set; nothing to handle\n")
            return EXIT_USAGE
        return handler.run(args.config)
    if args.command != "deliver":
        log.to_stderr_until_configured()
    return COMMANDS[args.command](args)


__all__ = ["EXIT_PENDING", "__version__", "run_command"]
