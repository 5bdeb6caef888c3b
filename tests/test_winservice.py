"""The Windows service host's platform-independent parts (the SCM side runs under wine in
tests/test_artifacts_windows.py)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from support.proc import clean_environ

from serfbridge import winservice


def test_child_argv_runs_relay_with_this_installation(monkeypatch: pytest.MonkeyPatch) -> None:
    """Source install: python -m serfbridge; the config is passed on; relay by default."""
    monkeypatch.delattr(sys, "frozen", raising=False)
    assert winservice.child_argv(r"C:\cfg.toml", []) == [
        sys.executable, "-m", "serfbridge", "--config", r"C:\cfg.toml", "relay",
    ]  # fmt: skip
    assert winservice.child_argv(None, ["deliver"]) == [
        sys.executable, "-m", "serfbridge", "deliver",
    ]  # fmt: skip


def test_child_argv_frozen(monkeypatch: pytest.MonkeyPatch) -> None:
    """A frozen build re-runs its own executable."""
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    assert winservice.child_argv(None, []) == [sys.executable, "relay"]


def test_service_outside_windows_is_a_usage_error(serfbridge_cmd: list[str]) -> None:
    """`serfbridge service` on Linux: exit 2 and one line saying what to use instead."""
    proc = subprocess.run(
        [*serfbridge_cmd, "service"],
        capture_output=True,
        text=True,
        env=clean_environ(),
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert "systemd unit" in proc.stderr
    assert proc.stderr.count("\n") == 1
    assert "Traceback" not in proc.stderr
