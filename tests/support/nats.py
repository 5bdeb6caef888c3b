"""A real `nats-server -js` on a free loopback port, and a small nats-py client to observe it."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from typing import TYPE_CHECKING, Any

from .ports import LOOPBACK, free_port
from .proc import ManagedProcess, require_binary

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable
    from pathlib import Path

    from nats.aio.client import Client


class NatsServer(ManagedProcess):
    """`nats-server` with JetStream, its store in ``workdir/store`` (kept across restarts).

    ``extra_config`` lines go into the server's config file (an ``authorization { ... }``
    block, say). ``stop()`` then ``start()`` reuses the port and the store, as a restart of a
    production server would.
    """

    def __init__(
        self, workdir: Path, port: int | None = None, extra_config: Iterable[str] = ()
    ) -> None:
        super().__init__("nats", workdir)
        self.binary = require_binary("nats-server", "nats-server")
        self.port = port or free_port()
        self.monitor_port = free_port()
        self.extra_config = list(extra_config)
        self.config_path = workdir / "nats.conf"

    @property
    def url(self) -> str:
        return f"nats://{LOOPBACK}:{self.port}"

    def prepare(self) -> None:
        store = self.workdir / "store"
        lines = [
            f"listen: {LOOPBACK}:{self.port}",
            f"http: {LOOPBACK}:{self.monitor_port}",
            f'jetstream {{ store_dir: "{store}" }}',
            *self.extra_config,
        ]
        self.config_path.write_text("\n".join(lines) + "\n")

    def argv(self) -> list[str]:
        return [self.binary, "-c", str(self.config_path)]

    def is_ready(self) -> bool:
        """Ready when the monitor says JetStream is up (the client port opens earlier)."""
        url = f"http://{LOOPBACK}:{self.monitor_port}/healthz?js-enabled-only=true"
        try:
            with urllib.request.urlopen(url, timeout=0.5) as reply:
                return bool(json.load(reply).get("status") == "ok")
        except (OSError, ValueError):
            return False

    # -- observing, with nats-py as an ordinary client ---------------------------------------

    def call(self, work: Callable[[Client], Awaitable[Any]], **options: Any) -> Any:
        """Connect, run ``work(client)``, close: one synchronous round for a test."""
        import nats

        async def run() -> Any:
            client = await nats.connect(
                self.url, connect_timeout=5, allow_reconnect=False, **options
            )
            try:
                return await work(client)
            finally:
                await client.close()

        return asyncio.run(run())

    def add_stream(self, name: str, subjects: list[str], **config: Any) -> None:
        async def work(client: Client) -> None:
            await client.jetstream().add_stream(name=name, subjects=subjects, **config)

        self.call(work)

    def stream_messages(self, name: str) -> list[tuple[dict[str, str], bytes]]:
        """Every message the stream holds: (headers, payload), in stream order."""

        async def work(client: Client) -> list[tuple[dict[str, str], bytes]]:
            js = client.jetstream()
            state = (await js.stream_info(name)).state
            out = []
            if state.messages:
                for seq in range(state.first_seq, state.last_seq + 1):
                    msg = await js.get_msg(name, seq)
                    out.append((dict(msg.headers or {}), msg.data or b""))
            return out

        result: list[tuple[dict[str, str], bytes]] = self.call(work)
        return result

    def event_docs(self, stream: str) -> list[dict[str, Any]]:
        """The event documents a nats sink (format json) put into ``stream``."""
        return [json.loads(data) for _, data in self.stream_messages(stream)]


class Collector:
    """A core NATS subscriber on its own loop thread: every message published on ``subject``
    (what senders sent, before any JetStream dedupe)."""

    def __init__(self, url: str, subject: str) -> None:
        import threading

        self.messages: list[tuple[str, dict[str, str], bytes]] = []
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self._subscribe(url, subject), self._loop)
        self._client: Client = future.result(10)

    async def _subscribe(self, url: str, subject: str) -> Client:
        import nats

        async def on_msg(msg: Any) -> None:
            with self._lock:
                self.messages.append((msg.subject, dict(msg.headers or {}), msg.data))

        client = await nats.connect(url, connect_timeout=5, max_reconnect_attempts=-1)
        await client.subscribe(subject, cb=on_msg)
        await client.flush()
        return client

    def docs(self) -> list[dict[str, Any]]:
        with self._lock:
            return [json.loads(data) for _, _, data in self.messages]

    def close(self) -> None:
        future = asyncio.run_coroutine_threadsafe(self._client.close(), self._loop)
        future.result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


# -- decentralized auth: an operator, one account, one user (.creds) ---------------------------


def _b64(data: bytes) -> str:
    import base64

    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _keypair(prefix: int) -> tuple[bytes, Any]:
    import os

    import nkeys  # type: ignore[import-untyped]

    seed = nkeys.encode_seed(os.urandom(32), prefix)
    return seed, nkeys.from_seed(bytearray(seed))


def _jwt(signer: Any, subject: str, name: str, claims: dict[str, Any]) -> str:
    """A NATS JWT (header, claims, ed25519 signature by ``signer``), as nsc writes them."""
    import base64
    import hashlib
    import time

    header = _b64(json.dumps({"typ": "JWT", "alg": "ed25519-nkey"}).encode())
    body: dict[str, Any] = {"jti": "", "iat": int(time.time()), "iss": signer.public_key.decode(),
                            "name": name, "sub": subject, "nats": claims}  # fmt: skip
    digest = hashlib.sha256(json.dumps(body).encode()).digest()
    body["jti"] = base64.b32encode(digest).decode().rstrip("=")
    payload = _b64(json.dumps(body).encode())
    signature = signer.sign(f"{header}.{payload}".encode())
    return f"{header}.{payload}.{_b64(signature)}"


def operator_mode(workdir: Path) -> tuple[list[str], Path, Path]:
    """Server config lines trusting a new operator with one account, the path of a valid
    user ``.creds`` file of that account, and one of an account the server does not know."""
    import nkeys

    _, operator = _keypair(nkeys.PREFIX_BYTE_OPERATOR)
    op_pub = operator.public_key.decode()
    op_jwt = _jwt(operator, op_pub, "operator", {"type": "operator", "version": 2})
    limits = {"subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
              "wildcards": True, "conn": -1, "leaf": -1}  # fmt: skip
    workdir.mkdir(parents=True, exist_ok=True)
    paths = []
    preload: dict[str, str] = {}
    for name in ("system", "known", "unknown"):
        _, account = _keypair(nkeys.PREFIX_BYTE_ACCOUNT)
        acc_pub = account.public_key.decode()
        acc_jwt = _jwt(operator, acc_pub, name, {"limits": limits, "type": "account",
                                                 "version": 2})  # fmt: skip
        if name != "unknown":
            preload[name] = f'{acc_pub}: "{acc_jwt}"'
        if name == "system":
            # JetStream needs a system account in operator mode.
            system = acc_pub
            continue
        seed, user = _keypair(nkeys.PREFIX_BYTE_USER)
        user_claims = {"pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1,
                       "type": "user", "version": 2}  # fmt: skip
        user_jwt = _jwt(account, user.public_key.decode(), "serfbridge", user_claims)
        path = workdir / f"{name}.creds"
        path.write_text(
            f"-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n"
            f"-----BEGIN USER NKEY SEED-----\n{seed.decode()}\n------END USER NKEY SEED------\n"
        )
        paths.append(path)
    lines = [f'operator: "{op_jwt}"', f"system_account: {system}", "resolver: MEMORY",
             f"resolver_preload: {{ {', '.join(preload.values())} }}"]  # fmt: skip
    return lines, paths[0], paths[1]
