"""Configuration of ``serfbridge relay``: the ``[relay]`` section and ``[[sources]]``.

Imported by :mod:`serfbridge.config.models`, so one file configures the handler and the relay.
Checks that depend on the whole picture (an unauthenticated listener on a non-loopback
address) run when the relay starts, so a relay setting never breaks the handler.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from serfbridge import signing
from serfbridge.sinks.natsconn import NatsConnection

# The relay's source types, each a module of serfbridge.relay.sources (source_class).
SOURCE_TYPES = ("http", "redis", "mqtt", "local", "nats", "amqp")
# Names NATS accepts for queue groups and durable consumers.
NAME_PATTERN = r"^[A-Za-z0-9_.-]+$"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SourceConfigBase(_Section):
    name: str = Field(default="", pattern=r"^[A-Za-z0-9_.-]*$", description="Default: the type.")
    allow_events: list[str] = Field(
        default_factory=list,
        description="User event names this source may raise; 'x*' is a prefix, '*' all. "
        "Default: none.",
    )
    allow_queries: list[str] = Field(
        default_factory=list, description="Query names this source may run (same syntax)."
    )
    token: SecretStr | None = Field(default=None, description="Bearer token (HTTP).")
    hmac_key: SecretStr | None = Field(default=None, description="HMAC-SHA256 signing key.")
    require_signature: bool = Field(
        default=False, description="Refuse messages without a valid signature, even with a token."
    )
    max_skew: float = Field(
        default=300.0, gt=0, le=86400, description="Seconds a signed timestamp may be off."
    )
    event_ids: bool = Field(
        default=False,
        description="Append a 22-byte id trailer to each event's payload (from the message's "
        "'id', or the Redis entry) so serfbridge handlers drop a relayed repeat; other "
        "handlers see the trailer.",
    )
    rate: float = Field(default=100.0, gt=0, description="Messages per second (token bucket).")
    burst: int = Field(default=200, ge=1, description="Token bucket size.")

    @model_validator(mode="after")
    def _default_name(self) -> SourceConfigBase:
        if not self.name:
            self.name = str(getattr(self, "type", "source"))
        if self.require_signature and self.hmac_key is None:
            raise ValueError("require_signature = true needs hmac_key")
        return self


class DeadLetterData(BaseModel):
    """What a broker source keeps of a refused message in its dead letter (one cap for all)."""

    dead_max_data: int = Field(
        default=4096,
        ge=0,
        description="Bytes of a refused message's data kept in its dead letter "
        "(data_bytes records its full length).",
    )


class HttpSourceConfig(SourceConfigBase):
    type: Literal["http"]
    listen: str = Field(default="127.0.0.1:8787", description="host:port or [ipv6]:port.")
    insecure: bool = Field(
        default=False,
        description="Allow a listener without token or hmac_key on a non-loopback address.",
    )
    tls_cert: str | None = Field(default=None, description="PEM certificate: serve HTTPS.")
    tls_key: str | None = Field(default=None, description="PEM private key for tls_cert.")
    max_body: int = Field(default=65536, ge=1024, le=16 * 1024 * 1024)
    threads: int = Field(default=8, ge=1, le=256, description="Requests handled at once.")
    max_connections: int = Field(
        default=1000, ge=1, le=100_000, description="Open connections; more wait to be accepted."
    )
    header_timeout: float = Field(
        default=10.0, gt=0, le=600, description="Seconds for a request's line and headers."
    )
    body_timeout: float = Field(default=30.0, gt=0, le=600, description="Seconds for its body.")
    signature: Literal["serfbridge", "standard-webhooks"] = Field(
        default="serfbridge",
        description="Signature headers: X-Serfbridge-*, or Standard Webhooks' webhook-id, "
        "webhook-timestamp, webhook-signature (hmac_key is then a whsec_ secret).",
    )

    @model_validator(mode="after")
    def _tls_pair(self) -> HttpSourceConfig:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("give both tls_cert and tls_key, or neither")
        return self

    @model_validator(mode="after")
    def _standard_key(self) -> HttpSourceConfig:
        if self.signature == "standard-webhooks":
            if self.hmac_key is None:
                raise ValueError('signature = "standard-webhooks" needs hmac_key')
            signing.standard_key(self.hmac_key.get_secret_value())
        return self


class RedisSourceConfig(SourceConfigBase, DeadLetterData):
    type: Literal["redis"]
    url: str = Field(description="redis://[user:pass@]host:port/db or rediss://...")
    stream: str = Field(min_length=1, description="The stream key to read.")
    group: str = Field(default="serfbridge", min_length=1, description="Consumer group.")
    consumer: str | None = Field(default=None, description="Default: <hostname>-<pid>.")
    dead_letter: str | None = Field(
        default=None, description="Stream for rejected entries; default <stream>:dead."
    )
    claim_idle: float = Field(
        default=30.0, gt=0, description="Claim entries pending this many seconds elsewhere."
    )
    batch: int = Field(default=20, ge=1, le=1000)
    workers: int = Field(default=16, ge=1, le=256, description="Entries handled at once.")
    dead_maxlen: int = Field(
        default=10_000, ge=1, description="Dead-letter stream length (MAXLEN ~)."
    )
    username: str | None = None
    password: SecretStr | None = None
    timeout: float = Field(default=5.0, gt=0, le=300)


class MqttSourceConfig(SourceConfigBase, DeadLetterData):
    type: Literal["mqtt"]
    url: str = Field(description="mqtt://host:port or mqtts://host:port")
    topic: str = Field(min_length=1, description="Subscription; $share/<group>/<topic> allowed.")
    qos: Literal[0, 1, 2] = 1
    client_id: str | None = None
    username: str | None = None
    password: SecretStr | None = None
    protocol: Literal["5", "3.1.1"] = "5"
    keepalive: int = Field(default=30, ge=5, le=3600)
    workers: int = Field(default=4, ge=1, le=64, description="Messages handled at once.")
    dead_letter: str | None = Field(
        default=None, description="Topic that gets refused messages with their reason."
    )

    @model_validator(mode="after")
    def _no_token(self) -> MqttSourceConfig:
        if self.token is not None:
            raise ValueError("MQTT messages carry no bearer token: use hmac_key (signatures)")
        return self


class LocalSourceConfig(SourceConfigBase):
    type: Literal["local"]
    path: str = Field(description="Unix socket path (Windows: a pipe name, \\\\.\\pipe\\name).")
    mode: int = Field(default=0o600, ge=0, le=0o777, description="Socket file permissions.")

    @model_validator(mode="after")
    def _no_network_auth(self) -> LocalSourceConfig:
        if self.token is not None or self.hmac_key is not None:
            raise ValueError(
                "a local source is protected by file permissions (mode), not token or hmac_key"
            )
        return self


class NatsSourceConfig(SourceConfigBase, NatsConnection, DeadLetterData):
    type: Literal["nats"]
    token: SecretStr | None = Field(
        default=None,
        description="NATS server login token (messages authenticate with hmac_key signatures).",
    )
    subject: str = Field(min_length=1, description="Subject to read; wildcards allowed.")
    queue: str = Field(
        default="serfbridge", pattern=NAME_PATTERN, description="Core NATS queue group."
    )
    stream: str | None = Field(
        default=None, description="JetStream stream: read it through the durable consumer."
    )
    durable: str = Field(
        default="serfbridge", pattern=NAME_PATTERN, description="Durable pull consumer name."
    )
    ack_wait: float = Field(
        default=60.0, gt=0, le=3600, description="Seconds JetStream waits for an ack."
    )
    batch: int = Field(default=10, ge=1, le=1000, description="Messages per JetStream fetch.")
    workers: int = Field(default=4, ge=1, le=64, description="Core messages handled at once.")
    dead_letter: str | None = Field(
        default=None, description="Subject that gets refused messages with their reason."
    )


class AmqpSourceConfig(SourceConfigBase, DeadLetterData):
    type: Literal["amqp"]
    url: str = Field(description="amqp://user:pass@host:5672/vhost or amqps://...")
    queue: str = Field(min_length=1, max_length=255, description="The queue to consume.")
    declare: bool = Field(
        default=True, description="Declare the queue (durable) if missing; false: it must exist."
    )
    prefetch: int = Field(default=10, ge=1, le=1000, description="Unacknowledged messages held.")
    workers: int = Field(default=4, ge=1, le=64, description="Messages handled at once.")
    dead_letter: str | None = Field(
        default=None,
        max_length=255,
        description="Queue that gets refused messages with their reason; default: rejected "
        "(the queue's own dead-letter exchange, if any, takes them).",
    )
    ca_certs: str | None = Field(default=None, description="CA bundle for amqps://.")
    timeout: float = Field(default=5.0, gt=0, le=300)

    @field_validator("url")
    @classmethod
    def _amqp_url(cls, value: str) -> str:
        from serfbridge.sinks.amqp import check_url

        return check_url(value)


SourceConfig = Annotated[
    HttpSourceConfig
    | RedisSourceConfig
    | MqttSourceConfig
    | LocalSourceConfig
    | NatsSourceConfig
    | AmqpSourceConfig,
    Field(discriminator="type"),
]


class RelayConfig(_Section):
    stream: bool = Field(
        default=False,
        description="Also subscribe to the agent's event stream and feed the sinks/responders.",
    )
    stream_filter: str = Field(default="*", description="Events to stream (handler syntax).")
    metrics_listen: str | None = Field(
        default=None, description="host:port serving GET /metrics (Prometheus text)."
    )
    user_event_size_limit: int = Field(
        default=512, ge=64, le=9216, description="The agent's user_event_size_limit."
    )
    query_size_limit: int = Field(default=1024, ge=128, description="The agent's query_size_limit.")
    serf_cli: list[str] | None = Field(
        default=None,
        min_length=1,
        description="argv of the serf CLI (e.g. ['serf']): call it instead of speaking RPC.",
    )
    dedupe_window: float = Field(
        default=600.0, ge=0, description="Seconds a message 'id' is remembered (0: off)."
    )
    reconnect_max: float = Field(default=10.0, gt=0, description="Backoff cap, seconds.")
