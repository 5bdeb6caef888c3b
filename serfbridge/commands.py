"""Every subcommand except the bare handler (see ``cli.py``)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from . import __version__, log, paths
from .errors import EXIT_OK, EXIT_UNREACHABLE, EXIT_USAGE, SerfbridgeError

EXIT_PENDING = 8


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse prints usage and exits 2; keep that
        self.print_usage(sys.stderr)
        sys.stderr.write(f"serfbridge: {message}\n")
        sys.exit(EXIT_USAGE)


class _VersionAction(argparse.Action):
    """argparse's own version action re-wraps the text; the build details must stay one line."""

    def __call__(self, parser: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> None:
        from .cli import version_text

        sys.stdout.write(version_text() + "\n")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="serfbridge",
        description="Serf event handler and bridge. Run bare as `serf agent -event-handler "
        "serfbridge`: it reads SERF_* variables and stdin and records the event.",
    )
    parser.add_argument(
        "--version", action=_VersionAction, nargs=0, help="show version and build, then exit"
    )
    parser.add_argument(
        "--config",
        metavar="PATH",
        help=f"config file (default: $SERFBRIDGE_CONFIG, then {paths.default_config_path()})",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.add_parser("handle", help="handle one event from SERF_* and stdin (the default)")
    check = sub.add_parser("check", help="validate the configuration")
    check.add_argument("--connect", action="store_true", help="also connect to every sink")
    sub.add_parser("schema", help="print the JSON Schema of the event document")
    sub.add_parser("deliver", help="run the deliverer in the foreground until the spool drains")
    flush = sub.add_parser("flush", help="deliver everything pending now")
    flush.add_argument("--timeout", type=float, default=30.0, help="seconds (default 30)")
    spool = sub.add_parser("spool", help="list, retry or purge queued and dead-lettered events")
    spool.add_argument("action", choices=["list", "retry", "purge"])
    spool.add_argument("entries", nargs="*", help="entry names (default: all)")
    spool.add_argument("--sink", help="only this sink")
    which = spool.add_mutually_exclusive_group()
    which.add_argument("--dead", action="store_true", help="dead letters (default for retry)")
    which.add_argument("--queue", action="store_true", help="pending entries")
    which.add_argument("--rejected", action="store_true", help="input that could not be parsed")
    _add_route(sub)
    sub.add_parser(
        "relay",
        help="run the relay: inbound HTTP/MQTT/Redis/local messages -> Serf events and queries",
    )
    _add_send(sub)
    service = sub.add_parser(
        "service",
        help="Windows: host `serfbridge relay` (or COMMAND) as the serfbridge-relay service; "
        "started by the service control manager, not by hand",
    )
    service.add_argument("service_command", nargs=argparse.REMAINDER, metavar="COMMAND")
    demo = sub.add_parser("demo", help="start a local 3-node Serf cluster and show the JSON")
    demo.add_argument("--nodes", type=int, default=3)
    demo.add_argument("--dir", help="working directory (default: a new temporary one)")
    return parser


def _add_route(sub: Any) -> None:
    route = sub.add_parser(
        "route",
        help="dry run: which sinks and responders an event would reach on a node",
        description="Show which sinks fire and which responder answers for an event on a node "
        "with the given role and tags, with rendered chat messages and text answers. Nothing "
        "is sent, written or run.",
    )
    what = route.add_mutually_exclusive_group(required=True)
    what.add_argument("--event", metavar="EVENT", help="user:NAME, query:NAME or member-join ...")
    what.add_argument(
        "--event-file",
        metavar="PATH",
        help="recorded event JSON (one document, JSON lines such as events.jsonl, or a spool "
        "entry); its node is used unless --node/--role/--tag say otherwise",
    )
    route.add_argument("--payload", default="", help="user event or query payload")
    route.add_argument("--ltime", type=int, default=1, help="Lamport time (default 1)")
    route.add_argument(
        "--member", action="append", default=[], metavar="NAME[@ADDR]", help="membership events"
    )
    route.add_argument("--node", help="node name (default node1)")
    route.add_argument("--role", help="the node's role tag")
    route.add_argument(
        "--tag", action="append", default=[], metavar="KEY=VALUE", help="a tag of the node"
    )
    route.add_argument(
        "--from-env",
        action="store_true",
        help="take the node's name, role and tags from SERF_SELF_* and SERF_TAG_* variables",
    )
    route.add_argument("--json", action="store_true", help="one JSON object per event")


def _add_send(sub: Any) -> None:
    send = sub.add_parser(
        "send",
        help="send one event or query to the relay's local source and print its answer",
        description="Send one message to a running `serfbridge relay` through its local "
        "source (Unix socket, or named pipe on Windows) and print the answer JSON: "
        '{"accepted": true} for an event, the reply for a query, or {"error", "reason"}.',
    )
    send.add_argument("kind", choices=["event", "query"])
    send.add_argument("name", help="user event or query name")
    send.add_argument(
        "payload", nargs="?", default="", help="payload text; '-' reads it (bytes) from stdin"
    )
    send.add_argument(
        "--path", help="socket path or pipe name (default: the config's local source's path)"
    )
    send.add_argument("--source", metavar="NAME", help="which local source of the config")
    send.add_argument(
        "--coalesce", action="store_true", help="event: let Serf coalesce it (default: no)"
    )
    send.add_argument("--node", action="append", default=[], help="query: only this node")
    send.add_argument(
        "--tag", action="append", default=[], metavar="KEY=REGEXP", help="query: tag filter"
    )
    send.add_argument("--timeout", type=float, metavar="SECONDS", help="query timeout")
    send.add_argument("--id", help="message id: repeats are refused (and with event_ids, dropped)")
    send.add_argument(
        "--wait", type=float, default=30.0, help="seconds to wait for an event's answer"
    )


def _settings(config: str | None) -> Any:
    from .config import load_settings

    path = paths.config_path(config)
    if not os.path.exists(path):
        if paths.config_named(config):
            from .errors import ConfigError

            raise ConfigError(f"config file {path} does not exist")
        return load_settings(None)
    return load_settings(path)


def _configure_log(settings: Any) -> None:
    state = settings.state_path
    log.configure(settings.log_file or os.path.join(state, "serfbridge.log"), settings.log_level)


def _when_text(spec: Any) -> str:
    from . import when

    return f" when {when.describe(when.compile_when(spec))}" if spec else ""


def cmd_check(args: argparse.Namespace) -> int:
    settings = _settings(args.config)
    path = paths.config_path(args.config)
    source = path if os.path.exists(path) else "built-in defaults (no config file)"
    print(f"config: {source}: ok")
    print(f"state_dir: {settings.state_path}")
    failures = 0
    for sink in settings.effective_sinks():
        line = f"sink {sink.name}: type={sink.type} events={sink.events}" + (
            " once" if sink.once else ""
        )
        line += _when_text(sink.when)
        if args.connect:
            from .sinks import sink_class

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
        print(f"source {source.name}: type={source.type} events={events} queries={queries}")
    for responder in settings.responders:
        kind = "text" if responder.text is not None else "command"
        print(f"responder {responder.query}: {kind}{_when_text(responder.when)}")
    return EXIT_OK if not failures else EXIT_UNREACHABLE


def cmd_schema(_: argparse.Namespace) -> int:
    from .schema import EVENT_SCHEMA

    print(json.dumps(EVENT_SCHEMA, indent=2))
    return EXIT_OK


def cmd_deliver(args: argparse.Namespace) -> int:
    from .deliver import serve

    settings = _settings(args.config)
    _configure_log(settings)
    serve(settings)
    return EXIT_OK


def cmd_flush(args: argparse.Namespace) -> int:
    from .deliver import flush

    settings = _settings(args.config)
    _configure_log(settings)
    left = flush(settings, args.timeout)
    print(f"{left} event(s) still pending" if left else "spool empty")
    return EXIT_OK if not left else EXIT_PENDING


def cmd_spool(args: argparse.Namespace) -> int:
    from . import spoolcmd

    settings = _settings(args.config)
    return spoolcmd.run(settings, args)


def cmd_route(args: argparse.Namespace) -> int:
    from . import simulate
    from .config import compile_settings

    tags: dict[str, str] | None = None
    for item in args.tag:
        key, sep, value = item.partition("=")
        if not sep or not key:
            sys.stderr.write(f"serfbridge: --tag {item!r}: expected KEY=VALUE\n")
            return EXIT_USAGE
        tags = {**(tags or {}), key: value}
    node, role = args.node, args.role
    if args.from_env:
        from .parse import node_from_env

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
            from .errors import InputError

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
    from .relay import check_listeners, serve

    settings = _settings(args.config)
    # Refusals go to stderr, where the operator starting the relay looks.
    check_listeners(settings)
    _configure_log(settings)
    path = paths.config_path(args.config)
    serve(settings, path if os.path.exists(path) else None)
    return EXIT_OK


def _local_path(config: str | None, name: str | None) -> str:
    from .errors import ConfigError

    settings = _settings(config)
    local = [s for s in settings.sources if s.type == "local"]
    where = paths.config_path(config)
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


def cmd_send(args: argparse.Namespace) -> int:
    from . import sendlocal

    if args.kind == "event" and (args.node or args.tag or args.timeout is not None):
        sys.stderr.write("serfbridge: --node, --tag and --timeout are for queries\n")
        return EXIT_USAGE
    tags = {}
    for spec in args.tag:
        key, sep, value = spec.partition("=")
        if not sep or not key:
            sys.stderr.write(f"serfbridge: --tag wants KEY=REGEXP, got {spec!r}\n")
            return EXIT_USAGE
        tags[key] = value
    path = args.path or _local_path(args.config, args.source)
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
    from .demo import run_demo

    return run_demo(args.nodes, args.dir)


def cmd_service(args: argparse.Namespace) -> int:
    from .winservice import run_service

    settings = _settings(args.config)
    return run_service(args.config, list(args.service_command), lambda: _configure_log(settings))


COMMANDS = {
    "check": cmd_check,
    "schema": cmd_schema,
    "deliver": cmd_deliver,
    "flush": cmd_flush,
    "spool": cmd_spool,
    "demo": cmd_demo,
    "route": cmd_route,
    "relay": cmd_relay,
    "send": cmd_send,
    "service": cmd_service,
}


def run_command(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.command in (None, "handle"):
        from . import handler

        if "SERF_EVENT" not in os.environ:
            sys.stderr.write("serfbridge: SERF_EVENT is not set; nothing to handle\n")
            return EXIT_USAGE
        return handler.run(args.config)
    if args.command != "deliver":
        log.to_stderr_until_configured()
    return COMMANDS[args.command](args)


__all__ = ["EXIT_PENDING", "__version__", "run_command"]
