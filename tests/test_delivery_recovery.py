"""Issue 12 item 6: after an outage, delivery resumes within seconds of the sink coming back,
at the default delivery settings, without hammering the dead sink."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import pytest
from support.bridge import BridgeNode
from support.handler import fire_user
from support.ports import wait_for

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from support.servers import HttpReceiver

pytestmark = pytest.mark.e2e

OUTAGE = 60.0


@pytest.fixture
def node(tmp_path: Path) -> Iterator[BridgeNode]:
    bridge = BridgeNode(tmp_path, "n1")
    yield bridge
    bridge.kill_deliverer()


def test_webhook_down_for_60_s_gets_its_first_post_within_10_s_of_coming_back(
    node: BridgeNode, http_receiver: HttpReceiver, serfbridge_cmd: list[str]
) -> None:
    """Default [delivery] settings. The backoff has grown past 30 s by the end of the outage;
    the probe of the receiver's address ends the wait once it listens again."""
    node.write_config(
        f'[[sinks]]\ntype = "webhook"\nname = "hook"\nurl = "{http_receiver.url}"\ntimeout = 2\n'
    )
    http_receiver.stop()
    fire_user(serfbridge_cmd, node, "during-outage", 1)
    time.sleep(OUTAGE)
    log = node.log_tail()
    attempts = log.count("delivery failed, will retry")
    # Exponential backoff, not a tight loop: 0.5 s doubling reaches 60 s in ~8 attempts.
    assert 1 <= attempts <= 12, log
    http_receiver.start()
    back = time.monotonic()
    wait_for(lambda: http_receiver.requests, timeout=10, what="the first POST after the outage",
             detail=node.log_tail)  # fmt: skip
    assert http_receiver.requests[0].time - back < 10.0
    assert http_receiver.requests[0].json()["name"] == "during-outage"
