#!/usr/bin/env bash
# Demo build benchmark, in one run: a cold `dallinger-oci build` of demo/stroop
# with each compression in BENCH_COMPRESSIONS (default "gzip zstd"), against
# `podman build` of the Dockerfile Dallinger generates for the same experiment
# (`dallinger docker build`), and the compressed size of each image.
# Figures only, no asserts.
#
# Environment: BENCH_RUNS (hyperfine runs per command, default 3),
# BENCH_COMPRESSIONS (default "gzip zstd"; `C+pyc` adds --compile-bytecode,
# the .pyc files pip writes; a compression the binary rejects is reported and
# left out, the others still run).
#
# What is measured:
# - wall time: hyperfine, each run cold. Ours: an empty DALLINGER_OCI_CACHE and
#   no output layout before every run (`--prepare`), so every layer (the base's
#   too) is written and compressed again. Podman: its own storage (--root and
#   --runroot under the work directory, overlay driver, fixtures/containers.conf:
#   runc), podman's default --layers=true, and before every run every image but
#   the imported base is removed, so no step is cached.
# - downloads are warm for both, and the same: one wheel directory holds the
#   demo's 82 pinned wheels (psycopg2's built once from its sdist by
#   `dallinger-oci lock --build-sdists` in the builder base of scripts/demo.sh);
#   ours reads it with `--find-links DIR --offline`, pip with
#   `--no-index --find-links DIR`. Nothing is fetched from the network during
#   a timed run. The wheels are fetched (and psycopg2 built) once per script
#   run, untimed; the base tarballs (scripts/python-base.sh) are made once and
#   kept in the user's cache.
# - `podman build` leaves uncompressed layers in containers-storage; ours writes
#   compressed blobs into an OCI layout. So the podman push of the built image
#   to an OCI layout, which gzips each layer as a registry push does
#   (`--compression-format gzip`), is timed on its own, and the table also shows
#   build + push (sum of the means, sd from the sum of the variances).
# - peak RSS: `/usr/bin/time -v` of one more cold run of each, "Maximum resident
#   set size": the largest single process of the tree (dallinger-oci, podman, or
#   a process it waited for, such as pip in a RUN step), not a sum.
# - compressed size: the sum of the layer blob sizes in the image manifest
#   (`skopeo inspect --raw`) of our output layout and of the layout podman
#   pushed; the config blob is not counted.
# - ours builds with its defaults, so without .pyc files; pip writes them, as
#   Dallinger's Dockerfile does (its default); `gzip+pyc` in BENCH_COMPRESSIONS
#   is ours with --compile-bytecode, like for like.
#
# The wheel directory, bases and podman's build context (Dallinger's
# Dockerfile, and what is adapted in it) come from benches/demo_setup.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${BENCH_RUNS:-3}
compressions=${BENCH_COMPRESSIONS:-gzip zstd}
. benches/demo_setup.sh
demo_setup_init
demo_wheelhouse "rootfs:$base"

# ---- ours ------------------------------------------------------------------
cp -r demo/stroop "$work/stroop"
ours=()
for c in $compressions; do
  # `C+pyc`: compression C with --compile-bytecode, the .pyc files pip writes.
  extra=""
  case "$c" in *+pyc) extra="--compile-bytecode" ;; esac
  if "$bin" build --compression "${c%+pyc}" --help >/dev/null 2>"$work/probe.err"; then
    flag="--compression ${c%+pyc} $extra"
  elif [ "$c" = gzip ]; then
    echo "NOTE: this dallinger-oci rejects --compression ($(head -n1 "$work/probe.err")); the gzip row is built without it (gzip is then its only format)" | tee -a "$work/notes" >&2
    flag=""
  else
    echo "SKIPPED $c: this dallinger-oci rejects --compression $c: $(head -n1 "$work/probe.err")" | tee -a "$work/notes" >&2
    continue
  fi
  ours+=("$c")
  echo "$bin build $work/stroop --base rootfs:$base --find-links $work/wheelhouse --offline $flag --output oci:$work/out-$c" >"$work/ours-$c.cmd"
