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
    from typing import NoReturn


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


def end_handler_process(status: int) -> "NoReturn":
    """End the process of a finished handler run without the interpreter's teardown.

    Tearing down the modules and objects of a run costs about as much as importing them
    (docs/performance.md, "Handler cost"), on every event, for nothing: the run has written
    each record with ``os.write`` (and fsynced what must be durable), closed its files and
    waited for its children; only Python's own stream buffers are left, and they are flushed
    here."""
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(status)


def main(argv: list[str] | None = None, *, end_process: bool = False) -> int:
    """``end_process``: the caller is the program's entry point, so a handler run may end
    the process itself (``end_handler_process``); any other command returns normally."""
    args = sys.argv[1:] if argv is None else argv
    fast, config = _fast_handler_args(args)
    if fast:
        from serfbridge.capture import run as handler

        quiet = os.environ.get("SERF_EVENT") == "query"
        status = _guarded(lambda: handler.run(config), quiet)
        if end_process:
            end_handler_process(status)
        return status
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
    return main(end_process=True)


def entry() -> int:
    """The console script's entry point (Windows pip installs, hatch_build.py)."""
    return main(end_process=True)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(end_process=True))
