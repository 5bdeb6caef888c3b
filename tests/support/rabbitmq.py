"""A private `rabbitmq-server` on free loopback ports, never the machine's own instance.

Debian's ``/usr/sbin/rabbitmq-server`` switches to the ``rabbitmq`` user and the system
node; the script under ``/usr/lib/rabbitmq/bin`` runs a node as the caller, configured here
entirely by environment: its own node name, AMQP and distribution ports, data, log and config
files in the work directory, and its own ``epmd`` on a free port (started and stopped by this
module), so neither the system broker on 5672 nor the system epmd on 4369 is touched.

Start-up takes 5 to 40 s on a loaded machine: the fixture is session-scoped. Data lives in
``workdir/mnesia`` and survives ``stop()`` / ``start()``, as durable queues and persistent
messages do on a real broker.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import socket
import uuid
from typing import TYPE_CHECKING, Any

from .ports import LOOPBACK, free_port, port_accepts
from .proc import ManagedProcess, MissingBinaryError, require_binary, wait_stopped

if TYPE_CHECKING:
    from pathlib import Path

    import pika
    from pika.adapters.blocking_connection import BlockingChannel

_NODE_SCRIPT = "/usr/lib/rabbitmq/bin/rabbitmq-server"
#: Users created at boot from the definitions file: (name, password, tags).
ADMIN = ("serf", "serf-pass")
LIMITED = ("reader", "reader-pass")  # may only read, on vhost "/" only
WRITER = ("writer", "writer-pass")  # docs/sink-amqp.md's least privilege: write on amq.topic
VHOSTS = ("/", "serf")
#: Queue bound to amq.topic with "serf.#" in every vhost, for the sinks' default routing.
EVENTS_QUEUE = "serf-events"


def _password_hash(password: str) -> str:
    """RabbitMQ's rabbit_password_hashing_sha256: base64(salt + sha256(salt + password))."""
    salt = os.urandom(4)
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode()).digest()).decode()


def _user(name: str, password: str, tags: list[str]) -> dict[str, Any]:
    return {
        "name": name,
        "password_hash": _password_hash(password),
        "hashing_algorithm": "rabbit_password_hashing_sha256",
        "tags": tags,
    }


def _definitions() -> dict[str, Any]:
    admin, limited = ADMIN, LIMITED
    full = {"configure": ".*", "write": ".*", "read": ".*"}
    return {
        "users": [
            _user(*admin, tags=["administrator"]),
            _user(*limited, tags=[]),
            _user(*WRITER, tags=[]),
        ],
        "vhosts": [{"name": v} for v in VHOSTS],
        "permissions": [
            *({"user": admin[0], "vhost": v, **full} for v in VHOSTS),
            {"user": limited[0], "vhost": "/", "configure": "^$", "write": "^$", "read": ".*"},
            {
                "user": WRITER[0],
                "vhost": "/",
                "configure": "^$",
                "write": r"^amq\.topic$",
                "read": "^$",
            },
        ],
    }


class Epmd(ManagedProcess):
    """Erlang's port mapper, in the foreground on a free loopback port."""

    def __init__(self, workdir: Path) -> None:
        super().__init__("epmd", workdir)
        self.binary = require_binary("epmd", "erlang-base")
        self.port = free_port()

    def argv(self) -> list[str]:
        return [self.binary, "-port", str(self.port), "-address", LOOPBACK]

    def is_ready(self) -> bool:
        return port_accepts(self.port)


