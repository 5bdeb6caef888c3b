"""The Redis stream sink and the example consumer against a real redis-server."""

from __future__ import annotations

import json
import sys
import threading
import time
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from pydantic import ValidationError
from redis import Redis
from redis.exceptions import ResponseError
from support.ports import LOOPBACK, free_port, wait_for
from support.proc import clean_environ, run_cli

from serfbridge.capture.event import parse_event
from serfbridge.errors import SinkRejected, SinkUnavailable
from serfbridge.sinks.redis import RedisSink, RedisSinkConfig

if TYPE_CHECKING:
    from collections.abc import Iterator

    from support.servers import RedisServer

WAIT = 10.0  # upper bound for anything that should happen at once
TIMEOUT = 1.0  # the sink's timeout in fault tests
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "redis_consumer.py"
ACL_USER = ("serf", "s3cret")


def make_event(environ: dict[str, str], stdin: bytes) -> tuple[dict[str, Any], bytes]:
    """An event as the deliverer holds it (read back from JSON) and its canonical body."""
    doc = parse_event({"SERF_SELF_NAME": "node-a", "SERF_SELF_ROLE": "web", **environ}, stdin, 0)
    body = json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()
    event: dict[str, Any] = json.loads(body)
    return event, body


def user_event(
    name: str = "deploy", ltime: int = 7, payload: bytes = b"v1.2\n"
) -> tuple[dict[str, Any], bytes]:
    environ = {"SERF_EVENT": "user", "SERF_USER_EVENT": name, "SERF_USER_LTIME": str(ltime)}
    return make_event(environ, payload)


def member_event() -> tuple[dict[str, Any], bytes]:
    return make_event({"SERF_EVENT": "member-join"}, b"node-b\t127.0.0.1\tdb\tdc=east\n")


def make_config(url: str, **overrides: Any) -> RedisSinkConfig:
    return RedisSinkConfig.model_validate({"type": "redis", "name": "rs", "url": url, **overrides})


@pytest.fixture
def admin(redis_server: RedisServer) -> Iterator[Redis]:
    """A plain redis-py client to set up and observe the server."""
    client = Redis.from_url(redis_server.url, protocol=2, socket_timeout=WAIT)
    try:
        yield client
    finally:
        client.close()


def entries(admin: Redis, key: str) -> list[tuple[bytes, dict[bytes, bytes]]]:
    """Every entry of stream `key` with byte ids and fields."""
    reply: Any = admin.xrange(key)
    return [(entry_id, dict(fields)) for entry_id, fields in reply]


def send_timed(sink: RedisSink, event: dict[str, Any], body: bytes) -> tuple[Exception, float]:
    """Send, expecting a SinkError; return it and how long it took."""
    start = time.monotonic()
    with pytest.raises((SinkUnavailable, SinkRejected)) as info:
        sink.send(event, body)
    return info.value, time.monotonic() - start


# -- delivery ---------------------------------------------------------------------------------


def test_event_lands_in_stream_with_its_fields(redis_server: RedisServer, admin: Redis) -> None:
    """One XADD per event with fields id, event, name and data, data being the body bytes."""
    event, body = user_event(payload="héllo ✓\n".encode())
    member, member_body = member_event()
    with RedisSink(make_config(redis_server.url)) as sink:
        sink.send(event, body)
        sink.send(member, member_body)
    (_, first), (_, second) = entries(admin, "serf:events")
    assert list(first) == [b"id", b"event", b"name", b"data"]
    assert first == {
        b"id": event["id"].encode(),
        b"event": b"user",
        b"name": b"deploy",
        b"data": body,
    }
    assert json.loads(first[b"data"]) == event
    assert event["payload"] == "héllo ✓"
    assert second[b"event"] == b"member-join"
    assert second[b"name"] == b""
    assert second[b"data"] == member_body


def test_stream_template_routes_by_event_type(redis_server: RedisServer, admin: Redis) -> None:
    """stream = "serf:{event}" puts each event type in its own stream."""
    with RedisSink(make_config(redis_server.url, stream="serf:{event}")) as sink:
        sink.send(*user_event("a", 1))
        sink.send(*user_event("b", 2))
        sink.send(*member_event())
    assert admin.xlen("serf:user") == 2
    assert admin.xlen("serf:member-join") == 1
    assert not admin.exists("serf:events")


