"""Which interpreter runs serfbridge, and how to hand a run to a fuller one.

A source install or a frozen build has every dependency. The Linux packages also ship a
launcher (``installers/linux/serfbridge_launcher.py``) that runs the capture path on the
system Python, which starts in about half the time but has none of serfbridge's
dependencies (pydantic, msgpack, httpx ...). The launcher sets the two attributes below;
everywhere else they stay ``None`` and this module does nothing.

- ``handoff(reason)`` re-executes the same command with the frozen build and never returns.
  The capture path calls :func:`need_full` before it uses a dependency, and always before
  it reads stdin, so the frozen build still gets the whole event.
- ``self_command`` is the argv prefix that runs this installation (the frozen build), for the
  processes serfbridge starts itself (the deliverer): ``sys.executable`` is the system Python
  there, which cannot run them.
"""

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import NoReturn

handoff: "Callable[[str], NoReturn] | None" = None
self_command: list[str] | None = None


def need_full(reason: str) -> None:
    """About to use something only a full installation has: hand the run over if this one
    lacks it (never returns then), else carry on."""
    if handoff is not None:
        handoff(reason)
