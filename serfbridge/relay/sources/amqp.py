"""``type = "amqp"``: consume a RabbitMQ queue with pika; ack only after Serf accepted.

One thread owns the connection (pika's BlockingConnection is not thread-safe): it consumes
with ``basic.qos`` prefetch = ``prefetch`` and manual acknowledgements, and hands each message
to a pool of ``workers``. A worker runs the message through the shared gate into Serf and
passes the outcome back to the connection thread (``add_callback_threadsafe``), which
publishes the reply or dead letter and then acknowledges:

* accepted -> ``basic.ack`` (after a query's reply was published);
* refused for good (malformed, not allowed, too large, bad signature...) -> published with its
  reason to ``dead_letter`` and acked (the source consumes only while that queue exists), or
  without ``dead_letter`` ``basic.reject`` with requeue off, which the queue's own
  dead-letter exchange takes if it has one;
* Serf unavailable / rate limited -> retried in place with backoff, unacknowledged.

Queries follow the RabbitMQ RPC pattern: the reply goes to the default exchange with the
request's ``reply_to`` property as routing key (direct reply-to included) and its
``correlation_id``; without the property, to the message's ``reply_to`` field.

Credentials travel as message headers: ``token``, ``X-Serfbridge-Timestamp`` and
``X-Serfbridge-Signature`` (see :mod:`serfbridge.relay.auth`). A connection lost mid-message
leaves the unacknowledged messages to the broker, which delivers them again: into Serf at
least once. With ``event_ids`` an event's identity is its ``id`` field, else the AMQP
``message_id`` property.
"""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

from serfbridge import log
from serfbridge.delivery.backoff import Backoff
from serfbridge.errors import Rejected
from serfbridge.relay.auth import SIGNATURE_HEADER, TIMESTAMP_HEADER, Credentials
from serfbridge.relay.sources.base import RETRYABLE, Source, dead_letter_json
from serfbridge.sinks.amqp import describe as _text

TYPE_CHECKING = False
if TYPE_CHECKING:
    import pika

#: What the connection thread does once a worker is done: (ack or reject, publish or None),
#: where publish is (routing key on the default exchange, body, properties); None: nothing
#: (the source is stopping; the broker delivers the message again).
Outcome = tuple[str, tuple[str, bytes, Any] | None] | None
DRAIN_GRACE = 5.0  # seconds a stopping source waits for messages in progress, past timeout


def _header(headers: dict[str, Any], name: str) -> str | None:
    for key, value in headers.items():
        if key.lower() == name.lower() and value is not None:
            return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    return None


class DeadLetterQueueMissing(Exception):
    pass


