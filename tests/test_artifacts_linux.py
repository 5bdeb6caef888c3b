"""The Linux artifacts as users get them: frozen binaries, the tarball and the .deb.

Run after `installers/linux/build.sh`: `pytest --artifacts -m artifact` (docs/building.md).
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest
from support.artifacts import LINUX_BUILDS
from support.bridge import BridgeNode
from support.deb import dpkg, empty_root
from support.handler import fire_user
from support.proc import clean_environ, require_binary

from serfbridge import __version__

pytestmark = pytest.mark.artifact


def _only(paths: list[Path], what: str) -> Path:
    assert len(paths) == 1, f"expected one {what}, found {[str(p) for p in paths]}"
    return paths[0]


def _version(argv: list[str]) -> str:
    proc = subprocess.run(
        [*argv, "--version"], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    return proc.stdout


def test_onedir_bootstrap_does_not_scan_its_folder(linux_dist: Path, tmp_path: Path) -> None:
    """The spec builds with PyInstaller's bootstrap minus its scan for `.egg` directories,
    which stat()ed every entry of _internal/ on each start: a bundled library that nothing
    loads at --version (libssl) is never looked at."""
    strace = require_binary("strace", "strace")
    trace = tmp_path / "trace"
    exe = linux_dist / "serfbridge" / "serfbridge"
    assert (exe.parent / "_internal" / "libssl.so.3").exists()
    proc = subprocess.run(
        [strace, "-f", "-qq", "-e", "trace=%file", "-o", str(trace), str(exe), "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    calls = trace.read_text()
    assert "_internal/" in calls  # the trace saw the bundle being read
    assert "libssl.so.3" not in calls


@pytest.mark.parametrize(
    ("mode", "rel"), [("onedir", "serfbridge/serfbridge"), ("onefile", "serfbridge-onefile")]
)
def test_frozen_version_names_build(linux_dist: Path, mode: str, rel: str) -> None:
    """--version of each build: version, frozen mode, build platform, commit, one line."""
    out = _version([str(linux_dist / rel)])
    assert re.fullmatch(
        rf"serfbridge {re.escape(__version__)} \(frozen {mode}, python 3\.\d+\.\d+, linux-\w+; "
        r"built on linux-\w+ glibc[\d.]+ from [0-9a-f]{12}(-dirty)? with PyInstaller [\d.]+\)\n",
        out,
    ), out


@pytest.mark.parametrize("rel", LINUX_BUILDS)
def test_frozen_handler_records_event(linux_dist: Path, tmp_path: Path, rel: str) -> None:
    """Each build, run as Serf runs a handler, writes the event document."""
    node = BridgeNode(tmp_path, "n1")
    node.write_config()
    fire_user([str(linux_dist / rel)], node, "deploy", 7, b'{"v":1}')
    (event,) = node.events()
    assert (event["event"], event["name"], event["ltime"], event["payload"]) == (
        "user",
        "deploy",
        7,
        '{"v":1}',
    )


def test_tarball_contents(linux_dist: Path) -> None:
    """The tarball holds the launcher, the one-folder build beside it, the capture modules,
    the example config and the systemd unit."""
    tarball = _only(sorted(linux_dist.glob("serfbridge-*-linux-*.tar.gz")), "tarball")
    top = f"serfbridge-{__version__}"
    with tarfile.open(tarball) as tar:
        names = set(tar.getnames())
        launcher = tar.getmember(f"{top}/serfbridge")
        frozen = tar.getmember(f"{top}/serfbridge-frozen")
        readme = tar.extractfile(f"{top}/README.md")
        assert readme is not None
        readme_text = readme.read().decode("utf-8")
    for name in (
        "serfbridge.example.toml",
        "serfbridge-relay.service",
        "README.md",
        "_internal",
        "capture/serfbridge/capture/run.py",
        "capture/serfbridge/capture/runtime.py",
        "capture/serfbridge_launcher.py",
    ):
        assert f"{top}/{name}" in names
    assert launcher.mode & 0o111
    assert frozen.mode & 0o111
    # The launcher's Python writes its own byte-code; the build's would not match it.
    assert not [n for n in names if n.startswith(f"{top}/capture/") and "__pycache__" in n]
    # What the tarball's user must know: the launcher needs python3, the frozen build does not.
    assert "/usr/bin/python3" in readme_text
    assert "serfbridge-frozen" in readme_text


def _account(root: Path, file: str, name: str) -> list[str]:
    for line in (root / "etc" / file).read_text().splitlines():
        fields = line.split(":")
        if fields[0] == name:
            return fields
    raise AssertionError(f"{name} not in {root}/etc/{file}")


def _unit(path: Path) -> dict[str, str]:
    keys: dict[str, str] = {}
    section = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line.startswith("["):
            section = line.strip("[]")
        elif line and not line.startswith("#"):
            key, _, value = line.partition("=")
            keys.setdefault(f"{section}.{key}", value)
    return keys


def test_deb_installs_into_clean_root_and_purges(linux_dist: Path, tmp_path: Path) -> None:
    """dpkg puts the .deb in an empty root: files, user, spool, unit, --version; purge cleans."""
    deb = _only(sorted(linux_dist.glob("serfbridge_*.deb")), ".deb")
    root = tmp_path / "root"
    empty_root(root)
    dpkg(root, "-i", str(deb))

    status = dpkg(root, "-s", "serfbridge").stdout
    assert "Status: install ok installed" in status
    assert re.search(r"^Conffiles:\n /etc/serfbridge/serfbridge.toml [0-9a-f]{32}$", status, re.M)

    assert re.search(r"^Depends: .*\bpython3\b", status, re.M)
    binary = root / "usr/lib/serfbridge/serfbridge-frozen"
    assert binary.stat().st_mode & 0o111
    assert (root / "usr/lib/serfbridge/_internal").is_dir()
    assert "(frozen onedir," in _version([str(binary)])
    launcher = root / "usr/lib/serfbridge/serfbridge"
    assert launcher.read_text().startswith("#!/usr/bin/python3 -IS\n")
    link = root / "usr/bin/serfbridge"
    assert link.is_symlink()
    assert os.readlink(link) == "../lib/serfbridge/serfbridge"
    # --version is not a handler run: the launcher execs the frozen build.
    assert "(frozen onedir," in _version([str(link)])
    # postinst byte-compiled the capture modules for /usr/bin/python3.
    pycache = root / "usr/lib/serfbridge/capture/serfbridge/capture/__pycache__"
    assert any(p.name.startswith("run.") for p in pycache.iterdir())

    user = _account(root, "passwd", "serfbridge")
    group = _account(root, "group", "serfbridge")
    assert int(user[2]) < 1000  # a system account
    assert user[5] == "/var/lib/serfbridge"
    spool = (root / "var/lib/serfbridge").stat()
    assert (spool.st_uid, spool.st_gid) == (int(user[2]), int(group[2]))
    assert stat.S_IMODE(spool.st_mode) == 0o2770
    config = (root / "etc/serfbridge/serfbridge.toml").stat()
    assert stat.S_IMODE(config.st_mode) == 0o640
    assert (config.st_uid, config.st_gid) == (0, int(group[2]))

    unit = _unit(root / "lib/systemd/system/serfbridge-relay.service")
    assert unit["Service.ExecStart"] == "/usr/bin/serfbridge relay"
    assert unit["Service.User"] == "serfbridge"
    assert unit["Install.WantedBy"] == "multi-user.target"

    # The installed example config is valid: `serfbridge check` accepts it.
    check = subprocess.run(
        [str(link), "--config", str(root / "etc/serfbridge/serfbridge.toml"), "check"],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_environ(
            {
                "SERFBRIDGE_STATE_DIR": str(tmp_path / "state"),
                "SERFBRIDGE_CACHE_DIR": str(tmp_path / "cache"),
            }
        ),
        check=False,
    )
    assert check.returncode == 0, check.stdout + check.stderr

    dpkg(root, "--purge", "serfbridge")
    for gone in (
        "usr/lib/serfbridge",
        "usr/bin/serfbridge",
        "etc/serfbridge",
        "lib/systemd/system/serfbridge-relay.service",
        "var/lib/serfbridge",
    ):
        assert not (root / gone).exists(), gone
        assert not (root / gone).is_symlink(), gone
