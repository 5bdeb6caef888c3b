"""Every error serfbridge raises, and the exit code the CLI maps it to.

::

    SerfbridgeError                 exit 1
    ├── UsageError                  exit 2  bad command-line arguments
    ├── ConfigError                 exit 3  invalid or unreadable configuration
    ├── InputError                  exit 4  bad event input (env or stdin); the raw input is kept
    ├── SinkError                           a sink failed to deliver (handled by the deliverer)
    │   ├── SinkUnavailable                 retryable: network error, timeout, 5xx/408/429
    │   └── SinkRejected                    not retryable: the receiver refused this event
    ├── SerfError                   exit 7  talking to the Serf agent failed
    │   ├── SerfUnavailable                 retryable: agent down, connection reset, timeout
    │   └── SerfCommandError                the agent answered with an error
    ├── RelayError                  exit 9  the relay cannot run (listener, broker, socket)
    └── Rejected                            one inbound relay message refused; ``reason``
                                            names why (counted, logged, never exits)

Only ``serfbridge.cli`` turns these into a log line and an exit code. Two outcomes of a
handler run are exit codes without an exception, because the run goes on to finish its
work first: 5 (stdin over ``max_input_bytes``: the event is kept, cut, ``truncated``) and 6
(the spool could not store the event: disk full, permissions).
"""

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_CONFIG = 3
EXIT_INPUT = 4
EXIT_TRUNCATED = 5
EXIT_SPOOL = 6
EXIT_UNREACHABLE = 6  # `check --connect`: a sink could not be reached
EXIT_SERF = 7
EXIT_RELAY = 9


class SerfbridgeError(Exception):
    exit_code = EXIT_INTERNAL


class UsageError(SerfbridgeError):
    exit_code = EXIT_USAGE


class ConfigError(SerfbridgeError):
    exit_code = EXIT_CONFIG


class InputError(SerfbridgeError):
    exit_code = EXIT_INPUT


class SinkError(SerfbridgeError):
    """A delivery failed; ``retryable`` says whether trying again may succeed."""

    retryable = True

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class SinkUnavailable(SinkError):
    retryable = True


class SinkRejected(SinkError):
    retryable = False


class SerfError(SerfbridgeError):
    exit_code = EXIT_SERF


class SerfUnavailable(SerfError):
    pass


class SerfCommandError(SerfError):
    """The agent refused a command; ``str(exc)`` is Serf's message, ``command`` the command."""

    def __init__(self, message: str, *, command: str = "") -> None:
        super().__init__(message)
        self.command = command


class RelayError(SerfbridgeError):
    exit_code = EXIT_RELAY


class Rejected(SerfbridgeError):
    """An inbound message the relay refuses. ``reason`` is a short metric label
    (unauthorized, bad_signature, stale, replayed, rate_limited, malformed, too_large,
    not_allowed, loop, duplicate, serf_error, serf_unavailable, internal); the text never
    holds secrets."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
