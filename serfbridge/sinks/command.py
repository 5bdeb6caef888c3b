"""``type = "command"``: run a program per event, event JSON on stdin; its exit status decides.

The deliverer runs it (never the handler, which must return to Serf at once), so it gets the
same spool, ordering, retry, backoff and dead-letter rules as every other sink::

    exit 0                                   delivered
    exit 65 (EX_DATAERR, sysexits.h)         SinkRejected: this event is bad, dead-letter it
    any other exit status, killed by a
    signal, timeout, cannot start            SinkUnavailable: retried with backoff

On timeout the program and every process it started are killed (``serfbridge.capture.procrun``).
The argv list is run without a shell; event data never goes into argv, only on stdin (the
canonical event JSON, the same bytes as a file sink line without the newline) and in
``SERFBRIDGE_EVENT_*`` variables (``ENVIRONMENT``). The environment is the deliverer's, without
any ``SERF_*`` variables (they would describe whichever event started the deliverer), plus
``env`` from the config, plus the variables below.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from serfbridge.errors import SinkRejected, SinkUnavailable
from serfbridge.sinks.base import Sink, SinkConfigBase

EXIT_REJECT = 65  # EX_DATAERR: "the input data was incorrect in some way"
OUTPUT_EXCERPT = 500  # characters of stderr/stdout quoted in errors and logs

#: The variables set for the program, and where their values come from.
ENVIRONMENT = {
    "SERFBRIDGE_EVENT_ID": "id: deterministic event id, the same on every node",
    "SERFBRIDGE_EVENT_EVENT": "event: member-join ... member-reap, user or query",
    "SERFBRIDGE_EVENT_NAME": "name: user event or query name; empty for membership events",
    "SERFBRIDGE_EVENT_LTIME": "ltime: Lamport time; empty for membership events",
    "SERFBRIDGE_EVENT_NODE": "node.name: the node that handled the event",
    "SERFBRIDGE_EVENT_ROLE": "node.role: that node's role tag",
    "SERFBRIDGE_EVENT_MEMBERS": "members[].name joined by spaces; empty for user events",
    "SERFBRIDGE_EVENT_PAYLOAD_ENCODING": "payload_encoding: utf-8 or base64; empty if none",
    "SERFBRIDGE_EVENT_RECEIVED_AT": "received_at: RFC 3339 time the handler ran",
    "SERFBRIDGE_SINK": "the sink's name",
}


class CommandSinkConfig(SinkConfigBase):
    type: Literal["command"]
    command: list[str] = Field(
        min_length=1, description="argv of the program; run without a shell."
    )
    timeout: float = Field(
        default=30.0, gt=0, le=3600, description="Seconds before the program tree is killed."
    )
    env: dict[str, str] = Field(default_factory=dict, description="Extra environment variables.")
    cwd: str | None = Field(default=None, description="Working directory of the program.")

    @field_validator("command")
    @classmethod
    def _program(cls, value: list[str]) -> list[str]:
        if not value[0]:
            raise ValueError("command[0] (the program) must not be empty")
        if any("\0" in arg for arg in value):
            raise ValueError("command arguments must not contain NUL")
        return value

    @field_validator("env")
    @classmethod
    def _valid_env(cls, value: dict[str, str]) -> dict[str, str]:
        for name, text in value.items():
            if not name or "=" in name or "\0" in name:
                raise ValueError(f"env: {name!r} is not a valid variable name")
            if "\0" in text:
                raise ValueError(f"env: {name} contains NUL")
        return value


def _text(value: object) -> str:
    # An environment value cannot hold NUL; Serf names can (sent over RPC).
    return "" if value is None else str(value).replace("\0", "")


def event_environment(event: dict[str, Any], sink_name: str) -> dict[str, str]:
    """The ``SERFBRIDGE_EVENT_*`` variables for ``event``."""
    node = event.get("node") or {}
    return {
        "SERFBRIDGE_EVENT_ID": _text(event.get("id")),
        "SERFBRIDGE_EVENT_EVENT": _text(event.get("event")),
        "SERFBRIDGE_EVENT_NAME": _text(event.get("name")),
        "SERFBRIDGE_EVENT_LTIME": _text(event.get("ltime")),
        "SERFBRIDGE_EVENT_NODE": _text(node.get("name")),
        "SERFBRIDGE_EVENT_ROLE": _text(node.get("role")),
        "SERFBRIDGE_EVENT_MEMBERS": " ".join(
            _text(m.get("name")) for m in event.get("members") or []
        ),
        "SERFBRIDGE_EVENT_PAYLOAD_ENCODING": _text(event.get("payload_encoding")),
        "SERFBRIDGE_EVENT_RECEIVED_AT": _text(event.get("received_at")),
        "SERFBRIDGE_SINK": sink_name,
    }


def _excerpt(data: bytes) -> str:
    text = " ".join(data.decode("utf-8", "replace").split())
    return text if len(text) <= OUTPUT_EXCERPT else "…" + text[-OUTPUT_EXCERPT:]


class CommandSink(Sink):
    config: CommandSinkConfig

    def environment(self, event: dict[str, Any]) -> dict[str, str]:
        import os

        env = {k: v for k, v in os.environ.items() if not k.startswith("SERF_")}
        env.update(self.config.env)
        env.update(event_environment(event, self.name))
        return env

    def send(self, event: dict[str, Any], body: bytes) -> None:
        from serfbridge import log
        from serfbridge.capture import procrun

        argv, timeout = self.config.command, self.config.timeout
        where = f"command {argv[0]}"
        try:
            done = procrun.run(argv, body, timeout, self.environment(event), self.config.cwd)
        except OSError as exc:
            raise SinkUnavailable(f"{where}: cannot start: {exc.strerror or exc}") from exc
        output = _excerpt(done.stderr or done.stdout)
        if done.timed_out:
            raise SinkUnavailable(f"{where}: killed after {timeout:g}s timeout")
        status = done.returncode or 0
        detail = f": {output}" if output else ""
        if status == 0:
            if output:
                log.debug("command output", sink=self.name, output=output)
            return
        if status == EXIT_REJECT:
            raise SinkRejected(f"{where} rejected the event (exit {EXIT_REJECT}){detail}")
        if status < 0:
            raise SinkUnavailable(f"{where} killed by signal {-status}{detail}")
        raise SinkUnavailable(f"{where} exited {status}{detail}")

    def check(self) -> None:
        """The program exists and is executable (nothing is run)."""
        import os
        import shutil

        program = self.config.command[0]
        found = shutil.which(program) if os.path.basename(program) == program else program
        if not found or not os.access(found, os.X_OK) or os.path.isdir(found):
            raise SinkUnavailable(f"command {program}: not found or not executable")
