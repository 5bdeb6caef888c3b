"""The launcher of the Linux packages, installed from the .deb: the system Python runs the
handler, the frozen build everything else and every hand-off
(installers/linux/serfbridge_launcher.py).

Run after `installers/linux/build.sh`: `pytest --artifacts -m artifact` (docs/building.md).
Whether a run took the fast path is shown, not guessed: with the frozen build renamed away,
only the launcher's own capture code can record the event.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shlex
import subprocess
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest
from support.bridge import BridgeNode
from support.deb import install
from support.handler import run_handler
from support.ports import wait_for
from support.proc import clean_environ

from serfbridge.capture.spool import deliverer_running
from serfbridge.errors import EXIT_CONFIG, EXIT_INTERNAL, EXIT_USAGE

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from support.serf import SerfClusterFactory
    from support.servers import HttpReceiver

pytestmark = pytest.mark.artifact

RESPONDERS = (
    '[[responders]]\nquery = "load"\ntext = "load from {node} payload={payload}"\n\n'
    '[[responders]]\nquery = "cmd"\ncommand = ["/bin/echo", "pong"]\n'
)
# Serf's handler inputs for every event type: (SERF_EVENT, extra variables, stdin).
MEMBER = b"n2\t127.0.0.1\tdb\trole=db,dc=east,list=a,b\n"
EVENTS: list[tuple[str, dict[str, str], bytes]] = [
    ("member-join", {}, MEMBER + b"n3\t127.0.0.2\tweb\trole=web\n"),
    ("member-update", {}, MEMBER),
    ("member-leave", {}, MEMBER),
    ("member-failed", {}, MEMBER),
    ("member-reap", {}, MEMBER),
    ("user", {"SERF_USER_EVENT": "deploy", "SERF_USER_LTIME": "7"}, b'{"v":1}\n'),
    ("user", {"SERF_USER_EVENT": "bin", "SERF_USER_LTIME": "8"}, b"\xff\x00\n"),
    ("query", {"SERF_QUERY_NAME": "load", "SERF_QUERY_LTIME": "3"}, b"hi\n"),
    ("query", {"SERF_QUERY_NAME": "cmd", "SERF_QUERY_LTIME": "4"}, b""),
]
# Short reconnect/tombstone timeouts so member-reap arrives within serf's 15 s reap interval.
FAST_REAP = {"reconnect_timeout": "1s", "tombstone_timeout": "1s", "reconnect_interval": "1s"}


@dataclass(frozen=True)
class Installed:
    root: Path

    @property
    def launcher(self) -> str:
        """What users put in `-event-handler`: /usr/bin/serfbridge, a link to the launcher."""
        return str(self.root / "usr/bin/serfbridge")

    @property
    def frozen(self) -> Path:
        return self.root / "usr/lib/serfbridge/serfbridge-frozen"

    @property
    def frozen_cmd(self) -> list[str]:
        return [str(self.frozen)]


@pytest.fixture(scope="module")
def installed(linux_deb: Path, tmp_path_factory: pytest.TempPathFactory) -> Installed:
    return Installed(install(linux_deb, tmp_path_factory.mktemp("deb") / "root"))


@contextlib.contextmanager
def frozen_away(installed: Installed) -> Iterator[None]:
    """The frozen build renamed away: what works now ran on the system Python alone."""
    away = installed.frozen.with_name("serfbridge-frozen.away")
    installed.frozen.rename(away)
    try:
        yield
    finally:
        away.rename(installed.frozen)


def _docs(node: BridgeNode) -> list[dict[str, Any]]:
    """The recorded documents without received_at (the only field that may differ)."""
    return [{k: v for k, v in d.items() if k != "received_at"} for d in node.events()]


def _fire(
    cmd: list[str], node: BridgeNode, event: str, extra: dict[str, str], stdin: bytes
) -> subprocess.CompletedProcess[bytes]:
    # One node name for both nodes of a comparison: it is part of the document.
    proc = run_handler(cmd, node, event, stdin=stdin, extra={**extra, "SERF_SELF_NAME": "n1"})
    assert proc.returncode == 0, proc.stderr.decode(errors="replace") + node.log_tail()
    return proc


def _cache_entries(node: BridgeNode) -> list[str]:
    cache = node.dir / "cache"
    return sorted(os.listdir(cache)) if cache.is_dir() else []


def test_first_event_compiles_in_frozen_then_every_event_type_runs_fast(
    installed: Installed, tmp_path: Path
) -> None:
    """No cache: the frozen build compiles it; then every event type, query answers included,
    is handled by the launcher alone, with documents identical to the frozen build's."""
    fast = BridgeNode(tmp_path, "fast")
    frozen = BridgeNode(tmp_path, "frozen")
    for node in (fast, frozen):
        node.write_config(RESPONDERS)
    event, extra, stdin = EVENTS[0]
    _fire([installed.launcher], fast, event, extra, stdin)
    assert len(_cache_entries(fast)) == 1  # written by the frozen build: the copy has no pydantic

    with frozen_away(installed):
        fast_out = [_fire([installed.launcher], fast, *e).stdout for e in EVENTS[1:]]
    frozen_out = [_fire(installed.frozen_cmd, frozen, *e).stdout for e in EVENTS]
    assert fast_out == frozen_out[1:]
    assert fast_out[-2:] == [b"load from n1 payload=hi", b"pong\n"]
    assert len(_docs(fast)) == len(EVENTS)
    assert _docs(fast) == _docs(frozen)


