"""Install the built .deb into an empty root with dpkg, as the artifact tests need it."""

from __future__ import annotations

import subprocess
from typing import TYPE_CHECKING

from .proc import clean_environ

if TYPE_CHECKING:
    from pathlib import Path


def empty_root(root: Path) -> None:
    """A root with nothing but root's account and an empty dpkg database."""
    (root / "etc").mkdir(parents=True)
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (root / "etc/group").write_text("root:x:0:\n")
    (root / "etc/shadow").write_text("root:*:19000:0:99999:7:::\n")
    (root / "etc/gshadow").write_text("root:*::\n")
    for d in ("info", "updates", "triggers"):
        (root / "var/lib/dpkg" / d).mkdir(parents=True)
    (root / "var/lib/dpkg/status").write_text("")
    (root / "var/lib/dpkg/available").write_text("")


def dpkg(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """dpkg on that root; asserts success."""
    proc = subprocess.run(
        # chrootless: maintainer scripts run with DPKG_ROOT set (the root has no shell); libc6
        # and python3 are the host's, not registered in the empty root.
        [
            "dpkg",
            f"--root={root}",
            "--force-script-chrootless",
            "--force-depends",
            "--log=/dev/null",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=clean_environ(),
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def install(deb: Path, root: Path) -> Path:
    """The .deb installed into a new empty root; returns the root."""
    empty_root(root)
    dpkg(root, "-i", str(deb))
    return root
