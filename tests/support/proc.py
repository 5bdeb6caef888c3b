"""A child process with a log file, readiness polling, and stop/kill/pause for fault tests."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import IO, TYPE_CHECKING, Self

from .ports import wait_for

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from types import TracebackType

# Prefixes of variables that must never leak from the developer's shell into a test process:
# Serf's CLI reads SERF_RPC_ADDR, and serfbridge reads its whole configuration from SERFBRIDGE_*.
SCRUBBED_PREFIXES = ("SERF_", "SERFBRIDGE_")


class MissingBinaryError(RuntimeError):
    """A program the tests need is not installed; the message says which apt package has it."""


def require_binary(name: str, apt_package: str) -> str:
    """Absolute path of `name` on PATH, or MissingBinaryError (tests fail, they never skip)."""
    path = shutil.which(name)
    if path is None:
        raise MissingBinaryError(
            f"'{name}' is not on PATH; the end-to-end tests need it: apt-get install {apt_package}"
        )
    return path


def wait_stopped(pid: int, timeout: float = 10.0) -> None:
    """Until every thread of ``pid`` is stopped: ``kill(SIGSTOP)`` returns before the process
    has actually stopped, and a busy machine leaves it running long enough to answer."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = []
        for task in Path(f"/proc/{pid}/task").glob("*/stat"):
            try:
                states.append(task.read_text().rsplit(")", 1)[1].split()[0])
            except (OSError, IndexError):
                continue
        if states and all(state in "tT" for state in states):
            return
        time.sleep(0.005)
    raise AssertionError(f"process {pid} did not stop within {timeout:g} s of SIGSTOP")