def test_maxlen_trims_approximately(redis_server: RedisServer, admin: Redis) -> None:
    """MAXLEN ~ 100 keeps roughly the last 100 entries out of 1000."""
    with RedisSink(make_config(redis_server.url, maxlen=100)) as sink:
        for ltime in range(1000):
            sink.send(*user_event(ltime=ltime))
    length = admin.xlen("serf:events")
    assert 0 < length <= 100 + 100
    newest = entries(admin, "serf:events")[-1][1]
    assert json.loads(newest[b"data"])["ltime"] == 999


def test_maxlen_none_keeps_everything(redis_server: RedisServer, admin: Redis) -> None:
    """maxlen = none sends no MAXLEN: nothing is trimmed."""
    with RedisSink(make_config(redis_server.url, maxlen=None)) as sink:
        for ltime in range(300):
            sink.send(*user_event(ltime=ltime))
    assert admin.xlen("serf:events") == 300


def test_speaks_resp2(redis_server: RedisServer, admin: Redis) -> None:
    """The sink's connection uses RESP2, which every server and proxy understands."""
    with RedisSink(make_config(redis_server.url)) as sink:
        sink.send(*user_event())
        clients: Any = admin.client_list()
        used = [c for c in clients if c.get("cmd") == "xadd"]
        assert [c["resp"] for c in used] == ["2"], clients


def test_check_pings(redis_server: RedisServer) -> None:
    """check() succeeds against a live server and raises SinkUnavailable when it is down."""
    sink = RedisSink(make_config(redis_server.url, timeout=TIMEOUT))
    sink.check()
    redis_server.stop()
    with pytest.raises(SinkUnavailable, match="PING"):
        sink.check()


def test_close_never_raises(redis_server: RedisServer) -> None:
    """close() is safe before open, twice, and after the server went away."""
    sink = RedisSink(make_config(redis_server.url, timeout=TIMEOUT))
    sink.close()
    sink.send(*user_event())
    redis_server.stop()
    sink.close()
    sink.close()


# -- faults -----------------------------------------------------------------------------------


def test_stopped_server_is_unavailable_then_recovers(
    redis_server: RedisServer, admin: Redis
) -> None:
    """A stopped server gives SinkUnavailable within the timeout; once restarted, events land."""
    event, body = user_event()
    with RedisSink(make_config(redis_server.url, timeout=TIMEOUT)) as sink:
        redis_server.stop()
        error, elapsed = send_timed(sink, event, body)
        assert isinstance(error, SinkUnavailable)
        assert elapsed < TIMEOUT + 1.0
    redis_server.start()
    with RedisSink(make_config(redis_server.url, timeout=TIMEOUT)) as sink:
        sink.send(event, body)
    assert admin.xlen("serf:events") == 1


def test_idle_connection_closed_by_restart_is_replaced(
    redis_server: RedisServer, admin: Redis
) -> None:
    """An open sink whose pooled connection died with a server restart delivers at once."""
    with RedisSink(make_config(redis_server.url, timeout=TIMEOUT)) as sink:
        sink.send(*user_event(ltime=1))
        redis_server.stop()
        redis_server.start()
        sink.send(*user_event(ltime=2))
    assert admin.xlen("serf:events") == 1  # the restart dropped the first (no persistence)


@pytest.mark.parametrize("connected", [False, True], ids=["fresh", "connected"])
def test_paused_server_times_out(redis_server: RedisServer, *, connected: bool) -> None:
    """A SIGSTOPped server (port open, no answers) gives SinkUnavailable after ~timeout."""
    event, body = user_event()
    with closing(RedisSink(make_config(redis_server.url, timeout=TIMEOUT))) as sink:
        if connected:
            sink.send(event, body)
        redis_server.pause()
        try:
            error, elapsed = send_timed(sink, event, body)
        finally:
            redis_server.resume()
    assert isinstance(error, SinkUnavailable)
    assert "Timeout" in str(error)
    assert TIMEOUT * 0.8 <= elapsed < TIMEOUT + 1.5


