#!/usr/bin/env bash
# Benchmark: juju-brd offline backup (gzip with the default settings, gzip without verification,
# gzip at libdeflate level 6, zstd -3 with verification) vs tar czf / tar -I pigz / tar -I 'zstd -3 -T0' on the same generated state-server data
# set, and juju-brd restore vs tar xzf + sync, alternating, in one run. Prints a Markdown table;
# "speed vs ref" is the speed ratio to the row's reference, measured in the same run: tar czf for
# gzip rows, tar zstd for zstd rows, tar xzf+sync for restore rows. "size vs tar czf" compares
# output sizes.
#
# Usage: bench/run.sh [SIZE_MIB=1024] [ROUNDS=3]      (needs pigz, zstd, /usr/bin/time, and root
# for the loop-mounted filesystems the restore rounds extract into)
set -euo pipefail
cd "$(dirname "$0")/.."
size=${1:-1024}
rounds=${2:-3}
out=bench/out
mkdir -p "$out"
cargo build --release --quiet
target=${CARGO_TARGET_DIR:-target}
bin=$target/release/juju-brd
[ -d "$out/root" ] && [ "$(cat "$out/root.size" 2>/dev/null)" = "$size" ] ||
  { rm -rf "$out/root"; "$target/release/juju-brd-fixture" "$out/root" --size-mib "$size" >/dev/null && echo "$size" > "$out/root.size"; }

cat > "$out/bench.toml" <<TOML
environment = "bench"
archive_dir = "archives"
state_dir = "state"
[backup]
[files]
root = "root"
optional = ["/var/log/juju", "/var/lib/juju/charmcache", "/var/lib/juju/init/*", "/var/lib/juju/nonce.txt", "/home/ubuntu/.ssh/authorized_keys", "/etc/systemd/system/jujud-machine-*.service"]
[database]
engine = "sqlite"
path = "root/var/lib/juju/db/state.db"
[restore]
stop_commands = []
start_commands = []
probe_ports = []
TOML
# The same set for tar: the juju-brd include list plus logs and the DB file.
paths=(var/lib/juju var/log/juju home/ubuntu/.ssh/authorized_keys etc/systemd/system/jujud-machine-0.service)
input=$(du -sb "$out/root" | cut -f1)
# Variants of the backup config: gzip without verification, zstd level 3 (with verification).
sed 's/^\[backup\]$/[backup]\nverify_after = false/' "$out/bench.toml" > "$out/bench-noverify.toml"
sed 's/^\[backup\]$/[backup]\nlevel = 3\ncompression = "zstd"/' "$out/bench.toml" > "$out/bench-zstd.toml"
sed 's/^\[backup\]$/[backup]\nlevel = 6/' "$out/bench.toml" > "$out/bench-level6.toml"

