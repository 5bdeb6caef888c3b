"""What a handler run costs beyond its work: every module it imports costs each event ~0.1 ms
(docs/performance.md, "Handler cost"), so what only some configs or inputs need stays out of
the common path; and the interpreter's teardown is skipped when the run is over.

Each run is a real handler run in a subprocess, on the interpreter started the way the
launcher and a pip install start it (``-I -S``), with the config cache warmed by a full run
first (so each test records its event twice); the child writes its ``sys.modules`` after
``cli.main`` returns.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from serfbridge.capture import relay_ids

ROOT = Path(__file__).resolve().parents[1]
NODE = {"SERF_SELF_NAME": "n1", "SERF_SELF_ROLE": "web", "SERF_TAG_ROLE": "web"}
USER = {"SERF_EVENT": "user", **NODE, "SERF_USER_EVENT": "deploy", "SERF_USER_LTIME": "3"}
JOIN = {"SERF_EVENT": "member-join", **NODE}
RUNS = 2  # the warm-up and the one that is looked at
JOIN_STDIN = b"n2\t127.0.0.1\tdb\tdc=east,role=db\n"
CHILD = """
import sys
sys.path.insert(0, sys.argv[1])
from serfbridge import cli
status = cli.main(["--config", sys.argv[2]])
with open(sys.argv[3], "w") as fh:
    fh.write("\\n".join(sorted(sys.modules)))
sys.exit(status)
"""
# The common path: a user or member event to the built-in file sink.
COMMON = {
    "serfbridge",
    "serfbridge.cli",
    "serfbridge.log",
    "serfbridge.errors",
    "serfbridge.capture",
    "serfbridge.capture.cache",
    "serfbridge.capture.event",
    "serfbridge.capture.files",
    "serfbridge.capture.jsonenc",
    "serfbridge.capture.paths",
    "serfbridge.capture.route",
    "serfbridge.capture.run",
    "serfbridge.capture.runtime",
}
# Needed by some configs or inputs only; `_json` only for long strings with escapes,
# `__future__` not at all (its import is a module load like any other).
NOT_COMMON = {
    "serfbridge.capture.filters",
    "serfbridge.capture.when",
    "serfbridge.capture.relay_ids",
    "serfbridge.capture.spool",
    "binascii",
    "_json",
    "__future__",
}


def handler_modules(tmp_path: Path, body: str, env: dict[str, str], stdin: bytes) -> set[str]:
    config = tmp_path / "serfbridge.toml"
    state = tmp_path / "state"
    config.write_text(
        f"state_dir = {json.dumps(str(state))}\nspawn_deliverer = false\n{body}", encoding="utf-8"
    )
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SERF_", "SERFBRIDGE_"))}
    base["SERFBRIDGE_CACHE_DIR"] = str(tmp_path / "cache")
    full = [sys.executable, "-m", "serfbridge", "--config", str(config)]
    # The first run compiles the config with pydantic; the measured one reads the cache.
    for argv in (full, [sys.executable, "-I", "-S", "-c", CHILD, str(ROOT), str(config)]):
        out = tmp_path / "modules.txt"
        proc = subprocess.run(
            [*argv, str(out)] if argv is not full else argv,
            input=stdin,
            env={**base, **env},
            capture_output=True,
            timeout=60,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
    return set(out.read_text(encoding="utf-8").split())


@pytest.mark.parametrize(("env", "stdin"), [(USER, b"v1.2\n"), (JOIN, JOIN_STDIN)])
def test_common_path_imports_only_what_it_uses(
    tmp_path: Path, env: dict[str, str], stdin: bytes
) -> None:
    modules = handler_modules(tmp_path, "", env, stdin)
    ours = {m for m in modules if m.startswith("serfbridge")}
    assert ours == COMMON
    assert not modules & NOT_COMMON
    lines = (tmp_path / "state" / "events.jsonl").read_bytes().splitlines()
    assert len(lines) == RUNS


def test_spooled_event_imports_the_spool_but_no_filter(tmp_path: Path) -> None:
    body = '[[sinks]]\ntype = "webhook"\nname = "hook"\nurl = "http://127.0.0.1:9/x"\n'
    modules = handler_modules(tmp_path, body, USER, b"v1\n")
    assert "serfbridge.capture.spool" in modules
    assert not modules & (NOT_COMMON - {"serfbridge.capture.spool"})
    assert len(list((tmp_path / "state" / "spool" / "incoming").iterdir())) == RUNS


def test_filters_and_when_only_for_sinks_that_have_them(tmp_path: Path) -> None:
    body = (
        '[[sinks]]\ntype = "file"\nname = "f"\nevents = "user:deploy"\n'
        f"path = {json.dumps(str(tmp_path / 'out.jsonl'))}\n"
        'when = { role = "web" }\n'
    )
    modules = handler_modules(tmp_path, body, USER, b"v1\n")
    assert {"serfbridge.capture.filters", "serfbridge.capture.when"} <= modules
    assert "__future__" not in modules
    assert len((tmp_path / "out.jsonl").read_bytes().splitlines()) == RUNS


def test_relay_ids_only_for_a_payload_with_the_trailer(tmp_path: Path) -> None:
    stdin = relay_ids.attach(b"v1", relay_ids.make("entry-1")) + b"\n"
    modules = handler_modules(tmp_path, "", USER, stdin)
    assert "serfbridge.capture.relay_ids" in modules
    assert "__future__" not in modules
    line = (tmp_path / "state" / "events.jsonl").read_bytes().splitlines()[-1]
    assert json.loads(line)["payload"] == "v1"


def test_binary_payload_imports_binascii(tmp_path: Path) -> None:
    modules = handler_modules(tmp_path, "", USER, b"\xff\xfe\n")
    assert "binascii" in modules
    line = (tmp_path / "state" / "events.jsonl").read_bytes().splitlines()[-1]
    assert json.loads(line)["payload_encoding"] == "base64"


TEARDOWN_CHILD = """
import atexit, sys
sys.path.insert(0, sys.argv[1])
from serfbridge import cli
atexit.register(lambda: sys.stdout.write("teardown ran\\n"))
sys.stderr.write("buffered before the end\\n")
sys.exit(cli.main(sys.argv[3:], end_process=sys.argv[2] == "end"))
"""


@pytest.mark.parametrize(
    ("mode", "args", "env", "teardown"),
    [
        ("end", ["handle"], USER, False),
        ("return", ["handle"], USER, True),
        # Not a handler run: the process ends normally even from an entry point.
        ("end", ["--version"], {}, True),
    ],
)
def test_handler_run_ends_without_teardown(
    tmp_path: Path, mode: str, args: list[str], env: dict[str, str], teardown: bool
) -> None:
    """From an entry point, a handler run ends the process itself (keeping its exit status
    and what it wrote to Python's streams); called as a function, main returns."""
    config = tmp_path / "serfbridge.toml"
    config.write_text(f"state_dir = {json.dumps(str(tmp_path / 'state'))}\n", encoding="utf-8")
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SERF_", "SERFBRIDGE_"))}
    proc = subprocess.run(
        [sys.executable, "-c", TEARDOWN_CHILD, str(ROOT), mode, "--config", str(config), *args],
        input=b"v1\n",
        env={**base, **env, "SERFBRIDGE_CACHE_DIR": str(tmp_path / "cache")},
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.startswith(b"buffered before the end\n")
    assert (b"teardown ran" in proc.stdout) is teardown
    if env:
        assert len((tmp_path / "state" / "events.jsonl").read_bytes().splitlines()) == 1
