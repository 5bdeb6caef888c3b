#!/usr/bin/env bash
# Build serf.exe (Windows x64) from Debian's Serf source, for the mixed-OS tests (and for
# Windows hosts that want the same Serf as Debian's). Cached by the Go and Serf versions.
#   dist/windows/serf.exe
# Usage: installers/windows/build-serf.sh [--out DIR]
set -euo pipefail
source "$(dirname "$0")/../lib.sh"

parse_out build-serf.sh "$SERFBRIDGE_ROOT/dist/windows" "$@"
apt_need go:golang-go
apt_need_pkg golang-github-hashicorp-serf-dev
STUB_SRC="$SERFBRIDGE_ROOT/installers/windows/xsys-stub/windows.go"
KEY="$( (go version; dpkg-query -W -f '${Version}\n' golang-github-hashicorp-serf-dev; cat "$STUB_SRC") | sha256sum | cut -c1-16)"
CACHED="$BUILD_CACHE/serf-exe-$KEY"
if [ ! -e "$CACHED/serf.exe" ]; then
    START=$SECONDS
    say "go build serf.exe (GOOS=windows)"
    WORK="$(mktemp -d)"
    trap 'rm -rf "$WORK"' EXIT
    # Debian's golang.org/x/sys has no windows/: the stub GOPATH entry comes first.
    install -D -m 0644 "$STUB_SRC" "$WORK/stub/src/golang.org/x/sys/windows/windows.go"
    GO111MODULE=off GOPATH="$WORK/stub:/usr/share/gocode" GOCACHE="$BUILD_CACHE/go-cache" \
        CGO_ENABLED=0 GOOS=windows GOARCH=amd64 \
        go build -trimpath -ldflags "-s -w" -o "$WORK/serf.exe" github.com/hashicorp/serf/cmd/serf
    mkdir -p "$CACHED"
    mv "$WORK/serf.exe" "$CACHED/serf.exe"
    say "serf.exe built in $((SECONDS - START)) s"
else
    say "serf.exe: cached ($CACHED)"
fi
mkdir -p "$OUT"
cp "$CACHED/serf.exe" "$OUT/serf.exe"
