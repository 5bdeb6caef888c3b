"""Where the artifact tests find the builds (``installers/linux/build.sh`` writes
``<dist>/linux``; ``pytest --artifacts -m artifact``, docs/building.md)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from pathlib import Path

#: The two frozen Linux builds, relative to ``<dist>/linux``: one-dir and one-file.
LINUX_BUILDS = ["serfbridge/serfbridge", "serfbridge-onefile"]


def linux_dist(dist_dir: Path) -> Path:
    """``<dist>/linux``; the test fails (not skips) without a build there."""
    path = dist_dir / "linux"
    if not (path / LINUX_BUILDS[0]).exists():
        pytest.fail(f"no Linux build in {path}: run installers/linux/build.sh", pytrace=False)
    return path


def linux_deb(dist_dir: Path) -> Path:
    """The one ``serfbridge_*.deb`` in ``<dist>/linux``."""
    debs = sorted((dist_dir / "linux").glob("serfbridge_*.deb"))
    if len(debs) != 1:
        pytest.fail(f"expected one .deb in {dist_dir / 'linux'}, found {debs}", pytrace=False)
    return debs[0]
