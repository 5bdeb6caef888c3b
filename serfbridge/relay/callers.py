"""The relay's calls into Serf: native RPC with reconnect backoff, or the ``serf`` CLI.

Both raise ``Rejected`` with reason ``serf_unavailable`` (agent down: retry later) or
``serf_error`` / ``too_large`` (the agent refused this message), and record call latency.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
import uuid
from typing import Any

from serfbridge import log
from serfbridge.delivery.backoff import Backoff
from serfbridge.errors import Rejected, SerfCommandError, SerfError, SerfUnavailable
from serfbridge.serf.rpc import SerfRPC, parse_addr

TYPE_CHECKING = False
if TYPE_CHECKING:
    from serfbridge.relay.messages import Message
    from serfbridge.relay.metrics import Metrics


def _refused(exc: SerfCommandError) -> Rejected:
    text = str(exc)
    reason = "too_large" if "exceeds" in text and "limit" in text else "serf_error"
    return Rejected(reason, f"serf refused the {exc.command}: {text}")


def reply_doc(
    msg: Message, acks: list[str], responses: dict[str, bytes], complete: bool
) -> dict[str, Any]:
    """The query reply every source returns (HTTP body, MQTT/Redis reply message)."""
    return {
        "id": msg.id or uuid.uuid4().hex,
        "name": msg.name,
        "acks": acks,
        "responses": {k: v.decode("utf-8", "replace") for k, v in responses.items()},
        "complete": complete,
    }


class RpcCaller:
    """One shared RPC connection; reconnects on demand with exponential backoff."""

    def __init__(
        self, addr: str, auth: str | None, timeout: float, metrics: Metrics, backoff_max: float
    ) -> None:
        self.addr = addr
        self._client = SerfRPC(addr, auth, timeout=max(timeout, 2.0))
        self._metrics = metrics
        self._lock = threading.Lock()
        self._connected = False
        self._next_try = 0.0
        self._retry = Backoff(0.2, backoff_max)

    def _connect(self) -> SerfRPC:
        with self._lock:
            now = time.monotonic()
            if not self._connected and now < self._next_try:
                raise Rejected(
                    "serf_unavailable",
                    f"serf agent at {self.addr} unreachable; next try in "
                    f"{self._next_try - now:.1f} s",
                )
            try:
                # A no-op while the connection is alive; replaces one the agent closed.
                self._client.connect()
            except SerfError as exc:
                self._connected = False
                delay = self._retry.failed()
                self._next_try = now + delay
                log.warning("serf agent unreachable", addr=self.addr, retry_in=delay)
                raise Rejected("serf_unavailable", f"serf agent unreachable: {exc}") from None
            if not self._connected and self._retry.failures:
                log.info("reconnected to the serf agent", addr=self.addr)
            self._connected = True
            self._retry.reset()
            return self._client

    def _lost(self, exc: SerfUnavailable) -> Rejected:
        with self._lock:
            self._connected = False
        self._client.close()
        return Rejected("serf_unavailable", f"serf agent unreachable: {exc}")

    @property
    def healthy(self) -> bool:
        try:
            self._connect()
        except Rejected:
            return False
        return True

    def event(self, msg: Message) -> None:
        started = time.monotonic()
        for attempt in (1, 2):
            client = self._connect()
            try:
                client.event(msg.name, msg.payload, coalesce=msg.coalesce)
                break
            except SerfUnavailable as exc:
                # A connection that died while idle (agent restarted): one fresh try at once.
                rejected = self._lost(exc)
                if attempt == 2:
                    raise rejected from None
            except SerfCommandError as exc:
                raise _refused(exc) from None
        self._metrics.observe_serf("event", time.monotonic() - started)

    def query(self, msg: Message) -> dict[str, Any]:
        started = time.monotonic()
        client = self._connect()
        try:
            result = client.query(
                msg.name,
                msg.payload,
                filter_nodes=msg.nodes,
                filter_tags=msg.tags,
                timeout=msg.timeout,
            )
        except SerfUnavailable as exc:
            raise self._lost(exc) from None
        except SerfCommandError as exc:
            raise _refused(exc) from None
        self._metrics.observe_serf("query", time.monotonic() - started)
        return reply_doc(msg, result.acks, result.responses, True)

    def close(self) -> None:
        self._client.close()


class CliCaller:
    """``serf event`` / ``serf query`` as argv lists, never a shell. The RPC secret travels
    in SERF_RPC_AUTH, not on the command line where ``ps`` would show it."""

    def __init__(
        self, argv: list[str], addr: str, auth: str | None, timeout: float, metrics: Metrics
    ) -> None:
        self.argv = list(argv)
        self.addr = addr
        self.timeout = timeout
        self._env = dict(os.environ, SERF_RPC_ADDR=addr)
        if auth:
            self._env["SERF_RPC_AUTH"] = auth
        self._metrics = metrics

    @property
    def healthy(self) -> bool:
        """The agent's RPC port takes a connection. A TCP connect, not ``serf members``: a
        health probe must not start a process per request."""
        try:
            host, port = parse_addr(self.addr)
            with socket.create_connection((host, port), timeout=min(self.timeout, 2.0)):
                return True
        except (OSError, ValueError):
            return False

    def _run(self, command: str, args: list[str], wait: float) -> str:
        argv = [*self.argv, command, f"-rpc-addr={self.addr}", *args]
        started = time.monotonic()
        try:
            proc = subprocess.run(
                argv, env=self._env, capture_output=True, timeout=wait, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise Rejected("serf_unavailable", f"serf CLI failed: {exc}") from None
        self._metrics.observe_serf(command, time.monotonic() - started)
        err = proc.stderr.decode("utf-8", "replace").strip()
        if proc.returncode != 0:
            if "exceeds" in err and "limit" in err:
                raise Rejected("too_large", f"serf refused the {command}: {err}")
            if "connect" in err.lower() or "dial" in err.lower():
                raise Rejected("serf_unavailable", f"serf CLI: {err}")
            raise Rejected("serf_error", f"serf {command} exited {proc.returncode}: {err}")
        return proc.stdout.decode("utf-8", "replace")

    def event(self, msg: Message) -> None:
        if b"\0" in msg.payload:
            raise Rejected("malformed", "the serf CLI cannot send a NUL byte; use RPC")
        payload = msg.payload.decode("utf-8", "surrogateescape")
        args = [f"-coalesce={'true' if msg.coalesce else 'false'}", "--", msg.name, payload]
        # Go's flag parser stops at "--"; a name starting with "-" stays a name.
        self._run("event", args, self.timeout + 10)

    def query(self, msg: Message) -> dict[str, Any]:
        if b"\0" in msg.payload:
            raise Rejected("malformed", "the serf CLI cannot send a NUL byte; use RPC")
        args = ["-format=json"]
        if msg.timeout:
            args.append(f"-timeout={int(msg.timeout * 1000)}ms")
        args += [f"-node={n}" for n in msg.nodes]
        args += [f"-tag={k}={v}" for k, v in msg.tags.items()]
        args += ["--", msg.name, msg.payload.decode("utf-8", "surrogateescape")]
        out = self._run("query", args, (msg.timeout or 60) + self.timeout + 10)
        try:
            data = json.loads(out)
        except ValueError:
            raise Rejected("serf_error", "serf query printed no JSON") from None
        responses = {k: str(v).encode() for k, v in (data.get("Responses") or {}).items()}
        return reply_doc(msg, list(data.get("Acks") or []), responses, True)

    def close(self) -> None:
        pass
