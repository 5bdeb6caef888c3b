"""Configuration: a TOML file overridden by ``SERFBRIDGE_*`` environment variables.

This module imports pydantic (~0.4 s). The handler reaches it only when the compiled cache
(``serfbridge.capture.cache``) is missing or stale, i.e. once per config change.

Precedence, highest first: ``SERFBRIDGE_*`` environment (nested keys with ``__``, e.g.
``SERFBRIDGE_SERF__RPC_ADDR``; lists such as ``SERFBRIDGE_SINKS`` as JSON), then the file.
"""

from __future__ import annotations

import os
import tomllib
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from serfbridge.capture import filters, paths, render, when
from serfbridge.config import checks, secrets
from serfbridge.config.checks import URL_SCHEMES, check_addr, check_url, home
from serfbridge.config.relay import SOURCE_TYPES, RelayConfig, SourceConfig
from serfbridge.errors import ConfigError
from serfbridge.sinks import SINK_TYPES
from serfbridge.sinks.amqp import AmqpSinkConfig
from serfbridge.sinks.base import When
from serfbridge.sinks.command import CommandSinkConfig
from serfbridge.sinks.file import FileSinkConfig
from serfbridge.sinks.members import MembersSinkConfig
from serfbridge.sinks.mqtt import MqttSinkConfig
from serfbridge.sinks.nats import NatsSinkConfig
from serfbridge.sinks.redis import RedisSinkConfig
from serfbridge.sinks.webhook import WebhookSinkConfig

TYPE_CHECKING = False
if TYPE_CHECKING:
    from serfbridge._types import Compiled, ResponderSpec, SinkSpec

SinkConfig = Annotated[
    FileSinkConfig
    | WebhookSinkConfig
    | MqttSinkConfig
    | RedisSinkConfig
    | CommandSinkConfig
    | MembersSinkConfig
    | NatsSinkConfig
    | AmqpSinkConfig,
    Field(discriminator="type"),
]

DEFAULT_SINK_NAME = "default"
DEFAULT_EVENTS_FILE = "events.jsonl"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SerfConfig(_Section):
    rpc_addr: str | None = Field(
        default=None, description="The agent's -rpc-addr, e.g. 127.0.0.1:7373."
    )
    rpc_auth: SecretStr | None = Field(default=None, description="The agent's rpc_auth key.")
    exact_tags: bool = Field(
        default=False,
        description="Replace tags parsed from member lines by the agent's exact tags (RPC).",
    )
    rpc_timeout: float = Field(default=0.5, gt=0, le=10)

    @field_validator("rpc_addr")
    @classmethod
    def _valid_addr(cls, value: str | None) -> str | None:
        return None if value is None else check_addr(value)

    @model_validator(mode="after")
    def _exact_needs_rpc(self) -> SerfConfig:
        if self.exact_tags and not self.rpc_addr:
            raise ValueError("exact_tags = true needs rpc_addr")
        return self


class DeliveryConfig(_Section):
    max_attempts: int = Field(default=25, ge=1, description="Attempts before dead-lettering.")
    max_age: float = Field(
        default=86400.0, gt=0, description="Seconds an event may wait before dead-lettering."
    )
    backoff_initial: float = Field(default=0.5, gt=0)
    backoff_max: float = Field(default=300.0, gt=0)
    linger: float = Field(
        default=30.0, ge=0, description="Seconds the deliverer stays after the spool drains."
    )
    poll_interval: float = Field(
        default=0.05,
        gt=0,
        le=5,
        description="Seconds between looks at the spool where handlers cannot wake the "
        "deliverer (Windows); elsewhere they wake it at once and it looks every second.",
    )
    probe_interval: float = Field(
        default=2.0,
        gt=0,
        le=60,
        description="While a network sink's head entry waits out its backoff, probe the "
        "sink's address this often; once it answers again the entry is retried at once.",
    )


class ResponderConfig(_Section):
    query: str = Field(min_length=1, description="The query name this responder answers.")
    text: str | None = Field(
        default=None, description="A fixed answer; {node}, {name}, {payload}, {ltime} expand."
    )
    command: list[str] | None = Field(
        default=None, min_length=1, description="argv of a program whose stdout is the answer."
    )
    timeout: float = Field(default=2.5, gt=0, le=300)
    when: When = None

    @field_validator("text")
    @classmethod
    def _known_fields(cls, value: str | None) -> str | None:
        return None if value is None else render.validate(value)

    @model_validator(mode="after")
    def _one_answer(self) -> ResponderConfig:
        if (self.text is None) == (self.command is None):
            raise ValueError("give exactly one of text or command")
        return self


