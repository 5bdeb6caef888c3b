"""The deliverer: drains the spool to the sinks, in order per sink, following the config.

One deliverer runs per state directory (``spool/deliver.lock``). Handlers start it when they
spool an event and no deliverer answers their wake-up (``serfbridge.delivery.wake``); it stays
while there is work, lingers ``delivery.linger`` seconds after the spool drains, and exits.
``serfbridge flush`` runs the same loop in the foreground.

It follows the config the handler uses: before each fan-out it compares the compiled config's
fingerprint (``serfbridge.capture.cache.fingerprint``) and reloads when it changed, starting,
stopping or reopening sink workers. An entry for a sink the config does not name triggers a
reload first; only a sink the reloaded config still lacks is dead-lettered, with the reason
``sink removed from config`` (``spool retry`` brings the events back once it is re-added).
Each sink has its own thread (``serfbridge.delivery.worker``); nothing one sink does stops
another.
"""

from __future__ import annotations

import os
import threading
import time
import traceback
from typing import Any

from serfbridge import log
from serfbridge.capture import cache, files
from serfbridge.capture.files import write_atomic
from serfbridge.capture.spool import spool_dir
from serfbridge.config.models import Settings, load_for
from serfbridge.delivery import entries, once, stats
from serfbridge.delivery.entries import valid_sink_name
from serfbridge.delivery.ledger import Ledger, dead_letter
from serfbridge.delivery.reaper import Reaper
from serfbridge.delivery.wake import RESCAN, WakeSocket
from serfbridge.delivery.worker import SinkWorker, canonical
from serfbridge.errors import ConfigError

WAKE_FILE = "wake"
REMOVED = "sink removed from config"
TEXTFILE_EVERY = 5.0


