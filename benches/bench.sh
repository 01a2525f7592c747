#!/usr/bin/env bash
# End-to-end layer benchmarks. Run from the repository root:
#
#   bash benches/bench.sh
#
# 1. builds the `write_layer` example (release);
# 2. generates, once, a deterministic 200 MB tree of ~20,000 small files and
#    three large ones under ${BENCH_DIR:-/tmp/dallinger-oci-bench} (reused);
# 3. times write_layer against `tar --sort=name ... | gzip -6 -n` with hyperfine
#    and compares speed and compressed size;
# 4. measures peak memory while writing a ~1 GB layer;
# 5. optionally times the dallinger-oci CLI (BENCH_DEMO_CMD, BENCH_NOOP_BUILD);
# 6. prints a summary table.
#
# Nothing here asserts on timings: the figures are for people to read.
#
# Environment:
#   BENCH_DIR         where trees and outputs go (default /tmp/dallinger-oci-bench)
#   BENCH_RUNS        hyperfine runs per command (default 3)
#   BENCH_CLI         the CLI binary (default target/release/dallinger-oci)
#   BENCH_DEMO_CMD    a command using the CLI to time, run only if the CLI exists
#   BENCH_NOOP_BUILD  a no-op rebuild command to time (see the hook below)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

BENCH_DIR=${BENCH_DIR:-/tmp/dallinger-oci-bench}
RUNS=${BENCH_RUNS:-3}
TREE=$BENCH_DIR/tree200
BIG=$BENCH_DIR/tree1g
OUT=$BENCH_DIR/out
WRITE_LAYER=target/release/examples/write_layer
CLI=${BENCH_CLI:-target/release/dallinger-oci}
# Bump when the generator changes, so old trees are regenerated.
GEN_VERSION=1

mkdir -p "$BENCH_DIR" "$OUT"

need() {
    command -v "$1" >/dev/null || { echo "bench.sh: $1 is required" >&2; exit 1; }
}
need hyperfine
need python3
need tar
need gzip
[ -x /usr/bin/time ] || { echo "bench.sh: /usr/bin/time (GNU time) is required" >&2; exit 1; }

section() { printf '\n=== %s ===\n' "$*"; }

# ---------------------------------------------------------------------------
section "a. build write_layer (release)"
cargo build --release --example write_layer -p dallinger-oci-layers

# ---------------------------------------------------------------------------
# Content: a seeded pool of text runs (words from a small vocabulary) mixed
# with runs of random bytes; files are slices of it at seeded offsets. gzip -6
# shrinks it to roughly 40%. The pool is far larger than deflate's 32 KiB
# window, so the slicing does not make it more compressible.
generate() { # generate MODE DIR
    python3 - "$@" <<'PY'
import os, random, sys

mode, root = sys.argv[1], sys.argv[2]
rng = random.Random(20240611)
WORDS = ("the layer image file return self let mut impl for while match Some None "
         "Ok Err fn pub struct enum use std io write read path digest sha256 config "
         "manifest blob index tar gzip entry header mode experiment participant "
         "network node info vector question bot recruiter server import from def "
         "class if else elif in not and or True False print lambda yield async "
         "await { } ( ) [ ] ; : = == -> => // # , . 0 1 42 1024").split() + \
        ["\n", "\n    ", "\n        "]
WORDS = [w.encode() for w in WORDS]

parts, size = [], 0
while size < 16 << 20:
    text = b" ".join(rng.choices(WORDS, k=rng.randint(12, 100)))
    noise = rng.randbytes(rng.randint(8, 96))
    parts += (text, noise)
    size += len(text) + len(noise)
POOL = b"".join(parts)
del parts

def content(n):
    out = []
    while n > 0:
        start = rng.randrange(len(POOL) - 65536)
        take = min(n, 65536)
        out.append(POOL[start:start + take])
        n -= take
    return b"".join(out)

def write_big(path, n):
    with open(path, "wb") as f:
        while n > 0:
            chunk = content(min(n, 4 << 20))
            f.write(chunk)
            n -= len(chunk)

if mode == "tree200":
    # Decimal megabytes, as hyperfine and divan report MB/s.
    large = [10_000_000, 25_000_000, 40_000_000]
    small_total = 200_000_000 - sum(large)
    total, i = 0, 0
    while total < small_total:
        n = min(1024 + int(15 * 1024 * rng.random() ** 2), small_total - total)
        d = os.path.join(root, "app", f"pkg{i % 40:02d}", f"mod{(i // 40) % 10}")
        if i < 400:
            os.makedirs(d, exist_ok=True)
        ext = (".py", ".js", ".txt", ".json", ".sh")[i % 5]
        p = os.path.join(d, f"file{i:05d}{ext}")
        with open(p, "wb") as f:
            f.write(content(n))
        if ext == ".sh":
            os.chmod(p, 0o755)
        total += n
        i += 1
    os.makedirs(os.path.join(root, "data"), exist_ok=True)
    for k, n in enumerate(large):
        write_big(os.path.join(root, "data", f"large{k}.bin"), n)
    os.makedirs(os.path.join(root, "app", "empty"), exist_ok=True)
    os.symlink("pkg00/mod0", os.path.join(root, "app", "current"))
    os.symlink("../data/large0.bin", os.path.join(root, "app", "large.bin"))
elif mode == "big":
    # Two 400 MB files; the rest of the 1 GB tree is hard links to tree200.
    for k in range(2):
        write_big(os.path.join(root, f"big{k}.bin"), 400_000_000)
PY
}

