"""Fixtures that start real processes on 127.0.0.1 free ports and always tear them down."""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import pytest
from support import artifacts
from support.nats import NatsServer
from support.proc import SCRUBBED_PREFIXES, MissingBinaryError
from support.rabbitmq import RabbitMQServer
from support.relay import Watcher
from support.serf import SerfCluster, serf_binary
from support.servers import BlackholeServer, HttpReceiver, Mosquitto, RedisServer

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping, Sequence

    from support.serf import SerfAgent, SerfClusterFactory

# Read before the autouse fixture scrubs SERFBRIDGE_* from the environment: this one selects
# the binary under test (e.g. the PyInstaller build in CI), it is not serfbridge configuration.
_SERFBRIDGE_BIN = os.environ.get("SERFBRIDGE_BIN")
# CI sets this: a skipped test there hides a missing server or binary, so it fails instead.
_REQUIRE_ALL = os.environ.get("SERFBRIDGE_REQUIRE_ALL") == "1"
# Where the built artifacts are (installers/*/build*.sh write dist/linux and dist/windows).
_SERFBRIDGE_DIST = Path(
    os.environ.get("SERFBRIDGE_DIST") or Path(__file__).resolve().parent.parent / "dist"
)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--artifacts",
        action="store_true",
        help="also run the tests of built artifacts (markers artifact, wine): build them "
        "first, see docs/building.md",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Artifact tests need a build: without --artifacts they are deselected, never skipped."""
    if config.getoption("--artifacts"):
        return
    keep = [i for i in items if i.get_closest_marker("artifact") is None]
    if len(keep) != len(items):
        config.hook.pytest_deselected(items=[i for i in items if i not in keep])
        items[:] = keep


@pytest.fixture(scope="session")
def dist_dir() -> Path:
    """The artifacts directory ($SERFBRIDGE_DIST, default <checkout>/dist)."""
    return _SERFBRIDGE_DIST


@pytest.fixture(scope="session")
def linux_dist(dist_dir: Path) -> Path:
    """<dist>/linux with the frozen builds (support.artifacts.LINUX_BUILDS)."""
    return artifacts.linux_dist(dist_dir)


@pytest.fixture(scope="session")
def linux_deb(dist_dir: Path) -> Path:
    """The built .deb in <dist>/linux."""
    return artifacts.linux_deb(dist_dir)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if _REQUIRE_ALL and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped under SERFBRIDGE_REQUIRE_ALL=1: {report.longrepr}"


@pytest.fixture(autouse=True)
def _scrub_serf_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the developer's SERF_* / SERFBRIDGE_* variables out of every test and child."""
    for name in list(os.environ):
        if name.startswith(SCRUBBED_PREFIXES):
            monkeypatch.delenv(name)


T = TypeVar("T")


def _require(make: Callable[[], T]) -> T:
    try:
        return make()
    except MissingBinaryError as exc:
        # A missing binary is a broken test environment, never a reason to skip.
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="session")
def serf_bin() -> str:
    """Absolute path of the `serf` binary (fails the test if it is not installed)."""
    return _require(serf_binary)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A fresh redis-server on a free port, stopped after the test."""
    with _require(lambda: RedisServer(tmp_path / "redis")) as server:
        server.start()
        yield server


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    """A fresh anonymous mosquitto broker on a free port, stopped after the test."""
    with _require(lambda: Mosquitto(tmp_path / "mosquitto")) as broker:
        broker.start()
        yield broker


@pytest.fixture(scope="session")
def rabbitmq(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitMQServer]:
    """One private rabbitmq-server for the session (it takes seconds to boot); tests use
    their own queues. Stopped, with its epmd, at the end."""
    server = _require(lambda: RabbitMQServer(tmp_path_factory.mktemp("rabbitmq")))
    try:
        server.start()
        yield server
    finally:
        server.shutdown()


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A fresh nats-server with JetStream on a free port, its own store, stopped after."""
    with _require(lambda: NatsServer(tmp_path / "nats")) as server:
        server.start()
        yield server


@pytest.fixture
def http_receiver() -> Iterator[HttpReceiver]:
    """An in-process HTTP server that records requests and answers per its plan."""
    with HttpReceiver() as receiver:
        yield receiver


@pytest.fixture
def blackhole() -> Iterator[BlackholeServer]:
    """A TCP listener that accepts and never answers."""
    with BlackholeServer() as server:
        yield server


@pytest.fixture
def serf_cluster(tmp_path: Path, serf_bin: str) -> Iterator[SerfClusterFactory]:
    """Factory: `serf_cluster(n, handler, env_for=..., tags_for=..., config=...)`.

    Agents live in tmp_path/<node> (a second cluster in the same test uses
    tmp_path/cluster2/<node>); every agent started through it is stopped at teardown.
    """
    clusters: list[SerfCluster] = []

    def start(
        n: int = 3,
        handler: str | Sequence[str] | None = None,
        *,
        env_for: Callable[[str], Mapping[str, str]] | None = None,
        tags_for: Callable[[str], Mapping[str, str]] | None = None,
        config: Mapping[str, object] | None = None,
        timeout: float = 30.0,
    ) -> SerfCluster:
        base = tmp_path if not clusters else tmp_path / f"cluster{len(clusters) + 1}"
        cluster = SerfCluster(base, serf_bin=serf_bin)
        clusters.append(cluster)
        return cluster.start(
            n, handler, env_for=env_for, tags_for=tags_for, config=config, timeout=timeout
        )

    try:
        yield start
    finally:
        for cluster in clusters:
            cluster.stop()


@pytest.fixture
def agent(serf_cluster: SerfClusterFactory) -> SerfAgent:
    """One `serf agent` without a handler (the relay tests' target)."""
    return serf_cluster(1)[0]


@pytest.fixture
def watcher(agent: SerfAgent) -> Iterator[Watcher]:
    """Every user event `agent` sees, from its RPC stream."""
    watch = Watcher(agent)
    yield watch
    watch.close()


@pytest.fixture
def serfbridge_cmd() -> list[str]:
    """argv that runs serfbridge: $SERFBRIDGE_BIN, else the venv's script, else `python -m`."""
    if _SERFBRIDGE_BIN:
        return [_SERFBRIDGE_BIN]
    script = shutil.which("serfbridge", path=str(Path(sys.executable).parent))
    if script is not None:
        return [script]
    return [sys.executable, "-m", "serfbridge"]


@pytest.fixture
def serfbridge_handler(serfbridge_cmd: list[str]) -> str:
    """serfbridge_cmd as one shell string for `-event-handler` (Serf runs it with /bin/sh -c).

    Serf splits a handler spec at its first `=`, so a spec without a filter must not contain
    one; prefix a filter (`*=` or `user=`) when the path might.
    """
    return shlex.join(serfbridge_cmd)
