"""``type = "local"``: messages from processes on this node, without a network.

Linux/macOS: a Unix stream socket at ``path`` (file mode ``mode``, 0600 by default: file
permissions are the authentication). Each line sent is one JSON message; each gets one JSON
line back: ``{"accepted": true}``, the query reply, or ``{"error", "reason"}``. So
``echo '{"type":"event","name":"deploy"}' | socat - UNIX-CONNECT:/run/serfbridge.sock``
works. Windows: a named pipe (``\\\\.\\pipe\\serfbridge``) through
``multiprocessing.connection``; each message is one length-prefixed frame, as its
``Client(...).send_bytes`` writes it, and the answer comes back the same way.
"""

from __future__ import annotations

import json
import os
import socket
import socketserver
import stat
import sys
import threading
from typing import Any

from serfbridge import log
from serfbridge.errors import Rejected, RelayError
from serfbridge.relay.auth import Credentials
from serfbridge.relay.sources.base import Source

MAX_LINE = 1024 * 1024


class LocalSource(Source):
    def start(self) -> None:
        if sys.platform == "win32":
            self.start_framed("AF_PIPE")
        else:
            self._start_socket()

    def answer(self, body: bytes) -> bytes:
        try:
            _, reply = self.gate.handle(body, Credentials())
        except Rejected as exc:
            doc: dict[str, Any] = {"error": str(exc), "reason": exc.reason}
        else:
            doc = reply if reply is not None else {"accepted": True}
        return json.dumps(doc).encode()

    # -- Unix socket ---------------------------------------------------------------------------

    def _start_socket(self) -> None:
        path = self.config.path
        _clear_stale(path)
        source = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                while True:
                    line = self.rfile.readline(MAX_LINE + 1)
                    if not line:
                        return
                    if len(line) > MAX_LINE:
                        self.wfile.write(b'{"error": "line too long", "reason": "too_large"}\n')
                        return
                    if line.strip():
                        self.wfile.write(source.answer(line) + b"\n")

        class Server(socketserver.ThreadingUnixStreamServer):
            daemon_threads = True

        old = os.umask(0o177)  # never visible with wider permissions, even for a moment
        try:
            self.server = Server(path, Handler)
        except OSError as exc:
            raise RelayError(f"source {self.name}: cannot listen on {path}: {exc}") from None
        finally:
            os.umask(old)
        os.chmod(path, self.config.mode)
        self.thread = threading.Thread(
            target=self.server.serve_forever, name=f"source {self.name}", daemon=True
        )
        self.thread.start()
        log.info("local source listening", source=self.name, path=path)

    # -- Windows named pipe --------------------------------------------------------------------

    def start_framed(self, family: str) -> None:
        """Serve length-prefixed frames (``multiprocessing.connection``) on ``path``:
        ``AF_PIPE`` on Windows; the tests run the same code with ``AF_UNIX``."""
        from multiprocessing.connection import Listener

        self._family = family
        self._closing = False
        try:
            self.listener = Listener(self.config.path, family=family)
        except OSError as exc:
            raise RelayError(f"source {self.name}: cannot open {self.config.path}: {exc}") from None
        self.thread = threading.Thread(target=self._accept, name=f"source {self.name}", daemon=True)
        self.thread.start()
        log.info("local source listening", source=self.name, path=self.config.path)

    def _accept(self) -> None:
        while True:
            try:
                conn = self.listener.accept()
            except OSError:
                return  # listener closed by stop()
            if self._closing:
                conn.close()
                return
            threading.Thread(target=self._serve_pipe, args=(conn,), daemon=True).start()

    def _serve_pipe(self, conn: Any) -> None:
        with conn:
            while True:
                try:
                    body = conn.recv_bytes(MAX_LINE)
                except (EOFError, OSError):
                    return
                conn.send_bytes(self.answer(body))

    def stop(self) -> None:
        if hasattr(self, "listener"):
            from multiprocessing.connection import Client

            # accept() does not return when its listener is closed: wake it with a connection.
            self._closing = True
            try:
                Client(self.config.path, family=self._family).close()
            except OSError:
                pass
            self.listener.close()
        else:
            self.server.shutdown()
            self.server.server_close()
            try:
                os.unlink(self.config.path)
            except OSError:
                pass
        self.thread.join(timeout=5)


def _clear_stale(path: str) -> None:
    """Remove a socket left by a relay that died; refuse if one is still answering."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise RelayError(f"{path} exists and is not a socket; not touching it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        os.unlink(path)
        return
    finally:
        probe.close()
    raise RelayError(f"another process is listening on {path}")
