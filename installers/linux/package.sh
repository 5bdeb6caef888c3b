#!/usr/bin/env bash
# Tarball and .deb from the one-folder build in OUT/serfbridge (called by build.sh).
# Usage: package.sh OUT VERSION ARCH DEB_ARCH
set -euo pipefail
source "$(dirname "$0")/../lib.sh"
OUT="$1" VERSION="$2" ARCH="$3" DEB_ARCH="$4"
HERE="$SERFBRIDGE_ROOT/installers/linux"
EPOCH="${SOURCE_DATE_EPOCH:-$(source_date_epoch)}"
STAGE="$(mktemp -d)"
trap 'rm -rf "$STAGE"' EXIT

# Tarball: the one-folder build plus what an admin needs next to it.
TAR_DIR="$STAGE/tar/serfbridge-$VERSION"
mkdir -p "$TAR_DIR"
cp -a "$OUT/serfbridge/." "$TAR_DIR/"
cp "$SERFBRIDGE_ROOT/installers/serfbridge.example.toml" "$HERE/serfbridge-relay.service" \
    "$SERFBRIDGE_ROOT/README.md" "$TAR_DIR/"
tar --sort=name --mtime="@$EPOCH" --owner=0 --group=0 --numeric-owner \
    -C "$STAGE/tar" -czf "$OUT/serfbridge-$VERSION-linux-$ARCH.tar.gz" "serfbridge-$VERSION"

# .deb
PKG="$STAGE/deb"
install -d "$PKG/DEBIAN" "$PKG/usr/lib" "$PKG/usr/bin" "$PKG/etc/serfbridge" \
    "$PKG/lib/systemd/system" "$PKG/usr/lib/sysusers.d" "$PKG/usr/lib/tmpfiles.d" \
    "$PKG/usr/share/doc/serfbridge"
cp -a "$OUT/serfbridge" "$PKG/usr/lib/serfbridge"
# Relative, so it also resolves inside another root (dpkg --root). The bootloader follows the
# link to find _internal/ next to the real executable.
ln -s ../lib/serfbridge/serfbridge "$PKG/usr/bin/serfbridge"
install -m 0644 "$SERFBRIDGE_ROOT/installers/serfbridge.example.toml" \
    "$PKG/etc/serfbridge/serfbridge.toml"
install -m 0644 "$HERE/serfbridge-relay.service" "$PKG/lib/systemd/system/"
install -m 0644 "$HERE/debian/sysusers.conf" "$PKG/usr/lib/sysusers.d/serfbridge.conf"
install -m 0644 "$HERE/debian/tmpfiles.conf" "$PKG/usr/lib/tmpfiles.d/serfbridge.conf"
install -m 0644 "$SERFBRIDGE_ROOT/README.md" "$PKG/usr/share/doc/serfbridge/README.md"
gzip -9n < "$SERFBRIDGE_ROOT/installers/serfbridge.example.toml" \
    > "$PKG/usr/share/doc/serfbridge/serfbridge.example.toml.gz"
install -m 0755 "$HERE/debian/postinst" "$HERE/debian/prerm" "$HERE/debian/postrm" "$PKG/DEBIAN/"
echo /etc/serfbridge/serfbridge.toml > "$PKG/DEBIAN/conffiles"
# The bundled libraries need this glibc at least: the one the build machine has.
GLIBC="$(getconf GNU_LIBC_VERSION | cut -d' ' -f2)"  # no pipe into head: pipefail + SIGPIPE
sed -e "s/@VERSION@/$VERSION/" -e "s/@ARCH@/$DEB_ARCH/" \
    -e "s/@SIZE@/$(du -sk --exclude=DEBIAN "$PKG" | cut -f1)/" \
    -e "s/@DEPENDS@/libc6 (>= $GLIBC)/" "$HERE/debian/control.in" > "$PKG/DEBIAN/control"
find "$PKG" -exec touch -h -d "@$EPOCH" {} +
dpkg-deb --root-owner-group -Zxz --build "$PKG" "$OUT/serfbridge_${VERSION}_$DEB_ARCH.deb" >/dev/null
say "packaged $OUT/serfbridge_${VERSION}_$DEB_ARCH.deb and the tarball"