run() { # name command...  -> appends "name secs rss bytes" to $out/results
  local name=$1; shift
  rm -rf "$out/archives" "$out/t.tar.gz" "$out/t.tar.zst" "$out/x"
  sync
  local stats
  stats=$( { /usr/bin/time -f '%e %M' "$@" >/dev/null; } 2>&1 | tail -n1 )
  local bytes=0 f
  for f in "$out"/archives/*.tar.gz "$out"/archives/*.tar.zst "$out"/t.tar.gz "$out"/t.tar.zst; do
    if [ -f "$f" ]; then bytes=$((bytes + $(stat -c %s "$f"))); fi
  done
  echo "$name $stats $bytes" >> "$out/results"
}

[ -x /usr/bin/time ] || { echo "needs /usr/bin/time (Debian package time)" >&2; exit 1; }

# Warm the page cache once, so the first round measures the tools and not the disk (GNU tar
# skips reading files when its output is /dev/null itself, hence the pipe).
tar -C "$out/root" -cf - "${paths[@]}" | cat > /dev/null
: > "$out/results"
for r in $(seq "$rounds"); do
  run "juju-brd gzip (verify on, default)" "$bin" backup --offline --config "$out/bench.toml"
  run "tar czf" tar -C "$out/root" -czf "$out/t.tar.gz" "${paths[@]}"
  run "juju-brd gzip, verify_after = false" "$bin" backup --offline --config "$out/bench-noverify.toml"
  run "tar -I pigz" tar -C "$out/root" -I "pigz -6" -cf "$out/t.tar.gz" "${paths[@]}"
  run "juju-brd gzip level 6 (verify on)" "$bin" backup --offline --config "$out/bench-level6.toml"
  run "juju-brd zstd -3 (verify on)" "$bin" backup --offline --config "$out/bench-zstd.toml"
  run "tar -I 'zstd -3 -T0'" tar -C "$out/root" -I "zstd -3 -T0" -cf "$out/t.tar.zst" "${paths[@]}"
done
# Restore side, alternating: juju-brd restore (one pass: verify while extracting into a staging
# directory, one syncfs, move into place, DB replace) into an empty root vs tar xzf of the same
# files followed by sync. Each run gets a freshly made ext4 filesystem (a loop-mounted image,
# ext4's defaults, journal included), as a replacement host has. Extracting into a directory
# where a previous round's 100k files were just deleted measures the filesystem instead: on
# this VM's root ext4 (no journal) the inode allocator skips every recently freed inode
# (`recently_deleted`, 25-50 s of system time in `perf` for either tool).
[ "$(id -u)" = 0 ] || { echo "the restore rounds need root (mount -o loop)" >&2; exit 1; }
fresh_fs() {
  umount "$out/x" 2>/dev/null || true
  rm -rf "$out/x" "$out/restore.img"; mkdir -p "$out/x"
  truncate -s $(( (input * 3 >> 30) + 2 ))G "$out/restore.img"
  mkfs.ext4 -q -F "$out/restore.img"
  mount -o loop "$out/restore.img" "$out/x"
  sync
}
trap 'umount "$out/x" 2>/dev/null || true; rm -f "$out/restore.img"' EXIT
rm -rf "$out/archives"
brd_archive=$("$bin" backup --offline --config "$out/bench.toml" 2>/dev/null | tail -n1)
tar -C "$out/root" -czf "$out/ref.tar.gz" "${paths[@]}"
for r in $(seq "$rounds"); do
  fresh_fs
  s=$( { /usr/bin/time -f '%e %M' "$bin" restore --yes --config "$out/bench.toml" --address 127.0.0.1 \
         --target-root "$out/x" "$brd_archive" >/dev/null; } 2>&1 | tail -n1 )
  echo "juju-brd restore $s $(stat -c %s "$brd_archive")" >> "$out/results"
  fresh_fs
  s=$( { /usr/bin/time -f '%e %M' sh -c "tar -C $out/x -xzf $out/ref.tar.gz && sync" >/dev/null; } 2>&1 | tail -n1 )
  echo "tar xzf+sync $s $(stat -c %s "$out/ref.tar.gz")" >> "$out/results"
done
umount "$out/x"
rm -rf "$out/x"

python3 - "$out/results" "$input" <<'PY'
import sys, statistics, collections
rows = collections.OrderedDict()
for line in open(sys.argv[1]):
    *name, secs, rss, size = line.split()
    rows.setdefault(" ".join(name), []).append((float(secs), int(rss), int(size)))
inp = int(sys.argv[2])
med = lambda name: statistics.median(s for s, _, _ in rows[name])
ref_of = lambda n: "tar xzf+sync" if ("restore" in n or "xzf" in n) else ("tar -I 'zstd -3 -T0'" if "zstd" in n else "tar czf")
czf_size = statistics.median(x[2] for x in rows["tar czf"])
print(f"input: {inp/2**20:.0f} MiB, {len(next(iter(rows.values())))} rounds, median wall time (min-max)")
print("| tool | wall s | MiB/s | ratio | size vs tar czf | peak RSS MiB | speed vs ref | ref |")
print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
for name, v in rows.items():
    s = statistics.median(x[0] for x in v); lo = min(x[0] for x in v); hi = max(x[0] for x in v)
    rss = max(x[1] for x in v) / 1024; size = statistics.median(x[2] for x in v)
    ref = ref_of(name)
    print(f"| {name} | {s:.2f} ({lo:.1f}-{hi:.1f}) | {inp/2**20/s:.0f} | {inp/size:.2f} | {100*(size/czf_size-1):+.1f}% | {rss:.0f} | {med(ref)/s:.2f}x | {ref} |")
# Per-round ratios (each juju-brd run against the reference run right after it).
print()
print("per-round speed ratios:")
for name in rows:
    if name.startswith("juju-brd"):
        ref = ref_of(name)
        r = [b[0] / a[0] for a, b in zip(rows[name], rows[ref])]
        print(f"  {name} vs {ref}: " + ", ".join(f"{x:.2f}x" for x in r))
PY
