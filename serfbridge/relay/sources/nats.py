"""``type = "nats"``: messages from a JetStream durable pull consumer or a core NATS queue group.

JetStream (``stream`` set): every relay with the same ``durable`` shares one durable pull
consumer with explicit acks, so each message goes to one relay and is acknowledged only
after Serf accepted it (or it was refused for good: dead letter, then ``term``). Serf
unavailable or rate limited -> ``nak`` with a growing delay, so JetStream hands it out again.
A relay that dies leaves its unacknowledged messages to the others after ``ack_wait``. Query
replies go to the message's ``reply_to`` subject: JetStream answers a request's reply inbox
itself (with its publish ack), so request/reply needs core NATS.

Core NATS (no ``stream``): a subscription in queue group ``queue``, so each message goes to
one relay of the group. Queries are answered on the message's reply subject, so
``nats req serf.in '{"type":"query",...}'`` gets the replies of every node; an event sent as
a request gets ``{"accepted": true}``, a refusal ``{"error": ..., "reason": ...}``. Core NATS
keeps nothing: a message that arrives while no relay listens is lost (at most once).

Signatures travel in the headers ``X-Serfbridge-Timestamp`` and ``X-Serfbridge-Signature``.
nats-py runs on the source's own loop thread (``natsconn.LoopThread``); Serf is called from
ordinary threads, never from the loop.
"""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from serfbridge import log
from serfbridge.delivery.backoff import Backoff
from serfbridge.errors import Rejected
from serfbridge.relay.auth import SIGNATURE_HEADER, TIMESTAMP_HEADER, Credentials
from serfbridge.relay.sources.base import RETRYABLE, Gate, Source, dead_letter_json
from serfbridge.sinks.natsconn import LoopThread, connect

TYPE_CHECKING = False
if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg

    from serfbridge.relay.host import RelayHost

_FETCH_WAIT = 1.0  # seconds a fetch waits for messages before the loop looks at stop


