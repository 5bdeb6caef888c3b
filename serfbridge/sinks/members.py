"""``type = "members"``: a live view of the cluster membership, kept from membership events.

Applied by the deliverer, like every network sink, not inline in the handler: keeping the view
exact means asking the agent over RPC (socket + msgpack) and optionally talking to Redis and
MQTT, none of which belongs on the capture path. The view is therefore as late as the
deliverer (tens of milliseconds) and follows the same retry rules.

On every membership event:

1. the new view is computed: with ``[serf] rpc_addr`` it is the agent's own ``members`` list
   (exact tags, gossip port, status; reaped members are gone), so it also heals after missed
   events; without it (or if the agent does not answer, e.g. this node is leaving) the event
   is applied to the previous view;
2. members whose addr, port, tags or status changed get ``changed_at`` and ``changed_by`` (the
   event's type, id and ltime; ``reconcile`` when the agent reported a change no event
   carried);
3. Redis (``HSET``/``HDEL`` of one hash field per member) and MQTT (one retained message per
   member at ``<prefix>/<name>``; an empty retained message deletes it when the member is
   reaped) get the changed and removed members;
4. the JSON file is replaced atomically (temp file, fsync, ``os.replace``).

Steps 3 and 4 compare with the file, which is written last: a failure in 3 leaves the file as
it was, so the retry publishes the same changes again.
"""

from __future__ import annotations

import json
import os
from typing import Any, Literal

from pydantic import Field, PrivateAttr, SecretStr, field_validator, model_validator

from serfbridge.errors import SinkError, SinkRejected, SinkUnavailable
from serfbridge.sinks.base import Sink, SinkConfigBase
from serfbridge.sinks.memberview import build_view, entry, from_event, read_view, write_view

MEMBER_EVENTS = "member-join,member-leave,member-failed,member-update,member-reap"


