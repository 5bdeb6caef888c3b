"""Windows artifacts under wine: the prefix the build made, Windows paths, running an exe.

Pitfalls handled here (shared WINDOWS.md notes): a Windows Python whose stdout is a Linux
regular file dies, so output always goes to pipes; wineserver and wine's own services inherit
the first wine command's stdio, so they are started first with stdio detached.
"""

from __future__ import annotations

import ntpath
import os
import shutil
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .proc import MissingBinaryError, clean_environ
from .serf import SerfAgent

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

WINE_ENV = {
    "WINEDEBUG": "-all",
    "WINEARCH": "win64",
    # No Mono/Gecko prompts; the ProcessPrng stand-in (test prefix only) before wine's own.
    "WINEDLLOVERRIDES": "mscoree,mshtml=;bcryptprimitives=n,b",
}


class Wine:
    """One wine prefix (made by installers/windows/build-wine.sh, named in dist/windows)."""

    def __init__(self, prefix: Path) -> None:
        if shutil.which("wine") is None:
            raise MissingBinaryError("wine is not installed (apt-get install wine wine64)")
        self.prefix = prefix
        self.drive_c = prefix / "drive_c"

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        env = clean_environ(extra)
        env.update(WINE_ENV)
        env["WINEPREFIX"] = str(self.prefix)
        return env

    def start(self) -> None:
        for argv in (["wineserver", "-p"], ["wine", "cmd", "/c", "exit"]):
            subprocess.run(
                argv,
                env=self.env(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=120,
                check=False,
            )

    def stop(self) -> None:
        """End every process of this prefix (the wineserver and all it runs)."""
        subprocess.run(
            ["wineserver", "-k"], env=self.env(), capture_output=True, timeout=60, check=False
        )

    def run(
        self,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        stdin: bytes = b"",
        timeout: float = 120.0,
    ) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            ["wine", *argv],
            input=stdin,
            env=self.env(env),
            capture_output=True,
            timeout=timeout,
            check=False,
        )

    def host_path(self, windows_path: str) -> Path:
        r"""The Linux path of a ``C:\...`` path inside this prefix."""
        drive, rest = ntpath.splitdrive(windows_path)
        assert drive.upper() == "C:", windows_path
        return self.drive_c.joinpath(*[p for p in rest.split("\\") if p])

    @staticmethod
    def z_path(path: Path | str) -> str:
        """The Windows path of a Linux path (wine maps / to Z:)."""
        return "Z:" + os.path.abspath(path).replace("/", "\\")


def prefix_from_dist(windows_dist: Path) -> Path:
    """build-wine.sh records its (cached) prefix next to the exe it built."""
    record = windows_dist / "wineprefix.txt"
    if not record.exists():
        raise MissingBinaryError(f"{record} missing: run installers/windows/build-wine.sh")
    return Path(record.read_text(encoding="utf-8").strip())


def windows_serf_agent(
    wine: Wine, serf_exe: Path, name: str, workdir: Path, **kwargs: Any
) -> SerfAgent:
    """A `serf.exe agent` under wine; the `serf` CLI calls it makes are Linux serf's (same
    RPC protocol), so they cost no wine start-up."""

    class WindowsSerfAgent(SerfAgent):
        def argv(self) -> list[str]:
            argv = super().argv()
            argv[0] = str(serf_exe)
            unix, windows = str(self.config_path), Wine.z_path(self.config_path)
            argv = [a.replace(unix, windows) if a.startswith("-config-file=") else a for a in argv]
            return ["wine", *argv]

    return WindowsSerfAgent(name, workdir, env=wine.env(kwargs.pop("env", None)), **kwargs)
