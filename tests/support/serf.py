"""Real `serf agent` processes on loopback free ports, driven through the `serf` CLI."""

from __future__ import annotations

import functools
import json
import signal
import time
from typing import TYPE_CHECKING, Any, Protocol

from .ports import LOOPBACK, free_port, wait_for
from .proc import ManagedProcess, require_binary, run_cli

if TYPE_CHECKING:
    import subprocess
    from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
    from pathlib import Path

# Short reap/reconnect times so member-reap and rejoin tests finish in seconds (docs/serf.md §0).
DEFAULT_CONFIG: dict[str, object] = {
    "reconnect_timeout": "20s",
    "tombstone_timeout": "20s",
    "reconnect_interval": "5s",
}

# `serf query` always lasts its whole timeout (3.2 s by default), so CLI calls get headroom.
CLI_TIMEOUT = 30.0


def serf_binary() -> str:
    return require_binary("serf", "serf")


class SerfCommandError(AssertionError):
    """A `serf` CLI call that was expected to succeed did not."""


class SerfAgent(ManagedProcess):
    """One `serf agent` with its own working dir, environment, config file and log.

    The agent's environment is os.environ without SERF_* / SERFBRIDGE_* plus `env`, because
    Serf hands its whole environment to every handler (docs/serf.md §1).
    """

    def __init__(
        self,
        name: str,
        workdir: Path,
        *,
        handlers: Sequence[str] = (),
        join: Sequence[str] = (),
        tags: Mapping[str, str] | None = None,
        env: Mapping[str, str] | None = None,
        config: Mapping[str, object] | None = None,
        bind_port: int | None = None,
        rpc_port: int | None = None,
        log_level: str = "debug",
        extra_args: Sequence[str] = (),
        serf_bin: str | None = None,
    ) -> None:
        # SIGINT is Serf's graceful leave: peers see member-leave rather than member-failed.
        super().__init__(name, workdir, env=env, stop_signal=signal.SIGINT)
        self.serf_bin = serf_bin or serf_binary()
        self.handlers = list(handlers)
        self.join = list(join)
        self.tags_at_start = dict(tags or {})
        self.config: dict[str, object] = {**DEFAULT_CONFIG, **(config or {})}
        self.config_path = workdir / f"{name}.json"
        self.log_level = log_level
        self.extra_args = list(extra_args)
        self._auto_ports = bind_port is None and rpc_port is None
        self.bind_port = bind_port or free_port(udp=True)
        self.rpc_port = rpc_port or free_port()

    @property
    def bind_addr(self) -> str:
        return f"{LOOPBACK}:{self.bind_port}"

    @property
    def rpc_addr(self) -> str:
        return f"{LOOPBACK}:{self.rpc_port}"

    def argv(self) -> list[str]:
        argv = [
            self.serf_bin,
            "agent",
            f"-node={self.name}",
            f"-bind={self.bind_addr}",
            f"-rpc-addr={self.rpc_addr}",
            f"-log-level={self.log_level}",
            f"-config-file={self.config_path}",
        ]
        argv += [f"-join={addr}" for addr in self.join]
        for key, value in self.tags_at_start.items():
            argv += ["-tag", f"{key}={value}"]
        argv += [f"-event-handler={spec}" for spec in self.handlers]
        return argv + self.extra_args

    def prepare(self) -> None:
        self.config_path.write_text(json.dumps(self.config, indent=2) + "\n")

    def on_retry(self) -> None:
        # free_port() raced with another process: take new ports, unless they were chosen
        # by the caller (a restart must keep its address) or peers already know this one.
        if self._auto_ports and self.starts == 1:
            self.bind_port = free_port(udp=True)
            self.rpc_port = free_port()

    def is_ready(self) -> bool:
        result = self.serf("members", "-format=json", timeout=5.0)
        if result.returncode != 0:
            return False
        return any(
            m["name"] == self.name and m["status"] == "alive" for m in _members(result.stdout)
        )

    # -- CLI ------------------------------------------------------------------------------

    def serf(
        self, *args: str | bytes, timeout: float = CLI_TIMEOUT, check: bool = False
    ) -> subprocess.CompletedProcess[str]:
        """Run `serf ARGS... -rpc-addr=<this agent>`; the flag goes right after the subcommand.

        Serf's flag parser stops at the first positional argument, so the rpc address is
        inserted after the subcommand, before any name or payload.
        """
        if not args:
            raise ValueError("serf() needs a subcommand")
        sub, *rest = args
        argv: list[str | bytes] = [self.serf_bin, sub, f"-rpc-addr={self.rpc_addr}", *rest]
        result = run_cli(argv, env=self.env, timeout=timeout, cwd=self.workdir)
        if check and result.returncode != 0:
            raise SerfCommandError(
                f"serf {' '.join(map(repr, args))} against {self.name} exited "
                f"{result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}"
            )
        return result

    def event(self, name: str, payload: str | bytes | None = None, coalesce: bool = False) -> None:
        """`serf event`; coalesce defaults to False because the CLI default waits 1 s."""
        args: list[str | bytes] = ["event", f"-coalesce={str(coalesce).lower()}", name]
        if payload is not None:
            args.append(payload)
        self.serf(*args, check=True)

    def query(
        self, name: str, payload: str | bytes | None = None, *extra_args: str, fmt: str = "json"
    ) -> Any:
        """`serf query [EXTRA_ARGS] NAME [PAYLOAD]`: parsed JSON, or the text output.

        Pass e.g. "-timeout=1s" in `extra_args`: a query always lasts its full timeout.
        JSON form: {"Acks": [node, ...], "Responses": {node: text}}.
        """
        args: list[str | bytes] = ["query", f"-format={fmt}", *extra_args, name]
        if payload is not None:
            args.append(payload)
        result = self.serf(*args, check=True)
        if fmt == "json":
            return json.loads(result.stdout)
        return result.stdout

    # `set` shadows the builtin on purpose: the keywords mirror `serf tags -set/-delete`.
    def tags(self, set: Mapping[str, str] | None = None, delete: Sequence[str] = ()) -> None:
        args = ["tags"]
        for key, value in (set or {}).items():
            args += ["-set", f"{key}={value}"]
        for key in delete:
            args += ["-delete", key]
        self.serf(*args, check=True)

    def members(self) -> list[dict[str, Any]]:
        """`serf members -format=json`: dicts with name, addr, port, tags, status, protocol."""
        return _members(self.serf("members", "-format=json", check=True).stdout)

    def alive_names(self) -> frozenset[str]:
        return frozenset(m["name"] for m in self.members() if m["status"] == "alive")

    def sees_alive(self, names: Iterable[str]) -> bool:
        return frozenset(names) <= self.alive_names()

    def member_status(self, name: str) -> str | None:
        for member in self.members():
            if member["name"] == name:
                return str(member["status"])
        return None

    def leave(self, timeout: float = 15.0) -> None:
        """`serf leave` (graceful) and wait for the agent process to exit."""
        self.serf("leave", check=True)
        if not self.wait_exit(timeout):
            raise AssertionError(f"{self.name} still running {timeout:g}s after serf leave")
        self.finish_stop(kill_group=False)

    def terminate(self, timeout: float = 15.0) -> None:
        """SIGTERM: without leave_on_terminate the agent quits without a leave; peers see failed."""
        self.send_signal(signal.SIGTERM)
        if not self.wait_exit(timeout):
            raise AssertionError(f"{self.name} still running {timeout:g}s after SIGTERM")
        self.finish_stop(kill_group=False)


