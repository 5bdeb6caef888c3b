"""serfbridge.capture.serf_sizes against a real agent: the exact boundary Serf accepts.

The two copies this module replaced disagreed on one detail: whether Go's msgpack writes a
32-255 byte string or []byte with the 2-byte str8 header or the 3-byte str16 one. Serf
settles it: at user_event_size_limit = 100 with the name "deploy" it takes a 64-byte payload
and refuses 65, which is the 3-byte header (str8 would let 65 through)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from serfbridge.capture import respond, serf_sizes
from serfbridge.errors import SerfCommandError
from serfbridge.relay import messages
from serfbridge.serf.rpc import SerfRPC

if TYPE_CHECKING:
    from support.serf import SerfClusterFactory

LIMIT = 100


def _accepted(rpc: SerfRPC, name: str, size: int) -> bool:
    try:
        rpc.event(name, b"x" * size, coalesce=False)
    except SerfCommandError as exc:
        if "exceeds" not in str(exc):
            raise
        return False
    return True


@pytest.mark.parametrize("name", ["deploy", "a-name-of-exactly-thirty-three-b"])
def test_event_boundary_is_the_one_serf_enforces(
    serf_cluster: SerfClusterFactory, name: str
) -> None:
    """For payloads across the 32-byte header step, the agent accepts exactly the sizes the
    module says fit (at the agent's real, small Lamport time)."""
    agent = serf_cluster(1, config={"user_event_size_limit": LIMIT})[0]
    with SerfRPC(agent.rpc_addr) as rpc:
        verdicts = {n: _accepted(rpc, name, n) for n in range(20, 80)}
    # Fewer than 128 events sent: the event clock fits a positive fixint (1 byte).
    expected = {n: serf_sizes.event_size(name, n, ltime=1) <= LIMIT for n in verdicts}
    assert verdicts == expected
    largest = max(n for n, ok in verdicts.items() if ok)
    if name == "deploy":
        assert largest == 64  # str8 would say 65
    # The relay counts the Lamport time at 5 bytes: 4 stricter, never looser.
    relay_largest = max(n for n in range(100) if messages.event_size(name, b"x" * n) <= LIMIT)
    assert relay_largest == largest - 4


def test_both_users_count_with_the_one_module() -> None:
    """The relay and the responder share the raw-header rule: no 8-bit length form."""
    assert serf_sizes.raw_size(31) == 32
    assert serf_sizes.raw_size(32) == 35
    assert serf_sizes.raw_size(255) == 258
    assert respond.payload_budget(1024, "n2", 1) == serf_sizes.response_payload_budget(
        1024, "n2", 1
    )
