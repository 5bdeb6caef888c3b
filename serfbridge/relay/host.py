"""What the inbound sources and the stream feeder use of the running relay.

They are handed the relay as a ``RelayHost``, a Protocol, not the ``Relay`` class of
:mod:`serfbridge.relay.app`: the sources know nothing of the relay's lifecycle, and the
app is free to import every source without a cycle back.
"""

from __future__ import annotations

import time

from serfbridge.relay.auth import ReplayCache

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Protocol

    from serfbridge.config.models import Settings
    from serfbridge.config.relay import RelayConfig
    from serfbridge.relay.callers import CliCaller, RpcCaller
    from serfbridge.relay.metrics import Metrics

    class RelayHost(Protocol):
        """The relay as its sources see it."""

        @property
        def settings(self) -> Settings: ...
        @property
        def config(self) -> RelayConfig: ...
        @property
        def config_path(self) -> str | None: ...
        @property
        def metrics(self) -> Metrics: ...
        @property
        def dedupe(self) -> Dedupe: ...
        @property
        def serf(self) -> RpcCaller | CliCaller: ...


class Dedupe(ReplayCache):
    """Message ids seen in the last ``window`` seconds (per relay process); 0 turns it off."""

    def first_time(self, key: str) -> bool:
        return self.window <= 0 or self.check_and_add(key, time.monotonic())
