"""Run a program from an argv list with a deadline; on timeout, kill it and what it started.

``subprocess.run(timeout=...)`` kills only the direct child. A child that started a
background process (``sleep 60 &`` in a script) leaves that grandchild holding the output
pipes, and reading them then waits for the grandchild. Here the program runs in its own
process group (POSIX: a new session; Windows: a new process group) and the whole group is
killed: ``killpg(SIGKILL)`` on POSIX, ``taskkill /T /F`` (the process tree) on Windows.

Never a shell: the argv list is executed as is, and event data is passed only on stdin and in
the environment.
"""

from __future__ import annotations

import os
import subprocess
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

WINDOWS = sys.platform == "win32"
# After the kill, how long to wait for the pipes to close (a member that left the group,
# e.g. with setsid, may keep them open; it is then abandoned).
DRAIN_SECONDS = 2.0


class Finished:
    """What happened: ``returncode`` is None when the deadline passed and the tree was killed."""

    __slots__ = ("returncode", "stderr", "stdout")

    def __init__(self, returncode: int | None, stdout: bytes, stderr: bytes) -> None:
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr

    @property
    def timed_out(self) -> bool:
        return self.returncode is None


def kill_tree(proc: subprocess.Popen[bytes]) -> None:
    """Kill ``proc`` and every process in its group / tree; never raises."""
    if WINDOWS:
        system_root = os.environ.get("SystemRoot") or r"C:\Windows"  # noqa: SIM112
        taskkill = os.path.join(system_root, "System32", "taskkill.exe")
        try:
            subprocess.run(
                [taskkill, "/F", "/T", "/PID", str(proc.pid)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=10,
                check=False,
            )
        except (OSError, subprocess.SubprocessError):
            pass
    else:
        import signal

        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass
    try:
        proc.kill()
    except OSError:
        pass


def run(
    argv: Sequence[str],
    stdin: bytes,
    timeout: float,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
) -> Finished:
    """Run to completion or until ``timeout`` seconds; OSError if it cannot start."""
    options: dict[str, object] = {}
    if sys.platform == "win32":
        options["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP
    else:
        options["start_new_session"] = True
    proc = subprocess.Popen(
        list(argv),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=None if env is None else dict(env),
        cwd=cwd,
        **options,  # type: ignore[call-overload]
    )
    try:
        out, err = proc.communicate(stdin, timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_tree(proc)
        try:
            out, err = proc.communicate(timeout=DRAIN_SECONDS)
        except subprocess.TimeoutExpired:
            out, err = b"", b""
            for pipe in (proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()
            proc.wait()
        return Finished(None, out or b"", err or b"")
    return Finished(proc.returncode, out, err)
