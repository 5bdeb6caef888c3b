"""The durable on-disk spool: layout, capture, and starting the deliverer.

Layout under ``<state_dir>/spool/``::

    incoming/<entry>.json        written by handlers: {"sinks": [...], "event": {...}}
    incoming/<entry>.jsonl       written by the stream relay: one such entry per line
    queue/<sink>/<entry>.json    dead letters moved back by `spool retry`, one per file
    queue/<sink>/.head.json      attempts and next retry time of that queue's head entry
    dead/<sink>/<entry>.json     dead letters, with <entry>.reason.json beside each
    progress/<sink>.done         names of incoming entries that sink has finished
    rejected/<entry>.json        input that could not be parsed, kept raw (env + stdin),
                                 and entries the deliverer found malformed (<entry>.reason)
    deliver.lock                 held by the one running deliverer
    deliver.pid                  its process id

An incoming entry is the one durable copy of the event: the deliverer reads it, sends it to
each sink it names, records per-sink progress, and unlinks it when the last sink is done
(serfbridge.delivery.ledger). ``queue/<sink>/`` holds only dead letters moved back by
``spool retry``.

``<entry>`` is ``<time_ns>-<pid>-<n>``: sorting names sorts by capture time, which is event
order because Serf runs one agent's handlers one at a time. A batch file is the stream
relay's group commit (``capture_many``): the records that arrived while the previous batch
was being written, up to 512, stored with one fsync; line ``k`` is the entry
``<entry>.<k:05d>.json`` for the deliverer (progress, dead letters, ``spool list``), which
unlinks the file when every line is finished for every sink. Every file is written to a
``.tmp`` name, fsynced and renamed, so a reader never sees half an entry and a ``kill -9`` or
a power cut loses at most the entry (or batch) being written. Only handlers and the stream
relay create files in ``incoming/`` and only the deliverer (one per state directory, by
lock) moves them on, so no entry is delivered twice by the spool itself.
"""

import os
import sys
import time

from serfbridge.capture import files, jsonenc, runtime

_counter = [0]


def spool_dir(state_dir: str, *parts: str) -> str:
    return os.path.join(state_dir, "spool", *parts)


def entry_name() -> str:
    _counter[0] += 1
    return f"{time.time_ns():020d}-{os.getpid():07d}-{_counter[0]:04d}"


def entry_time(name: str) -> float:
    """Capture time of an entry, from its name."""
    try:
        return int(name.split("-", 1)[0]) / 1e9
    except ValueError:
        return 0.0


def _entry(sinks: list[str], event_json: str) -> bytes:
    return ('{"sinks":' + jsonenc.dumps(sinks) + ',"event":' + event_json + "}").encode("utf-8")


def capture(state_dir: str, sinks: list[str], event_json: str) -> str:
    """Store one event for the named sinks; returns the entry name. Raises OSError."""
    name = entry_name()
    files.write_atomic(
        os.path.join(spool_dir(state_dir, "incoming"), name + ".json"), _entry(sinks, event_json)
    )
    return name


def capture_many(state_dir: str, items: list[tuple[list[str], str]]) -> str:
    """Store several events as one batch file, ``incoming/<entry>.jsonl`` (one entry per
    line, in order): one write, one fsync, one rename and one directory fsync for all of
    them. Returns the entry name (without ``.jsonl``). Raises OSError (then none of them is
    stored)."""
    name = entry_name()
    data = b"".join(_entry(sinks, event_json) + b"\n" for sinks, event_json in items)
    files.write_atomic(os.path.join(spool_dir(state_dir, "incoming"), name + ".jsonl"), data)
    return name


def reject(
    state_dir: str, reason: str, environ: dict[str, str], stdin: bytes, received: float
) -> str:
    """Keep input that could not be turned into an event, raw, with the reason."""
    import binascii

    name = entry_name()
    record = {
        "reason": reason,
        "received_at": received,
        "env": {k: v for k, v in environ.items() if k.startswith("SERF_")},
        "stdin_base64": binascii.b2a_base64(stdin, newline=False).decode("ascii"),
    }
    # surrogateescape writes undecodable environment bytes back as they came: this is the raw copy.
    data = jsonenc.dumps(record).encode("utf-8", "surrogateescape")
    files.write_atomic(os.path.join(spool_dir(state_dir, "rejected"), name + ".json"), data)
    return name