def test_wrong_type_is_rejected(redis_server: RedisServer, admin: Redis) -> None:
    """A stream key holding a string: WRONGTYPE is SinkRejected (not retryable)."""
    admin.set("serf:events", "not a stream")
    with RedisSink(make_config(redis_server.url)) as sink:
        error, _ = send_timed(sink, *user_event())
    assert isinstance(error, SinkRejected)
    assert not error.retryable
    assert "WRONGTYPE" in str(error)
    assert isinstance(error.__cause__, ResponseError)


def _set_oom(admin: Redis) -> None:
    admin.config_set("maxmemory", "1")


def _set_readonly(admin: Redis) -> None:
    admin.replicaof(LOOPBACK, free_port())


def _set_masterdown(admin: Redis) -> None:
    admin.config_set("replica-read-only", "no")
    admin.config_set("replica-serve-stale-data", "no")
    admin.replicaof(LOOPBACK, free_port())


@pytest.mark.parametrize(
    ("setup", "code"),
    [(_set_oom, "OOM"), (_set_readonly, "READONLY"), (_set_masterdown, "MASTERDOWN")],
    ids=["oom", "readonly", "masterdown"],
)
def test_transient_replies_are_unavailable(
    redis_server: RedisServer, admin: Redis, setup: Any, code: str
) -> None:
    """OOM, READONLY and MASTERDOWN replies are retryable: SinkUnavailable naming the reply."""
    with RedisSink(make_config(redis_server.url)) as sink:
        setup(admin)
        error, _ = send_timed(sink, *user_event())
    assert isinstance(error, SinkUnavailable)
    assert code in str(error)


def test_busy_script_is_unavailable(redis_server: RedisServer, admin: Redis) -> None:
    """A server stuck in a Lua script answers BUSY: SinkUnavailable, not a rejection."""
    admin.config_set("busy-reply-threshold", "100")
    runner = Redis.from_url(redis_server.url, protocol=2, socket_timeout=WAIT * 3)
    errors: list[Exception] = []

    def spin() -> None:
        try:
            runner.eval("while true do end", 0)
        except ResponseError as exc:  # "Script killed by user"
            errors.append(exc)

    thread = threading.Thread(target=spin, name="lua-spin", daemon=True)
    with RedisSink(make_config(redis_server.url, timeout=WAIT)) as sink:

        def busy() -> Exception | None:
            try:
                sink.send(*user_event())
            except SinkUnavailable as exc:
                return exc
            return None  # the script had not started yet

        thread.start()
        try:
            error = wait_for(busy, timeout=WAIT, what="a BUSY reply")
        finally:
            killer = Redis.from_url(redis_server.url, protocol=2, socket_timeout=WAIT)
            try:
                wait_for(lambda: _script_kill(killer), timeout=WAIT, what="SCRIPT KILL")
            finally:
                killer.close()
            thread.join(WAIT)
            runner.close()
    assert "BUSY" in str(error)
    assert not thread.is_alive()
    assert errors


def _script_kill(client: Redis) -> bool:
    try:
        client.script_kill()
    except ResponseError:  # NOTBUSY: the script has not started yet
        return False
    return True


# -- ACL --------------------------------------------------------------------------------------


@pytest.fixture
def acl_user(admin: Redis) -> tuple[str, str]:
    """A user allowed only XADD and PING, only on keys serf:*."""
    user, password = ACL_USER
    admin.acl_setuser(
        user,
        enabled=True,
        passwords=[f"+{password}"],
        keys=["serf:*"],
        categories=["-@all"],
        commands=["+xadd", "+ping"],
    )
    return user, password


def test_acl_user_with_username_and_password(
    redis_server: RedisServer, admin: Redis, acl_user: tuple[str, str]
) -> None:
    """username/password authenticate a least-privilege ACL user that can XADD and PING."""
    user, password = acl_user
    with RedisSink(make_config(redis_server.url, username=user, password=password)) as sink:
        sink.send(*user_event())
    RedisSink(make_config(redis_server.url, username=user, password=password)).check()
    assert admin.xlen("serf:events") == 1


