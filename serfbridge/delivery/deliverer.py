"""The deliverer: drains the spool to the sinks, in order per sink, with retries.

One deliverer runs per state directory (``spool/deliver.lock``). Handlers start it when they
spool an event and find the lock free; it stays while there is work, lingers
``delivery.linger`` seconds after the spool drains, and exits. ``serfbridge flush`` runs the
same loop in the foreground.

Per sink, the oldest entry is the head: it is sent until it succeeds, is rejected
(``SinkRejected``: dead letter at once), runs out of ``max_attempts`` or passes ``max_age``
(dead letter). Between attempts it waits ``backoff_initial * 2**(n-1)`` seconds, capped at
``backoff_max``, with full jitter on the upper half, or what the receiver's ``Retry-After``
asked for. Later entries wait behind the head, so each sink sees events in capture order.
A paced sink (chat) may take several entries as one digest message (``Sink.pace``,
``digest_size``, ``send_digest``); a failure counts against the head alone, as for one.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from serfbridge import log
from serfbridge.capture import files
from serfbridge.capture.files import fsync_dir, write_atomic
from serfbridge.capture.spool import entry_time, spool_dir
from serfbridge.config.models import DeliveryConfig, Settings
from serfbridge.delivery import batch, once
from serfbridge.delivery.backoff import Backoff
from serfbridge.errors import SinkError
from serfbridge.sinks import sink_class

HEAD_STATE = ".head.json"
WAKE_FILE = "wake"


def _json_files(directory: str) -> list[str]:
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    return sorted(n for n in names if n.endswith(".json") and not n.startswith("."))


@dataclass
class HeadState:
    name: str = ""
    attempts: int = 0
    next_at: float = 0.0
    last_error: str = ""

    @classmethod
    def load(cls, queue: str) -> HeadState:
        try:
            with open(os.path.join(queue, HEAD_STATE), encoding="utf-8") as fh:
                return cls(**json.load(fh))
        except (OSError, ValueError, TypeError):
            return cls()

    def save(self, queue: str) -> None:
        data = json.dumps(self.__dict__).encode()
        write_atomic(os.path.join(queue, HEAD_STATE), data, durable=False)


def dead_letter(state_dir: str, sink: str, src: str, reason: str, attempts: int) -> None:
    target = spool_dir(state_dir, "dead", sink)
    os.makedirs(target, exist_ok=True)
    name = os.path.basename(src)
    meta = {"sink": sink, "reason": reason, "attempts": attempts, "dead_at": time.time()}
    write_atomic(os.path.join(target, name[: -len(".json")] + ".reason"), json.dumps(meta).encode())
    os.replace(src, os.path.join(target, name))
    log.error("event dead-lettered", sink=sink, entry=name, attempts=attempts, reason=reason)


@dataclass
class SinkWorker:
    """Delivers one sink's queue in its own thread, so a hung sink delays only itself."""

    state_dir: str
    config: Any
    delivery: DeliveryConfig
    stop: threading.Event
    drain: bool = False  # flush: one attempt per entry, stop at the first failure
    delivered: int = 0
    failed: bool = False
    _sink: Any = field(default=None, repr=False)
    # Set by fan_out when it queues an entry here, so the worker starts at once instead of
    # at its next poll (which only catches what a wake-up could miss).
    nudge: threading.Event = field(default_factory=threading.Event, repr=False)

    @property
    def backoff(self) -> Backoff:
        return Backoff(self.delivery.backoff_initial, self.delivery.backoff_max, jitter=True)

    @property
    def queue(self) -> str:
        return spool_dir(self.state_dir, "queue", self.config.name)

    def _close(self) -> None:
        if self._sink is not None:
            self._sink.close()
            self._sink = None

    def _batch(self, names: list[str]) -> tuple[list[str], bool] | None:
        """The entries the next send takes once the sink's rate allows, and whether they are
        one digest message (``digest_size``) or a batch (``max_batch``); None on stop."""
        if self._sink is None:
            sink = sink_class(self.config.type)(self.config)
            sink.open()
            self._sink = sink
        if (delay := self._sink.pace()) > 0:
            if self.stop.wait(delay):
                return None
            names = _json_files(self.queue)  # what arrived meanwhile can join a digest
        digest = max(1, int(self._sink.digest_size(len(names))))
        if digest > 1:
            return names[:digest], True
        return names[: max(1, self._sink.max_batch)], False

    def step(self, wake: bool) -> bool:
        """Try the head entry and those the sink takes with it once, if due; False when
        there is nothing to do now. Outcomes are applied in queue order: an entry is removed
        only once it and every earlier one were delivered or dead-lettered."""
        names = _json_files(self.queue)
        if not names:
            return False
        head = names[0]
        path = os.path.join(self.queue, head)
        state = HeadState.load(self.queue)
        if state.name != head:
            state = HeadState(name=head)
        if state.next_at > time.time() and not wake and not self.drain:
            return False
        try:
            chosen = self._batch(names)
            if chosen is None:
                return False
            names, digest = chosen
            paths = [os.path.join(self.queue, name) for name in names]
            outcomes = batch.send(self._sink, paths, digest)
        except Exception as exc:  # noqa: BLE001 - a sink bug must not kill delivery
            if not isinstance(exc, SinkError | OSError | ValueError | KeyError):
                log.error("sink raised an unexpected error", sink=self.config.name, error=repr(exc))
            self._failed(path, state, exc)
            return not self.failed
        for k, outcome in enumerate(outcomes):
            if outcome is not None:
                self._failed(paths[k], state if k == 0 else HeadState(name=names[k]), outcome)
                if outcome.retryable:
                    return not self.failed
                continue
            os.unlink(paths[k])
            self.delivered += 1
            log.debug("delivered", sink=self.config.name, entry=names[k])
        return bool(outcomes)

    def _failed(self, path: str, state: HeadState, exc: Exception) -> None:
        self._close()
        state.attempts += 1
        state.last_error = f"{type(exc).__name__}: {exc}"
        age = time.time() - entry_time(state.name)
        retryable = getattr(exc, "retryable", True) and not isinstance(exc, ValueError | KeyError)
        if (
            not retryable
            or state.attempts >= self.delivery.max_attempts
            or age >= self.delivery.max_age
        ):
            why = "rejected" if not retryable else "gave up"
            dead_letter(
                self.state_dir, self.config.name, path, f"{why}: {state.last_error}", state.attempts
            )
            return
        delay = self.backoff.delay(state.attempts, getattr(exc, "retry_after", None))
        state.next_at = time.time() + delay
        state.save(self.queue)
        log.warning(
            "delivery failed, will retry",
            sink=self.config.name,
            entry=state.name,
            attempt=state.attempts,
            retry_in=f"{delay:.2f}s",
            error=state.last_error,
        )
        if self.drain:
            self.failed = True

    def run(self, wake_seen: threading.Event) -> None:
        try:
            while not self.stop.is_set() and not self.failed:
                if not self.step(wake_seen.is_set()):
                    if self.drain and not _json_files(self.queue):
                        return
                    self.nudge.wait(self.delivery.poll_interval)
                    self.nudge.clear()
        finally:
            self._close()