class MembersSinkConfig(SinkConfigBase):
    type: Literal["members"]
    events: str = Field(default=MEMBER_EVENTS, description="Only membership events matter.")
    path: str = Field(description="JSON file with the membership view; replaced atomically.")
    redis_url: str | None = Field(default=None, description="Also keep a Redis hash here.")
    redis_key: str = Field(default="serf:members", description="The hash; one field per member.")
    redis_password: SecretStr | None = None
    mqtt_url: str | None = Field(
        default=None, description="Also publish one retained message per member here."
    )
    mqtt_prefix: str = Field(default="serf/members", description="Topic: <prefix>/<name>.")
    mqtt_username: str | None = None
    mqtt_password: SecretStr | None = None
    timeout: float = Field(default=5.0, gt=0, le=300)
    # Set by Settings from [serf]: where to reconcile against the agent's members.
    _rpc_addr: str | None = PrivateAttr(default=None)
    _rpc_auth: str | None = PrivateAttr(default=None)
    _rpc_timeout: float = PrivateAttr(default=2.0)

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        from serfbridge.sinks.redis import RedisSinkConfig

        if value is not None:
            RedisSinkConfig._redis_url(value)
        return value

    @field_validator("mqtt_url")
    @classmethod
    def _mqtt_url(cls, value: str | None) -> str | None:
        from serfbridge.sinks.mqtt import MqttSinkConfig

        if value is not None:
            MqttSinkConfig._mqtt_url(value)
        return value

    @field_validator("mqtt_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        from serfbridge.sinks.mqtt import topic_problem

        problem = topic_problem(value + "/x")
        if problem or value.startswith("/") or value.endswith("/"):
            raise ValueError(f"mqtt_prefix {problem or 'must not start or end with /'}")
        return value

    @model_validator(mode="after")
    def _not_once(self) -> MembersSinkConfig:
        if self.once:
            raise ValueError("once = true makes no sense here: every node keeps its own view")
        return self

    def use_agent(self, addr: str | None, auth: str | None, timeout: float) -> None:
        self._rpc_addr, self._rpc_auth, self._rpc_timeout = addr, auth, max(timeout, 2.0)

    @property
    def rpc_addr(self) -> str | None:
        return self._rpc_addr


class MembersSink(Sink):
    config: MembersSinkConfig

    def __init__(self, config: MembersSinkConfig) -> None:
        super().__init__(config)
        self._redis: Any = None
        self._mqtt: Any = None

    def open(self) -> None:
        cfg = self.config
        if cfg.redis_url and self._redis is None:
            from serfbridge.sinks.redis import RedisSink, RedisSinkConfig

            self._redis = RedisSink(
                RedisSinkConfig(
                    type="redis",
                    name=f"{cfg.name}-redis",
                    url=cfg.redis_url,
                    password=cfg.redis_password,
                    timeout=cfg.timeout,
                )
            )
            self._redis.open()
        if cfg.mqtt_url and self._mqtt is None:
            from serfbridge.sinks.mqtt import MqttSink, MqttSinkConfig

            self._mqtt = MqttSink(
                MqttSinkConfig(
                    type="mqtt",
                    name=f"{cfg.name}-mqtt",
                    url=cfg.mqtt_url,
                    username=cfg.mqtt_username,
                    password=cfg.mqtt_password,
                    timeout=cfg.timeout,
                )
            )
            self._mqtt.open()

    def close(self) -> None:
        for sink in (self._redis, self._mqtt):
            if sink is not None:
                sink.close()
        self._redis = self._mqtt = None

    def agent_members(self) -> dict[str, dict[str, Any]] | None:
        """The agent's member list, or None without ``rpc_addr`` or when it cannot be asked."""
        cfg = self.config
        if not cfg.rpc_addr:
            return None
        from serfbridge import log
        from serfbridge.errors import SerfError
        from serfbridge.serf.rpc import SerfRPC

        try:
            with SerfRPC(cfg.rpc_addr, cfg._rpc_auth, timeout=cfg._rpc_timeout) as rpc:
                found = rpc.members()
        except (SerfError, OSError) as exc:
            log.warning("members: agent not reachable, applying the event", error=str(exc))
            return None
        return {m.name: entry(m.name, m.addr, m.port, m.tags, m.status) for m in found}

    def send(self, event: dict[str, Any], body: bytes) -> None:
        if not event.get("event", "").startswith("member-"):
            return
        path = self.config.path
        old = read_view(path)
        current = self.agent_members()
        source = "agent"
        if current is None:
            current, source = from_event(old, event), "events"
        doc, changed, removed = build_view(old, current, event, source)
        self._publish(doc["members"], changed, removed)
        data = json.dumps(doc, ensure_ascii=False, indent=1).encode("utf-8") + b"\n"
        try:
            write_view(path, data)
        except OSError as exc:
            raise SinkUnavailable(f"members: cannot write {path}: {exc}") from exc

    def _publish(self, members: dict[str, Any], changed: list[str], removed: list[str]) -> None:
        if not changed and not removed:
            return
        if self._redis is not None:
            self._to_redis(members, changed, removed)
        if self._mqtt is not None:
            prefix = self.config.mqtt_prefix
            for name in changed:
                payload = json.dumps(members[name], ensure_ascii=False).encode("utf-8")
                self._mqtt.publish(f"{prefix}/{name}", payload, retain=True)
            for name in removed:
                # An empty retained message clears the broker's retained copy (MQTT spec).
                self._mqtt.publish(f"{prefix}/{name}", b"", retain=True)

    def _to_redis(self, members: dict[str, Any], changed: list[str], removed: list[str]) -> None:
        from redis.exceptions import RedisError

        key = self.config.redis_key
        client = self._redis.connection()
        try:
            pipe = client.pipeline(transaction=True)
            if changed:
                pipe.hset(
                    key,
                    mapping={n: json.dumps(members[n], ensure_ascii=False) for n in changed},
                )
            if removed:
                pipe.hdel(key, *removed)
            pipe.execute()
        except RedisError as exc:
            error: SinkError = self._redis.error(exc, f"HSET/HDEL {key}")
            raise error from exc

    def check(self) -> None:
        """The file's directory is writable; Redis and MQTT (if set) accept a connection."""
        directory = os.path.dirname(os.path.abspath(self.config.path))
        if os.path.isdir(directory) and not os.access(directory, os.W_OK):
            raise SinkRejected(f"members: {directory} is not writable")
        try:
            self.open()
        finally:
            self.close()


__all__ = ["MembersSink", "MembersSinkConfig", "build_view", "from_event", "read_view"]
