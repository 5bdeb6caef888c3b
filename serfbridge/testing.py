"""Unit-test your serfbridge configuration: which sinks and responders fire where.

One config file is deployed to every node, and ``when`` decides what runs where. This module
answers "on a node with this role and these tags, what would this event do?" without a Serf
agent, without sending anything and without running any program::

    from serfbridge.testing import Simulation

    sim = Simulation.from_config("deploy/serfbridge.toml")

    def test_deploy_runs_only_on_web_nodes() -> None:
        assert sim.route("user:deploy", "v2", role="web").fired == ["deploy-web", "chat"]
        assert sim.route("user:deploy", "v2", role="db").fired == ["chat"]

    def test_chat_message() -> None:
        result = sim.route("user:deploy", "v2", role="web", tags={"dc": "east"})
        assert result.sink("chat").message == "[serf] node1: user event deploy (ltime 1): v2"

    def test_health_query_answer() -> None:
        assert sim.route("query:health", role="db").answer == "node1: db ok"

The decisions are made by the same code the handler runs (``serfbridge.simulate``), on the
same event document the handler would build from Serf's ``SERF_*`` variables and stdin.
``serfbridge route`` is the command-line face of the same thing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from serfbridge.simulate import (
    ResponderDecision,
    RouteResult,
    SinkDecision,
    decide,
    make_event,
    with_node,
)

if TYPE_CHECKING:
    from serfbridge.config.models import Settings

__all__ = ["ResponderDecision", "RouteResult", "Simulation", "SinkDecision"]


class Simulation:
    """A validated configuration to route events through, on any imagined node."""

    def __init__(self, settings: Settings, source: str | None = None) -> None:
        from serfbridge.config.models import compile_settings

        self.settings = settings
        self.config: dict[str, Any] = dict(compile_settings(settings, source))

    @classmethod
    def from_config(cls, path: str | Any) -> Simulation:
        """Load and validate a TOML file (plus ``SERFBRIDGE_*`` variables, as the handler
        would). Raises ``serfbridge.errors.ConfigError`` with the handler's message."""
        from serfbridge.config.models import load_settings

        return cls(load_settings(str(path)), str(path))

    @classmethod
    def from_toml(cls, text: str) -> Simulation:
        """Validate a configuration given as TOML text (handy for small tests)."""
        import tomllib

        from pydantic import ValidationError

        from serfbridge.config.models import Settings, _format_errors
        from serfbridge.errors import ConfigError

        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"invalid TOML: {exc}") from None
        try:
            return cls(Settings(**data), None)
        except ValidationError as exc:
            raise ConfigError(_format_errors(exc, "TOML text")) from None

    def route(
        self,
        event: str | dict[str, Any],
        payload: str | bytes = b"",
        *,
        role: str | None = None,
        tags: dict[str, str] | None = None,
        node: str | None = None,
        members: list[str | dict[str, Any]] | None = None,
        ltime: int = 1,
    ) -> RouteResult:
        """Route one event on a node with this ``role`` and ``tags``.

        ``event`` is ``"user:NAME"``, ``"query:NAME"``, a membership event type
        (``"member-join"`` ...; give ``members`` as names, ``"name@addr"`` or dicts with
        name, addr, role, tags), or a recorded event document (a dict, e.g. one line of
        ``events.jsonl``; ``role``/``tags``/``node`` then replace its node's).
        """
        if isinstance(event, dict):
            doc = with_node(event, node, role, tags)
        else:
            doc = make_event(
                event,
                payload,
                node=node or "node1",
                role=role,
                tags=tags,
                members=members,
                ltime=ltime,
            )
        return decide(self.config, doc)