class Deliverer:
    def __init__(self, settings: Settings, *, drain: bool = False) -> None:
        self.state_dir = settings.state_path
        self.settings = settings
        self.sinks = {s.name: s for s in settings.effective_sinks()}
        self.drain = drain
        self.stop = threading.Event()
        self.wake = threading.Event()
        self.workers = [
            SinkWorker(self.state_dir, cfg, settings.delivery, self.stop, drain=drain)
            for cfg in self.sinks.values()
        ]
        self._membership = once.Membership(settings.serf)

    def fan_out(self) -> int:
        """Move captured entries into the queue of every sink they are for."""
        incoming = spool_dir(self.state_dir, "incoming")
        moved = 0
        for name in _json_files(incoming):
            src = os.path.join(incoming, name)
            try:
                with open(src, "rb") as fh:
                    entry = json.loads(fh.read())
                targets, event = list(entry["sinks"]), entry["event"]
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.error("unreadable spool entry moved to rejected/", entry=name, error=str(exc))
                os.makedirs(spool_dir(self.state_dir, "rejected"), exist_ok=True)
                os.replace(src, spool_dir(self.state_dir, "rejected", name))
                continue
            touched: set[str] = set()
            for sink_name in targets:
                queue = spool_dir(self.state_dir, "queue", sink_name)
                os.makedirs(queue, exist_ok=True)
                touched.add(queue)
                cfg = self.sinks.get(sink_name)
                if cfg is None:
                    write_atomic(os.path.join(queue, name), json.dumps({"event": event}).encode())
                    dead_letter(
                        self.state_dir,
                        sink_name,
                        os.path.join(queue, name),
                        "sink is no longer configured",
                        0,
                    )
                    continue
                docs = self._membership.mine(event) if cfg.once else [event]
                for k, doc in enumerate(docs):
                    part = name if len(docs) == 1 and doc is event else f"{name[:-5]}-{k:03d}.json"
                    write_atomic(
                        os.path.join(queue, part),
                        json.dumps({"event": doc}).encode(),
                        durable=False,
                    )
            for queue in touched:
                fsync_dir(queue)
            for worker in self.workers:
                if worker.queue in touched:
                    worker.nudge.set()
            os.unlink(src)
            moved += 1
        return moved

    def pending(self) -> bool:
        if _json_files(spool_dir(self.state_dir, "incoming")):
            return True
        return any(_json_files(w.queue) for w in self.workers)

    def _check_wake(self, look: bool) -> None:
        path = spool_dir(self.state_dir, WAKE_FILE)
        if os.path.exists(path):
            self.wake.set()
            try:
                os.unlink(path)
            except OSError:
                pass
        elif look and self.wake.is_set() and not self.pending():
            self.wake.clear()

    def run(self) -> None:
        """Deliver until the spool has been empty for ``linger`` seconds (or, draining, until
        every sink is empty or has failed once)."""
        threads = [
            threading.Thread(target=w.run, args=(self.wake,), daemon=True) for w in self.workers
        ]
        if self.drain:
            self.wake.set()
        self.fan_out()
        for t in threads:
            t.start()
        idle_since = looked = time.monotonic()
        linger = self.settings.delivery.linger
        try:
            while True:
                # pending() lists every queue: at every poll, most of a long drain's CPU.
                # Twice a second and before lingering ends; a drain ends by its workers.
                now = time.monotonic()
                look = not self.drain and (now - looked >= 0.5 or now - idle_since >= linger)
                looked = now if look else looked
                self._check_wake(look)
                if self.fan_out() or (look and self.pending()):
                    idle_since = time.monotonic()
                if self.drain and not any(t.is_alive() for t in threads):
                    break
                if not self.drain and time.monotonic() - idle_since >= linger:
                    break
                time.sleep(self.settings.delivery.poll_interval)
        finally:
            self.stop.set()
            for w in self.workers:
                w.nudge.set()
            for t in threads:
                # A send is bounded by its sink's own timeout; this only guards against a bug.
                t.join(timeout=30.0)


