"""The installed relay works inside the file system the unit gives it.

The test machines have no systemd as PID 1, so the unit itself cannot be started. What
ProtectSystem=strict does to the file system is rebuilt in a private mount namespace
instead (util-linux `unshare`): every mount read-only except the API file systems, a fresh
/run/serfbridge (RuntimeDirectory=), the state and cache directories writable
(StateDirectory=, CacheDirectory=); the relay runs as an unprivileged user with
no_new_privs and UMask=0007, as the unit's User=/NoNewPrivileges=/UMask= do. The local
source listens on the documented /run/serfbridge/relay.sock and `serfbridge send` raises a
real Serf user event through it. Without the runtime directory the same relay cannot create
its socket (the fault the unit had).

Not rebuilt here: the system call filter, PrivateUsers, namespaces and capability limits.
"""

from __future__ import annotations

import json
import os
import subprocess
from typing import TYPE_CHECKING

import pytest
from support.deb import install
from support.ports import wait_for
from support.proc import clean_environ, require_binary

if TYPE_CHECKING:
    from pathlib import Path

    from support.relay import Watcher
    from support.serf import SerfAgent

pytestmark = pytest.mark.artifact

SOCKET = "/run/serfbridge/relay.sock"
NOBODY = 65534
# $1 root of the installed package, $2 config, $3 state dir, $4 cache dir, $5 "runtime" to
# give the relay its /run/serfbridge.
SANDBOX = r"""
set -eu
root="$1" config="$2" state="$3" cache="$4"
# ProtectSystem=strict: every mount read-only but /dev, /proc and /sys.
mount --make-rprivate /
awk '{ print $5 }' /proc/self/mountinfo | sort -u | while read -r m; do
    case "$m" in /proc*|/sys*|/dev*) continue ;; esac
    mount -o remount,bind,ro "$m" 2>/dev/null || true
done
if touch /etc/serfbridge-sandbox-probe 2>/dev/null; then
    echo "sandbox: /etc is writable" >&2; exit 99
fi
# /run as a fresh tmpfs, read-only like the rest; RuntimeDirectory= adds /run/serfbridge.
mount -t tmpfs -o mode=0755 tmpfs /run
if [ "$5" = runtime ]; then
    mkdir -m 0750 /run/serfbridge
    chown 65534:65534 /run/serfbridge
fi
mount -o remount,ro /run
if [ "$5" = runtime ]; then
    mount -t tmpfs -o mode=0750,uid=65534,gid=65534 tmpfs /run/serfbridge
fi
# StateDirectory= / CacheDirectory=: writable binds of their own.
for d in "$state" "$cache"; do mount --bind "$d" "$d"; mount -o remount,bind,rw "$d"; done
run() {
    exec setpriv --reuid=65534 --regid=65534 --clear-groups --no-new-privs -- \
        env SERFBRIDGE_CONFIG="$config" SERFBRIDGE_STATE_DIR="$state" \
        SERFBRIDGE_CACHE_DIR="$cache" "$root/usr/bin/serfbridge" "$@"
}
umask 0007
# A backgrounded function is a subshell: exec makes $! the relay itself.
run relay &
relay=$!
i=0
while [ ! -S /run/serfbridge/relay.sock ]; do
    if ! kill -0 "$relay" 2>/dev/null; then
        wait "$relay" && code=0 || code=$?
        echo "relay exited $code before its socket appeared" >&2
        exit 10
    fi
    i=$((i + 1)); [ "$i" -lt 300 ] || { echo "no socket after 30 s" >&2; kill "$relay"; exit 11; }
    sleep 0.1
done
stat -c 'socket %a %U' /run/serfbridge/relay.sock
(run send event deploy sandboxed) && sent=0 || sent=$?
kill -TERM "$relay"
wait "$relay" && code=0 || code=$?
echo "relay exit $code"
exit "$sent"
"""


@pytest.fixture(scope="module")
def root(linux_deb: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return install(linux_deb, tmp_path_factory.mktemp("sandbox") / "root")


def _reachable(path: Path) -> None:
    """pytest's temporary directories are 0700: let the relay's user walk through them."""
    for parent in [path, *path.parents]:
        if parent == parent.parent or (
            parent.name == "tmp" and parent.parent == parent.parent.parent
        ):
            break
        parent.chmod(parent.stat().st_mode | 0o711)


def _sandbox(root: Path, tmp_path: Path, agent: SerfAgent, runtime: bool) -> tuple[int, str]:
    unshare = require_binary("unshare", "util-linux")
    require_binary("setpriv", "util-linux")
    state, cache = tmp_path / "state", tmp_path / "cache"
    for d in (state, cache):
        d.mkdir()
        os.chown(d, NOBODY, NOBODY)
    config = tmp_path / "serfbridge.toml"
    config.write_text(
        f"state_dir = {json.dumps(str(state))}\n"
        'log_file = "-"\n'
        f'[serf]\nrpc_addr = "{agent.rpc_addr}"\n'
        f'[[sources]]\ntype = "local"\npath = "{SOCKET}"\nallow_events = ["deploy"]\n'
    )
    config.chmod(0o644)
    _reachable(tmp_path)
    _reachable(root)
    proc = subprocess.run(
        [unshare, "--mount", "--propagation", "private", "sh", "-c", SANDBOX, "sh",
         str(root), str(config), str(state), str(cache), "runtime" if runtime else "none"],
        # cwd /: a system unit without WorkingDirectory= runs there.
        capture_output=True, text=True, timeout=120, env=clean_environ(), check=False, cwd="/",
    )  # fmt: skip
    return proc.returncode, proc.stdout + proc.stderr


def test_relay_serves_the_local_socket_under_protect_system_strict(
    root: Path, tmp_path: Path, agent: SerfAgent, watcher: Watcher
) -> None:
    """Read-only system, /run/serfbridge from RuntimeDirectory=: the relay creates
    relay.sock (0600, owned by its user), `serfbridge send` raises the
    event in Serf, and the relay stops cleanly on SIGTERM."""
    code, out = _sandbox(root, tmp_path, agent, runtime=True)
    assert code == 0, out
    assert "socket 600 nobody" in out, out  # the local source's own mode, its user's
    assert '"accepted": true' in out, out
    assert "relay exit 0" in out, out
    wait_for(lambda: watcher.payloads() == [b"sandboxed"], 15, what="the event in Serf")


def test_without_the_runtime_directory_the_socket_cannot_be_made(
    root: Path, tmp_path: Path, agent: SerfAgent
) -> None:
    """The fault the unit had: ProtectSystem=strict and no RuntimeDirectory=, so /run is
    read-only and the relay exits 9 (cannot bind its socket) with one clear line."""
    code, out = _sandbox(root, tmp_path, agent, runtime=False)
    assert code == 10, out
    assert "relay exited 9 before its socket appeared" in out, out
    assert "Traceback" not in out
