"""Run a program from an argv list with a deadline; on timeout, kill it and what it started.

``subprocess.run(timeout=...)`` kills only the direct child. A child that started a
background process (``sleep 60 &`` in a script) leaves that grandchild holding the output
pipes, and reading them then waits for the grandchild. Here the program runs in its own
process group (POSIX: a new session; Windows: a new process group) and the whole group is
killed: ``killpg(SIGKILL)`` on POSIX; on Windows the program is put in a Job Object and the
job is terminated (``taskkill /T /F``, which walks the tree by parent id, if no job could be
made).

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


class _Job:
    """Windows: a Job Object holding the program; every process it starts joins it too, so
    ``TerminateJobObject`` ends the whole tree, even children whose parent already exited."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        import ctypes

        self._k32 = ctypes.WinDLL("kernel32", use_last_error=True)  # type: ignore[attr-defined]
        self._k32.CreateJobObjectW.restype = ctypes.c_void_p
        self._k32.AssignProcessToJobObject.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
        self._k32.TerminateJobObject.argtypes = [ctypes.c_void_p, ctypes.c_uint]
        self._k32.CloseHandle.argtypes = [ctypes.c_void_p]
        self.handle = self._k32.CreateJobObjectW(None, None)
        handle = int(getattr(proc, "_handle", 0))
        if not self.handle or not self._k32.AssignProcessToJobObject(self.handle, handle):
            self.close()
            raise OSError("cannot put the program in a job object")

    def terminate(self) -> None:
        if self.handle:
            self._k32.TerminateJobObject(self.handle, 1)

    def close(self) -> None:
        if self.handle:
            self._k32.CloseHandle(self.handle)
            self.handle = None


def kill_tree(proc: subprocess.Popen[bytes], job: _Job | None = None) -> None:
    """Kill ``proc`` and every process in its group / job / tree; never raises."""
    if WINDOWS:
        if job is not None:
            job.terminate()
        else:
            # No job object: taskkill walks the tree by parent process id.
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
    job = None
    if WINDOWS:
        try:
            job = _Job(proc)
        except OSError:
            job = None
    try:
        try:
            out, err = proc.communicate(stdin, timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_tree(proc, job)
            return Finished(None, *_drain(proc))
    finally:
        if job is not None:
            job.close()
    return Finished(proc.returncode, out, err)


def _drain(proc: subprocess.Popen[bytes]) -> tuple[bytes, bytes]:
    """Output read so far, waiting at most DRAIN_SECONDS for the pipes to close."""
    try:
        out, err = proc.communicate(timeout=DRAIN_SECONDS)
    except subprocess.TimeoutExpired:
        # A process outside the group/job still holds the pipes. On POSIX closing our ends is
        # safe; on Windows a close can block behind the reader threads, which are daemon
        # threads: leave them.
        if not WINDOWS:
            for pipe in (proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()
        proc.wait()
        return b"", b""
    return out or b"", err or b""
