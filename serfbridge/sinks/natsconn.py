"""What the NATS sink and the NATS relay source share: connection settings and the loop thread.

nats-py is asyncio-only, while the deliverer and the relay's sources are threads that block.
``LoopThread`` runs one event loop in a daemon thread and lets a synchronous caller run a
coroutine on it with a deadline (``run``), so nothing here leaks asyncio to its callers.

nats-py is imported only inside functions: this module is loaded with the configuration,
which the handler reads on its start-up path.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Any, Self, TypeVar

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Coroutine

    from nats.aio.client import Client

SCHEMES = ("nats://", "tls://")
T = TypeVar("T")


class NatsConnection(BaseModel):
    """Connection keys of ``type = "nats"`` sinks and sources (exactly one way to log in)."""

    url: str = Field(description="nats://host:4222 or tls://host:4222; several: comma-separated")
    user: str | None = None
    password: SecretStr | None = None
    token: SecretStr | None = None
    nkey_seed: str | None = Field(default=None, description="File holding an NKey seed (SU...).")
    creds: str | None = Field(default=None, description="A .creds file (user JWT + NKey seed).")
    tls_ca: str | None = Field(default=None, description="CA bundle (PEM) for tls:// servers.")
    timeout: float = Field(default=5.0, gt=0, le=300)

    @field_validator("url")
    @classmethod
    def _nats_url(cls, value: str) -> str:
        from urllib.parse import urlsplit

        for server in value.split(","):
            one = server.strip()
            if not one.startswith(SCHEMES):
                raise ValueError("url must start with nats:// or tls://")
            parts = urlsplit(one)
            if parts.username is not None or parts.password is not None:
                raise ValueError("put credentials in user/password or token, not in the url")
            if not parts.hostname:
                raise ValueError("url has no host: nats://host:4222")
            try:
                parts.port  # noqa: B018 - parsing the port is the check
            except ValueError as exc:
                raise ValueError(f"url has an invalid port: {exc}") from None
            if parts.path not in ("", "/") or parts.query or parts.fragment:
                raise ValueError("url takes no path, query or fragment: nats://host:4222")
        return value

    @model_validator(mode="after")
    def _one_login(self) -> Self:
        ways = [
            name
            for name, given in (
                ("user", self.user is not None),
                ("token", self.token is not None),
                ("nkey_seed", self.nkey_seed is not None),
                ("creds", self.creds is not None),
            )
            if given
        ]
        if len(ways) > 1:
            raise ValueError(f"give one way to log in, not {' and '.join(ways)}")
        if self.password is not None and self.user is None:
            raise ValueError("password needs user")
        if self.tls_ca is not None and not all(
            u.strip().startswith("tls://") for u in self.url.split(",")
        ):
            raise ValueError("tls_ca needs a tls:// url")
        return self

    def display(self) -> str:
        """The first server, for messages and logs."""
        return self.url.split(",")[0].strip()


async def connect(cfg: NatsConnection, name: str, **options: Any) -> Client:
    """One nats-py connection as ``cfg`` says; ``options`` add or override nats.connect's."""
    from nats.aio.client import Client

    kwargs: dict[str, Any] = {
        "servers": [u.strip() for u in cfg.url.split(",")],
        "name": name,
        "connect_timeout": cfg.timeout,
    }
    if cfg.user is not None:
        kwargs["user"] = cfg.user
        if cfg.password is not None:
            kwargs["password"] = cfg.password.get_secret_value()
    if cfg.token is not None:
        kwargs["token"] = cfg.token.get_secret_value()
    if cfg.nkey_seed is not None:
        kwargs["nkeys_seed"] = cfg.nkey_seed
    if cfg.creds is not None:
        kwargs["user_credentials"] = cfg.creds
    if cfg.tls_ca is not None:
        import ssl

        kwargs["tls"] = ssl.create_default_context(cafile=cfg.tls_ca)
    kwargs.update(options)
    client = Client()
    try:
        await client.connect(**kwargs)
    except BaseException:
        # nats-py leaves the socket of a refused login open; close it here, on its loop.
        transport = getattr(client, "_transport", None)
        if transport is not None:
            transport.close()
        with contextlib.suppress(Exception):
            await client.close()
        raise
    return client


class LoopThread:
    """An asyncio event loop in its own daemon thread, driven from synchronous code."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        """Run ``coro`` on the loop; TimeoutError (and the coroutine cancelled) after
        ``timeout`` seconds, so a silent server cannot hold the caller."""
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()
            raise

    def stop(self) -> None:
        """Cancel what still runs, stop the loop and join its thread; never raises."""

        async def _cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        if self.loop.is_closed():
            return
        try:
            self.run(_cancel_all(), 2.0)
        except Exception:  # noqa: BLE001, S110 - stopping must not raise
            pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5.0)
        if not self._thread.is_alive():
            self.loop.close()