def _handler_spec(root: Path, command: str) -> str:
    """An `-event-handler` giving each node its own config and cache below root/<node>.

    Serf runs it with /bin/sh -c, which expands $SERF_SELF_NAME; `*=` because the command
    contains `=` (Serf splits a spec at its first `=`)."""
    node_dir = shlex.quote(str(root)) + '/"$SERF_SELF_NAME"'
    return (
        f"*=SERFBRIDGE_CONFIG={node_dir}/serfbridge.toml "
        f"SERFBRIDGE_CACHE_DIR={node_dir}/cache exec {shlex.quote(command)}"
    )


def test_serf_agent_runs_launcher_like_frozen_for_every_event_type(
    installed: Installed, serf_cluster: SerfClusterFactory, tmp_path: Path
) -> None:
    """A real 3-node cluster with both as handlers: join, user, query (the launcher's answer
    reaches `serf query`), update, leave, failed, reap give identical documents."""
    names = ["n1", "n2", "n3"]
    fast = {n: BridgeNode(tmp_path / "launcher", n) for n in names}
    frozen = {n: BridgeNode(tmp_path / "frozen", n) for n in names}
    for node in (*fast.values(), *frozen.values()):
        node.write_config(RESPONDERS)
    cluster = serf_cluster(
        3,
        # Serf runs a node's handlers one after the other, the launcher first: its output is
        # the query answer Serf sends.
        [
            _handler_spec(tmp_path / "launcher", installed.launcher),
            _handler_spec(tmp_path / "frozen", str(installed.frozen)),
        ],
        tags_for=lambda name: {"role": "db" if name == "n2" else "web", "dc": "east"},
        config=FAST_REAP,
    )
    cluster["n1"].event("deploy", b'{"v":1}')
    # Serf runs a node's handlers one event at a time: once both have recorded the user
    # event everywhere, the joins are behind them and the query's handler runs at once.
    # The timeout is generous because a loaded machine starts the frozen build slowly.
    for node in (*fast.values(), *frozen.values()):
        node.wait_event(lambda e: e["event"] == "user", "user")
    result = cluster["n1"].query("load", "hi", "-timeout=10s")
    assert result["Responses"] == {n: f"load from {n} payload=hi" for n in names}
    cluster["n2"].tags(set={"list": "a,b=c"})
    fast["n1"].wait_event(lambda e: e["event"] == "member-update", "member-update")
    cluster["n3"].leave()
    fast["n1"].wait_event(lambda e: e["event"] == "member-leave", "member-leave")
    cluster["n2"].kill9()
    fast["n1"].wait_event(lambda e: e["event"] == "member-failed", "member-failed")

    def reaped_in_both() -> bool:
        return all(
            {m["name"] for d in node.events() if d["event"] == "member-reap" for m in d["members"]}
            >= {"n2", "n3"}
            for node in (fast["n1"], frozen["n1"])
        )

    wait_for(reaped_in_both, timeout=45, what="n1's handlers to record member-reap of n2, n3")
    # Compared while n1 still runs: stopping it now would start one more event (its leave).
    seen = {d["event"] for d in _docs(fast["n1"])}
    assert seen == {
        "member-join",
        "user",
        "query",
        "member-update",
        "member-leave",
        "member-failed",
        "member-reap",
    }
    assert _docs(fast["n1"]) == _docs(frozen["n1"])
    # n2 was killed and n3 left: one handler may have run for their last event, not the other.
    for name in ("n2", "n3"):
        a, b = _docs(fast[name]), _docs(frozen[name])
        shorter = min(len(a), len(b))
        assert shorter >= 3, (a, b)
        assert a[:shorter] == b[:shorter]


