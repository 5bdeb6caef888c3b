"""What this copy of serfbridge is: version and, in a frozen build, its build record.

installers/serfbridge.spec writes ``serfbridge-build.json`` at the bundle's root (build mode,
platform, commit, PyInstaller version, optional build id); a source install has none.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from serfbridge import __version__


def record() -> dict[str, Any] | None:
    """The frozen build's record, or None (a source install, or a record that is missing)."""
    bundle = getattr(sys, "_MEIPASS", None)
    if not getattr(sys, "frozen", False) or bundle is None:
        return None
    try:
        with open(os.path.join(bundle, "serfbridge-build.json"), encoding="utf-8") as fh:
            found = json.load(fh)
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) else None


def labels() -> dict[str, str]:
    """``version`` and ``commit`` (``source`` for a source install, ``unknown`` for a frozen
    build without a record), as ``serfbridge_build_info`` carries them."""
    found = record()
    if found is None:
        commit = "unknown" if getattr(sys, "frozen", False) else "source"
    else:
        commit = str(found.get("commit") or "unknown")
    return {"version": __version__, "commit": commit}