def wake_address(state_dir: str) -> str | bytes | None:
    """Where a running deliverer listens for wake-ups (a Unix datagram socket), or None
    (Windows: the deliverer polls ``incoming/`` instead). Linux uses the abstract namespace,
    which has no path length limit and leaves no file behind; the name is derived from the
    state directory, so each deliverer has its own."""
    if sys.platform == "win32":
        return None
    absolute = os.path.abspath(state_dir)
    if sys.platform.startswith("linux"):
        try:
            from _blake2 import blake2b
        except ImportError:  # pragma: no cover
            from hashlib import blake2b
        digest = blake2b(absolute.encode("utf-8", "surrogateescape"), digest_size=12).hexdigest()
        return b"\0serfbridge-wake-" + digest.encode()
    path = os.path.join(absolute, "spool", "wake.sock")
    return path if len(path.encode()) < 100 else None


def wake(state_dir: str, entry: str, suffix: str = ".json") -> bool:
    """Tell a running deliverer that ``entry`` + ``suffix`` is in ``incoming/``; True if one
    listened.

    One datagram, no reply, never blocks: ``_socket`` rather than ``socket`` because the
    wrapper module costs a millisecond of imports on every event."""
    addr = wake_address(state_dir)
    if addr is None:
        return False
    import _socket

    try:
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_DGRAM)
    except OSError:
        return False
    try:
        sock.setblocking(False)
        sock.sendto((entry + suffix).encode("ascii"), addr)
        return True
    except OSError:
        return False
    finally:
        sock.close()


def deliverer_running(state_dir: str) -> bool:
    """True if a deliverer holds this state directory's lock."""
    try:
        fd = files.open_lockfile(spool_dir(state_dir, "deliver.lock"))
    except FileNotFoundError:
        os.makedirs(spool_dir(state_dir), exist_ok=True)
        fd = files.open_lockfile(spool_dir(state_dir, "deliver.lock"))
    try:
        if files.try_lock(fd):
            files.unlock(fd)
            return False
        return True
    finally:
        os.close(fd)


def deliverer_argv(config: str | None) -> list[str]:
    """How to start ``serfbridge deliver`` with this very installation."""
    if runtime.self_command is not None:
        # The Linux launcher: this interpreter cannot run the deliverer, the frozen build can.
        argv = list(runtime.self_command)
    elif getattr(sys, "frozen", False):
        argv = [sys.executable]
    else:
        argv = [sys.executable, "-m", "serfbridge"]
    if config:
        # Before the command: what every version of the parser accepts.
        argv += ["--config", config]
    return [*argv, "deliver"]


def spawn_deliverer(config: str | None) -> None:
    """Start a detached deliverer with no stdio of Serf's.

    Serf waits until the handler's stdout/stderr pipes close, so the child must not inherit
    them, and it must outlive the handler: a new session on POSIX, a detached process on
    Windows.
    """
    argv = deliverer_argv(config)
    env = dict(os.environ)
    if getattr(sys, "frozen", False):
        # A one-file build passes its unpacked bundle to children through the environment;
        # the deliverer outlives this process, whose bundle is deleted when it exits, so it
        # must unpack its own (PyInstaller >= 6.9 reads this variable).
        env["PYINSTALLER_RESET_ENVIRONMENT"] = "1"
    if sys.platform == "win32":
        import subprocess

        flags = subprocess.DETACHED_PROCESS | subprocess.CREATE_NEW_PROCESS_GROUP
        subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            close_fds=True,
            creationflags=flags,
            env=env,
        )
        return
    devnull = os.devnull
    os.posix_spawn(
        argv[0],
        argv,
        env,
        file_actions=[
            (os.POSIX_SPAWN_OPEN, 0, devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_OPEN, 1, devnull, os.O_WRONLY, 0),
            (os.POSIX_SPAWN_DUP2, 1, 2),
        ],
        setsid=True,
    )
