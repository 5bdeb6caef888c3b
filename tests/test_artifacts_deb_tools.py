"""The .deb and its systemd unit checked by Debian's and systemd's own tools: lintian,
man, systemd-analyze verify and systemd-analyze security.

Run after `installers/linux/build.sh`: `pytest --artifacts -m artifact` (docs/building.md).
"""

from __future__ import annotations

import gzip
import re
import subprocess
from pathlib import Path

import pytest
from support.deb import install
from support.proc import clean_environ, require_binary

from serfbridge.arguments import build_parser

pytestmark = pytest.mark.artifact

UNIT = "lib/systemd/system/serfbridge-relay.service"
#: The exposure `systemd-analyze security` may give the unit at most (issue: 3.0 or lower).
EXPOSURE_LIMIT = 3.0
#: What lintian said of the package before these checks existed: none may come back.
FIXED_TAGS = {
    "no-copyright-file",
    "no-changelog",
    "bogus-mail-host",
    "custom-library-search-path",
    "maintainer-script-should-not-parse-etc-passwd-or-group",
    "no-manual-page",
    "shared-library-is-executable",
    "extended-description-line-too-long",
    "maintainer-script-calls-systemctl",
}
#: Warnings of ours that stay, each for a reason (docs/building.md, "lintian").
ACCEPTED_WARNINGS = {
    # postinst byte-compiles the launcher's modules with exactly the interpreter its shebang
    # names; a python3 found on PATH could be another one, whose byte-code the launcher
    # would never read.
    "command-with-path-in-maintainer-script",
}


def _run(argv: list[str], timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, env=clean_environ(), check=False
    )


@pytest.fixture(scope="module")
def root(linux_deb: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The package installed into an empty root (maintainer scripts chrootless)."""
    return install(linux_deb, tmp_path_factory.mktemp("deb") / "root")


def test_lintian_finds_no_error_of_ours(linux_deb: Path) -> None:
    """lintian: no error and no warning except the accepted ones; the overrides (tags every
    PyInstaller bundle carries) are all used, so none hides something that went away."""
    lintian = require_binary("lintian", "lintian")
    proc = _run(
        [
            lintian,
            "--no-cfg",
            "--fail-on",
            "none",
            "--display-info",
            "--show-overrides",
            str(linux_deb),
        ]
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    hints = re.findall(r"^([EWIXPO]): serfbridge(?: [a-z]+)?: (\S+)(.*)$", proc.stdout, re.M)
    errors = [f"{tag}{rest}" for kind, tag, rest in hints if kind == "E"]
    warnings = {tag for kind, tag, _ in hints if kind == "W"}
    overridden = {tag for kind, tag, _ in hints if kind == "O"}
    assert errors == [], "\n".join(errors)
    assert warnings <= ACCEPTED_WARNINGS, warnings - ACCEPTED_WARNINGS
    assert not FIXED_TAGS & {tag for _, tag, _ in hints}, FIXED_TAGS & {t for _, t, _ in hints}
    assert "unused-override" not in {tag for _, tag, _ in hints}
    assert {"package-installs-python-bytecode", "embedded-library"} <= overridden


def test_man_page_documents_every_command(root: Path) -> None:
    """serfbridge(1) is installed, groff renders it without a warning, and it names every
    subcommand of the CLI's own parser."""
    page = root / "usr/share/man/man1/serfbridge.1.gz"
    man = require_binary("man", "man-db")
    proc = _run([man, "--warnings", "-E", "UTF-8", "-l", "-Tutf8", str(page)], timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    text = gzip.decompress(page.read_bytes()).decode("utf-8")
    assert text.startswith(".TH SERFBRIDGE ")
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    commands = set(sub.choices or ())
    assert {"relay", "send", "deliver", "check"} <= commands
    for command in commands:
        assert f"\\fI\\,{command}\\/\\fR" in text, command
    assert "/run/serfbridge/relay.sock" in text


def test_unit_passes_systemd_analyze_verify(root: Path, tmp_path: Path) -> None:
    """`systemd-analyze verify` of the installed unit: the ExecStart binary exists, the man
    page Documentation= names exists, no warning at all.

    `--root` would need a whole systemd tree in the test root (sysinit.target ...), so the
    host's systemd checks a copy whose ExecStart is the installed binary's path in the test
    root, with man reading the test root's pages (MANPATH). Nothing else differs."""
    analyze = require_binary("systemd-analyze", "systemd")
    unit = tmp_path / "serfbridge-relay.service"
    text = (root / UNIT).read_text()
    assert "ExecStart=/usr/bin/serfbridge relay\n" in text
    unit.write_text(text.replace("ExecStart=/usr/bin/", f"ExecStart={root}/usr/bin/"))
    proc = subprocess.run(
        [analyze, "verify", "--man=yes", str(unit)],
        capture_output=True,
        text=True,
        timeout=120,
        env=clean_environ({"MANPATH": str(root / "usr/share/man")}),
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (proc.stdout + proc.stderr).strip() == ""


def test_unit_makes_the_socket_directory_under_protect_system(root: Path) -> None:
    """ProtectSystem=strict leaves only the unit's own directories writable: /run/serfbridge,
    where the documented local socket lives, must be one (RuntimeDirectory=)."""
    text = (root / UNIT).read_text()
    keys = dict(re.findall(r"^(\w+)=(.*)$", text, re.M))
    assert keys["ProtectSystem"] == "strict"
    assert keys["RuntimeDirectory"] == "serfbridge"
    assert keys["StateDirectory"] == "serfbridge"
    assert keys["CacheDirectory"] == "serfbridge"
    relay_doc = Path(__file__).resolve().parent.parent / "docs/relay.md"
    assert 'path = "/run/serfbridge/relay.sock"' in relay_doc.read_text()


def test_unit_exposure_is_at_most_three(root: Path) -> None:
    """`systemd-analyze security --offline=yes` rates the unit 3.0 or lower."""
    analyze = require_binary("systemd-analyze", "systemd")
    proc = _run(
        [
            analyze,
            "security",
            "--offline=yes",
            f"--root={root}",
            f"--threshold={int(EXPOSURE_LIMIT * 10)}",
            f"/{UNIT}",
        ],
        timeout=120,
    )
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", proc.stdout)
    assert found, proc.stdout + proc.stderr
    assert float(found.group(1)) <= EXPOSURE_LIMIT, proc.stdout
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_logrotate_config_is_installed_and_parses(root: Path) -> None:
    """/etc/logrotate.d/serfbridge is a conffile and logrotate accepts it (debug mode: reads
    and plans, changes nothing)."""
    conf = root / "etc/logrotate.d/serfbridge"
    assert "/var/lib/serfbridge/serfbridge.log" in conf.read_text()
    status = (root / "var/lib/dpkg/status").read_text()
    assert " /etc/logrotate.d/serfbridge " in status
    logrotate = require_binary("logrotate", "logrotate")
    text = conf.read_text().replace("su serfbridge serfbridge", "su root root")
    text = text.replace("create 0660 serfbridge serfbridge", "create 0660 root root")
    checked = conf.with_name("checked")
    checked.write_text(text)
    proc = _run([logrotate, "--debug", "--state", str(root / "lr.state"), str(checked)], 60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "error" not in (proc.stdout + proc.stderr).lower(), proc.stdout + proc.stderr