class Deliverer:
    def __init__(
        self, settings: Settings, *, drain: bool = False, config: str | None = None
    ) -> None:
        self.state_dir = settings.state_path
        self.settings = settings
        self.config_arg = config
        self.drain = drain
        self.stop = threading.Event()
        self.wake_all = threading.Event()
        self.ledger = Ledger(self.state_dir)
        self.counters = stats.Counters(self.state_dir)
        self.workers: dict[str, SinkWorker] = {}
        self.threads: dict[str, threading.Thread] = {}
        self.reaper: Reaper | None = None  # while running
        self._fingerprint = self._current_fingerprint()
        self._membership = once.Membership(settings.serf)

    # -- config ------------------------------------------------------------------------
    def _current_fingerprint(self) -> str | None:
        try:
            return cache.fingerprint(self.config_arg, getattr(self.settings, "_inputs", None))
        except ConfigError:
            return None

    def reload(self, *, force: bool = False) -> bool:
        """Reload if the config changed (or ``force``); False when it cannot be read."""
        current = self._current_fingerprint()
        if not force and current == self._fingerprint:
            return True
        try:
            settings = load_for(self.config_arg)
        except ConfigError as exc:
            # Keep delivering with what we have; nothing is dead-lettered on a broken config.
            log.error("config changed but is invalid; keeping the previous one", error=str(exc))
            self._fingerprint = current
            return False
        if current != self._fingerprint:
            log.info("config changed, reloading sinks")
        self.settings = settings
        self._fingerprint = self._current_fingerprint()  # with the new load's secret inputs
        self._membership = once.Membership(settings.serf)
        self._apply()
        return True

    def _apply(self) -> None:
        wanted = {s.name: s for s in self.settings.effective_sinks()}
        for name in [n for n in self.workers if n not in wanted]:
            self._stop_worker(name)
        for name, cfg in wanted.items():
            worker = self.workers.get(name)
            if worker is None:
                self._start_worker(cfg)
            elif cfg.model_dump() != worker.config.model_dump():
                worker.config, worker.reopen = cfg, True
                worker.__post_init__()
                worker.nudge.set()
            else:
                worker.delivery = self.settings.delivery
            if worker is not None:
                worker.membership = self._membership
        self._bury_orphans()

    def _start_worker(self, cfg: Any) -> None:
        worker = SinkWorker(
            self.state_dir,
            cfg,
            self.settings.delivery,
            self.ledger,
            self.counters,
            self._membership,
            drain=self.drain,
            wake_all=self.wake_all,
            reaper=self.reaper,
        )
        self.ledger.scan_queue(worker.name)
        self.workers[worker.name] = worker
        thread = threading.Thread(target=worker.run, name=f"sink-{worker.name}", daemon=True)
        self.threads[worker.name] = thread
        thread.start()

    def _stop_worker(self, name: str) -> None:
        worker = self.workers.pop(name)
        worker.stop.set()
        worker.nudge.set()
        # A send is bounded by its sink's own timeout; this only guards against a bug.
        self.threads.pop(name).join(timeout=30.0)
        log.info("sink removed from the config", sink=name)

    def _bury_orphans(self) -> None:
        """After a successful reload: what waits for a sink the config lacks is dead."""
        root = spool_dir(self.state_dir, "queue")
        on_disk = [d for d in os.listdir(root) if valid_sink_name(d)] if os.path.isdir(root) else []
        for sink in sorted(set(self.ledger.sinks()) | set(on_disk)):
            if sink in self.workers:
                continue
            self.ledger.scan_queue(sink)
            buried = 0
            for item, event in self.ledger.take_all(sink):
                try:
                    dead_letter(self.state_dir, sink, item.name, event, reason=REMOVED, attempts=0)
                except OSError as exc:
                    log.error("cannot dead-letter for a removed sink", sink=sink, error=str(exc))
                    self.ledger.put_back(sink, item)
                    continue
                self.ledger.finish(sink, item)
                self.counters.inc("dead", sink)
                buried += 1
            if buried:
                log.warning(
                    "events of a sink no longer in the config dead-lettered",
                    sink=sink,
                    events=buried,
                )
            try:
                os.rmdir(os.path.join(root, sink))
            except OSError:
                pass

    # -- the spool ---------------------------------------------------------------------
    def _dispatch(self, touched: list[str]) -> None:
        unknown = [s for s in touched if s not in self.workers]
        if unknown and self.reload(force=True):
            self._bury_orphans()
        for sink in touched:
            worker = self.workers.get(sink)
            if worker is not None:
                worker.nudge.set()

    def _rescan(self) -> list[str]:
        touched = self.ledger.scan_incoming()
        for name, worker in self.workers.items():
            if self.ledger.scan_queue(name):
                touched.append(name)
                worker.nudge.set()
        path = spool_dir(self.state_dir, WAKE_FILE)
        if os.path.exists(path):
            # `flush` from another process: retry every head now.
            self.wake_all.set()
            try:
                os.unlink(path)
            except OSError:
                pass
            for worker in self.workers.values():
                worker.nudge.set()
        return touched

    def pending(self) -> bool:
        return not self.ledger.empty()

    def _textfile(self) -> None:
        try:
            snap = self.snapshot()
            stats.write_textfile(self.state_dir, stats.render(snap, self.counters.copy(), True))
            self.counters.save()
        except OSError as exc:
            log.warning("cannot write the metrics textfile", error=str(exc))

    def snapshot(self, configured: list[str] | None = None) -> dict[str, Any]:
        """From the ledger: reading the spool would mean every entry of a backlog, each time."""
        sinks = set(self.workers if configured is None else configured) | set(self.ledger.sinks())
        ledger = self.ledger
        return stats.summary(
            self.state_dir, {s: (ledger.count(s), ledger.oldest(s) or "") for s in sinks}
        )

    def run(self) -> None:
        """Deliver until the spool has been empty for ``linger`` seconds (or, draining, until
        every sink is empty or has failed once)."""
        wake = WakeSocket(self.state_dir)
        if self.drain:
            self.wake_all.set()
        try:
            self.ledger.load_progress()
            self.ledger.scan_incoming()
            self.ledger.compact_progress()
            self.reaper = Reaper()
            self._apply()
            self._loop(wake)
        finally:
            wake.close()
            self.stop.set()
            for name in list(self.workers):
                worker = self.workers.pop(name)
                worker.stop.set()
                worker.nudge.set()
                self.threads.pop(name).join(timeout=30.0)
            if self.reaper is not None:
                self.reaper.close()
            self._textfile_final()

    def _textfile_final(self) -> None:
        try:
            snap = self.snapshot([s.name for s in self.settings.effective_sinks()])
            stats.write_textfile(self.state_dir, stats.render(snap, self.counters.copy(), False))
            self.counters.save()
        except OSError as exc:
            log.warning("cannot write the metrics textfile", error=str(exc))

    def _loop(self, wake: WakeSocket) -> None:
        idle_since = time.monotonic()
        last_scan = last_text = time.monotonic()
        interval = RESCAN if wake.active else self.settings.delivery.poll_interval
        was_empty = False
        while True:
            try:
                names = wake.wait(min(interval, 0.25) if self.drain else interval)
                if not wake.active:
                    time.sleep(interval)
                self.reload()
                touched: list[str] = []
                now = time.monotonic()
                # A full wake-up queue drops what comes next: a file whose datagram was lost is
                # older than the named ones, so the listing comes first, and order holds.
                full = names is not None and len(names) >= wake.capacity
                if names is None or full or now - last_scan >= RESCAN or not wake.active:
                    touched += self._rescan()
                    last_scan = now
                for name in names or ():
                    touched += self.ledger.add_incoming(name)
                self._dispatch(sorted(set(touched)))
                if now - last_text >= TEXTFILE_EVERY:
                    self._textfile()
                    last_text = now
            except Exception as exc:  # noqa: BLE001 - e.g. a full disk: wait, never die
                log.error(
                    "deliverer loop failed; retrying",
                    error=repr(exc),
                    traceback="".join(traceback.format_exception(exc)),
                )
                time.sleep(1.0)
                continue
            empty = self.ledger.empty()
            if empty and not was_empty:
                self.wake_all.clear() if not self.drain else None
                if self.reaper is not None:
                    self.reaper.settle()
                self.ledger.compact_progress()
            was_empty = empty
            if not empty:
                idle_since = time.monotonic()
            if self.drain and not any(t.is_alive() for t in self.threads.values()):
                return
            if not self.drain and time.monotonic() - idle_since >= self.settings.delivery.linger:
                return


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


