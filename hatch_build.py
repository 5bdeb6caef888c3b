"""Build hooks: how a pip install gets its ``serfbridge`` command (docs/building.md).

On POSIX the wheel ships two scripts instead of a console-script entry point:
``serfbridge`` (installers/pip/serfbridge, a shell script) runs ``serfbridge-python``
(installers/pip/serfbridge_python.py) on the install's interpreter with ``-I -S``. pip's
console-script wrapper cannot do that: its shebang takes no flags and it imports ``re``
before serfbridge, which with ``site`` costs more than serfbridge's whole handler run. Windows
has no shebangs: a build there keeps the usual entry point, which pip turns into
``serfbridge.exe``.
"""

from __future__ import annotations

import os
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface
from hatchling.metadata.plugin.interface import MetadataHookInterface

SCRIPTS = {
    "installers/pip/serfbridge": "serfbridge",
    "installers/pip/serfbridge_python.py": "serfbridge-python",
}
ENTRY_POINT = "serfbridge.cli:entry"


def _windows() -> bool:
    return os.name == "nt"


class CustomMetadataHook(MetadataHookInterface):
    def update(self, metadata: dict[str, Any]) -> None:
        metadata["scripts"] = {"serfbridge": ENTRY_POINT} if _windows() else {}


class CustomBuildHook(BuildHookInterface):
    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if self.target_name == "wheel" and not _windows():
            build_data["shared_scripts"].update(SCRIPTS)
