"""Issue 12 item 1, stream mode: a relay with `stream = true` routes with the edited config
from the next event on, and its deliverer delivers to the sink that was added."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from support.bridge import BridgeNode
from support.ports import wait_for
from support.relay import RelayProcess

if TYPE_CHECKING:
    from pathlib import Path

    from support.serf import SerfAgent
    from support.servers import HttpReceiver

pytestmark = pytest.mark.e2e

FAST = "[delivery]\nlinger = 60\nbackoff_initial = 0.05\nbackoff_max = 0.5\n"


def hook(name: str, url: str) -> str:
    return f'[[sinks]]\ntype = "webhook"\nname = "{name}"\nurl = "{url}"\ntimeout = 2\n'


def test_stream_relay_follows_a_config_edit(
    tmp_path: Path, agent: SerfAgent, http_receiver: HttpReceiver, serfbridge_cmd: list[str]
) -> None:
    url = http_receiver.url_for
    body = "[relay]\nstream = true\n" + hook("a", url("/a")) + FAST
    relay = RelayProcess(tmp_path / "relay", serfbridge_cmd, body, rpc_addr=agent.rpc_addr)
    relay_node = BridgeNode(tmp_path, "relay")
    relay_node.state = relay.state

    def got(name: str) -> list[str]:
        return sorted(
            r.path for r in http_receiver.requests if r.status == 200 and r.json()["name"] == name
        )

    try:
        with relay:
            relay.start()
            wait_for(lambda: "event stream subscribed" in relay.log_text(), 10, what="stream")
            agent.event("first", "1")
            wait_for(lambda: got("first") == ["/a"], 20, what="first at /a",
                     detail=relay.log_tail)  # fmt: skip
            relay.body = "[relay]\nstream = true\n" + hook("a", url("/a")) + hook("b", url("/b"))
            relay.body += FAST
            relay.prepare()  # rewrites the config file in place, as an operator would
            agent.event("second", "2")
            wait_for(lambda: got("second") == ["/a", "/b"], 20, what="second at /a and /b",
                     detail=lambda: relay.log_tail() + relay_node.log_tail())  # fmt: skip
    finally:
        relay_node.kill_deliverer()