def test_acl_credentials_in_url(
    redis_server: RedisServer, admin: Redis, acl_user: tuple[str, str]
) -> None:
    """Credentials may be given in the URL instead; error messages never show them."""
    user, password = acl_user
    url = f"redis://{user}:{password}@{LOOPBACK}:{redis_server.port}/0"
    with RedisSink(make_config(url)) as sink:
        sink.send(*user_event())
        assert password not in sink.where
    assert admin.xlen("serf:events") == 1


def test_acl_wrong_password_is_unavailable(
    redis_server: RedisServer, acl_user: tuple[str, str]
) -> None:
    """A wrong password is retryable (the operator can fix it), and is reported as such."""
    user, _ = acl_user
    config = make_config(redis_server.url, username=user, password="not-it-7f3a")  # noqa: S106 - test value
    with closing(RedisSink(config)) as sink:
        error, _ = send_timed(sink, *user_event())
    assert isinstance(error, SinkUnavailable)
    assert "authentication failed" in str(error)
    assert "not-it-7f3a" not in str(error)


def test_missing_password_is_unavailable(redis_server: RedisServer, admin: Redis) -> None:
    """No credentials against a server that requires them: retryable, never a rejection."""
    admin.config_set("requirepass", "s3cret")
    with closing(RedisSink(make_config(redis_server.url))) as sink:
        error, _ = send_timed(sink, *user_event())
        assert isinstance(error, SinkUnavailable), error
        with pytest.raises(SinkUnavailable, match="PING"):
            sink.check()


@pytest.mark.parametrize(
    ("db", "commands", "refused"),
    [(1, ["+xadd", "+ping"], "select"), (0, ["+xadd"], "ping")],
    ids=["select", "ping"],
)
def test_acl_refusing_the_connection_is_unavailable(
    redis_server: RedisServer, admin: Redis, db: int, commands: list[str], refused: str
) -> None:
    """NOPERM while connecting (SELECT of a database, PING) is retryable: no event is at fault."""
    user, password = ACL_USER
    admin.acl_setuser(
        user,
        enabled=True,
        passwords=[f"+{password}"],
        keys=["serf:*"],
        categories=["-@all"],
        commands=commands,
    )
    url = f"redis://{LOOPBACK}:{redis_server.port}/{db}"
    config = make_config(url, username=user, password=password)
    with closing(RedisSink(config)) as sink:
        error, _ = send_timed(sink, *user_event())
    assert isinstance(error, SinkUnavailable), error
    assert "cannot use the connection" in str(error)
    assert refused in str(error)
    assert not admin.exists("serf:events")


def test_acl_forbidden_key_is_rejected(
    redis_server: RedisServer, acl_user: tuple[str, str]
) -> None:
    """NOPERM for a key outside the user's patterns is SinkRejected."""
    user, password = acl_user
    config = make_config(redis_server.url, username=user, password=password, stream="other")
    with RedisSink(config) as sink:
        error, _ = send_timed(sink, *user_event())
    assert isinstance(error, SinkRejected)
    assert "NOPERM" in str(error)


# -- config -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"stream": "serf:{nope}"}, "unknown template field"),
        ({"stream": ""}, "must not be empty"),
        ({"url": "http://localhost"}, "must start with"),
        ({"url": "redis://localhost:notaport"}, "invalid port"),
        ({"ssl_ca_certs": "/etc/ssl/ca.pem"}, "rediss://"),
        ({"url": "redis://u:p@localhost", "password": "p"}, "password is set both"),
        ({"url": "redis://u:p@localhost", "username": "u"}, "username is set both"),
        ({"maxlen": 0}, "greater than or equal to 1"),
    ],
)
def test_config_errors(overrides: dict[str, Any], message: str) -> None:
    """Invalid sink settings fail at config load with a message naming the problem."""
    with pytest.raises(ValidationError, match=message):
        make_config(overrides.pop("url", "redis://localhost:6379/0"), **overrides)


def test_config_accepts_tls_and_templates() -> None:
    """rediss:// with a CA file, and a template using known fields, are valid."""
    config = make_config("rediss://localhost:6380/0", ssl_ca_certs="/ca.pem", stream="s:{node}")
    assert config.stream == "s:{node}"
    assert make_config("unix:///run/redis.sock", maxlen=None).maxlen is None


