"""Command line. The bare handler form skips argparse (~8 ms of imports per event).

Exit codes (also in the README): 0 ok, 1 internal error, 2 usage, 3 configuration,
4 bad event input, 5 input truncated, 6 spool failure, 7 Serf agent error.
"""

import os
import sys

from serfbridge import log
from serfbridge.errors import EXIT_INTERNAL, EXIT_USAGE, SerfbridgeError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable


def _fast_handler_args(args: list[str]) -> tuple[bool, str | None]:
    """Recognise ``[--config PATH] [handle]`` without argparse."""
    config: str | None = None
    rest = list(args)
    if rest and rest[0].startswith("--config="):
        config = rest.pop(0).split("=", 1)[1]
    elif len(rest) >= 2 and rest[0] == "--config":
        config = rest[1]
        rest = rest[2:]
    if rest == ["handle"] or (not rest and "SERF_EVENT" in os.environ):
        return True, config
    return False, None


def _guarded(fn: "Callable[[], int]", quiet: bool) -> int:
    """Every error becomes one log line and an exit code; never a traceback on the console."""
    try:
        return fn()
    except SerfbridgeError as exc:
        if not quiet:
            log.to_stderr_until_configured()
        log.error(str(exc))
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # noqa: BLE001 - the last line of defence, by design
        import traceback

        if not quiet:
            log.to_stderr_until_configured()
        log.error(
            "internal error",
            error=f"{type(exc).__name__}: {exc}",
            traceback="".join(traceback.format_exception(exc)),
        )
        return EXIT_INTERNAL


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    fast, config = _fast_handler_args(args)
    if fast:
        from serfbridge.capture import run as handler

        quiet = os.environ.get("SERF_EVENT") == "query"
        return _guarded(lambda: handler.run(config), quiet)
    if not args:
        sys.stderr.write(
            "serfbridge: no SERF_EVENT in the environment: run it as a Serf event handler "
            "(serf agent -event-handler serfbridge), or see `serfbridge --help`\n"
        )
        return EXIT_USAGE
    from serfbridge.commands import run_command

    return _guarded(lambda: run_command(args), quiet=False)


def script_main(script: str) -> int:
    """``main`` for a pip install's ``serfbridge-python`` (installers/pip/), run with ``-I -S``
    by the ``serfbridge`` script: a handler run stays on this interpreter; any other command
    runs ``script`` again on a normal one (``site``, ``PYTHON*`` variables), as a console
    script would, since its dependencies may need what ``-I -S`` left out."""
    if sys.flags.no_site and not _fast_handler_args(sys.argv[1:])[0]:
        os.execv(sys.executable, [sys.executable, script, *sys.argv[1:]])  # noqa: S606
    return main()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
