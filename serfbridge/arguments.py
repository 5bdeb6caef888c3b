"""The command line: every subcommand's arguments, and ``--version``.

What each subcommand does is in ``commands.py``; ``cli.py`` skips all of this for a bare
handler run.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from serfbridge import __version__
from serfbridge.capture import paths
from serfbridge.errors import EXIT_USAGE


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse prints usage and exits 2; keep that
        self.print_usage(sys.stderr)
        sys.stderr.write(f"serfbridge: {message}\n")
        sys.exit(EXIT_USAGE)


def version_text() -> str:
    """Version, how this copy was built and where it runs.

    A frozen build carries ``serfbridge-build.json`` at its root, written by
    installers/serfbridge.spec: build mode, build platform, Python, PyInstaller and commit.
    """
    import platform

    from serfbridge import buildinfo

    py = ".".join(str(v) for v in sys.version_info[:3])
    here = f"{sys.platform}-{platform.machine()}"
    if not getattr(sys, "frozen", False) or getattr(sys, "_MEIPASS", None) is None:
        return f"serfbridge {__version__} (source, python {py}, {here})"
    build = buildinfo.record()
    if build is None:
        return f"serfbridge {__version__} (frozen, python {py}, {here}; no build record)"
    extra = f", {build['build_id']}" if build.get("build_id") else ""
    return (
        f"serfbridge {__version__} (frozen {build['mode']}, python {py}, {here}; "
        f"built on {build['platform']} from {build['commit']} "
        f"with PyInstaller {build['pyinstaller']}{extra})"
    )


class _VersionAction(argparse.Action):
    """argparse's own version action re-wraps the text; the build details must stay one line."""

    def __call__(self, parser: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> None:
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
    # --config also after the command (systemd units and most tools put it there); SUPPRESS
    # keeps a subparser from resetting a --config given before the command.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="PATH", default=argparse.SUPPRESS, help="config file")

    class _Sub(_Parser):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["parents"] = [common]
            super().__init__(*args, **kwargs)

    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Sub)
    sub.add_parser("handle", help="handle one event from SERF_* and stdin (the default)")
    check = sub.add_parser("check", help="validate the configuration")
    check.add_argument("--connect", action="store_true", help="also connect to every sink")
    sub.add_parser("schema", help="print the JSON Schema of the event document")
    sub.add_parser("deliver", help="run the deliverer in the foreground until the spool drains")
    flush = sub.add_parser("flush", help="deliver everything pending now")
    flush.add_argument("--timeout", type=float, default=30.0, help="seconds (default 30)")
    status = sub.add_parser("status", help="per-sink queue, oldest age, errors, dead letters")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.add_argument(
        "--stuck-after",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="exit 8 when an entry waited longer than this (default 300) or dead letters exist",
    )
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
