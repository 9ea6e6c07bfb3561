#!/usr/bin/env bash
# Runs every test, the ignored ones included, after installing what they need if it is missing:
# Debian packages (apt-get update only when one is missing) and s3s-fs (cargo install). Quiet
# when everything is there. Extra arguments go to `cargo test` (e.g. `./test.sh --test daemon`).
# Tests that need root (a tmpfs, another user) fail unless this runs as root.
set -euo pipefail
cd "$(dirname "$0")"
export PATH="$HOME/.cargo/bin:$PATH"

# What the ignored tests run, by Debian package: age (age, age-keygen), prometheus (promtool),
# go-dqlite (dqlite, dqlite-demo), zstd (tar --zstd), systemd (systemd-analyze), python3
# (/usr/bin/python3 as user nobody), util-linux (setpriv), mount (a tmpfs), e2fsprogs (chattr),
# strace (holds open() back in tests/data_safety.rs to widen a race);
# man-db and groff-base (man, groff), zsh, fish (tests/manpages.rs); iproute2 (ip netns),
# openssh-server (sshd), openssh-client (ssh, ssh-keygen, ssh-keyscan), sudo (the lab of
# tests/common/lab.rs: machines as network namespaces running sshd; its sshds listen only there,
# so an sshd the package's install may start on this machine is no matter); tar and gzip for all.
missing=()
for pkg in age prometheus go-dqlite zstd systemd python3 util-linux mount e2fsprogs tar gzip strace man-db groff-base zsh fish iproute2 openssh-server openssh-client sudo; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
# tests/systemd_real.rs boots the .deb under a real systemd: debootstrap (a minimal root of this
# host's suite, from the mirror in its apt sources), systemd-container (systemd-nspawn).
for pkg in debootstrap systemd-container; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=()
  [ "$(id -u)" -eq 0 ] || sudo=(sudo)
  echo "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  "${sudo[@]}" apt-get update -qq
  "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# A real S3 server for tests/remote.rs and the daemon's off-host copy test.
if ! command -v s3s-fs >/dev/null; then
  echo "installing s3s-fs (cargo install s3s-fs@0.14.1)"
  cargo install s3s-fs@0.14.1 --locked --features binary --quiet
fi
[ "$(id -u)" -eq 0 ] || echo "note: not root, so the tests that need root will fail"

args=(--include-ignored)
# MongoDB is in no registry this project installs from (no Debian package ships it): where it
# is missing, its one test is left out, and this says so.
mongo_test=mongodump_of_a_real_juju_db
if ! { command -v mongod && command -v mongodump && { command -v mongo || command -v mongosh; }; } >/dev/null; then
  echo "not run: $mongo_test (tests/mongo.rs) needs mongod, mongodump and the mongo or mongosh shell; no Debian package ships MongoDB"
  args+=(--skip "$mongo_test" --exact)
fi
exec cargo test --locked "$@" -- "${args[@]}"