file_bytes() { find "$1" -type f -printf '%s\n' | awk '{s += $1} END {print s + 0}'; }
file_count() { find "$1" -type f | wc -l; }

# ---------------------------------------------------------------------------
section "b. 200 MB tree ($TREE)"
if [ "$(cat "$TREE.done" 2>/dev/null)" != "$GEN_VERSION" ]; then
    rm -rf "$TREE" "$TREE.done"
    mkdir -p "$TREE"
    start=$SECONDS
    generate tree200 "$TREE"
    echo "$GEN_VERSION" >"$TREE.done"
    echo "generated in $((SECONDS - start)) s"
else
    echo "reusing existing tree"
fi
TREE_BYTES=$(file_bytes "$TREE")
TREE_FILES=$(file_count "$TREE")
echo "$TREE_FILES files, $TREE_BYTES bytes"

# ---------------------------------------------------------------------------
section "c. write_layer vs tar | gzip -6 (hyperfine, $RUNS runs)"
OURS_OUT=$OUT/ours.tar.gz
OURS1_OUT=$OUT/ours-w1.tar.gz
PEER_OUT=$OUT/peer.tar.gz
q() { printf '%q' "$1"; }
OURS_CMD="$(q "$WRITE_LAYER") $(q "$TREE") $(q "$OURS_OUT") >/dev/null"
OURS1_CMD="$(q "$WRITE_LAYER") $(q "$TREE") $(q "$OURS1_OUT") --workers 1 >/dev/null"
PEER_CMD="sh -c \"tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -cf - -C $(q "$TREE") . | gzip -6 -n > $(q "$PEER_OUT")\""
hyperfine --warmup 1 --runs "$RUNS" --export-json "$OUT/layer.json" \
    -n "write_layer (workers=auto)" "$OURS_CMD" \
    -n "write_layer (workers=1)" "$OURS1_CMD" \
    -n "tar | gzip -6 -n" "$PEER_CMD"

echo
echo "write_layer output:"
"$WRITE_LAYER" "$TREE" "$OURS_OUT" | sed 's/^/  /'
if gzip -t "$OURS_OUT"; then echo "  gzip -t: ok"; else echo "  WARNING: gzip -t failed"; fi
if cmp -s "$OURS_OUT" "$OURS1_OUT"; then
    echo "  workers=auto and workers=1 outputs identical"
else
    echo "  WARNING: workers=auto and workers=1 outputs differ"
fi

# Prints the comparison and leaves a summary fragment in $OUT/layer.txt.
python3 - "$OUT/layer.json" "$TREE_BYTES" "$OURS_OUT" "$PEER_OUT" "$OUT/layer.txt" <<'PY'
import json, os, sys
path, tree_bytes, ours_out, peer_out, summary = sys.argv[1:]
tree_bytes = int(tree_bytes)
results = json.load(open(path))["results"]
mean = {r["command"]: r["mean"] for r in results}
sd = {r["command"]: r.get("stddev") or 0.0 for r in results}
ours, ours1, peer = "write_layer (workers=auto)", "write_layer (workers=1)", "tar | gzip -6 -n"
ours_size, peer_size = os.path.getsize(ours_out), os.path.getsize(peer_out)
lines = [f"  {'command':<28} {'mean ± σ':>17}  {'speed':>12}  {'output':>11}"]
for name, out_size in ((ours, ours_size), (ours1, ours_size), (peer, peer_size)):
    lines.append(f"  {name:<28} {mean[name]:7.2f} s ± {sd[name]:5.2f}  {tree_bytes / mean[name] / 1e6:7.1f} MB/s"
                 f"  {out_size / 1e6:8.2f} MB  ({out_size / tree_bytes:.3f} of input)")
