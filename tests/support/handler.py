"""Run the real serfbridge handler the way Serf does: SERF_* variables and stdin bytes."""

from __future__ import annotations

import os
import subprocess
from typing import TYPE_CHECKING

from .proc import clean_environ

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from .bridge import BridgeNode


def serf_env(
    node: BridgeNode, event: str = "user", extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    env = clean_environ(node.env())
    env.update({"SERF_EVENT": event, "SERF_SELF_NAME": node.name, "SERF_SELF_ROLE": "web"})
    env.update(extra or {})
    return env


def run_handler(
    cmd: Sequence[str],
    node: BridgeNode,
    event: str = "user",
    *,
    stdin: bytes = b"",
    extra: Mapping[str, str] | None = None,
    timeout: float = 30.0,
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        list(cmd),
        input=stdin,
        env=serf_env(node, event, extra),
        capture_output=True,
        timeout=timeout,
        check=False,
    )


def fire_user(
    cmd: Sequence[str], node: BridgeNode, name: str, ltime: int, payload: bytes = b""
) -> subprocess.CompletedProcess[bytes]:
    """One user event, as Serf would run the handler for it; asserts a clean exit."""
    proc = run_handler(
        cmd,
        node,
        "user",
        stdin=payload + b"\n" if payload else b"",
        extra={"SERF_USER_EVENT": name, "SERF_USER_LTIME": str(ltime)},
    )
    assert proc.returncode == 0, proc.stderr.decode(errors="replace") + node.log_tail()
    assert proc.stdout == b""
    return proc


def serfbridge(
    cmd: Sequence[str], node: BridgeNode, *args: str, timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    """A serfbridge subcommand (flush, spool ...) with this node's config."""
    return subprocess.run(
        [*cmd, *args],
        env=clean_environ(node.env()),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def spool_files(node: BridgeNode, *parts: str) -> list[str]:
    directory = node.state.joinpath("spool", *parts)
    if not directory.is_dir():
        return []
    return sorted(n for n in os.listdir(directory) if n.endswith(".json") and n[0] != ".")
