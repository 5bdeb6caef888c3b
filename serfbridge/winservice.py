"""Run a serfbridge command (``relay`` by default) as a Windows service.

A program the service control manager (SCM) starts must call StartServiceCtrlDispatcher within
30 s and answer stop requests, which a plain console exe does not: the SCM would kill it as
"not responding". This module is that service layer, with ctypes and no extra dependency
(pywin32's servicemanager would add ~10 MB and DLL placement rules to the frozen build).

The service process only supervises: it starts ``serfbridge.exe [--config PATH] relay`` as a
child and reports RUNNING; on STOP or SHUTDOWN it ends the child with TerminateProcess and
reports STOPPED. A service has no console, so there is no Ctrl+Break to send: the supervised
command must tolerate a hard stop at any point (the relay's contract; `deliver` does, as its
spool moves are atomic renames). When the child exits by itself the service stops with
``ERROR_SERVICE_SPECIFIC_ERROR`` and the child's exit code, so the SCM's recovery actions
(the installer sets "restart after 5 s") apply. Installed by installers/windows/serfbridge.nsi:

    sc.exe create serfbridge-relay binPath= "\"C:\\Program Files\\serfbridge\\serfbridge.exe\"
        --config \"C:\\ProgramData\\serfbridge\\serfbridge.toml\" service" start= demand
"""

from __future__ import annotations

import subprocess
import sys
import threading

from serfbridge import log
from serfbridge.errors import SerfbridgeError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

SERVICE_NAME = "serfbridge-relay"
STOP_GRACE = 10.0  # seconds the SCM is told a stop may take

_SERVICE_WIN32_OWN_PROCESS = 0x10
_STOPPED, _START_PENDING, _STOP_PENDING, _RUNNING = 1, 2, 3, 4
_ACCEPT_STOP, _ACCEPT_SHUTDOWN = 0x1, 0x4
_CONTROL_STOP, _CONTROL_INTERROGATE, _CONTROL_SHUTDOWN = 1, 4, 5
_NO_ERROR, _ERROR_CALL_NOT_IMPLEMENTED = 0, 120
_ERROR_SERVICE_SPECIFIC_ERROR = 1066
_ERROR_FAILED_SERVICE_CONTROLLER_CONNECT = 1063


class NotAServiceError(SerfbridgeError):
    """``serfbridge service`` was run from a console, not by the service control manager."""

    exit_code = 2


def child_argv(config: str | None, command: list[str]) -> list[str]:
    """The supervised command, run with this very installation."""
    if getattr(sys, "frozen", False):
        argv = [sys.executable]
    else:
        argv = [sys.executable, "-m", "serfbridge"]
    if config:
        argv += ["--config", config]
    return argv + (command or ["relay"])


def run_service(config: str | None, command: list[str], configure_log: Callable[[], None]) -> int:
    """Hand this process to the SCM; ``configure_log`` runs once the SCM has started us, so a
    mistaken console start still prints its error on the console."""
    if sys.platform == "win32":
        return _Service(child_argv(config, command), configure_log).dispatch()
    raise NotAServiceError("`serfbridge service` is for Windows; on Linux use the systemd unit")


