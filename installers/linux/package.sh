#!/usr/bin/env bash
# Tarball and .deb from the one-folder build in OUT/serfbridge (called by build.sh).
# Usage: package.sh OUT VERSION ARCH DEB_ARCH
set -euo pipefail
source "$(dirname "$0")/../lib.sh"
OUT="$1" VERSION="$2" ARCH="$3" DEB_ARCH="$4"
HERE="$SERFBRIDGE_ROOT/installers/linux"
EPOCH="${SOURCE_DATE_EPOCH:-$(source_date_epoch)}"
# Maintainer of the .deb (control and changelog). The default is the project's, in the
# reserved .invalid domain (RFC 6761): it can never deliver a user's mail to a stranger who
# registers the name; whoever distributes the package sets their own.
MAINTAINER="${SERFBRIDGE_MAINTAINER:-serfbridge maintainers <maintainers@serfbridge.invalid>}"
case "$MAINTAINER" in
    *[![:print:]]* | */* | *\&* ) die "SERFBRIDGE_MAINTAINER: printable, no / or &: $MAINTAINER" ;;
    ?*" <"?*@?*">") ;;
    *) die "SERFBRIDGE_MAINTAINER must read 'Name <address>', not: $MAINTAINER" ;;
esac
[ -s "$OUT/serfbridge.1" ] || die "no manual page $OUT/serfbridge.1 (build.sh writes it)"
STAGE="$(mktemp -d)"
trap 'rm -rf "$STAGE"' EXIT

# The installed program directory (the .deb's /usr/lib/serfbridge, the tarball's top):
#   serfbridge            the launcher (installers/linux/launcher_stub.py, which runs
#                         capture/serfbridge_launcher.py): handler runs on the system Python
#                         (/usr/bin/python3 -IS), everything else execs serfbridge-frozen
#   serfbridge-frozen     the one-folder build's executable, renamed; _internal/ beside it
#   capture/serfbridge/   the capture path's modules as .py, standard library only
# The bootloader finds _internal/ next to its own executable, whatever that is called.
# CAPTURE_MODULES: every module of serfbridge/capture/ plus the top-level ones it uses
# (capture/__init__.py's OUTSIDE), so a new capture module needs no edit here. The import
# check below imports every one.
mapfile -t CAPTURE_MODULES < <(python3 - "$SERFBRIDGE_ROOT/serfbridge" <<'PY'
import ast, os, sys
pkg = sys.argv[1]
tree = ast.parse(open(os.path.join(pkg, "capture", "__init__.py"), encoding="utf-8").read())
outside = next(
    ast.literal_eval(node.value) for node in tree.body
    if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "OUTSIDE"
)
mods = [m for m in outside if m != "_types"]
mods += [f"capture/{n[:-3]}" for n in sorted(os.listdir(os.path.join(pkg, "capture"))) if n.endswith(".py")]
print("\n".join(mods))
PY
)
[ "${#CAPTURE_MODULES[@]}" -gt 10 ] || die "could not list serfbridge/capture/"
LIB="$STAGE/lib"
mkdir -p "$LIB/capture/serfbridge/capture"
cp -a "$OUT/serfbridge/." "$LIB/"
mv "$LIB/serfbridge" "$LIB/serfbridge-frozen"
install -m 0755 "$HERE/launcher_stub.py" "$LIB/serfbridge"
install -m 0644 "$HERE/serfbridge_launcher.py" "$LIB/capture/"
for mod in "${CAPTURE_MODULES[@]}"; do
    install -m 0644 "$SERFBRIDGE_ROOT/serfbridge/$mod.py" "$LIB/capture/serfbridge/$mod.py"
done
# The copy must stand alone on a bare interpreter: import it the way the launcher does (no
# site-packages, nothing else on sys.path) and fail the build if a module is missing or
# reaches past the standard library. -B: no __pycache__ in the package.
python3 -I -S -B - "$LIB/capture" "${CAPTURE_MODULES[@]}" <<'PY' \
    || die "the capture copy does not import on its own"
import importlib, sys
sys.path.insert(0, sys.argv[1])
import serfbridge_launcher  # noqa
for mod in sys.argv[2:]:
    mod = mod.replace("/", ".").removesuffix(".__init__")
    importlib.import_module("serfbridge" if mod == "__init__" else f"serfbridge.{mod}")
outside = sorted(
    name for name, mod in sys.modules.items()
    if name.startswith("serfbridge") and not getattr(mod, "__file__", "").startswith(sys.argv[1])
)
assert not outside, outside
PY
# The build machine's Python (pyenv) links libpython and its extension modules with a
# RUNPATH to its own lib/ (/root/.pyenv/...): a path that means nothing on the target and
# would let a file planted there be loaded. The bootloader finds every bundled library
# itself (it points the loader at _internal/), so the RUNPATH goes. Shared libraries do not
# need to be executable to be mapped: 0644 as Debian ships them.
while IFS= read -r -d '' elf; do
    if [ -n "$(patchelf --print-rpath "$elf" 2>/dev/null)" ]; then
        patchelf --remove-rpath "$elf"
    fi
done < <(find "$LIB/_internal" -type f -name '*.so*' -print0)
find "$LIB/_internal" -type f -name '*.so*' -exec chmod 0644 {} +
"$LIB/serfbridge-frozen" --version >/dev/null || die "the renamed frozen build does not start"
find "$LIB/capture" -name __pycache__ -prune -exec rm -rf {} +

# Tarball: the program directory plus what an admin needs next to it.
TAR_DIR="$STAGE/tar/serfbridge-$VERSION"
mkdir -p "$TAR_DIR"
cp -a "$LIB/." "$TAR_DIR/"
cp "$SERFBRIDGE_ROOT/installers/serfbridge.example.toml" "$HERE/serfbridge-relay.service" \
    "$SERFBRIDGE_ROOT/README.md" "$OUT/serfbridge.1" "$TAR_DIR/"
tar --sort=name --mtime="@$EPOCH" --owner=0 --group=0 --numeric-owner \
    -C "$STAGE/tar" -czf "$OUT/serfbridge-$VERSION-linux-$ARCH.tar.gz" "serfbridge-$VERSION"

# .deb
PKG="$STAGE/deb"
install -d "$PKG/DEBIAN" "$PKG/usr/lib" "$PKG/usr/bin" "$PKG/etc/serfbridge" \
    "$PKG/lib/systemd/system" "$PKG/usr/lib/sysusers.d" "$PKG/usr/lib/tmpfiles.d" \
    "$PKG/usr/share/doc/serfbridge" "$PKG/usr/share/man/man1" "$PKG/etc/logrotate.d" \
    "$PKG/usr/share/lintian/overrides"
cp -a "$LIB" "$PKG/usr/lib/serfbridge"
# Relative, so it also resolves inside another root (dpkg --root). The launcher follows the
# link (realpath) to find serfbridge-frozen and capture/ next to it.
ln -s ../lib/serfbridge/serfbridge "$PKG/usr/bin/serfbridge"
install -m 0644 "$SERFBRIDGE_ROOT/installers/serfbridge.example.toml" \
    "$PKG/etc/serfbridge/serfbridge.toml"
install -m 0644 "$HERE/serfbridge-relay.service" "$PKG/lib/systemd/system/"
install -m 0644 "$HERE/debian/sysusers.conf" "$PKG/usr/lib/sysusers.d/serfbridge.conf"
install -m 0644 "$HERE/debian/tmpfiles.conf" "$PKG/usr/lib/tmpfiles.d/serfbridge.conf"
install -m 0644 "$HERE/debian/logrotate" "$PKG/etc/logrotate.d/serfbridge"
install -m 0644 "$HERE/debian/lintian-overrides" "$PKG/usr/share/lintian/overrides/serfbridge"
install -m 0644 "$SERFBRIDGE_ROOT/README.md" "$PKG/usr/share/doc/serfbridge/README.md"
install -m 0644 "$HERE/debian/copyright" "$PKG/usr/share/doc/serfbridge/copyright"
gzip -9n < "$OUT/serfbridge.1" > "$PKG/usr/share/man/man1/serfbridge.1.gz"
# A native package (no Debian revision): changelog.gz. Its newest entry must be this version.
CHANGELOG_VERSION="$(sed -n '1s/^serfbridge (\([^)]*\)).*/\1/p' "$HERE/debian/changelog")"
[ "$CHANGELOG_VERSION" = "$VERSION" ] \
    || die "installers/linux/debian/changelog starts with $CHANGELOG_VERSION, not $VERSION: add an entry"
