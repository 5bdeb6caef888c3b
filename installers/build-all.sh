#!/usr/bin/env bash
# Build every artifact from this checkout and test the artifacts: the Linux one-folder and
# one-file builds, tarball and .deb; serfbridge.exe (under wine), serf.exe, the NSIS installer.
# Then the end-to-end suite with the frozen Linux binary as the handler, the .deb install test
# and the wine tests (mixed-OS cluster included). What CI runs after scripts/test.sh.
#
# Usage: installers/build-all.sh [--no-test] [--linux-only]
# Cache: $SERFBRIDGE_BUILD_CACHE (default ~/.cache/serfbridge-build); a second run on the same
# machine rebuilds nothing whose inputs did not change.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

TEST=1 WINDOWS=1
while [ $# -gt 0 ]; do
    case "$1" in
        --no-test) TEST=0; shift ;;
        --linux-only) WINDOWS=0; shift ;;
        *) die "unknown argument: $1 (usage: build-all.sh [--no-test] [--linux-only])" ;;
    esac
done
START=$SECONDS
TIMES="$SERFBRIDGE_ROOT/dist/build-times.txt"
mkdir -p "$SERFBRIDGE_ROOT/dist"
: > "$TIMES"
step() {
    local name="$1"; shift
    local t0=$SECONDS
    say "== $name"
    "$@"
    echo "$name: $((SECONDS - t0)) s" | tee -a "$TIMES" >&2
}

# The builds write serfbridge/_build.py into the checkout while they run: one at a time.
step "linux build" bash "$SERFBRIDGE_ROOT/installers/linux/build.sh"
if [ "$WINDOWS" = 1 ]; then
    step "windows exe (wine)" bash "$SERFBRIDGE_ROOT/installers/windows/build-wine.sh"
    step "serf.exe" bash "$SERFBRIDGE_ROOT/installers/windows/build-serf.sh"
    step "nsis installer" bash "$SERFBRIDGE_ROOT/installers/windows/build-installer.sh"
fi

if [ "$TEST" = 1 ]; then
    # The project's venv with the test tools (scripts/setup.sh: a no-op when it is there).
    source "$SERFBRIDGE_ROOT/scripts/setup.sh" test
    cd "$SERFBRIDGE_ROOT"
    MARK="artifact or e2e"
    [ "$WINDOWS" = 1 ] || MARK="(artifact or e2e) and not wine"
    # The end-to-end suite with the built program as handler and relay. Left out: the tests
    # that never run serfbridge (RPC client, harness) and the long load tests (500-event
    # outages, 2,000-entry consumer group), which test the source's logic, not the freezing;
    # scripts/test.sh has run all of them already.
    # ... and run as users install it: the tarball's launcher (handler runs on the system
    # Python, every other command through the frozen build beside it). The frozen build alone
    # as the handler is compared with the launcher in test_artifacts_launcher.py.
    INSTALLED="$SERFBRIDGE_ROOT/dist/linux/installed"
    rm -rf "$INSTALLED"; mkdir -p "$INSTALLED"
    tar -xzf "$SERFBRIDGE_ROOT"/dist/linux/serfbridge-*-linux-*.tar.gz -C "$INSTALLED"
    LAUNCHER="$(echo "$INSTALLED"/serfbridge-*/serfbridge)"
    [ -x "$LAUNCHER" ] || die "no launcher in the tarball ($LAUNCHER)"
    step "artifact tests" env SERFBRIDGE_BIN="$LAUNCHER" \
        SERFBRIDGE_REQUIRE_ALL=1 python -m pytest --artifacts -m "$MARK" -q \
        --ignore=tests/test_rpc.py --ignore=tests/test_harness.py \
        --ignore=tests/test_faults.py --ignore=tests/test_relay_redis_group.py
fi
echo "total: $((SECONDS - START)) s" | tee -a "$TIMES" >&2
