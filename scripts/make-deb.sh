#!/usr/bin/env bash
# Builds the Debian package of tibet-twin with dpkg-deb alone (no debhelper, nothing from
# outside Debian):
#   scripts/make-deb.sh BINARY [OUTDIR]
# BINARY is the tibet-twin executable to package (`make deb` passes the release build; the
# package test passes the debug build it already has). Writes OUTDIR/tibet-twin_VERSION_ARCH.deb
# (OUTDIR defaults to .build/deb) and prints its path as the last line. TIBET_DEB_COMPRESSION
# (gzip, xz, none; default gzip) is passed to dpkg-deb -Z.
#
# What goes where:
#   /usr/bin/tibet-twin                              the binary
#   /lib/systemd/system/tibet-twin.service           the unit (systemd/)
#   /usr/lib/sysusers.d/tibet-twin.conf              user and group tibet-twin
#   /usr/lib/tmpfiles.d/tibet-twin.conf              /var/lib/tibet-twin, /run/tibet-twin
#   /etc/tibet-twin/tibet-twin.yaml, maps/*.yaml     conffiles: loopback example (packaging/deb/)
#   /usr/share/doc/tibet-twin/                       copyright, README.md, docs/, example maps
#   /usr/share/tibet-twin/twin_sender.py             a small test twin (scripts/twin_sender.py)
#   /usr/share/tibet-twin/contrib/                   contrib/ of the tree, if there is one
# The maintainer scripts are in packaging/deb/ (postinst, prerm, postrm).
set -euo pipefail
cd "$(dirname "$0")/.."

bin=${1:?usage: scripts/make-deb.sh BINARY [OUTDIR]}
out=${2:-.build/deb}
[ -x "$bin" ] || { echo "make-deb: $bin: not an executable file" >&2; exit 2; }

# 0.4.2 from `tibet-twin --version` (a "-dev"-style suffix becomes "~dev": sorts before 0.4.2).
version=$("$bin" --version | tr -d '[:space:]' | sed 's/-/~/g')
case "$version" in [0-9]*) ;; *) echo "make-deb: $bin --version printed '$version'" >&2; exit 1 ;; esac
arch=$(dpkg --print-architecture)
stage=$(mktemp -d "${TMPDIR:-/tmp}/tibet-twin-deb.XXXXXX")
trap 'rm -rf "$stage"' EXIT
root="$stage/root"
doc="$root/usr/share/doc/tibet-twin"

install -d -m 0755 "$root/DEBIAN" "$root/usr/bin" "$root/lib/systemd/system" "$root/usr/lib/sysusers.d" \
    "$root/usr/lib/tmpfiles.d" "$root/etc/tibet-twin/maps" "$doc/examples"
install -m 0755 "$bin" "$root/usr/bin/tibet-twin"
strip --strip-unneeded "$root/usr/bin/tibet-twin" 2>/dev/null || true
install -m 0644 systemd/tibet-twin.service "$root/lib/systemd/system/tibet-twin.service"
install -m 0644 systemd/tibet-twin.sysusers.conf "$root/usr/lib/sysusers.d/tibet-twin.conf"
install -m 0644 systemd/tibet-twin.tmpfiles.conf "$root/usr/lib/tmpfiles.d/tibet-twin.conf"
# The conffiles: a config that starts and serves on loopback, and the crane map whose PLC
# `tibet-twin simulate` can stand in for on 127.0.0.1:1502. postinst sets their group and mode.
install -m 0644 packaging/deb/tibet-twin.yaml "$root/etc/tibet-twin/tibet-twin.yaml"
install -m 0644 maps/crane-01.yaml "$root/etc/tibet-twin/maps/crane-01.yaml"
# Documentation: what the README links to, and every example map with the map key reference.
install -m 0644 packaging/deb/copyright "$doc/copyright"
install -m 0644 README.md "$doc/README.md"
cp -r docs "$doc/docs"
cp -r maps "$doc/examples/maps"
install -m 0644 tibet-twin.example.yaml "$doc/tibet-twin.example.yaml"
# Dashboards, alert rules and the like, whatever contrib/ holds.
install -d -m 0755 "$root/usr/share/tibet-twin"
if [ -d contrib ]; then
    cp -r contrib "$root/usr/share/tibet-twin/contrib"
fi
find "$root/usr/share" "$root/etc" -type d -exec chmod 0755 {} +
find "$root/usr/share" "$root/etc" -type f -exec chmod 0644 {} +
# A twin to try the installation with (docs/operations.md): sends agreeing lines to the socket.
install -m 0755 scripts/twin_sender.py "$root/usr/share/tibet-twin/twin_sender.py"

for s in postinst prerm postrm; do install -m 0755 "packaging/deb/$s" "$root/DEBIAN/$s"; done
(cd "$root" && find etc -type f | sort | sed 's|^|/|') > "$root/DEBIAN/conffiles"

# Depends: the Debian package of every shared library the binary needs, at least the version
# installed here (what dpkg-shlibdeps would say, without a debian/ source tree). A library no
# package owns (the Swift runtime of a debug build) is named: the package then runs only where
# that library is, as on the build machine.
depends=()
declare -A owner=()
paths=$(ldd "$bin" | awk '$2 == "=>" && $3 ~ /^\// { print $3 }')
# One dpkg -S for all (each call reads the whole file database): "pkg:arch: /path" lines.
while IFS= read -r line; do
    owner["${line#*: }"]=${line%%:*}
done < <(dpkg -S $paths $(for p in $paths; do readlink -f "$p"; done) 2>/dev/null || true)
for path in $paths; do
    pkg=${owner[$path]:-${owner[$(readlink -f "$path")]:-}}
    if [ -z "$pkg" ]; then
        echo "make-deb: warning: $path is in no Debian package; the package needs it on the target" >&2
        continue
    fi
    [[ " ${depends[*]-} " == *" $pkg ("* ]] && continue
    ver=$(dpkg-query -W -f='${Version}' "$pkg")
    depends+=("$pkg (>= ${ver%%-*})")
done
dep_line=$(IFS=,; echo "${depends[*]}" | sed 's/,/, /g')

size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
cat > "$root/DEBIAN/control" <<CONTROL
Package: tibet-twin
Version: $version
Architecture: $arch
Maintainer: tibet-twin maintainers <maintainers@users.noreply.r-seed-ae95255a.example>
Installed-Size: $size
Depends: $dep_line
Recommends: systemd
Section: net
Priority: optional
Description: digital-twin synchronicity guard for industrial plants
 tibet-twin reads the physical PLCs over Modbus/TCP, ingests the digital twin's state,
 proves the two agree, and serves the verdict as read-only Modbus permit coils to the
 machine's interlock PLC, with every decision that matters in a signed, hash-chained
 audit trail. Anything unknown, late or failing leaves the permit at 0.
 .
 This package installs the appliance as the systemd service tibet-twin (not enabled), its
 user and group, a loopback example config in /etc/tibet-twin and the documentation.
CONTROL
(cd "$root" && find . -type f ! -path './DEBIAN/*' -printf '%P\0' | sort -z | xargs -0 md5sum) > "$root/DEBIAN/md5sums"

mkdir -p "$out"
deb="$out/tibet-twin_${version}_${arch}.deb"
dpkg-deb --root-owner-group "-Z${TIBET_DEB_COMPRESSION:-gzip}" --build "$root" "$deb" >/dev/null
echo "$deb"