def _members(stdout: str) -> list[dict[str, Any]]:
    members: list[dict[str, Any]] = json.loads(stdout)["members"]
    return members


class SerfCluster:
    """Agents n1..nN on loopback; n2..nN join n1. Iterable, indexable by position or name."""

    def __init__(self, base_dir: Path, *, serf_bin: str | None = None, prefix: str = "n") -> None:
        self.base_dir = base_dir
        self.serf_bin = serf_bin or serf_binary()
        self.prefix = prefix
        self.agents: list[SerfAgent] = []

    def start(
        self,
        n: int,
        handler: str | Sequence[str] | None = None,
        *,
        env_for: Callable[[str], Mapping[str, str]] | None = None,
        tags_for: Callable[[str], Mapping[str, str]] | None = None,
        config: Mapping[str, object] | None = None,
        timeout: float = 30.0,
    ) -> SerfCluster:
        """Start n agents and wait until every agent lists all of them as alive.

        `handler` is one `-event-handler` spec or a list of them, the same on every node.
        """
        if n < 1:
            raise ValueError("a cluster needs at least one agent")
        deadline = time.monotonic() + timeout
        for i in range(len(self.agents) + 1, len(self.agents) + n + 1):
            self.add(
                f"{self.prefix}{i}",
                handler,
                env=env_for(f"{self.prefix}{i}") if env_for else None,
                tags=tags_for(f"{self.prefix}{i}") if tags_for else None,
                config=config,
                timeout=max(deadline - time.monotonic(), 1.0),
                wait=False,
            )
        self.wait_converged(timeout=max(deadline - time.monotonic(), 1.0))
        return self

    def add(
        self,
        name: str,
        handler: str | Sequence[str] | None = None,
        *,
        env: Mapping[str, str] | None = None,
        tags: Mapping[str, str] | None = None,
        config: Mapping[str, object] | None = None,
        timeout: float = 30.0,
        wait: bool = True,
    ) -> SerfAgent:
        """Start one more agent that joins the first one (if any); optionally wait to converge."""
        handlers = [handler] if isinstance(handler, str) else list(handler or ())
        agent = SerfAgent(
            name,
            self.base_dir / name,
            handlers=handlers,
            join=[self.agents[0].bind_addr] if self.agents else [],
            tags=tags,
            env=env,
            config=config,
            serf_bin=self.serf_bin,
        )
        # Registered before start so that teardown stops it even if start-up fails.
        self.agents.append(agent)
        agent.start(timeout=timeout)
        if wait:
            self.wait_converged(timeout=timeout)
        return agent

    def wait_converged(self, timeout: float = 30.0) -> None:
        """Wait until every running agent sees every running agent as alive."""
        running = [a for a in self.agents if a.is_running]
        expected = frozenset(a.name for a in running)
        for agent in running:
            wait_for(
                functools.partial(agent.sees_alive, expected),
                timeout=timeout,
                what=f"{agent.name} to see {sorted(expected)} alive",
                detail=agent.log_tail,
            )

    def stop(self, timeout: float = 10.0) -> None:
        """Stop every agent: SIGINT to all at once (leaves run in parallel), then reap."""
        for agent in self.agents:
            agent.request_stop()
        for agent in self.agents:
            agent.finish_stop(timeout)

    @property
    def names(self) -> list[str]:
        return [a.name for a in self.agents]

    def __getitem__(self, key: int | str) -> SerfAgent:
        if isinstance(key, int):
            return self.agents[key]
        for agent in self.agents:
            if agent.name == key:
                return agent
        raise KeyError(key)

    def __iter__(self) -> Iterator[SerfAgent]:
        return iter(self.agents)

    def __len__(self) -> int:
        return len(self.agents)

    def __enter__(self) -> SerfCluster:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class SerfClusterFactory(Protocol):
    """The `serf_cluster` fixture: start a cluster that is torn down after the test."""

    def __call__(
        self,
        n: int = 3,
        handler: str | Sequence[str] | None = None,
        *,
        env_for: Callable[[str], Mapping[str, str]] | None = None,
        tags_for: Callable[[str], Mapping[str, str]] | None = None,
        config: Mapping[str, object] | None = None,
        timeout: float = 30.0,
    ) -> SerfCluster: ...