def acquire(state_dir: str, timeout: float = 0.0) -> int | None:
    """The deliverer lock's descriptor, or None if another deliverer holds it."""
    os.makedirs(spool_dir(state_dir), exist_ok=True)
    fd = files.open_lockfile(spool_dir(state_dir, "deliver.lock"))
    if files.lock(fd, timeout) if timeout else files.try_lock(fd):
        return fd
    os.close(fd)
    return None


def release(fd: int) -> None:
    files.unlock(fd)
    os.close(fd)


def serve(settings: Settings) -> None:
    """The background deliverer's main loop, including the hand-over at exit.

    A handler spools first and checks the lock second; the deliverer releases the lock first
    and checks the spool second. Whatever the interleaving, one of them sees the other's
    work, so no entry waits for the next event.
    """
    state_dir = settings.state_path
    while True:
        fd = acquire(state_dir)
        if fd is None:
            log.debug("another deliverer is running")
            return
        try:
            # For operators and tests: the deliverer is detached from the agent (setsid).
            write_atomic(
                os.path.join(spool_dir(state_dir), "deliver.pid"),
                b"%d\n" % os.getpid(),
                durable=False,
            )
            log.info("deliverer started", state_dir=state_dir)
            Deliverer(settings).run()
        finally:
            release(fd)
        if not Deliverer(settings).pending():
            log.info("deliverer idle, exiting")
            return


def flush(settings: Settings, timeout: float) -> int:
    """Deliver everything pending now; returns how many entries are still queued."""
    state_dir = settings.state_path
    deadline = time.monotonic() + timeout
    fd = acquire(state_dir)
    if fd is None:
        # A deliverer is running: ask it to retry now and wait for the spool to drain.
        write_atomic(os.path.join(spool_dir(state_dir), WAKE_FILE), b"", durable=False)
        probe = Deliverer(settings)
        while probe.pending() and time.monotonic() < deadline:
            time.sleep(0.1)
            fd = acquire(state_dir)
            if fd is not None:
                break
        if fd is None:
            return count_pending(settings)
    try:
        Deliverer(settings, drain=True).run()
    finally:
        release(fd)
    return count_pending(settings)


def count_pending(settings: Settings) -> int:
    state_dir = settings.state_path
    total = len(_json_files(spool_dir(state_dir, "incoming")))
    queue_root = spool_dir(state_dir, "queue")
    if os.path.isdir(queue_root):
        for sink in os.listdir(queue_root):
            total += len(_json_files(os.path.join(queue_root, sink)))
    return total
