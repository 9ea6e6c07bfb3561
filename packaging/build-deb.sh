#!/usr/bin/env bash
# Builds the .deb with cargo-deb and checks that it holds what an installed state-server needs.
# Usage: packaging/build-deb.sh   (needs `cargo install cargo-deb`)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo deb --locked
deb=$(ls -t target/debian/juju-brd_*.deb | head -n1)
contents=$(dpkg-deb -c "$deb")
for f in ./usr/bin/juju-brd ./etc/juju-brd/juju-brd.toml ./usr/share/doc/juju-brd/README.md \
         ./usr/lib/systemd/system/juju-brd.service; do
  grep -q " $f\$" <<<"$contents" || { echo "missing in $deb: $f" >&2; echo "$contents" >&2; exit 1; }
done
dpkg-deb -e "$deb" target/debian/control.check
grep -qx /etc/juju-brd/juju-brd.toml target/debian/control.check/conffiles || { echo "config is not a conffile" >&2; exit 1; }
grep -q "install -d -m 0700" target/debian/control.check/postinst || { echo "postinst does not create the directories" >&2; exit 1; }
# Install into a scratch root and run the packaged binary from there.
scratch=$(mktemp -d)
dpkg -x "$deb" "$scratch"
"$scratch/usr/bin/juju-brd" check-config --config "$scratch/etc/juju-brd/juju-brd.toml" >/dev/null
rm -rf "$scratch" target/debian/control.check
echo "deb OK: $deb"