def clean_environ(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """os.environ without SERF_* / SERFBRIDGE_*, then `extra` on top."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(SCRUBBED_PREFIXES)}
    if extra:
        env.update(extra)
    return env


class ManagedProcess:
    """One long-running child: spawned into its own process group, output to `log_path`.

    Subclasses provide `argv()` and `is_ready()`; `start()` respawns the same command (same
    ports) after `stop()`, which is what restart-style fault tests need.
    """

    #: Log text that means "try again": the port is held by a process that is still exiting.
    retry_markers: tuple[str, ...] = ("Address already in use", "address already in use")

    def __init__(
        self,
        name: str,
        workdir: Path,
        *,
        env: Mapping[str, str] | None = None,
        stop_signal: signal.Signals = signal.SIGTERM,
    ) -> None:
        self.name = name
        self.workdir = workdir
        self.env = clean_environ(env)
        self.stop_signal = stop_signal
        self.log_path = workdir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.paused = False
        self.starts = 0
        self._log: IO[bytes] | None = None
        self._log_offset = 0

    # -- subclass hooks -------------------------------------------------------------------

    def argv(self) -> list[str]:
        """The command line; called on every (re)start."""
        raise NotImplementedError

    def is_ready(self) -> bool:
        """Whether the process answers; polled by start()."""
        raise NotImplementedError

    def prepare(self) -> None:
        """Write config files etc. before each spawn."""

    def on_retry(self) -> None:
        """Called before respawning after a retryable start failure."""

    # -- lifecycle ------------------------------------------------------------------------

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError(f"{self.name} was never started")
        return self.proc.pid

    @property
    def is_running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 15.0) -> None:
        """Spawn and wait until `is_ready()`; retry while the port is still held elsewhere."""
        if self.is_running:
            raise RuntimeError(f"{self.name} is already running (pid {self.pid})")
        deadline = time.monotonic() + timeout
        while True:
            self._spawn()
            outcome = wait_for(
                # "died" is checked first: a stranger holding our port must not look like us.
                lambda: "died" if not self.is_running else ("ready" if self.is_ready() else ""),
                timeout=max(deadline - time.monotonic(), 0.1),
                what=f"{self.name} to become ready",
                detail=self.log_tail,
            )
            if outcome == "ready":
                return
            self._close_log()
            run_log = self.log_text(current_run=True)
            if time.monotonic() < deadline and any(m in run_log for m in self.retry_markers):
                self.on_retry()
                time.sleep(0.2)
                continue
            raise RuntimeError(
                f"{self.name} exited with status {self.proc.returncode if self.proc else '?'} "
                f"during start-up: {' '.join(self.argv())}\n{self.log_tail()}"
            )

    def _spawn(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.prepare()
        self._close_log()
        self.starts += 1
        self._log = self.log_path.open("ab")
        self._log.write(f"=== harness: start #{self.starts} ===\n".encode())
        self._log.flush()
        self._log_offset = self._log.tell()
        self.paused = False
        self.proc = subprocess.Popen(
            self.argv(),
            cwd=self.workdir,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            # Own group: a Ctrl-C at the terminal must not hit the servers mid-test, and
            # teardown can reap whatever the process left behind in its group.
            start_new_session=True,
        )

    def send_signal(self, sig: signal.Signals) -> None:
        if self.is_running:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def wait_exit(self, timeout: float) -> bool:
        """Wait for the process to exit; False if it is still running after `timeout`."""
        if self.proc is None:
            return True
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return False
        return True

    def pause(self) -> None:
        """SIGSTOP: the port stays open (the kernel still completes handshakes), nothing answers."""
        self.send_signal(signal.SIGSTOP)
        wait_stopped(self.pid)
        self.paused = True

    def resume(self) -> None:
        self.send_signal(signal.SIGCONT)
        self.paused = False

    def kill9(self) -> None:
        """SIGKILL the process itself (not its group) and reap it."""
        self.send_signal(signal.SIGKILL)
        self.wait_exit(10.0)
        self._close_log()

    def stop(self, timeout: float = 10.0, *, kill_group: bool = True) -> None:
        """Idempotent: polite signal, wait, then SIGKILL; finally reap the process group.

        `kill_group` also SIGKILLs anything still in the child's process group (children that
        did not detach with setsid), so nothing outlives the test.
        """
        self.request_stop()
        self.finish_stop(timeout, kill_group=kill_group)

    def request_stop(self) -> None:
        """Send the stop signal without waiting (lets a cluster stop all agents at once)."""
        if self.paused:
            # A stopped process cannot act on SIGTERM/SIGINT until it runs again.
            self.resume()
        self.send_signal(self.stop_signal)

    def finish_stop(self, timeout: float = 10.0, *, kill_group: bool = True) -> None:
        if self.proc is not None:
            if not self.wait_exit(timeout):
                self.send_signal(signal.SIGKILL)
                self.wait_exit(10.0)
            if kill_group:
                # The group id is the child's pid (start_new_session); Linux does not reuse a
                # pid while a group with that id exists, so this cannot hit a stranger.
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
        self.paused = False
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    # -- diagnostics ----------------------------------------------------------------------

    def log_text(self, *, current_run: bool = False) -> str:
        """Everything the process wrote (all starts), or only the latest start's output."""
        try:
            data = self.log_path.read_bytes()
        except FileNotFoundError:
            return ""
        if current_run:
            data = data[self._log_offset :]
        return data.decode("utf-8", "replace")

    def log_tail(self, lines: int = 40) -> str:
        tail = self.log_text().splitlines()[-lines:]
        return f"--- last {len(tail)} lines of {self.log_path} ---\n" + "\n".join(tail)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def run_cli(
    argv: Sequence[str | bytes], *, env: Mapping[str, str], timeout: float, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a short command (argv list, never a shell) and capture its output as text."""
    return subprocess.run(
        list(argv),
        env=dict(env),
        cwd=cwd,
        capture_output=True,
        encoding="utf-8",
        # Query responses are arbitrary bytes; keep them round-trippable instead of failing.
        errors="surrogateescape",
        timeout=timeout,
        check=False,
        stdin=subprocess.DEVNULL,
    )