if sys.platform == "win32":
    import ctypes
    from ctypes import wintypes

    class _Status(ctypes.Structure):
        _fields_ = [
            ("dwServiceType", wintypes.DWORD),
            ("dwCurrentState", wintypes.DWORD),
            ("dwControlsAccepted", wintypes.DWORD),
            ("dwWin32ExitCode", wintypes.DWORD),
            ("dwServiceSpecificExitCode", wintypes.DWORD),
            ("dwCheckPoint", wintypes.DWORD),
            ("dwWaitHint", wintypes.DWORD),
        ]

    _HandlerEx = ctypes.WINFUNCTYPE(
        wintypes.DWORD, wintypes.DWORD, wintypes.DWORD, wintypes.LPVOID, wintypes.LPVOID
    )
    _ServiceMain = ctypes.WINFUNCTYPE(None, wintypes.DWORD, ctypes.POINTER(wintypes.LPWSTR))

    class _TableEntry(ctypes.Structure):
        _fields_ = [("lpServiceName", wintypes.LPWSTR), ("lpServiceProc", _ServiceMain)]

    _advapi = ctypes.WinDLL("advapi32", use_last_error=True)
    _advapi.RegisterServiceCtrlHandlerExW.restype = wintypes.HANDLE
    _advapi.RegisterServiceCtrlHandlerExW.argtypes = [wintypes.LPCWSTR, _HandlerEx, wintypes.LPVOID]
    _advapi.SetServiceStatus.argtypes = [wintypes.HANDLE, ctypes.POINTER(_Status)]
    _advapi.StartServiceCtrlDispatcherW.argtypes = [ctypes.POINTER(_TableEntry)]

    class _Service:
        def __init__(self, argv: list[str], configure_log: Callable[[], None]) -> None:
            self.argv = argv
            self.configure_log = configure_log
            self.stop_requested = threading.Event()
            self.handle: int | None = None
            self.checkpoint = 0
            # ctypes callbacks must stay referenced while the SCM may call them.
            self._main = _ServiceMain(self._service_main)
            self._handler = _HandlerEx(self._control)

        def dispatch(self) -> int:
            table = (_TableEntry * 2)(_TableEntry(SERVICE_NAME, self._main), _TableEntry())
            if not _advapi.StartServiceCtrlDispatcherW(table):
                err = ctypes.get_last_error()
                if err == _ERROR_FAILED_SERVICE_CONTROLLER_CONNECT:
                    raise NotAServiceError(
                        "`serfbridge service` is started by the service control manager "
                        f"(service {SERVICE_NAME}); run `serfbridge relay` in a console instead"
                    )
                raise SerfbridgeError(f"StartServiceCtrlDispatcher failed: WinError {err}")
            return 0

        def _report(self, state: int, exit_code: int = 0, wait_ms: int = 0) -> None:
            status = _Status()
            status.dwServiceType = _SERVICE_WIN32_OWN_PROCESS
            status.dwCurrentState = state
            pending = state in (_START_PENDING, _STOP_PENDING)
            status.dwControlsAccepted = 0 if pending else _ACCEPT_STOP | _ACCEPT_SHUTDOWN
            if exit_code:
                status.dwWin32ExitCode = _ERROR_SERVICE_SPECIFIC_ERROR
                status.dwServiceSpecificExitCode = exit_code & 0xFFFFFFFF
            self.checkpoint = self.checkpoint + 1 if pending else 0
            status.dwCheckPoint = self.checkpoint
            status.dwWaitHint = wait_ms
            _advapi.SetServiceStatus(self.handle, ctypes.byref(status))

        def _control(self, control: int, _type: int, _data: object, _ctx: object) -> int:
            if control in (_CONTROL_STOP, _CONTROL_SHUTDOWN):
                self._report(_STOP_PENDING, wait_ms=int(STOP_GRACE * 1000))
                self.stop_requested.set()
                return _NO_ERROR
            if control == _CONTROL_INTERROGATE:
                return _NO_ERROR
            return _ERROR_CALL_NOT_IMPLEMENTED

        def _service_main(self, _argc: int, _argv: object) -> None:
            self.handle = _advapi.RegisterServiceCtrlHandlerExW(SERVICE_NAME, self._handler, None)
            self.configure_log()
            self._report(_START_PENDING, wait_ms=5000)
            try:
                child = subprocess.Popen(
                    self.argv,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    creationflags=subprocess.CREATE_NO_WINDOW,
                )
            except OSError as exc:
                log.error("service: cannot start", argv=" ".join(self.argv), error=str(exc))
                self._report(_STOPPED, exit_code=1)
                return
            log.info("service: started", argv=" ".join(self.argv), pid=child.pid)
            self._report(_RUNNING)
            while not self.stop_requested.is_set():
                try:
                    code = child.wait(timeout=1.0)
                except subprocess.TimeoutExpired:
                    continue
                log.error("service: command exited", code=code)
                self._report(_STOPPED, exit_code=code or 1)
                return
            child.terminate()
            try:
                child.wait(timeout=STOP_GRACE)
            except subprocess.TimeoutExpired:
                child.kill()
            log.info("service: stopped")
            self._report(_STOPPED)