lines.append(f"  time ours/peer: {mean[ours] / mean[peer]:.2f} (workers=auto), "
             f"{mean[ours1] / mean[peer]:.2f} (workers=1); below 1 means ours is faster")
lines.append(f"  size ours/peer: {ours_size / peer_size:.3f} "
             f"({ours_size} vs {peer_size} bytes)")
text = "\n".join(lines)
print()
print(text)
open(summary, "w").write(text + "\n")
PY

# ---------------------------------------------------------------------------
section "d. peak memory writing a ~1 GB layer ($BIG)"
if [ "$(cat "$BIG.done" 2>/dev/null)" != "$GEN_VERSION" ]; then
    rm -rf "$BIG" "$BIG.done"
    mkdir -p "$BIG"
    cp -al "$TREE" "$BIG/tree200" # hard links: no extra disk, regular files to the walker
    generate big "$BIG"
    echo "$GEN_VERSION" >"$BIG.done"
else
    echo "reusing existing tree"
fi
BIG_BYTES=$(file_bytes "$BIG")
echo "$(file_count "$BIG") files, $BIG_BYTES bytes"
/usr/bin/time -v -o "$OUT/time-1g.txt" "$WRITE_LAYER" "$BIG" "$OUT/big.tar.gz" >"$OUT/big.digests"
sed 's/^/  /' "$OUT/big.digests"
RSS_KB=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$OUT/time-1g.txt")
WALL=$(awk -F': ' '/Elapsed \(wall clock\)/ {print $2}' "$OUT/time-1g.txt")
BIG_SIZE=$(stat -c %s "$OUT/big.tar.gz")
RSS_MB=$(awk -v k="$RSS_KB" 'BEGIN {printf "%.1f", k / 1024}')
echo "  Maximum resident set size: $RSS_KB kB = $RSS_MB MB (wall $WALL)"
rm -f "$OUT/big.tar.gz" # ~0.4 GB; the tree is kept for the next run

# ---------------------------------------------------------------------------
section "e. dallinger-oci CLI"
CLI_NOTE="skipped"
if [ -x "$CLI" ]; then
    if [ -n "${BENCH_DEMO_CMD:-}" ]; then
        hyperfine --warmup 1 --runs "$RUNS" --export-json "$OUT/cli-demo.json" "$BENCH_DEMO_CMD"
        CLI_NOTE="BENCH_DEMO_CMD mean $(python3 -c 'import json, sys; r = json.load(open(sys.argv[1]))["results"][0]; print("%.3f s ± %.3f" % (r["mean"], r["stddev"] or 0))' "$OUT/cli-demo.json")"
    else
        echo "skipped: set BENCH_DEMO_CMD to a command using $CLI"
    fi
    # ---- HOOK: no-op rebuild benchmark --------------------------------------
    # The CLI is still being written; once `build` skips unchanged layers, set
    # BENCH_NOOP_BUILD to a rebuild of an unchanged experiment.
    if [ -n "${BENCH_NOOP_BUILD:-}" ]; then hyperfine --warmup 2 --runs 10 "$BENCH_NOOP_BUILD"; fi
    # ---- end of hook ---------------------------------------------------------
else
    echo "skipped: $CLI not built (cargo build --release)"
fi

# ---------------------------------------------------------------------------
section "f. summary"
echo "tree: $TREE_FILES files, $(awk -v b="$TREE_BYTES" 'BEGIN {printf "%.1f", b / 1e6}') MB; $(nproc) cores"
cat "$OUT/layer.txt"
echo "1 GB layer ($(awk -v b="$BIG_BYTES" 'BEGIN {printf "%.0f", b / 1e6}') MB in, $(awk -v b="$BIG_SIZE" 'BEGIN {printf "%.0f", b / 1e6}') MB out): max RSS $RSS_MB MB, wall $WALL"
echo "CLI: $CLI_NOTE"