def test_exact_tags_hands_membership_events_to_frozen(
    installed: Installed, serf_cluster: SerfClusterFactory, tmp_path: Path
) -> None:
    """exact_tags needs msgpack: a membership event goes to the frozen build (the agent's exact
    tags arrive); a user event with the same config stays on the fast path."""
    cluster = serf_cluster(1, tags_for=lambda _: {"list": "a,b=c", "role": "web"})
    node = BridgeNode(tmp_path, "n1")
    node.write_config(f'[serf]\nrpc_addr = "{cluster["n1"].rpc_addr}"\nexact_tags = true\n')
    user = ("user", {"SERF_USER_EVENT": "warm", "SERF_USER_LTIME": "1"}, b"")
    _fire([installed.launcher], node, *user)  # compiles the cache (frozen)
    with frozen_away(installed):
        _fire([installed.launcher], node, *user)
    # As Serf prints it: `list=a,b=c` alone would parse as two tags.
    _fire(
        [installed.launcher], node, "member-join", {}, b"n1\t127.0.0.1\tweb\tlist=a,b=c,role=web\n"
    )
    join = node.events()[-1]
    assert join["members"][0]["tags"] == {"list": "a,b=c", "role": "web"}


def test_non_handler_commands_run_the_frozen_build(installed: Installed, tmp_path: Path) -> None:
    """--version, check and a bare call without SERF_EVENT behave exactly as the frozen build."""
    node = BridgeNode(tmp_path, "n1")
    node.write_config(RESPONDERS)
    for args in (["--version"], ["check"], ["--config", str(node.config), "check"], []):
        runs = [
            subprocess.run(
                [cmd, *args],
                capture_output=True,
                env=clean_environ(node.env()),
                timeout=60,
                check=False,
            )
            for cmd in (installed.launcher, str(installed.frozen))
        ]
        assert runs[0].returncode == runs[1].returncode, (args, runs)
        assert runs[0].stdout == runs[1].stdout, args
        assert runs[0].stderr == runs[1].stderr, args
    assert runs[0].returncode == EXIT_USAGE
    assert b"no SERF_EVENT" in runs[0].stderr


def _rejected(node: BridgeNode) -> list[dict[str, Any]]:
    directory = node.state / "spool" / "rejected"
    return [json.loads((directory / n).read_text()) for n in sorted(os.listdir(directory))]


def test_bad_config_exits_3_and_keeps_the_event(installed: Installed, tmp_path: Path) -> None:
    """A config made invalid after its cache was written: the stale cache hands the run to
    the frozen build, which exits 3 and keeps the event in spool/rejected/."""
    node = BridgeNode(tmp_path, "n1")
    node.write_config()
    user = ("user", {"SERF_USER_EVENT": "deploy", "SERF_USER_LTIME": "1"}, b"v1\n")
    _fire([installed.launcher], node, *user)
    node.write_config("bogus_key = 1\n")
    proc = run_handler([installed.launcher], node, "user", stdin=user[2], extra=user[1])
    assert proc.returncode == EXIT_CONFIG, proc.stderr
    assert b"bogus_key" in proc.stderr
    (kept,) = _rejected(node)
    assert base64.b64decode(kept["stdin_base64"]) == b"v1\n"
    assert kept["env"]["SERF_USER_EVENT"] == "deploy"


def test_missing_frozen_build_keeps_the_event(installed: Installed, tmp_path: Path) -> None:
    """No cache and no frozen build to compile it (a broken installation): exit 1, one line
    on stderr, and the event kept in spool/rejected/."""
    node = BridgeNode(tmp_path, "n1")
    node.write_config()
    with frozen_away(installed):
        proc = run_handler(
            [installed.launcher],
            node,
            "user",
            stdin=b"v1\n",
            extra={"SERF_USER_EVENT": "deploy", "SERF_USER_LTIME": "1"},
        )
    assert proc.returncode == EXIT_INTERNAL
    assert proc.stderr.startswith(b"serfbridge: cannot run ")
    assert proc.stderr.count(b"\n") == 1
    (kept,) = _rejected(node)
    assert base64.b64decode(kept["stdin_base64"]) == b"v1\n"


def test_fast_path_starts_the_frozen_deliverer(
    installed: Installed, http_receiver: HttpReceiver, tmp_path: Path
) -> None:
    """An event spooled on the fast path is delivered: the deliverer it starts is the frozen
    build (the system Python has no httpx and no serfbridge outside the launcher)."""
    node = BridgeNode(tmp_path, "n1")
    node.write_config(
        f'[delivery]\nlinger = 0\n\n[[sinks]]\ntype = "webhook"\nname = "hook"\n'
        f'url = "{http_receiver.url}"\n'
    )
    for ltime in (1, 2):
        # The first run compiles the cache (frozen build); wait for its deliverer to exit so
        # that the second, fast run has to start one itself.
        _fire(
            [installed.launcher],
            node,
            "user",
            {"SERF_USER_EVENT": "e", "SERF_USER_LTIME": str(ltime)},
            b"",
        )
        http_receiver.wait_for_count(ltime, timeout=20)
        wait_for(
            lambda: not deliverer_running(str(node.state)),
            timeout=20,
            what="the deliverer to exit",
        )
    assert [r.json()["ltime"] for r in http_receiver.requests] == [1, 2]
