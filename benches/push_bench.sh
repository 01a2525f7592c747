#!/usr/bin/env bash
# Push benchmark: dallinger-oci push of the demo image to an empty local
# registry against `skopeo copy oci:… docker://…` of the same layout, in the
# same run; a no-op re-push; peak memory of each. Figures only, no asserts.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${BENCH_RUNS:-5}
work=$(mktemp -d)
trap 'kill "${registry_pid:-}" 2>/dev/null || true; rm -rf "$work"' EXIT

cargo build --release --locked --quiet
bin=$PWD/target/release/dallinger-oci
base=$(bash scripts/python-base.sh)

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
host=127.0.0.1:$port
cat > "$work/registry.yml" <<YAML
version: 0.1
log: {level: error}
storage:
  filesystem: {rootdirectory: $work/storage}
  delete: {enabled: true}
http: {addr: $host}
YAML
docker-registry serve "$work/registry.yml" >"$work/registry.log" 2>&1 &
registry_pid=$!
for _ in $(seq 50); do curl -fs "http://$host/v2/" >/dev/null && break; sleep 0.1; done

# The demo, named for the local registry, built once into a layout (warm cache).
cp -r demo/stroop "$work/stroop"
sed -i "s|^docker_image_base_name = .*|docker_image_base_name = $host/bench/stroop|" "$work/stroop/config.txt"
export DALLINGER_OCI_CACHE=$work/cache
"$bin" build "$work/stroop" --base "rootfs:$base" --output "oci:$work/layout:demo" >/dev/null
layer_bytes=$(du -sb "$work/layout/blobs" | cut -f1)

wipe="rm -rf $work/storage/docker $work/cache/pushed"
hyperfine --runs "$runs" --export-json "$work/push.json" \
  --prepare "$wipe" \
  -n dallinger-oci "$bin push $work/stroop --base rootfs:$base" \
  -n skopeo "skopeo copy --quiet --dest-tls-verify=false oci:$work/layout:demo docker://$host/bench/skopeo:demo"

"$bin" push "$work/stroop" --base "rootfs:$base" >/dev/null 2>&1
hyperfine --warmup 1 --runs 10 --export-json "$work/noop.json" \
  -n "dallinger-oci no-op re-push" "$bin push $work/stroop --base rootfs:$base"

eval "$wipe"
/usr/bin/time -v "$bin" push "$work/stroop" --base "rootfs:$base" >/dev/null 2>"$work/ours.time"
eval "$wipe"
/usr/bin/time -v skopeo copy --quiet --dest-tls-verify=false "oci:$work/layout:demo" "docker://$host/bench/skopeo:demo" 2>"$work/skopeo.time"

python3 - "$work" "$layer_bytes" <<'PY'
import json, re, sys
work, size = sys.argv[1], int(sys.argv[2])
push = {r["command"]: r for r in json.load(open(f"{work}/push.json"))["results"]}
noop = json.load(open(f"{work}/noop.json"))["results"][0]
rss = {n: int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", open(f"{work}/{n}.time").read()).group(1)) / 1024
       for n in ("ours", "skopeo")}
ours, peer = push["dallinger-oci"]["mean"], push["skopeo"]["mean"]
print(f"\nimage blobs: {size/1e6:.1f} MB")
print(f"push to an empty registry: dallinger-oci {ours:.3f} s, skopeo copy {peer:.3f} s, ratio {ours/peer:.2f}")
print(f"peak RSS: dallinger-oci {rss['ours']:.1f} MB, skopeo {rss['skopeo']:.1f} MB")
print(f"no-op re-push: {noop['mean']*1000:.0f} ms (min {noop['min']*1000:.0f}, max {noop['max']*1000:.0f})")
PY
