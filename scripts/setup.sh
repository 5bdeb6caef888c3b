#!/usr/bin/env bash
# Shared set-up for a fresh Debian machine: system packages, then a virtualenv with the project.
# Usage: source scripts/setup.sh [extra]   (extra: "test" also installs the test tools)
set -euo pipefail

SERFBRIDGE_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${SERFBRIDGE_VENV:-$SERFBRIDGE_ROOT/.venv}"
EXTRA="${1:-}"

apt_install() {
    local missing=()
    local pair
    for pair in "$@"; do
        # pair = command:package; install the package when the command is missing
        command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
    done
    python3 -c "import venv, ensurepip" 2>/dev/null || missing+=(python3-venv)
    [ ${#missing[@]} -eq 0 ] && return 0
    echo "installing Debian packages: ${missing[*]}" >&2
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
}

if [ "$EXTRA" = "test" ]; then
    # lintian, systemd-analyze (systemd), man (man-db) and logrotate: the .deb and its unit
    # are checked by their own tools (tests/test_artifacts_deb_tools.py, test_log_rotation.py).
    apt_install serf:serf redis-server:redis-server mosquitto:mosquitto curl:curl \
        lintian:lintian systemd-analyze:systemd man:man-db logrotate:logrotate
    apt_install nats-server:nats-server  # the NATS sink and relay source tests
else
    apt_install serf:serf
fi

if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
# A regular (non-editable) install: the tests exercise the installed `serfbridge` script (the
# -I -S handler start of docs/building.md, "pip install"), with the package's
# bytecode compiled at install time, exactly as a user's install runs it.
if [ "$EXTRA" = "test" ]; then
    "$VENV/bin/pip" install -q --disable-pip-version-check "$SERFBRIDGE_ROOT[test]"
else
    "$VENV/bin/pip" install -q --disable-pip-version-check "$SERFBRIDGE_ROOT"
fi
export PATH="$VENV/bin:$PATH"