def _resolved_default_state_dir() -> str:
    return paths.default_state_dir()


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="SERFBRIDGE_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
    )

    state_dir: str = Field(default_factory=_resolved_default_state_dir)
    log_file: str | None = Field(
        default=None, description="Log file; '-' is stderr. Default <state_dir>/serfbridge.log."
    )
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    max_input_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    query_response_size_limit: int = Field(
        default=1024, ge=128, le=65536, description="The agent's query_response_size_limit."
    )
    spawn_deliverer: bool = True
    deadline: float = Field(
        default=2.0,
        gt=0,
        le=300,
        description="Seconds one handler run may take: Serf waits for it before the next event. "
        "The exact_tags lookup and query responders get what is left of it.",
    )
    serf: SerfConfig = Field(default_factory=SerfConfig)
    delivery: DeliveryConfig = Field(default_factory=DeliveryConfig)
    sinks: list[SinkConfig] | None = None
    responders: list[ResponderConfig] = Field(default_factory=list)
    relay: RelayConfig = Field(default_factory=RelayConfig)
    sources: list[SourceConfig] = Field(default_factory=list)
    # What secrets.resolve read (files, variables): the compiled cache re-checks it.
    _inputs: dict[str, Any] = PrivateAttr(default_factory=dict)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The file's contents arrive as init kwargs; the environment overrides them.
        return (env_settings, init_settings)

    @field_validator("sinks")
    @classmethod
    def _unique_names(cls, sinks: list[Any] | None) -> list[Any] | None:
        seen: set[str] = set()
        for sink in sinks or []:
            if sink.name in seen:
                raise ValueError(f"two sinks are named {sink.name!r}")
            seen.add(sink.name)
        return sinks

    @model_validator(mode="after")
    def _members_use_agent(self) -> Settings:
        """Members sinks reconcile against the agent named in [serf]."""
        auth = self.serf.rpc_auth.get_secret_value() if self.serf.rpc_auth else None
        for sink in self.sinks or []:
            if isinstance(sink, MembersSinkConfig):
                sink.use_agent(self.serf.rpc_addr, auth, self.serf.rpc_timeout)
        return self

    @field_validator("sources")
    @classmethod
    def _unique_source_names(cls, sources: list[Any]) -> list[Any]:
        seen: set[str] = set()
        for source in sources:
            if source.name in seen:
                raise ValueError(f"two sources are named {source.name!r}; set name = ...")
            seen.add(source.name)
        return sources

    @model_validator(mode="after")
    def _addresses_andhome(self) -> Settings:
        """Addresses and URLs checked at load (so ``check`` names the key); ``~`` expanded in
        every path the config holds."""
        problems = []
        groups: tuple[tuple[str, list[Any]], ...] = (
            ("sinks", list(self.sinks or [])),
            ("sources", list(self.sources)),
        )
        for kind, items in groups:
            for i, item in enumerate(items):
                url = getattr(item, "url", None)
                schemes = URL_SCHEMES.get(str(getattr(item, "type", "")))
                try:
                    if isinstance(url, str) and schemes:
                        check_url(url, schemes)
                    if isinstance(getattr(item, "listen", None), str):
                        check_addr(item.listen)
                except ValueError as exc:
                    key = "url" if isinstance(url, str) else "listen"
                    problems.append(f"{kind}[{i}] ({item.type}).{key}: {exc}")
                for attr in ("path", "tls_cert", "tls_key", "cwd"):
                    value = getattr(item, attr, None)
                    if isinstance(value, str) and value.startswith("~"):
                        setattr(item, attr, home(value))
        if self.relay.metrics_listen is not None:
            try:
                check_addr(self.relay.metrics_listen)
            except ValueError as exc:
                problems.append(f"relay.metrics_listen: {exc}")
        if problems:
            raise ValueError("; ".join(problems))
        self.log_file = home(self.log_file) if self.log_file != "-" else self.log_file
        return self

    @property
    def state_path(self) -> str:
        """``state_dir`` with ``~`` expanded, made absolute: what every component uses."""
        return paths.absolute(self.state_dir)

    def effective_sinks(self) -> list[Any]:
        """No ``sinks`` key at all means the embedded default: every event to one JSON file."""
        if self.sinks is not None:
            return list(self.sinks)
        path = os.path.join(self.state_path, DEFAULT_EVENTS_FILE)
        return [FileSinkConfig(type="file", name=DEFAULT_SINK_NAME, path=path)]


