"""The command line the handler and the relay use to start the deliverer."""

from __future__ import annotations

from serfbridge.arguments import build_parser
from serfbridge.capture import runtime
from serfbridge.capture.spool import deliverer_argv


def test_deliverer_argv_parses_with_a_config() -> None:
    """--config goes before the command: argparse rejects it after `deliver`."""
    argv = deliverer_argv("/etc/serfbridge/x.toml")
    assert argv[1:3] == ["-m", "serfbridge"]
    args = build_parser().parse_args(argv[3:])
    assert (args.command, args.config) == ("deliver", "/etc/serfbridge/x.toml")
    assert build_parser().parse_args(deliverer_argv(None)[3:]).command == "deliver"


def test_deliverer_argv_uses_the_launchers_frozen_build() -> None:
    """With runtime.self_command set (the Linux launcher), the deliverer is that program, not
    the interpreter running the capture path."""
    runtime.self_command = ["/usr/lib/serfbridge/serfbridge-frozen"]
    try:
        argv = deliverer_argv("/etc/serfbridge/x.toml")
    finally:
        runtime.self_command = None
    assert argv == [
        "/usr/lib/serfbridge/serfbridge-frozen",
        "--config",
        "/etc/serfbridge/x.toml",
        "deliver",
    ]