def serve(settings: Settings, config: str | None = None) -> None:
    """The background deliverer's main loop, including the hand-over at exit.

    A handler spools first and wakes or checks the lock second; the deliverer closes its
    wake socket and releases the lock first and checks the spool second. Whatever the
    interleaving, one of them sees the other's work, so no entry waits for the next event.
    """
    state_dir = settings.state_path
    while True:
        fd = acquire(state_dir)
        if fd is None:
            log.debug("another deliverer is running")
            return
        try:
            # For operators and tests: the deliverer is detached from the agent (setsid).
            try:
                write_atomic(
                    os.path.join(spool_dir(state_dir), "deliver.pid"),
                    b"%d\n" % os.getpid(),
                    durable=False,
                )
            except OSError as exc:  # a full disk: deliver anyway, it frees space as it goes
                log.warning("cannot write deliver.pid", error=str(exc))
            log.info("deliverer started", state_dir=state_dir)
            deliverer = Deliverer(settings, config=config)
            deliverer.run()
            settings = deliverer.settings
        finally:
            release(fd)
        if not count_pending(settings):
            log.info("deliverer idle, exiting")
            return


def flush(settings: Settings, timeout: float, config: str | None = None) -> int:
    """Deliver everything pending now; returns how many entries are still queued."""
    state_dir = settings.state_path
    deadline = time.monotonic() + timeout
    fd = acquire(state_dir)
    if fd is None:
        # A deliverer is running: ask it to retry now and wait for the spool to drain.
        write_atomic(os.path.join(spool_dir(state_dir), WAKE_FILE), b"", durable=False)
        while count_pending(settings) and time.monotonic() < deadline:
            time.sleep(0.1)
            fd = acquire(state_dir)
            if fd is not None:
                break
        if fd is None:
            return count_pending(settings)
    try:
        Deliverer(settings, drain=True, config=config).run()
    finally:
        release(fd)
    return count_pending(settings)


def count_pending(settings: Settings) -> int:
    """Entries waiting in ``incoming/`` (a batch file counts its lines) and
    ``queue/<sink>/``."""
    state_dir = settings.state_path
    total = 0
    incoming = spool_dir(state_dir, "incoming")
    for name in entries.incoming_names(incoming):
        if not name.endswith(entries.BATCH_SUFFIX):
            total += 1
            continue
        try:
            with open(os.path.join(incoming, name), "rb") as fh:
                total += max(1, len(entries.split_batch(fh.read())))
        except OSError:
            continue
    queue_root = spool_dir(state_dir, "queue")
    if os.path.isdir(queue_root):
        for sink in os.listdir(queue_root):
            total += len(stats.json_names(os.path.join(queue_root, sink)))
    return total


__all__ = ["Deliverer", "canonical", "count_pending", "flush", "serve"]
