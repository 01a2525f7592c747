#!/usr/bin/env bash
# The main job on a fresh machine: build the bundled demo experiment into an
# OCI layout and a docker archive, without a Docker daemon, and print its digest.
set -euo pipefail
cd "$(dirname "$0")/.."

base=$(bash scripts/python-base.sh)
cargo build --release --locked --quiet
out=${DEMO_OUT:-target/demo}
mkdir -p "$out"
rm -rf "$out/oci" "$out/stroop.tar"
./target/release/dallinger-oci build demo/stroop \
  --base "rootfs:$base" \
  --output "oci:$out/oci" \
  --output "docker-archive:$out/stroop.tar" \
  --digest-file "$out/digest" \
  --no-deps  # Python layers: see README (psycopg2 needs an sdist build)
