"""``serfbridge`` of the Linux packages: Serf events on the system Python, the rest frozen.

Installed as ``<dir>/capture/serfbridge_launcher.py`` and run by the script
``<dir>/serfbridge`` (installers/linux/launcher_stub.py; ``/usr/lib/serfbridge`` in the .deb,
linked from ``/usr/bin/serfbridge``). Next to them:

- ``<dir>/serfbridge-frozen`` and ``<dir>/_internal/``: the PyInstaller one-folder build, the
  whole of serfbridge; it also works alone as the handler;
- ``<dir>/capture/serfbridge/``: the capture path's modules as plain ``.py`` (standard
  library only), copied by installers/linux/package.sh.

Serf runs its handler once per event and waits for it. The frozen build starts in ~38 ms, of
which most is its bootloader (it re-executes itself once on Linux) and its interpreter's
start; the system Python started with ``-I -S`` runs the same capture code in about half that
(docs/building.md). So a handler run (``cli._fast_handler_args``: ``SERF_EVENT`` set and no
subcommand, or ``handle``) runs here, and everything else is ``execv``'d to the frozen build
with the same arguments. A handler run is handed over too, through ``runtime.handoff``,
whenever the capture path needs what the system Python lacks: the config cache is missing or
stale (validating the TOML needs pydantic), ``exact_tags`` (msgpack), or a module of the
copy cannot be imported. Every hand-off happens before stdin is read, so the frozen build
gets the whole event.

The logic is a module rather than the script itself because Python compiles a script on
every start (~0.6 ms for this file) but caches a module's byte-code (postinst compiles it).
"""

import os
import sys
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import NoReturn

# <dir>/capture/serfbridge_launcher.py: <dir> holds the frozen build.
HERE = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
FROZEN = os.path.join(HERE, "serfbridge-frozen")
EXIT_INTERNAL = 1  # serfbridge.errors.EXIT_INTERNAL, needed before the copy is importable
# pyproject.toml's requires-python: the capture modules use tomllib (3.11). An older system
# Python still works, as a detour: every run goes to the frozen build.
MIN_PYTHON = (3, 11)

# Set once the capture copy has been imported and this is a handler run: where a broken
# installation keeps the event (see _cannot_run_frozen).
_handler_config: list[str | None] = []


def run_frozen(reason: str) -> "NoReturn":
    """Replace this process by the frozen build with the same arguments, stdin untouched."""
    try:
        os.execv(FROZEN, [FROZEN, *sys.argv[1:]])  # noqa: S606 - argv list, no shell wanted
    except OSError as exc:
        _cannot_run_frozen(f"cannot run {FROZEN} ({reason}): {exc.strerror or exc}")


def _cannot_run_frozen(problem: str) -> "NoReturn":
    """A broken installation: say so (not into a query's answer) and keep the event raw in
    ``spool/rejected/``, as an unusable config does, so that it is not lost."""
    if os.environ.get("SERF_EVENT") != "query":
        sys.stderr.write(f"serfbridge: {problem}; reinstall serfbridge\n")
    if _handler_config:
        try:
            from serfbridge.capture import paths, spool
            from serfbridge.capture import run as handler

            data, _ = handler.read_stdin(handler.DEFAULT_MAX_INPUT)
            state_dir = paths.fallback_state_dir(_handler_config[0])
            spool.reject(state_dir, problem, dict(os.environ), data, time.time())
        except Exception:  # noqa: BLE001, S110 - already failing; the message above stands
            pass
    sys.exit(EXIT_INTERNAL)


def main() -> int:
    """Run a handler run here; hand everything else to the frozen build. The stub has put
    ``<dir>/capture`` first on ``sys.path``."""
    if sys.version_info < MIN_PYTHON:
        run_frozen(f"python {sys.version_info[0]}.{sys.version_info[1]} is older than 3.11")
    try:
        from serfbridge import cli
        from serfbridge.capture import runtime

        # cli.main's own test, so both programs agree on what a handler run is.
        handler_run, config = cli._fast_handler_args(sys.argv[1:])
        if not handler_run:
            run_frozen("not a handler run")
        # Imported now so that a module the copy lacks hands over here: cli.main imports
        # handler lazily, and a query's responder modules come only after stdin is read.
        from serfbridge.capture import run as handler  # noqa: F401

        if os.environ.get("SERF_EVENT") == "query":
            from serfbridge.capture import procrun, respond  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - whatever the copy lacks, the frozen build has
        run_frozen(f"capture modules unusable: {type(exc).__name__}: {exc}")
    _handler_config.append(config)
    runtime.handoff = run_frozen
    runtime.self_command = [FROZEN]
    return cli.main(sys.argv[1:], end_process=True)
