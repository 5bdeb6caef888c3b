"""`pip install` of the checkout: the installed `serfbridge` runs handler runs with -I -S.

Real installs into fresh venvs (the wheel built once per session, and an editable install):
hatch_build.py ships `serfbridge` (a shell script) and `serfbridge-python` instead of a
console-script entry point. A `.pth` file planted in each venv's site-packages writes a marker
file when `site` runs (a `sitecustomize` would not do: Debian's Python has its own, earlier on
the path), which shows which start each run took. The venvs get no dependencies: the
config cache is written first by this checkout's serfbridge (same key: config path,
SERFBRIDGE_* variables, version), so a handler run that needed anything beyond the standard
library would fail.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 300.0
MARKER_PTH = "import os; open(os.environ['SB_TEST_MARKER'], 'a').close()\n"


@pytest.fixture(scope="session")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    pip(None, "wheel", "--no-deps", "-w", str(out), str(ROOT))
    (built,) = out.glob("serfbridge-*.whl")
    return built


def pip(venv: Path | None, *args: str) -> None:
    target = [] if venv is None else ["--python", str(venv / "bin" / "python")]
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check", *target, *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def interpreters() -> list[str]:
    """This interpreter, and Debian's own where it is another one: Debian patches
    ``site.getsitepackages`` (``dist-packages``), which a venv of its Python must survive."""
    debian = "/usr/bin/python3"
    if sys.base_prefix == "/usr" or not os.path.exists(debian):
        return [sys.executable]
    return [sys.executable, debian]


def make_venv(path: Path, python: str = sys.executable) -> Path:
    subprocess.run([python, "-m", "venv", "--without-pip", str(path)], check=True, timeout=TIMEOUT)
    (site,) = path.glob("lib/python3*/site-packages")
    (site / "zz-test-marker.pth").write_text(MARKER_PTH, encoding="utf-8")
    return path


class Setup:
    """One config, state and cache directory; runs a serfbridge the way Serf does."""

    def __init__(self, tmp: Path) -> None:
        self.state = tmp / "state"
        self.marker = tmp / "site-ran"
        conf = tmp / "serfbridge.toml"
        conf.write_text(f"state_dir = {str(self.state)!r}\n", encoding="utf-8")
        base = {k: v for k, v in os.environ.items() if not k.startswith(("SERF", "PYTHON"))}
        self.env = {
            **base,
            "SERFBRIDGE_CONFIG": str(conf),
            "SERFBRIDGE_CACHE_DIR": str(tmp / "cache"),
            "SB_TEST_MARKER": str(self.marker),
        }
        self.ltime = 0

    def run(self, argv: list[str], *, handler: bool) -> subprocess.CompletedProcess[bytes]:
        self.marker.unlink(missing_ok=True)
        env = dict(self.env)
        if handler:
            self.ltime += 1
            env.update(SERF_EVENT="user", SERF_USER_EVENT="deploy", SERF_SELF_NAME="n1")
            env["SERF_USER_LTIME"] = str(self.ltime)
        return subprocess.run(
            argv, input=b"v1\n", capture_output=True, env=env, timeout=TIMEOUT, check=False
        )

    def events(self) -> int:
        path = self.state / "events.jsonl"
        return len(path.read_bytes().splitlines()) if path.exists() else 0


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    s = Setup(tmp_path)
    # This checkout's serfbridge validates the config and writes the cache entry.
    warm = s.run([sys.executable, "-m", "serfbridge"], handler=True)
    assert warm.returncode == 0, warm.stderr
    assert s.events() == 1
    return s


def test_installed_scripts_and_no_console_script(wheel: Path, tmp_path: Path) -> None:
    venv = make_venv(tmp_path / "venv")
    pip(venv, "install", "--no-deps", str(wheel))
    script = (venv / "bin" / "serfbridge").read_bytes()
    assert script.startswith(b"#!/bin/sh\n")
    first = (venv / "bin" / "serfbridge-python").read_bytes().split(b"\n", 1)[0]
    # pip wrote the interpreter it installed into: the line the shell script reads.
    assert first == b"#!" + str(venv / "bin" / "python").encode()
    assert os.access(venv / "bin" / "serfbridge", os.X_OK)
    assert os.access(venv / "bin" / "serfbridge-python", os.X_OK)
    (dist_info,) = venv.glob("lib/python3*/site-packages/serfbridge-*.dist-info")
    entry_points = dist_info / "entry_points.txt"
    assert not entry_points.exists() or "serfbridge.cli" not in entry_points.read_text()


@pytest.mark.parametrize("python", interpreters())
def test_handler_run_skips_site(wheel: Path, tmp_path: Path, setup: Setup, python: str) -> None:
    venv = make_venv(tmp_path / "venv", python)
    pip(venv, "install", "--no-deps", str(wheel))
    proc = setup.run([str(venv / "bin" / "serfbridge")], handler=True)
    assert proc.returncode == 0, proc.stderr
    assert setup.events() == 2
    assert not setup.marker.exists(), "a handler run of a plain install must not run site"


def test_other_commands_start_normally(wheel: Path, tmp_path: Path, setup: Setup) -> None:
    venv = make_venv(tmp_path / "venv")
    pip(venv, "install", "--no-deps", str(wheel))
    proc = setup.run([str(venv / "bin" / "serfbridge"), "--version"], handler=False)
    assert proc.returncode == 0, proc.stderr
    assert b"(source" in proc.stdout
    assert setup.marker.exists(), "a command other than a handler run starts Python normally"


def test_bare_call_without_serf_event(wheel: Path, tmp_path: Path, setup: Setup) -> None:
    venv = make_venv(tmp_path / "venv")
    pip(venv, "install", "--no-deps", str(wheel))
    proc = setup.run([str(venv / "bin" / "serfbridge")], handler=False)
    assert proc.returncode == 2
    assert b"no SERF_EVENT" in proc.stderr
    assert b"Traceback" not in proc.stderr


def test_editable_install_falls_back_to_site(tmp_path: Path, setup: Setup) -> None:
    venv = make_venv(tmp_path / "venv")
    pip(venv, "install", "--no-deps", "-e", str(ROOT))
    proc = setup.run([str(venv / "bin" / "serfbridge")], handler=True)
    assert proc.returncode == 0, proc.stderr
    assert setup.events() == 2
    assert setup.marker.exists(), "the editable install is found through site's .pth files"


def test_through_a_symlink(wheel: Path, tmp_path: Path, setup: Setup) -> None:
    venv = make_venv(tmp_path / "venv")
    pip(venv, "install", "--no-deps", str(wheel))
    link = tmp_path / "elsewhere" / "serfbridge"
    link.parent.mkdir()
    link.symlink_to(venv / "bin" / "serfbridge")
    proc = setup.run([str(link)], handler=True)
    assert proc.returncode == 0, proc.stderr
    assert setup.events() == 2
    assert not setup.marker.exists()
