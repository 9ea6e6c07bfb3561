#!/usr/bin/env bash
# The large run: bench/out/root (the generated 1 GiB state-server tree) with its SQLite database
# replaced by a generated one of DB_MIB (default 9216: about 10 GiB of state, mostly database).
# A gzip backup with the default settings (verification on), with the disk high-water mark of the
# archive directory (staging included) sampled every 0.2 s; then a zstd -3 backup and a restore of
# the gzip archive into an empty root. Prints wall time and peak RSS of each.
#
# Usage: bench/large.sh [DB_MIB=9216]     (after bench/run.sh has generated bench/out/root)
set -euo pipefail
cd "$(dirname "$0")/.."
db_mib=${1:-9216}
out=bench/out
cargo build --release --quiet        # the code as it is, as bench/run.sh does
target=${CARGO_TARGET_DIR:-target}
bin=$target/release/juju-brd
big=$out/big
if [ "$(cat "$out/big.size" 2>/dev/null)" != "$db_mib" ]; then
  rm -rf "$big"
  cp -al "$out/root" "$big"            # hard links: no space for the tree itself
  rm "$big/var/lib/juju/db/state.db"
  python3 - "$big/var/lib/juju/db/state.db" "$db_mib" <<'PY'
import sqlite3, sys, random, json
path, mib = sys.argv[1], int(sys.argv[2])
rnd = random.Random(7)
db = sqlite3.connect(path)
db.execute("PRAGMA journal_mode=WAL")
db.execute("CREATE TABLE txns (id INTEGER PRIMARY KEY, model TEXT, doc TEXT)")
words = ["machine", "unit", "application", "relation", "charm", "status", "active", "idle",
         "executing", "agent", "controller", "model", "storage", "network", "space", "subnet"]
target, done, i = mib << 20, 0, 0
while done < target:
    rows = []
    for _ in range(2000):
        doc = json.dumps({"_id": f"{rnd.getrandbits(64):016x}", "txn-revno": i,
                          "life": rnd.randrange(3), "name": f"{rnd.choice(words)}-{rnd.randrange(10**6)}",
                          "status": " ".join(rnd.choice(words) for _ in range(24)),
                          "data": "%032x" % rnd.getrandbits(128)})
        rows.append((i, "c3a5f0de-%04d" % (i % 97), doc)); i += 1; done += len(doc) + 60
    db.executemany("INSERT INTO txns VALUES (?, ?, ?)", rows)
    db.commit()
db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
db.close()
PY
  echo "$db_mib" > "$out/big.size"
fi
sed -e 's#^root = "root"#root = "big"#' -e 's#root/var/lib/juju/db/state.db#big/var/lib/juju/db/state.db#' \
  -e 's#^archive_dir = "archives"#archive_dir = "big-archives"#' "$out/bench.toml" > "$out/big.toml"
sed 's/^\[backup\]$/[backup]\nlevel = 3\ncompression = "zstd"/' "$out/big.toml" > "$out/big-zstd.toml"
rm -rf "$out/big-archives"; mkdir -p "$out/big-archives"; sync
input=$(du -sb "$big" | cut -f1)
# backup CONFIG: prints "secs rss high-water" for one backup, sampling the archive directory's
# disk use (staging included; blocks allocated, so the holes punched into the staging files as
# they are copied into the archive do not count) every 0.2 s.
backup() {
  rm -f "$out/big.done" "$out/big.hw"
  ( hw=0; while [ ! -e "$out/big.done" ]; do
      u=$(du -s -B1 "$out/big-archives" 2>/dev/null | cut -f1); [ "${u:-0}" -gt "$hw" ] && hw=$u
      echo "$hw" > "$out/big.hw"; sleep 0.2; done ) &
  local stats
  stats=$( { /usr/bin/time -f '%e %M' "$bin" backup --offline --config "$1" >/dev/null; } 2>&1 | tail -n1 )
  touch "$out/big.done"; wait
  echo "$stats $(cat "$out/big.hw")"
}
read -r secs rss hw <<<"$(backup "$out/big.toml")"
archive_path=$(ls "$out"/big-archives/*.tar.gz)
archive=$(stat -c %s "$archive_path")
dbsize=$(stat -c %s "$big/var/lib/juju/db/state.db")
sync
# The gzip archive stays for the restore below: the zstd run's high-water is beyond it.
gzip_blocks=$(du -s -B1 "$out/big-archives" | cut -f1)
read -r zsecs zrss zhw <<<"$(backup "$out/big-zstd.toml")"
zhw=$((zhw - gzip_blocks))
zarchive=$(stat -c %s "$out"/big-archives/*.tar.zst)
zstats="$zsecs $zrss $zhw $zarchive"
rm -f "$out"/big-archives/*.tar.zst*
rm -rf "$out/big-x"; mkdir -p "$out/big-x"; sync
rstats=$( { /usr/bin/time -f '%e %M' "$bin" restore --yes --config "$out/big.toml" --address 127.0.0.1 \
           --target-root "$out/big-x" "$archive_path" >/dev/null; } 2>&1 | tail -n1 )
rm -rf "$out/big-x"
python3 - "$input" "$dbsize" "$secs" "$rss" "$archive" "$hw" $zstats $rstats <<'PY'
import sys
inp, db, secs, rss, arc, hw = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
zsecs, zrss, zhw, zarc = float(sys.argv[7]), int(sys.argv[8]), int(sys.argv[9]), int(sys.argv[10])
rsecs, rrss = float(sys.argv[11]), int(sys.argv[12])
G = 2**30
print(f"state {inp/G:.2f} GiB (database {db/G:.2f} GiB)")
print(f"gzip backup, default settings (verification on): wall {secs:.1f} s ({inp/2**20/secs:.0f} MiB/s), peak RSS {rss/1024:.0f} MiB")
print(f"  archive {arc/G:.2f} GiB (ratio {inp/arc:.2f}); disk high-water of the archive directory {hw/G:.2f} GiB, "
      f"{(hw-arc)/G:.2f} GiB beyond the finished archive (staged dump {db/G:.2f} GiB)")
print(f"zstd -3 backup (verification on): wall {zsecs:.1f} s ({inp/2**20/zsecs:.0f} MiB/s), peak RSS {zrss/1024:.0f} MiB")
print(f"  archive {zarc/G:.2f} GiB; disk high-water {zhw/G:.2f} GiB, {(zhw-zarc)/G:.2f} GiB beyond the finished archive")
print(f"restore of the gzip archive: wall {rsecs:.1f} s ({inp/2**20/rsecs:.0f} MiB/s), peak RSS {rrss/1024:.0f} MiB")
PY
rm -rf "$out/big-archives"
