"""A logfmt logger that costs no imports and never writes to stdout.

Serf turns a query handler's stdout *and* stderr into the query response, and logs other
handlers' output only at DEBUG, so the handler logs to a file. Each record is one
``os.write`` on an ``O_APPEND`` descriptor, which keeps lines whole when several handler
processes and the deliverer log to the same file.
"""

import os
import sys
import time

LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}

_state: dict[str, int] = {"fd": -1, "level": 20}
#: The open log file's path ("" for stderr or none) and, with ``follow_rotation``, when its
#: inode was last compared (0.0: never compared, so records never pay for it).
_file: dict[str, str] = {"path": ""}
_watch: dict[str, float] = {"every": 0.0, "next": 0.0}


def configure(path: str, level: str = "info") -> None:
    """Log to ``path``; ``-`` means stderr. Falls back to stderr if the file cannot be opened."""
    _state["level"] = LEVELS.get(level, 20)
    _file["path"] = ""
    if path == "-":
        _state["fd"] = 2
        return
    try:
        _state["fd"] = _open(path)
        _file["path"] = path
    except OSError as exc:
        _state["fd"] = 2
        error("cannot open log file, logging to stderr", path=path, error=str(exc))


def _open(path: str) -> int:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)


def reopen() -> None:
    """Open the log file's path again (after rotation). The new file takes the old
    descriptor's number (``dup2``), so a thread writing meanwhile writes to one file or the
    other, never to a closed descriptor. On failure the old file stays in use."""
    path, fd = _file["path"], _state["fd"]
    if not path or fd < 3:
        return
    try:
        new = _open(path)
    except OSError as exc:
        error("cannot reopen log file, still writing the old one", path=path, error=str(exc))
        return
    try:
        os.dup2(new, fd)
    finally:
        os.close(new)


def _rotated() -> bool:
    try:
        now, was = os.stat(_file["path"]), os.fstat(_state["fd"])
    except OSError:
        return True  # renamed away and not yet re-created: create it
    return (now.st_ino, now.st_dev) != (was.st_ino, was.st_dev)


def follow_rotation(every: float = 1.0) -> None:
    """For long-running processes: reopen on SIGHUP (not on Windows, which has none) and
    when the path no longer names the open file, compared at most every ``every`` s."""
    _watch["every"] = every
    _watch["next"] = time.time() + every
    if sys.platform != "win32":
        import signal

        signal.signal(signal.SIGHUP, lambda _signum, _frame: reopen())


def silence() -> None:
    """Drop records that would go to stderr: while answering a query they would become the
    response."""
    if _state["fd"] == 2:
        _state["fd"] = -1


def _quote(value: object) -> str:
    text = str(value)
    if not text or any(c in text for c in ' ="\n\t\\'):
        text = '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return text


def log(level: str, msg: str, **fields: object) -> None:
    if LEVELS[level] < _state["level"] or _state["fd"] < 0:
        return
    now = time.time()
    if _watch["every"] and now >= _watch["next"]:
        _watch["next"] = now + _watch["every"]
        if _file["path"] and _rotated():
            reopen()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now * 1000) % 1000:03d}Z"
    parts = [f"ts={stamp}", f"level={level}", f"pid={os.getpid()}", f"msg={_quote(msg)}"]
    parts.extend(f"{k}={_quote(v)}" for k, v in fields.items())
    try:
        os.write(_state["fd"], (" ".join(parts) + "\n").encode("utf-8", "replace"))
    except OSError:
        # Nowhere left to report a logging failure without corrupting a query response.
        pass


def debug(msg: str, **fields: object) -> None:
    log("debug", msg, **fields)


def info(msg: str, **fields: object) -> None:
    log("info", msg, **fields)


def warning(msg: str, **fields: object) -> None:
    log("warning", msg, **fields)


def error(msg: str, **fields: object) -> None:
    log("error", msg, **fields)


def to_stderr_until_configured() -> None:
    """Before the config is known, problems go to stderr (never stdout)."""
    if _state["fd"] < 0 and sys.stderr is not None:
        _state["fd"] = 2
