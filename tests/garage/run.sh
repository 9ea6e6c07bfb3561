#!/usr/bin/env bash
# Off-host copies against Garage: a 3-node cluster, replication factor 3, on loopback.
# Drives the real CLI: backup --offline (upload + read-back), list --remote, then a restore
# --remote whose download loses one Garage node part-way, and verify/compare of what came back.
#
# Usage: tests/garage/run.sh [STATE_MIB=256]
# Needs: garage on PATH (cargo install garage --locked), a built juju-brd (cargo build --release).
# Everything runs on 127.0.0.1 and is removed at the end; it prints PASS or the step that failed.
set -euo pipefail
cd "$(dirname "$0")/../.."
size=${1:-256}
command -v garage >/dev/null || { echo "garage is not installed: cargo install garage --locked" >&2; exit 2; }
cargo build --release --quiet
bin=$PWD/target/release/juju-brd
work=$(mktemp -d /tmp/juju-brd-garage.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
step() { echo "== $*"; }

secret=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
token=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
base=$((20000 + RANDOM % 20000))
for n in 1 2 3; do
  mkdir -p "$work/n$n"/{meta,data}
  cat > "$work/n$n.toml" <<TOML
metadata_dir = "$work/n$n/meta"
data_dir = "$work/n$n/data"
db_engine = "sqlite"
replication_factor = 3
rpc_bind_addr = "127.0.0.1:$((base + n * 10 + 1))"
rpc_public_addr = "127.0.0.1:$((base + n * 10 + 1))"
rpc_secret = "$secret"
[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:$((base + n * 10))"
root_domain = ".s3.garage.localhost"
[admin]
api_bind_addr = "127.0.0.1:$((base + n * 10 + 3))"
admin_token = "$token"
TOML
  garage -c "$work/n$n.toml" server > "$work/n$n.log" 2>&1 &
  pids+=($!)
done
g() { garage -c "$work/n1.toml" "$@"; }
step "3 nodes started; connecting them"
for i in $(seq 100); do g status >/dev/null 2>&1 && break; sleep 0.1; done
for n in 2 3; do
  id=$(garage -c "$work/n$n.toml" node id -q)
  g node connect "$id" >/dev/null
done
for n in 1 2 3; do
  id=$(garage -c "$work/n$n.toml" node id -q | cut -d@ -f1)
  g layout assign -z "dc$n" -c 1G "$id" >/dev/null
done
g layout apply --version 1 >/dev/null
for i in $(seq 100); do g bucket create juju-backups >/dev/null 2>&1 && break; sleep 0.2; done
keyout=$(g key create juju-brd)
key_id=$(echo "$keyout" | awk '/Key ID/ {print $NF}')
key_secret=$(echo "$keyout" | awk '/Secret key/ {print $NF}')
g bucket allow --read --write --owner juju-backups --key juju-brd >/dev/null
g status | sed 's/^/   /'

step "a ${size} MiB state-server and a config with the Garage remote"
./target/release/juju-brd-fixture "$work/root" --size-mib "$size" >/dev/null
printf '[default]\naws_access_key_id = %s\naws_secret_access_key = %s\n' "$key_id" "$key_secret" > "$work/cred"
chmod 600 "$work/cred"
cat > "$work/cfg.toml" <<TOML
environment = "garage-test"
archive_dir = "archives"
state_dir = "state"
[files]
root = "root"
[database]
engine = "sqlite"
path = "root/var/lib/juju/db/state.db"
[[remote]]
name = "garage"
endpoint = "http://127.0.0.1:$((base + 10))"
region = "garage"
bucket = "juju-backups"
prefix = "prod"
path_style = true
credentials_file = "cred"
retries = 2
retry_delay = "1s"
[restore]
stop_commands = []
start_commands = []
probe_ports = []
TOML
export JUJU_BRD_CONFIG=$work/cfg.toml

step "backup --offline: written, uploaded multipart, read back"
archive=$("$bin" backup --offline 2>"$work/backup.err" | tail -1)
name=$(basename "$archive")
grep -q "$name" "$work/state/replicated.json" || { cat "$work/backup.err"; echo "FAIL: not recorded as replicated"; exit 1; }
ls -l "$archive" | sed 's/^/   /'
if grep -q "$key_secret" "$work/backup.err"; then echo "FAIL: secret in the log"; exit 1; fi

step "list --remote garage"
"$bin" list --remote garage | sed 's/^/   /'
"$bin" list --remote garage | grep -q "$name"

step "restore --remote garage $name, killing node 3 during the download"
cp "$archive" "$work/original.tar.gz"
rm "$archive" "$archive.sha256"
mkdir -p "$work/hostB"
start=$(date +%s.%N)
"$bin" restore --yes --address 10.20.30.40 --target-root "$work/hostB" --remote garage "$name" \
  > "$work/restore.out" 2> "$work/restore.err" &
restore_pid=$!
# Kill as soon as the download has begun (its .part file exists).
for i in $(seq 400); do [ -e "$archive.part" ] && break; sleep 0.01; done
kill -9 "${pids[2]}"
killed=$(date +%s.%N)
part_then=$(stat -c %s "$archive.part" 2>/dev/null || echo "gone")
echo "   node 3 killed $(echo "$killed - $start" | bc) s after the restore started; partial download then: $part_then bytes"
if ! wait "$restore_pid"; then cat "$work/restore.err"; echo "FAIL: restore"; exit 1; fi
cmp "$archive" "$work/original.tar.gz" && echo "   downloaded archive is byte-identical to the original"
"$bin" verify "$archive" | sed 's/^/   /'
cmp "$work/root/var/lib/juju/server.pem" "$work/hostB/var/lib/juju/server.pem"
diff -r "$work/root/var/lib/juju/agents/machine-0/tools" "$work/hostB/var/lib/juju/agents/machine-0/tools" 2>/dev/null || true
tail -3 "$work/restore.out" | sed 's/^/   /'

step "with node 3 still down: two more backups under a remote policy of keep_last = 1"
# The remote's own policy goes in its [[remote]] table, which ends where [restore] begins.
sed -i 's/^\[restore\]$/[remote.retention]\nkeep_last = 1\n\n[restore]/' "$work/cfg.toml"
for i in 1 2; do sleep 1; "$bin" backup --offline 2>>"$work/backup.err" | tail -1 | sed 's/^/   /'; done
left=$("$bin" list --remote garage --json | grep -c '"name"')
"$bin" list --remote garage | sed 's/^/   /'
[ "$left" = 1 ] || { echo "FAIL: the remote holds $left archives, want 1"; exit 1; }
echo "PASS: 3-node Garage (replication factor 3): multipart upload, read-back, list, restore with a node lost mid-download, uploads and remote retention with a node down"
