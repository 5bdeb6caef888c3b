# Shared by the build scripts (sourced, not run). Bash only.
# Cache: $SERFBRIDGE_BUILD_CACHE, default ~/.cache/serfbridge-build. Every entry's name carries a
# hash of what it was made from, so a changed pin or source file makes a new entry and a stale
# one is never used. Delete the directory to start from scratch.

SERFBRIDGE_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD_CACHE="${SERFBRIDGE_BUILD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/serfbridge-build}"
mkdir -p "$BUILD_CACHE"

say() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { say "error: $*"; exit 1; }

# parse_out USAGE_NAME DEFAULT_DIR "$@": sets OUT from an optional `--out DIR` (made absolute);
# any other argument ends the script with the usage.
parse_out() {
    local usage="$1"
    OUT="$2"
    shift 2
    while [ $# -gt 0 ]; do
        case "$1" in
            --out) [ $# -ge 2 ] || die "--out needs a directory"; OUT="$(realpath -m "$2")"; shift 2 ;;
            *) die "unknown argument: $1 (usage: $usage [--out DIR])" ;;
        esac
    done
}

serfbridge_version() {
    sed -n 's/^__version__ = "\(.*\)"$/\1/p' "$SERFBRIDGE_ROOT/serfbridge/__init__.py"
}

# hash_inputs FILE|DIR ... : one sha256 over the paths and contents (sorted, .py/.spec/.txt/...)
hash_inputs() {
    local item
    for item in "$@"; do
        if [ -d "$item" ]; then
            find "$item" -type f ! -name '*.pyc' ! -path '*/__pycache__/*' ! -name '_build.py' -print0
        else
            printf '%s\0' "$item"
        fi
    done | sort -z | xargs -0 sha256sum | sed "s|$SERFBRIDGE_ROOT/||" | sha256sum | cut -c1-16
}

# The sources every frozen build is made of (the cache key of built binaries).
build_sources() {
    printf '%s\n' "$SERFBRIDGE_ROOT/serfbridge" "$SERFBRIDGE_ROOT/installers/serfbridge.spec" \
        "$SERFBRIDGE_ROOT/installers/entry.py" "$SERFBRIDGE_ROOT/installers/constraints.txt"
}

# Runtime dependencies, read from pyproject.toml so the list lives in one place.
runtime_requirements() {
    python3 - "$SERFBRIDGE_ROOT/pyproject.toml" <<'PY'
import sys, tomllib
with open(sys.argv[1], "rb") as fh:
    print("\n".join(tomllib.load(fh)["project"]["dependencies"]))
PY
}

# apt_need CMD:PACKAGE ... : install the packages whose command is missing (one apt run).
apt_need() {
    local missing=() pair sudo=""
    for pair in "$@"; do
        command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    say "installing Debian packages: ${missing[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
}

# apt_need_pkg PACKAGE ... : for packages without a command of their own.
apt_need_pkg() {
    local pkg
    for pkg in "$@"; do
        dpkg -s "$pkg" >/dev/null 2>&1 || apt_need "__missing_$pkg:$pkg"
    done
}

# Seconds since the epoch of the last commit: fixed timestamps make the archives reproducible.
source_date_epoch() {
    git -C "$SERFBRIDGE_ROOT" log -1 --format=%ct 2>/dev/null || date +%s
}

# The checkout's commit as --version shows it ("-dirty" when serfbridge/ has local changes).
source_commit() {
    local c
    c="$(git -C "$SERFBRIDGE_ROOT" rev-parse --short=12 HEAD 2>/dev/null)" || { echo unknown; return; }
    if [ -n "$(git -C "$SERFBRIDGE_ROOT" status --porcelain --untracked-files=no -- serfbridge)" ]; then
        c="$c-dirty"
    fi
    echo "$c"
}

# prune_cache GLOB [KEEP]: keep the KEEP (default 3) newest cache entries matching GLOB, so the
# cache does not grow by a build per source change.
prune_cache() {
    local glob="$1" keep="${2:-3}" old
    # shellcheck disable=SC2012  # cache entry names are hex hashes: ls -t is safe here
    ls -1dt $BUILD_CACHE/$glob 2>/dev/null | tail -n +"$((keep + 1))" | while read -r old; do
        rm -rf "$old"
    done
}

# cached_build CACHED GLOB DEST BUILD [ARG...]: unless the cache entry CACHED is complete, run
# `BUILD WORK ARG...` in a new directory WORK (it leaves its PyInstaller output in WORK/dist)
# and keep WORK/dist as CACHED, marked done last so that a build cut short is never taken for
# whole; older entries matching GLOB are pruned. Then copy CACHED to DEST, without the mark.
cached_build() {
    local cached="$1" glob="$2" dest="$3" build="$4" work
    shift 4
    if [ ! -e "$cached/done" ]; then
        work="$(mktemp -d)"
        "$build" "$work" "$@"
        rm -rf "$cached"; mkdir -p "$cached"
        cp -a "$work/dist/." "$cached/"
        touch "$cached/done"
        rm -rf "$work"
        prune_cache "$glob"
    else
        say "build cached: $cached"
    fi
    rm -rf "$dest"; cp -a "$cached" "$dest"; rm -f "$dest/done"
}