done
for c in "${ours[@]}"; do
  prepare="rm -rf $work/cache $work/out-$c && sync"
  DALLINGER_OCI_CACHE=$work/cache hyperfine --runs "$runs" --export-json "$work/ours-$c.json" \
    --prepare "$prepare" -n "dallinger-oci build ($c)" "$(cat "$work/ours-$c.cmd")"
  eval "$prepare"
  DALLINGER_OCI_CACHE=$work/cache /usr/bin/time -v sh -c "$(cat "$work/ours-$c.cmd")" >/dev/null 2>"$work/ours-$c.time"
  skopeo inspect --raw "oci:$work/out-$c" >"$work/ours-$c.inspect"
done

# ---- podman ----------------------------------------------------------------
demo_podman_setup
build=$podman_build
image=$podman_image
push="$podman push --quiet --compression-format gzip $image oci:$work/podman-oci:stroop"
hyperfine --runs "$runs" --export-json "$work/podman-build.json" \
  --prepare "sh $work/podman-wipe.sh" -n "podman build" "$build"
hyperfine --runs "$runs" --export-json "$work/podman-push.json" \
  --prepare "rm -rf $work/podman-oci && sync" -n "podman push oci: (gzip)" "$push"
rm -rf "$work/podman-oci"
/usr/bin/time -v $push >/dev/null 2>"$work/podman-push.time"
sh "$work/podman-wipe.sh"
/usr/bin/time -v $build >/dev/null 2>"$work/podman-build.time"
skopeo inspect --raw "oci:$work/podman-oci:stroop" >"$work/podman.inspect"

python3 - "$work" "$wheels" "${ours[@]}" <<'PY'
import json, math, re, sys
work, wheels, ours = sys.argv[1], sys.argv[2], sys.argv[3:]
def timing(name):
    r = json.load(open(f"{work}/{name}.json"))["results"][0]
    return r["mean"], r["stddev"] or 0.0, len(r["times"])
def rss(name):
    text = open(f"{work}/{name}.time").read()
    return int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", text).group(1)) / 1024
def size(name):
    layers = json.load(open(f"{work}/{name}.inspect"))["layers"]
    types = sorted({l["mediaType"].rsplit(".", 1)[-1] for l in layers})
    return sum(l["size"] for l in layers), len(layers), "/".join(types)
rows = []
for c in ours:
    rows.append(("dallinger-oci build", c, *timing(f"ours-{c}"), rss(f"ours-{c}"), size(f"ours-{c}")))
pb, pp = timing("podman-build"), timing("podman-push")
psize = size("podman")
rows.append(("podman build", "none (storage)", *pb, rss("podman-build"), None))
rows.append(("podman push oci:", "gzip", *pp, rss("podman-push"), psize))
rows.append(("podman build + push", "gzip", pb[0] + pp[0], math.sqrt(pb[1] ** 2 + pp[1] ** 2), pb[2],
             max(rss("podman-build"), rss("podman-push")), psize))
print(f"\nDallinger demo (demo/stroop), {wheels} wheels from one local directory for both; cold caches")
print(f"{'tool':<22} {'compression':<15} {'wall (mean ± sd)':>20} {'runs':>4} {'peak RSS':>10} {'compressed image':>30}")
for tool, comp, mean, sd, n, peak, sz in rows:
    peak_s = f"{peak:.0f} MB" if peak is not None else "-"
    sz_s = f"{sz[0]/1e6:.1f} MB ({sz[1]} layers, {sz[2]})" if sz else "-"
    sd_s = f"{sd:.2f}" if n > 1 else "-"
    print(f"{tool:<22} {comp:<15} {f'{mean:.2f} ± {sd_s} s':>20} {n:>4} {peak_s:>10} {sz_s:>30}")
print("compressed image: sum of the layer sizes in the manifest (skopeo inspect --raw), config not counted")
try:
    print(open(f"{work}/notes").read(), end="")
except FileNotFoundError:
    pass
PY
