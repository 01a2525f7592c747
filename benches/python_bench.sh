#!/usr/bin/env bash
# Python layers benchmark, in one run:
#  1. a cold build of the Dallinger closure with the wheels already cached,
#     against `pip install --no-deps --no-compile --prefix` of the same wheels
#     followed by `tar | gzip -6 -n` (the peer);
#  2. a rebuild after editing one experiment file (only the code layer redone).
# Figures only, no asserts. Needs the fixture experiment
# fixtures/experiments/dallinger-demo and the test cache's base and builder
# layouts (tests/integration/sdist_build.rs makes them); psycopg2 is built from its sdist
# once, by the lock, and stays in the wheel cache.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${BENCH_RUNS:-5}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
test_cache=${DALLINGER_OCI_TEST_CACHE:-$HOME/.cache/dallinger-oci-tests}

cargo build --release --locked --quiet
bin=$PWD/target/release/dallinger-oci
rootfs=$(bash scripts/python-base.sh)
base_layout=$test_cache/$(basename "${rootfs%.tar}")-oci
builder=$(BASE_PACKAGES=python3,libpq5,libstdc++6,build-essential,python3-dev,libpq-dev,python3-pip,python3-setuptools,python3-wheel \
  bash scripts/python-base.sh)
builder_layout=$test_cache/$(basename "${builder%.tar}")-oci
for layout in "$base_layout" "$builder_layout"; do
  [ -f "$layout/index.json" ] || { echo "no $layout: run cargo test --test integration sdist_build:: first" >&2; exit 1; }
done

cp -r fixtures/experiments/dallinger-demo "$work/exp"
export DALLINGER_OCI_CACHE=$work/cache
# The lock fills the wheel cache (downloads once, builds psycopg2 once);
# builds then use it, as CI builds should.
$bin lock "$work/exp" --base "oci:$base_layout:base" --build-sdists \
  --builder-base "oci:$builder_layout:base" >/dev/null 2>&1
build="$bin build $work/exp --base oci:$base_layout:base --locked --tag bench"
wheels=$(find "$work/cache/wheels/sha256" -name '*.whl' | sort)
count=$(echo "$wheels" | wc -l)

# sync: the kernel is slow to create files right after tens of thousands
# were deleted; flushing first keeps that out of the figure.
cold_prepare="find $work/cache -mindepth 1 -maxdepth 1 ! -name wheels -exec rm -rf {} + && sync"
peer="rm -rf $work/prefix && python3 -m pip install --quiet --no-deps --no-compile --no-index --prefix $work/prefix $(echo $wheels) \
 && tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -cf - -C $work/prefix . | gzip -6 -n > $work/peer.tar.gz"
hyperfine --runs "$runs" --export-json "$work/cold.json" \
  -n "dallinger-oci cold build ($count wheels cached)" --prepare "$cold_prepare" "$build" \
  -n "pip install --prefix + tar | gzip -6" "$peer"

hyperfine --warmup 1 --runs 10 --export-json "$work/edit.json" \
  -n "rebuild after editing experiment.py (locked)" --prepare "echo '# edit' \$RANDOM >> $work/exp/experiment.py" "$build"

/usr/bin/time -v sh -c "$cold_prepare; $build" >/dev/null 2>"$work/ours.time"
installed=$(du -sb "$work/prefix" | cut -f1)
python3 - "$work" "$installed" "$count" <<'PY'
import json, re, sys
work, installed, count = sys.argv[1], int(sys.argv[2]), sys.argv[3]
cold = json.load(open(f"{work}/cold.json"))["results"]
edit = json.load(open(f"{work}/edit.json"))["results"][0]
ours, peer = cold[0]["mean"], cold[1]["mean"]
rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", open(f"{work}/ours.time").read()).group(1)) / 1024
print(f"\n{count} wheels, {installed/1e6:.0f} MB installed by pip")
print(f"cold build, wheels cached: dallinger-oci {ours:.2f} s, pip --prefix + tar|gzip -6 {peer:.2f} s, ratio {ours/peer:.2f}")
print(f"rebuild after one edit, with the lock: {edit['mean']*1000:.0f} ms (min {edit['min']*1000:.0f}, max {edit['max']*1000:.0f})")
print(f"peak RSS of a cold build: {rss:.0f} MB")
PY
