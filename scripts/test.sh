#!/usr/bin/env bash
# README command 2: set up on a fresh Debian machine and run every check: lint, types, tests.
# The tests start their own serf agents, redis-server and mosquitto on free loopback ports;
# with SERFBRIDGE_REQUIRE_ALL=1 (set here) a skipped test counts as a failure.
set -euo pipefail
source "$(dirname "$0")/setup.sh" test
cd "$SERFBRIDGE_ROOT"
export SERFBRIDGE_REQUIRE_ALL=1
ruff check .
ruff format --check .
mypy
python -m pytest "$@"