def test_module_import_does_not_load_redis() -> None:
    """Loading the config model keeps redis-py off the import path."""
    code = "import sys, serfbridge.sinks.redis; print('redis' in sys.modules)"
    result = run_cli([sys.executable, "-c", code], env=clean_environ(), timeout=WAIT * 3)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


# -- the example consumer ---------------------------------------------------------------------


def run_consumer(url: str, *args: str) -> str:
    """Run examples/redis_consumer.py to completion and return its stdout."""
    argv = [sys.executable, str(EXAMPLE), "--url", url, "--stream", "serf:events"]
    result = run_cli([*argv, *args], env=clean_environ(), timeout=30.0)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_consumer_reads_acks_and_skips_duplicates(redis_server: RedisServer, admin: Redis) -> None:
    """The consumer prints each event once, skips a repeated id, and acknowledges all."""
    admin.xgroup_create("serf:events", "g", id="$", mkstream=True)  # the consumer gets BUSYGROUP
    first, second = user_event("a", 1), user_event("b", 2)
    with RedisSink(make_config(redis_server.url)) as sink:
        for event, body in (first, second, first):
            sink.send(event, body)
    out = run_consumer(redis_server.url, "--group", "g", "--consumer", "c1", "--count", "3")
    lines = out.splitlines()
    assert len(lines) == 3, out
    assert f'id={first[0]["id"]} event=user name="a" data=' in lines[0]
    assert json.loads(lines[0].split(" data=", 1)[1]) == first[0]
    assert f'id={second[0]["id"]} event=user name="b"' in lines[1]
    assert lines[2].endswith(f"id={first[0]['id']} duplicate, skipped")
    assert admin.xpending("serf:events", "g")["pending"] == 0


def test_consumer_rereads_own_pending_first(redis_server: RedisServer, admin: Redis) -> None:
    """Entries read but never acknowledged by a consumer are handled first when it restarts."""
    admin.xgroup_create("serf:events", "g", id="$", mkstream=True)
    crashed, later = user_event("crashed", 1), user_event("later", 2)
    with RedisSink(make_config(redis_server.url)) as sink:
        sink.send(*crashed)
        admin.xreadgroup("g", "c1", {"serf:events": ">"}, count=1)  # then "crashes"
        sink.send(*later)
    out = run_consumer(redis_server.url, "--group", "g", "--consumer", "c1", "--count", "1")
    assert f"id={crashed[0]['id']}" in out
    assert f"id={later[0]['id']}" not in out
    assert admin.xpending("serf:events", "g")["pending"] == 0
    unread: Any = admin.xreadgroup("g", "c9", {"serf:events": ">"}, count=10)
    assert [fields[b"id"] for _, fields in unread[0][1]] == [later[0]["id"].encode()]


def test_consumer_claims_from_dead_consumers(redis_server: RedisServer, admin: Redis) -> None:
    """Entries pending too long with another consumer are claimed, processed and acked."""
    admin.xgroup_create("serf:events", "g", id="$", mkstream=True)
    events = [user_event("x", 1), user_event("y", 2)]
    with RedisSink(make_config(redis_server.url)) as sink:
        for event, body in events:
            sink.send(event, body)
    admin.xreadgroup("g", "dead", {"serf:events": ">"}, count=10)
    out = run_consumer(
        redis_server.url,
        *("--group", "g", "--consumer", "c2", "--count", "2", "--claim-idle", "0"),
    )
    for event, _ in events:
        assert f"id={event['id']}" in out
    assert admin.xpending("serf:events", "g")["pending"] == 0


def test_consumer_acks_entries_trimmed_while_pending(
    redis_server: RedisServer, admin: Redis
) -> None:
    """A pending entry that MAXLEN trimmed away is reported and acknowledged, not retried."""
    admin.xgroup_create("serf:events", "g", id="$", mkstream=True)
    with RedisSink(make_config(redis_server.url)) as sink:
        sink.send(*user_event())
    admin.xreadgroup("g", "c1", {"serf:events": ">"}, count=1)
    admin.xtrim("serf:events", maxlen=0, approximate=False)
    out = run_consumer(redis_server.url, "--group", "g", "--consumer", "c1", "--count", "1")
    assert "trimmed from the stream" in out
    assert admin.xpending("serf:events", "g")["pending"] == 0
