"""Removing delivered entries on a thread of their own, off the sinks' critical path.

An entry of ``incoming/`` is removed once its last sink is done with it: one ``unlink`` per
event, which on a busy disk costs milliseconds and, done by the sink's worker, stood between
one batch and the next. The worker hands the paths here and sends on. Nothing is lost if the
process dies before a path is removed: ``Ledger.finish_many`` has already recorded the entry
in the sink's progress file, so the next start removes it without sending it again.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Iterable

from serfbridge import log


class Reaper:
    def __init__(self) -> None:
        self._paths: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="reaper", daemon=True)
        self._thread.start()

    def remove(self, paths: Iterable[str]) -> None:
        for path in paths:
            self._paths.put(path)

    def settle(self) -> None:
        """Until every path handed over so far is removed (before the progress files are
        cut back to the live entries: a line may go only once its entry has)."""
        self._paths.join()

    def close(self) -> None:
        """Remove what is left, then end the thread."""
        self._paths.put(None)
        self._thread.join()

    def _run(self) -> None:
        while True:
            path = self._paths.get()
            try:
                if path is None:
                    return
                unlink(path)
            finally:
                self._paths.task_done()


def unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("cannot remove a delivered entry", path=path, error=str(exc))