class AmqpSource(Source):
    def start(self) -> None:
        import pika  # noqa: F401 - fail at start-up, not in the thread, if it is missing

        cfg = self.config
        self._stop = threading.Event()
        self.consuming = threading.Event()
        self._inflight = 0
        self.connected = False  # until consuming (serfbridge_relay_source_up)
        self.pool = ThreadPoolExecutor(cfg.workers, thread_name_prefix=f"source {self.name}")
        self.thread = threading.Thread(target=self._run, name=f"source {self.name}", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(timeout=self.config.timeout * 2 + DRAIN_GRACE + 10)
        self.pool.shutdown(wait=True, cancel_futures=True)

    # -- connection thread ---------------------------------------------------------------------

    def _run(self) -> None:
        from pika.adapters.utils.connection_workflow import AMQPConnectorException
        from pika.exceptions import AMQPError

        backoff = Backoff(0.5, self.relay.config.reconnect_max)
        while not self._stop.is_set():
            delay = 0.0
            try:
                self._session()
                backoff.reset()
            except DeadLetterQueueMissing as exc:
                delay = backoff.failed()
                log.error("amqp source waits", source=self.name, error=str(exc), retry_in=delay)
            except (AMQPError, AMQPConnectorException, OSError) as exc:
                delay = backoff.failed()
                log.warning("amqp unreachable", source=self.name, error=_text(exc), retry_in=delay)
            except Exception as exc:  # noqa: BLE001 - a bug must not silently end the source
                delay = backoff.failed()
                log.error("amqp source failed", source=self.name, error=repr(exc), retry_in=delay)
            if delay:
                self._stop.wait(delay)

    def _session(self) -> None:
        import pika

        from serfbridge.sinks.amqp import close_bounded, parameters

        cfg = self.config
        conn = pika.BlockingConnection(parameters(cfg.url, cfg.timeout, cfg.ca_certs))
        self._inflight = 0
        try:
            channel = conn.channel()
            channel.basic_qos(prefetch_count=cfg.prefetch)
            channel.queue_declare(cfg.queue, durable=True, passive=not cfg.declare)
            if cfg.dead_letter:
                self._check_dead_letter_queue(conn, cfg.dead_letter, declare=cfg.declare)
            tag = channel.basic_consume(cfg.queue, partial(self._on_message, conn))
            self.connected = True
            self.consuming.set()
            log.info("amqp source consuming", source=self.name, queue=cfg.queue)
            while not self._stop.is_set():
                conn.process_data_events(time_limit=0.2)
            channel.basic_cancel(tag)
            deadline = time.monotonic() + cfg.timeout + DRAIN_GRACE
            while self._inflight and time.monotonic() < deadline:
                conn.process_data_events(time_limit=0.1)
        finally:
            self.connected = False
            self.consuming.clear()
            close_bounded(conn)

    def _check_dead_letter_queue(
        self, conn: pika.BlockingConnection, queue: str, *, declare: bool
    ) -> None:
        """The broker drops, without a word, what the default exchange gets for a queue that
        does not exist, and a refused message is acked once its dead letter is published:
        consuming without the queue would lose every refused message. So the session waits
        (reconnecting with backoff) until the queue exists."""
        from pika.exceptions import ChannelClosedByBroker

        try:
            # Its own channel: a failed passive declare closes the channel it ran on.
            channel = conn.channel()
            channel.queue_declare(queue, durable=True, passive=not declare)
            channel.close()
        except ChannelClosedByBroker as exc:
            raise DeadLetterQueueMissing(
                f"dead_letter queue {queue!r} does not exist ({exc.reply_text}); declare it, "
                "or set declare = true: not consuming until it is there"
            ) from exc

    def _on_message(
        self, conn: pika.BlockingConnection, channel: Any, method: Any, props: Any, body: bytes
    ) -> None:
        self._inflight += 1
        try:
            self.pool.submit(self._work, conn, channel, method.delivery_tag, props, body)
        except RuntimeError:  # shutting down: left unacknowledged, delivered again
            self._inflight -= 1

    def _finish(self, channel: Any, delivery_tag: int, outcome: Outcome) -> None:
        """On the connection thread: publish what is owed, then ack or reject."""
        self._inflight -= 1
        if outcome is None:
            return
        verdict, publish = outcome
        if publish is not None:
            routing_key, payload, props = publish
            channel.basic_publish("", routing_key, payload, props)
        if verdict == "ack":
            channel.basic_ack(delivery_tag)
        else:
            channel.basic_reject(delivery_tag, requeue=False)

    # -- workers --------------------------------------------------------------------------------

    def _work(
        self, conn: pika.BlockingConnection, channel: Any, tag: int, props: Any, body: bytes
    ) -> None:
        try:
            outcome = self._outcome(props, body)
        except Exception as exc:  # noqa: BLE001 - a worker's exception would vanish in its future
            log.error("amqp message failed", source=self.name, error=repr(exc))
            outcome = None
        try:
            conn.add_callback_threadsafe(partial(self._finish, channel, tag, outcome))
        except Exception as exc:  # noqa: BLE001 - connection gone: the broker delivers it again
            log.warning("amqp connection lost before ack", source=self.name, error=_text(exc))

    def _outcome(self, props: Any, body: bytes) -> Outcome:
        headers = dict(props.headers or {})
        creds = Credentials(
            token=_header(headers, "token"),
            timestamp=_header(headers, TIMESTAMP_HEADER),
            signature=_header(headers, SIGNATURE_HEADER),
        )
        cfg = self.config
        origin = f"amqp\0{cfg.queue}\0{props.message_id}" if props.message_id else None
        retry = Backoff(0.2, 10.0)
        while True:
            try:
                msg, reply = self.gate.handle(body, creds, origin=origin)
                break
            except Rejected as exc:
                if exc.reason not in RETRYABLE:
                    return self._refused(exc, body)
                if self._stop.wait(retry.failed()):
                    return None
        if reply is None:
            return "ack", None
        target = props.reply_to or msg.reply_to
        if not target:
            log.warning("query reply has nowhere to go", source=self.name, name=reply["name"])
            return "ack", None
        return "ack", (target, json.dumps(reply).encode(), _reply_props(props.correlation_id))

    def _refused(self, exc: Rejected, body: bytes) -> Outcome:
        queue = self.config.dead_letter
        if not queue:
            return "reject", None
        doc = dead_letter_json(exc, body, self.config.dead_max_data)
        return "ack", (queue, doc, _reply_props(None, persistent=True))


def _reply_props(correlation_id: str | None, *, persistent: bool = False) -> Any:
    import pika

    return pika.BasicProperties(
        content_type="application/json",
        correlation_id=correlation_id,
        delivery_mode=pika.DeliveryMode.Persistent if persistent else None,
        app_id="serfbridge",
    )
