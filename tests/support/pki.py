"""A throwaway certificate authority and a server certificate for 127.0.0.1 (real openssl)."""

from __future__ import annotations

import subprocess
from typing import TYPE_CHECKING

from .ports import LOOPBACK
from .proc import require_binary

if TYPE_CHECKING:
    from pathlib import Path


def loopback_pki(directory: Path) -> tuple[Path, Path, Path]:
    """Create ``directory`` with a CA and a server certificate valid for 127.0.0.1.

    Returns (CA certificate, server certificate, server key).
    """
    openssl = require_binary("openssl", "openssl")
    directory.mkdir()
    (directory / "san.ext").write_text(f"subjectAltName=IP:{LOOPBACK}\n")
    for argv in (
        "req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=test-ca -keyout ca.key -out ca.crt",
        f"req -newkey rsa:2048 -nodes -subj /CN={LOOPBACK} -keyout server.key -out server.csr",
        "x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 1"
        " -extfile san.ext -out server.crt",
    ):
        subprocess.run(
            [openssl, *argv.split()], cwd=directory, check=True, capture_output=True, timeout=30
        )
    return directory / "ca.crt", directory / "server.crt", directory / "server.key"
