#!/usr/bin/env bash
# Builds the .deb with cargo-deb and checks that it holds what an installed state-server needs.
# Usage: packaging/build-deb.sh   (needs `cargo install cargo-deb`)
set -euo pipefail
cd "$(dirname "$0")/.."
target_dir=${CARGO_TARGET_DIR:-target}
cargo build --release --locked --bin juju-brd
# The man pages and completions, written by the binary being packaged (from its own clap
# definition) into target/packaging/, where Cargo.toml's deb assets name them.
gen=target/packaging
rm -rf "$gen"
mkdir -p "$gen/man" "$gen/completions"
"$target_dir/release/juju-brd" man --dir "$gen/man" >/dev/null
gzip -9n "$gen"/man/*.1
"$target_dir/release/juju-brd" completions bash >"$gen/completions/juju-brd"
"$target_dir/release/juju-brd" completions zsh >"$gen/completions/_juju-brd"
"$target_dir/release/juju-brd" completions fish >"$gen/completions/juju-brd.fish"
cargo deb --locked --no-build
deb=$(ls -t "$target_dir"/debian/juju-brd_*.deb | head -n1)
contents=$(dpkg-deb -c "$deb")
pages=()
for p in "$gen"/man/*.1.gz; do pages+=("./usr/share/man/man1/${p##*/}"); done
for f in ./usr/bin/juju-brd ./etc/juju-brd/juju-brd.toml ./usr/share/doc/juju-brd/README.md \
         ./usr/lib/systemd/system/juju-brd.service \
         ./usr/share/man/man1/juju-brd.1.gz ./usr/share/man/man1/juju-brd-backup.1.gz "${pages[@]}" \
         ./usr/share/bash-completion/completions/juju-brd ./usr/share/zsh/vendor-completions/_juju-brd \
         ./usr/share/fish/vendor_completions.d/juju-brd.fish; do
  grep -q " $f\$" <<<"$contents" || { echo "missing in $deb: $f" >&2; echo "$contents" >&2; exit 1; }
done
dpkg-deb -e "$deb" "$target_dir"/debian/control.check
grep -qx /etc/juju-brd/juju-brd.toml "$target_dir"/debian/control.check/conffiles || { echo "config is not a conffile" >&2; exit 1; }
grep -q "install -d -m 0700" "$target_dir"/debian/control.check/postinst || { echo "postinst does not create the directories" >&2; exit 1; }
# Install into a scratch root and run the packaged binary from there.
scratch=$(mktemp -d)
dpkg -x "$deb" "$scratch"
"$scratch/usr/bin/juju-brd" check-config --config "$scratch/etc/juju-brd/juju-brd.toml" >/dev/null
# The packaged pages are the ones this binary writes, and the bash completion registers itself.
for p in "$gen"/man/*.1.gz; do
  cmp -s "$p" "$scratch/usr/share/man/man1/${p##*/}" || { echo "packaged ${p##*/} differs" >&2; exit 1; }
done
bash --norc --noprofile -c 'source "$1" && complete -p juju-brd' bash \
  "$scratch/usr/share/bash-completion/completions/juju-brd" >/dev/null \
  || { echo "the packaged bash completion does not register juju-brd" >&2; exit 1; }
rm -rf "$scratch" "$target_dir"/debian/control.check
echo "deb OK: $deb"