sed "s/@MAINTAINER@/$MAINTAINER/" "$HERE/debian/changelog" | gzip -9n \
    > "$PKG/usr/share/doc/serfbridge/changelog.gz"
gzip -9n < "$SERFBRIDGE_ROOT/installers/serfbridge.example.toml" \
    > "$PKG/usr/share/doc/serfbridge/serfbridge.example.toml.gz"
install -m 0755 "$HERE/debian/postinst" "$HERE/debian/prerm" "$HERE/debian/postrm" "$PKG/DEBIAN/"
printf '%s\n' /etc/serfbridge/serfbridge.toml /etc/logrotate.d/serfbridge > "$PKG/DEBIAN/conffiles"
# The bundled libraries need this glibc at least: the one the build machine has. python3: the
# launcher's interpreter (serfbridge-frozen needs none and also works alone as the handler).
GLIBC="$(getconf GNU_LIBC_VERSION | cut -d' ' -f2)"  # no pipe into head: pipefail + SIGPIPE
sed -e "s/@VERSION@/$VERSION/" -e "s/@ARCH@/$DEB_ARCH/" -e "s/@MAINTAINER@/$MAINTAINER/" \
    -e "s/@SIZE@/$(du -sk --exclude=DEBIAN "$PKG" | cut -f1)/" \
    -e "s/@DEPENDS@/libc6 (>= $GLIBC), python3/" "$HERE/debian/control.in" > "$PKG/DEBIAN/control"
find "$PKG" -exec touch -h -d "@$EPOCH" {} +
dpkg-deb --root-owner-group -Zxz --build "$PKG" "$OUT/serfbridge_${VERSION}_$DEB_ARCH.deb" >/dev/null
say "packaged $OUT/serfbridge_${VERSION}_$DEB_ARCH.deb and the tarball"
