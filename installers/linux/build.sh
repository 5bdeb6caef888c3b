#!/usr/bin/env bash
# Build the Linux artifacts from a checkout, with pinned tools (installers/constraints.txt):
#   dist/linux/serfbridge/                      one-folder build (what the .deb installs)
#   dist/linux/serfbridge-onefile               single-file build
#   dist/linux/serfbridge-VERSION-linux-ARCH.tar.gz   one-folder build + config + unit
#   dist/linux/serfbridge_VERSION_ARCH.deb
#   dist/linux/serfbridge.1                     the manual page, from the CLI's parser
#   dist/linux/build-info.txt                   sizes and build times
# Usage: installers/linux/build.sh [--out DIR]    (cache: see installers/lib.sh)
set -euo pipefail
source "$(dirname "$0")/../lib.sh"

OUT="$SERFBRIDGE_ROOT/dist/linux"
while [ $# -gt 0 ]; do
    case "$1" in
        --out) OUT="$(realpath -m "$2")"; shift 2 ;;
        *) die "unknown argument: $1 (usage: build.sh [--out DIR])" ;;
    esac
done
START=$SECONDS
apt_need dpkg-deb:dpkg patchelf:patchelf
python3 -c "import venv, ensurepip" 2>/dev/null || apt_need_pkg python3-venv
VERSION="$(serfbridge_version)"
ARCH_DEB="$(dpkg --print-architecture)"
ARCH="$(uname -m)"
PY_TAG="$(python3 -c 'import platform; print(platform.python_version())')"
export SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-$(source_date_epoch)}"

# 1. Build venv: pinned PyInstaller + runtime deps, keyed by the pins and the Python version.
VENV_KEY="$(printf '%s\n%s\n' "$PY_TAG" "$(runtime_requirements)" | cat - "$SERFBRIDGE_ROOT/installers/constraints.txt" | sha256sum | cut -c1-16)"
VENV="$BUILD_CACHE/linux-venv-$VENV_KEY"
if [ ! -e "$VENV/.complete" ]; then
    say "creating build venv $VENV"
    rm -rf "$VENV"
    python3 -m venv "$VENV"
    runtime_requirements > "$VENV/requirements.txt"
    "$VENV/bin/pip" install -q --disable-pip-version-check \
        -c "$SERFBRIDGE_ROOT/installers/constraints.txt" \
        pyinstaller pyinstaller-hooks-contrib argparse-manpage -r "$VENV/requirements.txt"
    touch "$VENV/.complete"  # only a finished install is reused
fi
T_VENV=$((SECONDS - START))

# 2. Frozen builds, cached by a hash of the sources, the spec and the pins.
SRC_KEY="$(hash_inputs $(build_sources) | cut -c1-16)-$VENV_KEY"
mkdir -p "$OUT"
# freeze WORK MODE: one PyInstaller build into WORK/dist.
freeze() {
    local work="$1" mode="$2"
    say "pyinstaller --mode $mode"
    (cd "$work" && "$VENV/bin/pyinstaller" --noconfirm --log-level WARN \
        --distpath "$work/dist" --workpath "$work/build" \
        "$SERFBRIDGE_ROOT/installers/serfbridge.spec" -- --mode "$mode" \
        --build-id "${SERFBRIDGE_BUILD_ID:-}" --commit "$(source_commit)") >&2
}
build_mode() {
    cached_build "$BUILD_CACHE/linux-$1-$SRC_KEY" "linux-$1-*" "$OUT/$1" freeze "$1"
}
T0=$SECONDS; build_mode onedir; T_ONEDIR=$((SECONDS - T0))
T0=$SECONDS; build_mode onefile; T_ONEFILE=$((SECONDS - T0))
rm -rf "$OUT/serfbridge" "$OUT/serfbridge-onefile"
mv "$OUT/onedir/serfbridge" "$OUT/serfbridge"; rmdir "$OUT/onedir"
mv "$OUT/onefile/serfbridge" "$OUT/serfbridge-onefile"; rmdir "$OUT/onefile"
"$OUT/serfbridge/serfbridge" --version >&2
"$OUT/serfbridge-onefile" --version >&2

# 3. The manual page serfbridge(1), from the parser the CLI itself uses (arguments.py), so
# it cannot fall behind the commands; dated by SOURCE_DATE_EPOCH. Then tarball and .deb.
T0=$SECONDS
PYTHONPATH="$SERFBRIDGE_ROOT" "$VENV/bin/argparse-manpage" \
    --module serfbridge.arguments --function build_parser --prog serfbridge \
    --project-name serfbridge --version "$VERSION" --manual-title "serfbridge manual" \
    --description "event handler and bridge for HashiCorp Serf" \
    --url https://github.com/serfbridge/serfbridge \
    --include "$SERFBRIDGE_ROOT/installers/linux/serfbridge.1.include" \
    --output "$OUT/serfbridge.1"
bash "$SERFBRIDGE_ROOT/installers/linux/package.sh" "$OUT" "$VERSION" "$ARCH" "$ARCH_DEB"
T_PACKAGE=$((SECONDS - T0))

size() { du -sk "$1" | cut -f1; }
{
    echo "version=$VERSION"
    echo "python=$PY_TAG"
    echo "onedir_kib=$(size "$OUT/serfbridge")"
    echo "onefile_kib=$(size "$OUT/serfbridge-onefile")"
    echo "tarball_kib=$(size "$OUT/serfbridge-$VERSION-linux-$ARCH.tar.gz")"
    echo "deb_kib=$(size "$OUT/serfbridge_${VERSION}_$ARCH_DEB.deb")"
    echo "seconds_venv=$T_VENV"
    echo "seconds_onedir=$T_ONEDIR"
    echo "seconds_onefile=$T_ONEFILE"
    echo "seconds_package=$T_PACKAGE"
    echo "seconds_total=$((SECONDS - START))"
} > "$OUT/build-info.txt"
cat "$OUT/build-info.txt" >&2