class NatsSource(Source):
    def __init__(self, config: Any, relay: RelayHost) -> None:
        super().__init__(config, relay)
        # ``token`` logs in to the NATS server here; messages carry no bearer token.
        self.gate = Gate(config.model_copy(update={"token": None}), relay)
        self.where = f"NATS server {config.display()}"
        self._stop = threading.Event()
        self.ready = threading.Event()  # subscribed / consumer bound (tests wait for it)
        self._client: Client | None = None
        self.connected = False  # serfbridge_relay_source_up: set by connects and nats-py
        # How long JetStream holds back a message Serf could not take, by its delivery count.
        self._redeliver = Backoff(0.5, 10.0)

    def start(self) -> None:
        self._loop = LoopThread(f"source {self.name} loop")
        self.pool = ThreadPoolExecutor(
            self.config.workers, thread_name_prefix=f"source {self.name}"
        )
        self.thread = threading.Thread(target=self._run, name=f"source {self.name}", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(timeout=self.config.timeout + 5)
        self.pool.shutdown(wait=True, cancel_futures=True)
        client = self._client
        if client is not None and not client.is_closed:
            try:
                self._loop.run(client.close(), 5.0)
            except Exception:  # noqa: BLE001, S110 - stopping never raises
                pass
        self._loop.stop()

    # -- connection --------------------------------------------------------------------------

    def _run(self) -> None:
        # A message to retry later backs off gently; a broken connection or a bug, further.
        retry, failing = Backoff(0.2, 10.0), Backoff(0.5, self.relay.config.reconnect_max)
        while not self._stop.is_set():
            delay = 0.0
            try:
                if self._client is None or self._client.is_closed:
                    self._connect()
                if self._cycle():
                    retry.reset()
                    failing.reset()
                else:
                    delay = retry.failed()
            except Exception as exc:  # noqa: BLE001 - the source keeps trying, never dies
                self.ready.clear()
                self.connected = False
                delay = failing.failed()
                log.warning(
                    "nats source failed", source=self.name, server=self.where,
                    error=f"{type(exc).__name__}: {exc}", retry_in=delay,
                )  # fmt: skip
                self._drop()
            if delay:
                self._stop.wait(delay)

    def _connect(self) -> None:
        cfg = self.config

        async def _quiet(_exc: Exception) -> None:
            """Errors surface through the calls that fail; no traceback on stderr."""

        async def _down() -> None:
            self.connected = False

        async def _back() -> None:
            self.connected = True

        self._client = self._loop.run(
            connect(
                cfg, f"serfbridge relay {self.name}", error_cb=_quiet,
                disconnected_cb=_down, reconnected_cb=_back,
                max_reconnect_attempts=-1, reconnect_time_wait=1,
            ),
            cfg.timeout + 1.0,
        )  # fmt: skip
        if cfg.stream is not None:
            self._bind_consumer()
        else:
            self._loop.run(
                self._client.subscribe(cfg.subject, queue=cfg.queue, cb=self._on_core),
                cfg.timeout,
            )
            self._loop.run(self._client.flush(max(1, round(cfg.timeout))), cfg.timeout + 1.0)
        self.ready.set()
        self.connected = True
        log.info(
            "nats source reading", source=self.name, subject=cfg.subject,
            stream=cfg.stream, group=cfg.durable if cfg.stream else cfg.queue,
        )  # fmt: skip

    def _bind_consumer(self) -> None:
        from nats.js.api import AckPolicy, ConsumerConfig

        cfg = self.config
        assert self._client is not None  # noqa: S101 - _connect just set it
        js = self._client.jetstream(timeout=cfg.timeout)
        consumer = ConsumerConfig(
            durable_name=cfg.durable,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=cfg.ack_wait,
            filter_subject=cfg.subject,
        )
        self._pull = self._loop.run(
            js.pull_subscribe(cfg.subject, durable=cfg.durable, stream=cfg.stream, config=consumer),
            cfg.timeout * 2,
        )

    def _drop(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                self._loop.run(client.close(), 2.0)
            except Exception:  # noqa: BLE001, S110 - a broken connection may not close cleanly
                pass

    # -- JetStream ---------------------------------------------------------------------------

    def _cycle(self) -> bool:
        """One fetch (JetStream) or a wait (core); False when something must back off."""
        if self.config.stream is None:
            self._stop.wait(_FETCH_WAIT)
            return True
        from nats.errors import TimeoutError as NatsTimeout

        try:
            msgs = self._loop.run(
                self._pull.fetch(self.config.batch, timeout=_FETCH_WAIT), _FETCH_WAIT + 5
            )
        except NatsTimeout:
            return True  # nothing new
        for i, msg in enumerate(msgs):
            if self._stop.is_set():
                return True  # not acked: redelivered
            if not self._jetstream_one(msg):
                # The rest of the batch goes back now rather than after ack_wait.
                for rest in msgs[i + 1 :]:
                    self._loop.run(rest.nak(), self.config.timeout)
                return False
        return True

    def _jetstream_one(self, msg: Msg) -> bool:
        cfg = self.config
        seq = msg.metadata.sequence.stream
        origin = f"nats\0{cfg.stream}\0{cfg.durable}\0{seq}"
        timeout = cfg.timeout
        try:
            parsed, reply = self.gate.handle(msg.data, _creds(msg), origin=origin)
        except Rejected as exc:
            if exc.reason in RETRYABLE:
                delay = self._redeliver.delay(msg.metadata.num_delivered or 1)
                self._loop.run(msg.nak(delay=delay), timeout)
                return False
            self._dead_letter(msg, exc)
            self._loop.run(msg.term(), timeout)
            return True
        if reply is not None and parsed.reply_to:
            self._publish(parsed.reply_to, json.dumps(reply).encode())
        self._loop.run(msg.ack_sync(timeout=timeout), timeout + 1.0)
        return True

    # -- core NATS ---------------------------------------------------------------------------

    async def _on_core(self, msg: Msg) -> None:
        # The subscription's dispatcher must not wait for a query's whole timeout.
        try:
            self.pool.submit(self._core_one, msg)
        except RuntimeError:  # shutting down
            pass

    def _core_one(self, msg: Msg) -> None:
        try:
            self._core_handle(msg)
        except Exception as exc:  # noqa: BLE001 - a worker's exception would vanish in its future
            log.error("nats message failed", source=self.name, subject=msg.subject, error=repr(exc))

    def _core_handle(self, msg: Msg) -> None:
        try:
            handled = self.gate.handle_patiently(msg.data, _creds(msg), self._stop)
        except Rejected as exc:
            self._refuse(msg, exc)
            return
        if handled is None:  # core NATS cannot redeliver: say so rather than drop it
            self._refuse(msg, Rejected("serf_unavailable", "the relay is stopping"))
            return
        parsed, reply = handled
        target = msg.reply or parsed.reply_to
        if target:
            answer = reply if reply is not None else {"accepted": True}
            self._publish(target, json.dumps(answer).encode())

    def _refuse(self, msg: Msg, exc: Rejected) -> None:
        self._dead_letter(msg, exc)
        if msg.reply:
            self._publish(msg.reply, json.dumps({"error": str(exc), "reason": exc.reason}))

    # -- shared ------------------------------------------------------------------------------

    def _publish(self, subject: str, data: bytes | str) -> None:
        client = self._client
        if client is None:
            log.warning("reply lost: not connected", source=self.name, subject=subject)
            return
        payload = data.encode() if isinstance(data, str) else data
        headers = {"Content-Type": "application/json"}
        self._loop.run(client.publish(subject, payload, headers=headers), self.config.timeout)

    def _dead_letter(self, msg: Msg, exc: Rejected) -> None:
        subject = self.config.dead_letter
        if not subject:
            return
        cap = self.config.dead_max_data
        self._publish(subject, dead_letter_json(exc, msg.data, cap, subject=msg.subject))


def _creds(msg: Msg) -> Credentials:
    headers = {k.lower(): v for k, v in (msg.headers or {}).items()}
    return Credentials(
        timestamp=headers.get(TIMESTAMP_HEADER.lower()),
        signature=headers.get(SIGNATURE_HEADER.lower()),
    )
