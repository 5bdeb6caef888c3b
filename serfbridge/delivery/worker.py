"""One sink's delivery thread: the head entry is sent until it succeeds, then the next.

Per sink, the oldest waiting entry is the head: it is sent until it succeeds, is refused
(``SinkRejected``: dead letter at once), runs out of ``max_attempts`` or passes ``max_age``
(dead letter). Between attempts it waits the ``delivery.backoff`` schedule
(``serfbridge.delivery.backoff``) or what the receiver's ``Retry-After`` asked for; while it
waits, a cheap probe (``serfbridge.delivery.probe``) ends the wait as soon as the receiver is
back. A paced sink (chat) may take several entries as one digest message (``Sink.pace``,
``digest_size``, ``send_digest``); a failure counts against the head alone. What a send or a
batch delivered is finished at once (``Ledger.finish_many``: one progress append per batch);
the entries no other sink waits for are unlinked by the deliverer's reaper thread meanwhile.
Errors that are bugs (anything that is not a sink, network or disk error) are logged with
their traceback and dead-letter the entry after ``BUG_ATTEMPTS``, never retried forever. A
failure here, including the ``once`` decision, never reaches another sink's thread.
"""

from __future__ import annotations

import json
import os
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

from serfbridge import log
from serfbridge.capture import jsonenc
from serfbridge.capture.files import write_atomic
from serfbridge.capture.spool import entry_time, spool_dir
from serfbridge.config.models import DeliveryConfig
from serfbridge.delivery import once, probe
from serfbridge.delivery.backoff import Backoff
from serfbridge.delivery.ledger import Item, Ledger, dead_letter
from serfbridge.delivery.reaper import Reaper
from serfbridge.delivery.stats import Counters
from serfbridge.errors import SinkError
from serfbridge.sinks import sink_class

HEAD_STATE = ".head.json"
BUG_ATTEMPTS = 3
# How long a dead letter that cannot be written (disk full) waits before the next try.
DISK_WAIT = 1.0


def canonical(event: dict[str, Any]) -> bytes:
    """The same bytes the handler's file sink writes (one encoder): compact, UTF-8, key
    order kept."""
    return jsonenc.dumps(event).encode("utf-8")


@dataclass
class HeadState:
    name: str = ""
    attempts: int = 0
    next_at: float = 0.0
    last_error: str = ""
    seen_down: bool = False  # a probe failed since the last attempt

    @classmethod
    def load(cls, queue: str) -> HeadState:
        try:
            with open(os.path.join(queue, HEAD_STATE), encoding="utf-8") as fh:
                data = json.load(fh)
            return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})
        except (OSError, ValueError, TypeError, AttributeError):
            return cls()

    def save(self, queue: str) -> None:
        try:
            write_atomic(
                os.path.join(queue, HEAD_STATE), json.dumps(self.__dict__).encode(), durable=False
            )
        except OSError:
            pass  # kept in memory; only a restart would forget the attempt count


