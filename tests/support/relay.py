"""`serfbridge relay` as a real child process, plus small clients for its HTTP API."""

from __future__ import annotations

import json
import signal
import threading
import time
import urllib.error
import urllib.request
from typing import TYPE_CHECKING, Any

from serfbridge.errors import SerfError
from serfbridge.serf.rpc import SerfRPC

from .inbound import sign_headers
from .ports import LOOPBACK, free_port
from .proc import ManagedProcess

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from pathlib import Path

    from .serf import SerfAgent


class RelayProcess(ManagedProcess):
    """`serfbridge --config <dir>/relay.toml relay`, logging to its process log (stderr), or
    to the file ``log_file`` when a test sets it before ``start``."""

    def __init__(
        self,
        workdir: Path,
        cmd: Sequence[str],
        body: str,
        *,
        rpc_addr: str,
        name: str = "relay",
        env: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(name, workdir, env=env, stop_signal=signal.SIGTERM)
        self.cmd = list(cmd)
        self.config = workdir / f"{name}.toml"
        self.state = workdir / f"{name}-state"
        self.body = body
        self.rpc_addr = rpc_addr
        self.log_level = "debug"
        self.log_file: Path | None = None

    def argv(self) -> list[str]:
        return [*self.cmd, "--config", str(self.config), "relay"]

    def prepare(self) -> None:
        head = (
            f"state_dir = {json.dumps(str(self.state))}\n"
            f"log_file = {json.dumps(str(self.log_file or '-'))}\n"
            f'log_level = "{self.log_level}"\n'
            f'[serf]\nrpc_addr = "{self.rpc_addr}"\n'
        )
        self.config.write_text(head + self.body, encoding="utf-8")

    def is_ready(self) -> bool:
        if self.log_file is not None:
            return self.log_file.exists() and "relay ready" in self.log_file.read_text()
        return "relay ready" in self.log_text(current_run=True)


class Watcher:
    """Every user event the agent sees, from a real RPC stream subscription."""

    def __init__(self, agent: SerfAgent) -> None:
        self.rpc = SerfRPC(agent.rpc_addr).connect()
        self.stream = self.rpc.stream("user")
        self.events: list[tuple[str, bytes]] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for record in self.stream:
                self.events.append((record["Name"], record["Payload"]))
        except SerfError:
            pass  # the agent went away (a test killed it): what was seen stays in events

    def payloads(self) -> list[bytes]:
        return [p for _, p in list(self.events)]

    def close(self) -> None:
        self.rpc.close()


def http_source(port: int, **keys: object) -> str:
    """A `[[sources]]` http table on 127.0.0.1:<port> with the given keys."""
    keys = {"listen": f"{LOOPBACK}:{port}", **keys}
    lines = ["[[sources]]", 'type = "http"']
    lines += [f"{k} = {json.dumps(v)}" for k, v in keys.items()]
    return "\n".join(lines) + "\n"


def post(
    port: int,
    path: str,
    body: bytes | dict[str, Any],
    *,
    token: str | None = None,
    hmac_key: str | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 30.0,
) -> tuple[int, dict[str, Any]]:
    """POST to the relay; returns (status, parsed JSON body) for any status."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    hdrs = {"Content-Type": "application/json", **(headers or {})}
    if token is not None:
        hdrs["Authorization"] = f"Bearer {token}"
    if hmac_key is not None:
        hdrs.update(sign_headers(hmac_key, data, int(time.time())))
    request = urllib.request.Request(
        f"http://{LOOPBACK}:{port}{path}", data=data, headers=hdrs, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:  # noqa: S310 - loopback
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def get_text(port: int, path: str, timeout: float = 10.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://{LOOPBACK}:{port}{path}", timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def metric(text: str, name: str, **labels: str) -> float:
    """One sample from Prometheus text; 0 if the series is absent."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    series = f"{name}{{{want}}}" if want else name
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


__all__ = ["RelayProcess", "Watcher", "free_port", "get_text", "http_source", "metric", "post"]