_UNION_TAGS = frozenset(SINK_TYPES) | frozenset(SOURCE_TYPES)


def _location(loc: tuple[int | str, ...]) -> str:
    """``("sinks", 0, "webhook", "url")`` -> ``sinks[0] (webhook).url``."""
    out = ""
    parts = list(loc)
    while parts:
        part = parts.pop(0)
        if isinstance(part, int):
            out += f"[{part}]"
            if parts and out.startswith(("sinks", "sources")) and parts[0] in _UNION_TAGS:
                out += f" ({parts.pop(0)})"
        else:
            out += ("." if out else "") + part
    return out or "(top level)"


def _format_errors(exc: ValidationError, source: str) -> str:
    lines = []
    for err in exc.errors(include_url=False):
        loc = _location(err["loc"])
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        msg = msg.removeprefix("Value error, ")
        lines.append(f"  {loc}: {msg}")
    return f"invalid configuration in {source}:\n" + "\n".join(lines)


def read_toml(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"invalid TOML in {path}: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None


def unknown_variables(environ: dict[str, str] | None = None) -> list[str]:
    """``SERFBRIDGE_*`` names that configure nothing (a typo like SERFBRIDGE_STAT_DIR)."""
    return checks.unknown_variables(set(Settings.model_fields), environ)


def load_for(explicit: str | None) -> Settings:
    """The settings for ``--config``/``SERFBRIDGE_CONFIG``/the default path, as every
    command and the deliverer load them: a missing file is an error only when named."""
    path = paths.config_path(explicit)
    if not os.path.exists(path):
        if paths.config_named(explicit):
            raise ConfigError(f"config file {path} does not exist")
        return load_settings(None)
    return load_settings(path)


def load_settings(path: str | None) -> Settings:
    """Validate the file at ``path`` (None: no file) plus the environment."""
    data = read_toml(path) if path else {}
    source = f"{path} (or SERFBRIDGE_* environment)" if path else "SERFBRIDGE_* environment"
    try:
        data, inputs = secrets.resolve(data, path)
    except ConfigError as exc:
        raise ConfigError(f"invalid configuration in {path}:\n  {exc}") from None
    try:
        settings = Settings(**data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, source)) from None
    settings._inputs = inputs
    return settings


def _reveal(value: Any) -> Any:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, dict):
        return {k: _reveal(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_reveal(v) for v in value]
    return value


def placeholders(settings: Settings) -> list[str]:
    """Values that still look like an unexpanded placeholder (``serfbridge check``)."""
    return secrets.placeholders(_reveal(settings.model_dump()))


def compile_settings(settings: Settings, source: str | None) -> Compiled:
    """The plain-data form the handler reads from the marshal cache."""
    state_dir = settings.state_path
    sinks: list[SinkSpec] = []
    for sink in settings.effective_sinks():
        spec: Any = _reveal(sink.model_dump())
        spec["filter"] = filters.parse(sink.events)
        spec["when"] = when.compile_when(sink.when)
        sinks.append(spec)
    responders: list[ResponderSpec] = [
        {
            "query": r.query,
            "text": r.text,
            "command": r.command,
            "timeout": r.timeout,
            "when": when.compile_when(r.when),
        }
        for r in settings.responders
    ]
    return {
        "source": source,
        "state_dir": state_dir,
        "log_file": settings.log_file or os.path.join(state_dir, "serfbridge.log"),
        "log_level": settings.log_level,
        "max_input_bytes": settings.max_input_bytes,
        "query_response_size_limit": settings.query_response_size_limit,
        "spawn_deliverer": settings.spawn_deliverer,
        "deadline": settings.deadline,
        "serf": _reveal(settings.serf.model_dump()),
        "sinks": sinks,
        "responders": responders,
        "raw": _reveal(settings.model_dump()),
        "inputs": settings._inputs,  # type: ignore[typeddict-item]
    }
