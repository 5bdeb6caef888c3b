"""The command line the handler and the relay use to start the deliverer."""

from __future__ import annotations

from serfbridge.commands import build_parser
from serfbridge.spool import deliverer_argv


def test_deliverer_argv_parses_with_a_config() -> None:
    """--config goes before the command: argparse rejects it after `deliver`."""
    argv = deliverer_argv("/etc/serfbridge/x.toml")
    assert argv[1:3] == ["-m", "serfbridge"]
    args = build_parser().parse_args(argv[3:])
    assert (args.command, args.config) == ("deliver", "/etc/serfbridge/x.toml")
    assert build_parser().parse_args(deliverer_argv(None)[3:]).command == "deliver"