@dataclass
class SinkWorker:
    """Delivers one sink's entries in its own thread, so a hung sink delays only itself."""

    state_dir: str
    config: Any
    delivery: DeliveryConfig
    ledger: Ledger
    counters: Counters
    membership: once.Membership
    stop: threading.Event = field(default_factory=threading.Event)
    drain: bool = False  # flush: one attempt per entry, stop at the first failure
    wake_all: threading.Event = field(default_factory=threading.Event)
    delivered: int = 0
    failed: bool = False
    reopen: bool = False  # the config changed: close and reopen before the next send
    reaper: Reaper | None = None  # removes delivered entries; None: this thread does
    nudge: threading.Event = field(default_factory=threading.Event, repr=False)
    _sink: Any = field(default=None, repr=False)
    _state: HeadState = field(default_factory=HeadState, repr=False)
    _parts: tuple[str, list[dict[str, Any]], int] | None = field(default=None, repr=False)
    _next_probe: float = 0.0

    @property
    def name(self) -> str:
        return str(self.config.name)

    @property
    def queue(self) -> str:
        return spool_dir(self.state_dir, "queue", self.name)

    def __post_init__(self) -> None:
        self._state = HeadState.load(self.queue)
        self._addr = probe.address(self.config)

    def _close(self) -> None:
        if self._sink is not None:
            sink, self._sink = self._sink, None
            try:
                sink.close()
            except Exception as exc:  # noqa: BLE001 - close() must not take the thread down
                log.warning("sink close failed", sink=self.name, error=repr(exc))

    def _docs(self, item: Item, event: dict[str, Any]) -> list[dict[str, Any]]:
        """What to send for this entry: the ``once`` decision is made here, per sink."""
        if not getattr(self.config, "once", False) or item.queued:
            return [event]
        try:
            return self.membership.mine(event)
        except Exception as exc:  # noqa: BLE001 - the decision must never stop delivery
            log.warning("once: cannot decide, forwarding anyway", sink=self.name, error=repr(exc))
            return once.split(event)

    def _open(self) -> Any:
        if self.reopen:
            self._close()
            self.reopen = False
        if self._sink is None:
            sink = sink_class(self.config.type)(self.config)
            sink.open()
            self._sink = sink
        return self._sink

    def _send(self, item: Item, event: dict[str, Any]) -> list[Item]:
        """Send the head (or, for a paced sink, a digest starting at it); the items sent."""
        sink = self._open()
        if (delay := sink.pace()) > 0 and self.stop.wait(delay):
            return []
        waiting = self.ledger.count(self.name)
        size = max(1, int(sink.digest_size(waiting))) if waiting > 1 else 1
        if size > 1 and not getattr(self.config, "once", False):
            batch = self.ledger.first(self.name, size)
            covered = int(sink.send_digest([e for _, e in batch]))
            return [i for i, _ in batch[: max(1, min(len(batch), covered))]]
        if sink.max_batch > 1 and not getattr(self.config, "once", False):
            return self._send_batch(sink, self.ledger.first(self.name, sink.max_batch))
        if self._parts is None or self._parts[0] != item.name:
            self._parts = (item.name, self._docs(item, event), 0)
        name, docs, sent = self._parts
        for k in range(sent, len(docs)):
            self._open().send(docs[k], canonical(docs[k]))
            self._parts = (name, docs, k + 1)
        return [item]

    def _send_batch(self, sink: Any, batch: list[tuple[Item, dict[str, Any]]]) -> list[Item]:
        """Up to ``max_batch`` waiting entries in one ``send_batch``, head first; the items
        delivered. The head's failure raises, so it counts against the head like a single
        send; after the head a refused entry is dead-lettered alone, and the first
        unavailable one ends the batch as the new head's failed attempt (it and the rest
        stay queued, in order)."""
        outcomes = sink.send_batch([(event, canonical(event)) for _, event in batch])
        sent: list[Item] = []
        for k, ((item, event), error) in enumerate(zip(batch, outcomes, strict=False)):
            if error is None:
                sent.append(item)
            elif k == 0:
                raise error
            elif error.retryable:
                # The new head failed: it gets its own attempts and backoff, as if sent alone.
                self._state = HeadState(name=item.name)
                self._failed(item, event, error, bug=False)
                break
            else:
                self.counters.inc("failed", self.name)
                self.bury(item, event, f"rejected: {type(error).__name__}: {error}", 1)
        return sent

    def step(self) -> float | None:
        """Try the head once if it is due. None: something was done (look again at once);
        else how long to wait before the next look."""
        head = self.ledger.head(self.name)
        if head is None:
            return 1.0
        item, event = head
        state = self._state
        if state.name != item.name:
            state = self._state = HeadState(name=item.name)
        now = time.time()
        due = state.next_at <= now or self.drain or self.wake_all.is_set()
        if not due and not self._probe_says_back(now):
            return min(state.next_at - now, max(0.05, self._next_probe - now))
        try:
            sent = self._send(item, event)
        except (SinkError, OSError) as exc:
            self._failed(item, event, exc, bug=False)
            return None if not self.failed else 1.0
        except Exception as exc:  # noqa: BLE001 - a sink bug must not kill delivery
            log.error(
                "sink raised an unexpected error",
                sink=self.name,
                entry=item.name,
                error=repr(exc),
                traceback="".join(traceback.format_exception(exc)),
            )
            self._failed(item, event, exc, bug=True)
            return None if not self.failed else 1.0
        if not sent:
            return 1.0  # stopping while paced
        self._parts = None
        self.ledger.finish_many(self.name, sent, self.reaper.remove if self.reaper else None)
        self.counters.inc("delivered", self.name, len(sent))
        self.delivered += len(sent)
        log.debug("delivered", sink=self.name, entry=item.name, entries=len(sent))
        return None

    def _probe_says_back(self, now: float) -> bool:
        """While the head waits: True when the receiver was seen down and is reachable now."""
        if now < self._next_probe:
            return False
        self._next_probe = now + self.delivery.probe_interval
        if self._addr is None:
            return False  # file and command sinks: the backoff schedule alone
        up = probe.reachable(self._addr, timeout=min(1.0, self.delivery.probe_interval))
        if not up:
            self._state.seen_down = True
            return False
        return self._state.seen_down

    def _failed(self, item: Item, event: dict[str, Any], exc: Exception, *, bug: bool) -> None:
        self._close()
        state = self._state
        state.attempts += 1
        # Down now (connection refused, host unreachable) or up and refusing (5xx)? Only the
        # first lets a later successful probe cut the wait short; a 503's backoff holds.
        state.seen_down = self._addr is not None and not probe.reachable(
            self._addr, timeout=min(1.0, self.delivery.probe_interval)
        )
        state.last_error = f"{type(exc).__name__}: {exc}"
        self.counters.inc("failed", self.name)
        age = time.time() - entry_time(item.name)
        retryable = getattr(exc, "retryable", True)
        limit = min(self.delivery.max_attempts, BUG_ATTEMPTS) if bug else self.delivery.max_attempts
        if not retryable or state.attempts >= limit or age >= self.delivery.max_age:
            why = "rejected" if not retryable else "bug" if bug else "gave up"
            if self.bury(item, event, f"{why}: {state.last_error}", state.attempts):
                return
        backoff = Backoff(self.delivery.backoff_initial, self.delivery.backoff_max, jitter=True)
        delay = backoff.delay(state.attempts, getattr(exc, "retry_after", None))
        state.next_at = time.time() + delay
        self._next_probe = time.time() + min(self.delivery.probe_interval, delay)
        state.save(self.queue)
        log.warning(
            "delivery failed, will retry",
            sink=self.name,
            entry=item.name,
            attempt=state.attempts,
            retry_in=f"{delay:.2f}s",
            error=state.last_error,
        )
        if self.drain:
            self.failed = True

    def bury(self, item: Item, event: dict[str, Any], reason: str, attempts: int) -> bool:
        """Dead-letter ``item``; False if that failed (disk full: it stays the head)."""
        try:
            dead_letter(
                self.state_dir, self.name, item.name, event, reason=reason, attempts=attempts
            )
        except OSError as exc:
            log.error("cannot write a dead letter; will try again", sink=self.name, error=str(exc))
            return False
        self._parts = None
        self.ledger.finish(self.name, item)
        self.counters.inc("dead", self.name)
        return True

    def run(self) -> None:
        try:
            while not self.stop.is_set() and not self.failed:
                try:
                    wait = self.step()
                except Exception as exc:  # noqa: BLE001 - e.g. a full disk mid-bookkeeping
                    log.error(
                        "delivery step failed; retrying",
                        sink=self.name,
                        error=repr(exc),
                        traceback="".join(traceback.format_exception(exc)),
                    )
                    wait = DISK_WAIT
                if wait is None:
                    continue
                if self.drain and self.ledger.head(self.name) is None:
                    return
                self.nudge.wait(wait)
                self.nudge.clear()
        finally:
            self._close()
