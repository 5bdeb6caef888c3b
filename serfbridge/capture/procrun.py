"""Run a program from an argv list with a deadline; on timeout, kill it and what it started.

``subprocess.run(timeout=...)`` kills only the direct child. A child that started a
background process (``sleep 60 &`` in a script) leaves that grandchild holding the output
pipes, and reading them then waits for the grandchild. Here the program runs in its own
process group (POSIX: a new session; Windows: a new process group) and everything it started
is killed:

- Linux: every process that carries this run's mark is killed, as is every descendant found
  by parent id, repeated until none is left. The mark is an environment variable
  (``SERFBRIDGE_RUN``, a random token) that every process started from the program inherits;
  ``/proc/<pid>/environ`` shows it even for a process that left the session with ``setsid``
  and was orphaned to init, which neither the process group nor the parent chain would find.
  Only a process that replaced its whole environment escapes the mark; the parent-id walk
  still finds it while its parent lives.
- Other POSIX: ``killpg(SIGKILL)`` on the group.
- Windows: the program runs in a Job Object and the job is terminated; every process it
  starts joins the job, including ones in a new process group (``taskkill /T /F``, which walks
  the tree by parent id, if no job could be made).

Never a shell: the argv list is executed as is, and event data is passed only on stdin and in
the environment.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

WINDOWS = sys.platform == "win32"
# After the kill, how long to wait for the pipes to close (a member that left the group,
# e.g. with setsid, may keep them open; it is then abandoned).
DRAIN_SECONDS = 2.0
RUN_MARK = "SERFBRIDGE_RUN"
PROC = "/proc"


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


def _proc_table() -> dict[int, tuple[int, bytes]]:
    """Linux: pid -> (parent pid, environment block) of every live process we may read."""
    table: dict[int, tuple[int, bytes]] = {}
    try:
        names = os.listdir(PROC)
    except OSError:
        return table
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"{PROC}/{name}/stat", "rb") as f:
                stat = f.read()
            # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
            state, ppid_text = stat[stat.rindex(b")") + 2 :].split()[:2]
            if state == b"Z":  # already dead, waiting to be reaped: nothing to kill
                continue
            ppid = int(ppid_text)
            with open(f"{PROC}/{name}/environ", "rb") as f:
                environ = f.read()
        except (OSError, ValueError, IndexError):
            continue
        table[int(name)] = (ppid, environ)
    return table


def _marked(root: int, mark: bytes) -> set[int]:
    """Processes carrying ``mark`` in their environment, and ``root``'s descendants."""
    table = _proc_table()
    found = {pid for pid, (_, env) in table.items() if mark in env.split(b"\0")}
    if root in table:
        found.add(root)
    grew = True
    while grew:
        more = {pid for pid, (ppid, _) in table.items() if ppid in found and pid not in found}
        found |= more
        grew = bool(more)
    found.discard(os.getpid())
    return found


def _kill_marked(root: int, mark: str) -> None:
    """SIGKILL everything of this run until a sweep finds nothing alive (a process may fork
    while the previous sweep runs); at most 20 sweeps."""
    import signal

    token = mark.encode()
    for _ in range(20):
        alive = 0
        for pid in _marked(root, token):
            try:
                os.kill(pid, signal.SIGKILL)
                alive += 1
            except OSError:
                pass
        if not alive:
            return


def kill_tree(
    proc: subprocess.Popen[bytes], job: _Job | None = None, mark: str | None = None
) -> None:
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
        if mark is not None and os.path.isdir(PROC):
            _kill_marked(proc.pid, mark)
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
    mark = f"{RUN_MARK}={secrets.token_hex(16)}"
    base = dict(os.environ if env is None else env)
    base[RUN_MARK] = mark.partition("=")[2]
    if sys.platform == "win32":
        options["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP
    else:
        options["start_new_session"] = True
    proc = subprocess.Popen(
        list(argv),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=base,
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
            kill_tree(proc, job, mark)
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