class RabbitMQServer(ManagedProcess):
    """One RabbitMQ node; `stop()` then `start()` keeps its ports, users and durable data."""

    def __init__(self, workdir: Path) -> None:
        node = f"serfbridge-test-{uuid.uuid4().hex[:8]}@localhost"
        self.epmd = Epmd(workdir / "epmd")
        self.port = free_port()
        self.dist_port = free_port()
        env = {
            # The Erlang cookie is created in $HOME; a private one keeps us off the system node.
            "HOME": str(workdir),
            "ERL_EPMD_PORT": str(self.epmd.port),
            "ERL_EPMD_ADDRESS": LOOPBACK,
            "RABBITMQ_NODENAME": node,
            "RABBITMQ_NODE_IP_ADDRESS": LOOPBACK,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(workdir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(workdir / "log"),
            "RABBITMQ_LOGS": "-",
            "RABBITMQ_CONFIG_FILE": str(workdir / "rabbitmq"),  # rabbitmq.conf
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(workdir / "enabled_plugins"),
            "RABBITMQ_PID_FILE": str(workdir / "rabbitmq.pid"),
        }
        super().__init__("rabbitmq", workdir, env=env)
        require_binary("rabbitmq-server", "rabbitmq-server")
        if not os.access(_NODE_SCRIPT, os.X_OK):
            raise MissingBinaryError(f"{_NODE_SCRIPT} is missing: apt-get install rabbitmq-server")
        self.node = node

    def url(self, vhost: str = "/", user: tuple[str, str] = ADMIN) -> str:
        from urllib.parse import quote

        return f"amqp://{user[0]}:{user[1]}@{LOOPBACK}:{self.port}/{quote(vhost, safe='')}"

    def prepare(self) -> None:
        defs = self.workdir / "definitions.json"
        if not defs.exists():  # hashes are salted: write once, so restarts keep passwords
            defs.write_text(json.dumps(_definitions()))
        (self.workdir / "rabbitmq.conf").write_text(
            f"listeners.tcp.1 = {LOOPBACK}:{self.port}\n"
            f"load_definitions = {defs}\n"
            # Small machines: the default 50 MB free-disk alarm would block publishers.
            "disk_free_limit.absolute = 1MB\n"
        )
        (self.workdir / "enabled_plugins").write_text("[].\n")
        if not self.epmd.is_running:
            self.epmd.start()

    def argv(self) -> list[str]:
        return [_NODE_SCRIPT]

    def start(self, timeout: float = 120.0) -> None:
        super().start(timeout)

    def stop(self, timeout: float = 60.0, *, kill_group: bool = True) -> None:
        super().stop(timeout, kill_group=kill_group)

    def shutdown(self) -> None:
        """Stop the node and its epmd (session teardown)."""
        self.stop()
        self.epmd.stop()

    def pause(self) -> None:
        """SIGSTOP the Erlang VM (the started script only waits for it): connections stay
        open, nothing answers."""
        beam = int((self.workdir / "rabbitmq.pid").read_text().strip())
        os.kill(beam, signal.SIGSTOP)
        wait_stopped(beam)
        self.paused = True

    def resume(self) -> None:
        beam = int((self.workdir / "rabbitmq.pid").read_text().strip())
        os.kill(beam, signal.SIGCONT)
        self.paused = False

    def is_ready(self) -> bool:
        """The AMQP 0-9-1 header is answered with Connection.Start (a method frame)."""
        try:
            with socket.create_connection((LOOPBACK, self.port), timeout=1.0) as sock:
                sock.sendall(b"AMQP\x00\x00\x09\x01")
                return sock.recv(1) == b"\x01"
        except OSError:
            return False

    # -- observing --------------------------------------------------------------------------

    def connect(self, vhost: str = "/") -> pika.BlockingConnection:
        import pika

        params = pika.URLParameters(self.url(vhost))
        params.socket_timeout = 10
        return pika.BlockingConnection(params)

    def declare_events_queue(self, channel: BlockingChannel, queue: str = EVENTS_QUEUE) -> None:
        """A durable queue bound to amq.topic for "serf.#", emptied."""
        channel.queue_declare(queue, durable=True)
        channel.queue_bind(queue, "amq.topic", "serf.#")
        channel.queue_purge(queue)

    def new_events_queue(self, prefix: str) -> str:
        """A fresh ``<prefix>-<random>`` queue, as ``declare_events_queue`` makes it."""
        name = f"{prefix}-{uuid.uuid4().hex[:6]}"
        conn = self.connect()
        try:
            self.declare_events_queue(conn.channel(), name)
        finally:
            conn.close()
        return name

    def drain(self, queue: str = EVENTS_QUEUE, vhost: str = "/") -> list[Any]:
        """Every message now in ``queue`` as (properties, body), acknowledged (removed)."""
        out: list[Any] = []
        conn = self.connect(vhost)
        try:
            channel = conn.channel()
            while True:
                method, props, body = channel.basic_get(queue, auto_ack=True)
                if method is None:
                    return out
                out.append((props, body))
        finally:
            conn.close()

    def docs(self, queue: str = EVENTS_QUEUE, vhost: str = "/") -> list[dict[str, Any]]:
        return [json.loads(body) for _, body in self.drain(queue, vhost)]
