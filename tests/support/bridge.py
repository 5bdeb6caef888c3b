"""serfbridge as the handler of a real cluster: per-node configs and what the sinks received."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .ports import wait_for

if TYPE_CHECKING:
    from collections.abc import Callable


#: The nodes of the end-to-end tests' 3-node clusters.
NAMES = ["n1", "n2", "n3"]


class BridgeNode:
    """One node's serfbridge files: config, state dir (spool, events.jsonl), compiled cache."""

    def __init__(self, root: Path, name: str) -> None:
        self.name = name
        self.dir = root / name
        self.state = self.dir / "state"
        self.config = self.dir / "serfbridge.toml"
        self.dir.mkdir(parents=True, exist_ok=True)

    def env(self) -> dict[str, str]:
        return {
            "SERFBRIDGE_CONFIG": str(self.config),
            "SERFBRIDGE_CACHE_DIR": str(self.dir / "cache"),
        }

    def write_config(self, body: str = "") -> None:
        """``state_dir`` plus ``body``; rewriting it takes effect at the next event."""
        text = f'state_dir = {json.dumps(str(self.state))}\nlog_level = "debug"\n{body}'
        tmp = self.config.with_suffix(".tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, self.config)

    def read_jsonl(self, path: Path) -> list[dict[str, Any]]:
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]

    def events(self, file: str = "events.jsonl") -> list[dict[str, Any]]:
        return self.read_jsonl(self.state / file)

    def wait_event(
        self, match: Callable[[dict[str, Any]], bool], what: str, timeout: float = 20.0
    ) -> dict[str, Any]:
        def found() -> dict[str, Any]:
            # An empty dict is falsy: wait_for keeps polling until a match turns up.
            return next((e for e in self.events() if match(e)), {})

        return wait_for(found, timeout=timeout, what=f"{self.name}: {what}", detail=self.log_tail)

    def log_tail(self) -> str:
        log = self.state / "serfbridge.log"
        return log.read_text(encoding="utf-8")[-3000:] if log.exists() else "(no serfbridge.log)"

    def kill_deliverer(self) -> None:
        """Deliverers detach from the agent (setsid); tests stop them by their pid file."""
        pid_file = self.state / "spool" / "deliver.pid"
        try:
            pid = int(pid_file.read_text().strip())
        except (OSError, ValueError):
            return
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def bridge_nodes(
    root: Path, names: list[str], body: Callable[[str], str] | None = None
) -> dict[str, BridgeNode]:
    nodes = {}
    for name in names:
        node = BridgeNode(root, name)
        node.write_config(body(name) if body else "")
        nodes[name] = node
    return nodes
