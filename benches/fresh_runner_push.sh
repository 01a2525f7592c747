#!/bin/bash
# Issue 12, "Fresh-runner push after an edit": the Dallinger demo pushed by
# a runner with an empty cache (--locked --offline) after a one-line edit of
# experiment.py, to a local registry that holds the previous push, against a
# full cold push (store empty, wheels cached, empty repository). Prints
# /usr/bin/time -v's figures and the registry requests of the fresh push.
#
#   BASE_LAYOUT=DIR BUILDER_LAYOUT=DIR WHEELS=DIR benches/fresh_runner_push.sh
#
# BASE_LAYOUT and BUILDER_LAYOUT: the tests' bookworm Python base and sdist
# builder as OCI layouts (tag `base`; tests/common rootfs_layout makes them
# under the test cache); WHEELS: a cache's `wheels` directory holding the
# demo's wheels (the tests' dallinger-demo-cache/wheels). Needs
# docker-registry, skopeo, curl and a release build (target/release).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${BIN:-$ROOT/target/release/dallinger-oci}
: "${BASE_LAYOUT:?set BASE_LAYOUT}" "${BUILDER_LAYOUT:?set BUILDER_LAYOUT}" "${WHEELS:?set WHEELS}"
W=$(mktemp -d -t fresh-runner-XXXXXX)
PORT=${PORT:-5731}
mkdir -p "$W/reg/storage" "$W/caches"
cat > "$W/reg/config.yml" <<YML
version: 0.1
log:
  level: info
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: $W/reg/storage
http:
  addr: 127.0.0.1:$PORT
YML
timeout 1800 docker-registry serve "$W/reg/config.yml" > "$W/reg/log" 2>&1 &
REG=$!
trap 'kill $REG; rm -rf "$W"' EXIT
for _ in $(seq 50); do curl -sf "http://127.0.0.1:$PORT/v2/" > /dev/null && break; sleep 0.2; done
skopeo copy -q --dest-tls-verify=false "oci:$BASE_LAYOUT:base" "docker://127.0.0.1:$PORT/base/python:bookworm"
cp -r "$ROOT/fixtures/experiments/dallinger-demo" "$W/exp"
sed -i "s|^docker_image_base_name.*|docker_image_base_name = 127.0.0.1:$PORT/lab/demo|" "$W/exp/config.txt"
BASE=docker://127.0.0.1:$PORT/base/python:bookworm
SDIST=(--build-sdists --builder-base "oci:$BUILDER_LAYOUT:base")
wheels_only() { mkdir -p "$1"; cp -al "$WHEELS" "$1/wheels" 2>/dev/null || cp -r "$WHEELS" "$1/wheels"; }
export DALLINGER_OCI_NO_DEPS=
wheels_only "$W/caches/lock"
"$BIN" lock "$W/exp" --base "$BASE" "${SDIST[@]}" --cache-dir "$W/caches/lock" > /dev/null 2>&1

echo "== full cold push (store empty, wheels cached, empty repository)"
wheels_only "$W/caches/cold"
/usr/bin/time -v "$BIN" push "$W/exp" --base "$BASE" --locked --offline "${SDIST[@]}" \
  --cache-dir "$W/caches/cold" > "$W/cold.out" 2> "$W/cold.err" || { cat "$W/cold.err"; exit 1; }
grep -E "Elapsed|Maximum resident|User time|System time" "$W/cold.err"

echo "# a one-line edit" >> "$W/exp/experiment.py"
echo "== full build from the warm cache after the edit"
"$BIN" build "$W/exp" --base "$BASE" --locked --offline "${SDIST[@]}" \
  --cache-dir "$W/caches/cold" --output "oci:$W/full" 2> /dev/null | tail -1

echo "== fresh runner: push after the edit (empty cache, --locked --offline)"
before=$(wc -l < "$W/reg/log")
/usr/bin/time -v "$BIN" push "$W/exp" --base "$BASE" --locked --offline \
  --cache-dir "$W/caches/fresh" > "$W/fresh.out" 2> "$W/fresh.err" || { cat "$W/fresh.err"; exit 1; }
grep -E "Elapsed|Maximum resident|User time|System time" "$W/fresh.err"
grep "built and pushed" "$W/fresh.out"
echo "registry requests of the fresh push (method, status: count):"
tail -n +"$((before + 1))" "$W/reg/log" | grep -oE '"(GET|HEAD|PUT|POST|PATCH) [^ ]* HTTP/1.1" [0-9]+' \
  | awk '{print $1, $4}' | sort | uniq -c
echo "wheels in the fresh runner's cache: $(find "$W/caches/fresh" -name '*.whl' | wc -l)"
