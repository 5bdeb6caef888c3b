"""Checks of config values that pydantic's types cannot express: addresses, URLs, ``~``,
and ``SERFBRIDGE_*`` variables that configure nothing."""

from __future__ import annotations

import os


def check_addr(value: str) -> str:
    """``host:port`` or ``[ipv6]:port``, checked at load so ``check`` names the key."""
    from serfbridge.serf.rpc import parse_addr

    parse_addr(value)
    return value


URL_SCHEMES = {
    "webhook": ("http", "https"),
    "redis": ("redis", "rediss", "unix"),
    "mqtt": ("mqtt", "mqtts"),
    "nats": ("nats", "tls"),
    "amqp": ("amqp", "amqps"),
}


def check_url(url: str, schemes: tuple[str, ...]) -> None:
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as exc:
        raise ValueError(f"invalid URL {url!r}: {exc}") from None
    if parts.scheme.lower() not in schemes:
        raise ValueError(f"URL {url!r} must start with " + " or ".join(f"{s}://" for s in schemes))
    if parts.scheme != "unix" and not parts.hostname:
        raise ValueError(f"URL {url!r} has no host")


def home(value: str | None) -> str | None:
    return None if value is None or value == "-" else os.path.expanduser(value)


# SERFBRIDGE_* variables that are not settings: where the config and its cache are.
PROCESS_VARIABLES = frozenset(
    {"SERFBRIDGE_CONFIG", "SERFBRIDGE_CACHE_DIR", "SERFBRIDGE_REQUIRE_ALL"}
)


def unknown_variables(names: set[str], environ: dict[str, str] | None = None) -> list[str]:
    """``SERFBRIDGE_*`` names that configure nothing (a typo like SERFBRIDGE_STAT_DIR);
    ``names`` are the settings' top-level fields."""
    env = os.environ if environ is None else environ
    fields = {name.upper() for name in names}
    unknown = []
    for name in sorted(env):
        if not name.startswith("SERFBRIDGE_") or name in PROCESS_VARIABLES:
            continue
        top = name.removeprefix("SERFBRIDGE_").split("__", 1)[0]
        if top not in fields:
            unknown.append(name)
    return unknown
