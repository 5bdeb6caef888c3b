"""``serfbridge demo``: a real local Serf cluster with serfbridge as its handler.

Starts ``serf agent`` processes on 127.0.0.1 (free ports), fires a user event, a query, a tag
change and a graceful leave, then prints the JSON each node's embedded default file sink
received. Everything lives in one directory, printed at the end.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

from serfbridge.errors import EXIT_OK, SerfbridgeError


class DemoError(SerfbridgeError):
    exit_code = 1


def handler_command() -> str:
    if getattr(sys, "frozen", False):
        return shlex.join([sys.executable])
    script = os.path.join(os.path.dirname(sys.executable), "serfbridge")
    if os.path.exists(script):
        return shlex.join([script])
    return shlex.join([sys.executable, "-m", "serfbridge"])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _serf(rpc: str, command: str, *args: str, timeout: float = 30.0) -> str:
    # Go's flag parser stops at the first positional argument: flags go right after the command.
    serf = shutil.which("serf") or "serf"
    proc = subprocess.run(
        [serf, command, f"-rpc-addr={rpc}", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0:
        raise DemoError(
            f"serf {' '.join(args)} failed: {proc.stderr.strip() or proc.stdout.strip()}"
        )
    return proc.stdout


def _wait(what: str, check: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (DemoError, OSError, ValueError):
            pass
        time.sleep(0.1)
    raise DemoError(f"timed out waiting for {what}")


def _start_node(
    base: str, name: str, handler: str, join: str
) -> tuple[subprocess.Popen[bytes], str, str]:
    node_dir = os.path.join(base, name)
    os.makedirs(node_dir, exist_ok=True)
    config = os.path.join(node_dir, "serfbridge.toml")
    with open(config, "w", encoding="utf-8") as fh:
        fh.write(
            f"state_dir = {json.dumps(os.path.join(node_dir, 'state'))}\n\n"
            '[[responders]]\nquery = "hello"\ntext = "hello from {node}"\n'
        )
    bind = f"127.0.0.1:{_free_port()}"
    rpc = f"127.0.0.1:{_free_port()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SERF_", "SERFBRIDGE_"))}
    env["SERFBRIDGE_CONFIG"] = config
    env["SERFBRIDGE_CACHE_DIR"] = os.path.join(node_dir, "cache")
    role = "db" if name == "n2" else "web"
    argv = [
        shutil.which("serf") or "serf",
        "agent",
        f"-node={name}",
        f"-bind={bind}",
        f"-rpc-addr={rpc}",
        f"-event-handler={handler}",
        f"-tag=role={role}",
    ]
    if join:
        argv.append(f"-join={join}")
    with open(os.path.join(node_dir, "agent.log"), "wb") as log:
        proc = subprocess.Popen(argv, cwd=node_dir, env=env, stdout=log, stderr=subprocess.STDOUT)
    _wait(f"{name} to answer RPC", lambda: _serf(rpc, "members", timeout=5) != "")
    return proc, bind, rpc


def _exercise(names: list[str], rpc: dict[str, str]) -> None:
    _serf(rpc["n1"], "event", "-coalesce=false", "deploy", "v1.2.3")
    print("fired: serf event deploy v1.2.3")
    answer = _serf(rpc["n1"], "query", "-timeout=2s", "-format=json", "hello")
    print(f"query hello answered: {json.loads(answer)['Responses']}")
    if len(names) > 1:
        _serf(rpc[names[1]], "tags", "-set", "version=2")
        print(f"{names[1]}: tags -set version=2")
    if len(names) > 2:
        _serf(rpc[names[-1]], "leave")
        print(f"{names[-1]}: leave")
    time.sleep(3.0)  # serf coalesces member events for up to ~1.5 s before running handlers


def _show(base: str, names: list[str]) -> None:
    for name in names:
        path = os.path.join(base, name, "state", "events.jsonl")
        lines: list[str] = []
        if os.path.exists(path):
            with open(path, encoding="utf-8") as fh:
                lines = fh.read().splitlines()
        print(f"\n== {name}: {len(lines)} event(s) in {path}")
        for line in lines:
            doc = json.loads(line)
            what = doc["name"] or ",".join(m["name"] for m in doc["members"])
            print(f"-- {doc['event']} {what}\n{line}")


def run_demo(nodes: int, workdir: str | None) -> int:
    if shutil.which("serf") is None:
        raise DemoError("the `serf` binary is not on PATH (Debian: apt-get install serf)")
    base = workdir or tempfile.mkdtemp(prefix="serfbridge-demo-")
    names = [f"n{i}" for i in range(1, max(nodes, 1) + 1)]
    handler = "*=" + handler_command()  # a filter first: serf splits the spec at its first '='
    procs: list[subprocess.Popen[bytes]] = []
    rpc: dict[str, str] = {}
    first_bind = ""
    try:
        for name in names:
            proc, bind, rpc[name] = _start_node(base, name, handler, first_bind)
            procs.append(proc)
            first_bind = first_bind or bind
        _wait(
            "all nodes alive",
            lambda: _serf(rpc["n1"], "members", "-status=alive").count("alive") == len(names),
        )
        print(f"cluster up: {', '.join(names)} (handler: {handler[2:]})")
        _exercise(names, rpc)
        _show(base, names)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
    print(f"\ndemo files kept in {base}")
    return EXIT_OK
