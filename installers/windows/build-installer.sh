#!/usr/bin/env bash
# NSIS installer from the Windows one-folder build (build-wine.sh first), with makensis on Linux.
#   dist/windows/serfbridge-VERSION-setup.exe
# Usage: installers/windows/build-installer.sh [--out DIR]
set -euo pipefail
source "$(dirname "$0")/../lib.sh"
parse_out build-installer.sh "$SERFBRIDGE_ROOT/dist/windows" "$@"
apt_need makensis:nsis
VERSION="$(serfbridge_version)"
[ -e "$OUT/serfbridge/serfbridge.exe" ] || die "no $OUT/serfbridge/serfbridge.exe: run build-wine.sh"
if [ -n "$(find "$OUT/serfbridge" -iname bcryptprimitives.dll -print -quit)" ]; then
    die "the test-only bcryptprimitives.dll stand-in is in the build; it must never ship"
fi
makensis -V2 -NOCD -DVERSION="$VERSION" -DSRCDIR="$OUT/serfbridge" \
    -DCONFIG="$SERFBRIDGE_ROOT/installers/serfbridge.example.toml" \
    -DOUTFILE="$OUT/serfbridge-$VERSION-setup.exe" \
    "$SERFBRIDGE_ROOT/installers/windows/serfbridge.nsi" >&2
say "built $OUT/serfbridge-$VERSION-setup.exe"
