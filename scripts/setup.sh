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
    # Debian's own Python too, where python3 is another one: the pip-install tests make a
    # venv of it (tests/test_pip_install.py).
    if [ -x /usr/bin/python3 ] && ! /usr/bin/python3 -c "import venv, ensurepip" 2>/dev/null; then
        missing+=(python3-venv)
    fi
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
        lintian:lintian systemd-analyze:systemd man:man-db logrotate:logrotate strace:strace \
        mosquitto_rr:mosquitto-clients
    apt_install nats-server:nats-server  # the NATS sink and relay source tests
else
    apt_install serf:serf
fi

# rabbitmq-server for the AMQP tests, which start private brokers (tests/support/rabbitmq.py).
# The package would start the system broker (5672, epmd on 4369) at install and at boot:
# policy-rc.d keeps it from starting during the install, and it is disabled afterwards.
if [ "$EXTRA" = "test" ] && [ ! -x /usr/lib/rabbitmq/bin/rabbitmq-server ]; then
    sudo_=""
    [ "$(id -u)" -eq 0 ] || sudo_="sudo"
    own_policy=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' | $sudo_ tee /usr/sbin/policy-rc.d >/dev/null
        $sudo_ chmod 755 /usr/sbin/policy-rc.d
        own_policy=1
    fi
    echo "installing Debian packages: rabbitmq-server (service left stopped)" >&2
    $sudo_ apt-get update -qq
    status=0
    DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq rabbitmq-server >/dev/null ||
        status=$?
    [ -z "$own_policy" ] || $sudo_ rm -f /usr/sbin/policy-rc.d
    (exit "$status")  # a failed install still fails the set-up (set -e), policy removed
    if [ -d /run/systemd/system ]; then
        $sudo_ systemctl disable --now rabbitmq-server >/dev/null 2>&1 || true
    else
        $sudo_ update-rc.d rabbitmq-server disable >/dev/null 2>&1 || true
    fi
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
