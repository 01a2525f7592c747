#!/usr/bin/env bash
# The main job on a fresh machine: build the bundled demo experiment (Dallinger
# 12.3.0 and its 82 pinned dependencies) into an OCI layout and a docker
# archive, without a Docker daemon, and print its digest.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian bookworm with Python 3.11.2 and libpq5: the image's base.
base=$(bash scripts/python-base.sh)
# The same plus a compiler and headers: psycopg2 is published only as an
# sdist, and its wheel is built in this image, in a sandbox.
builder=$(BASE_PACKAGES=python3,libpq5,libstdc++6,build-essential,python3-dev,libpq-dev,python3-pip,python3-setuptools,python3-wheel \
  bash scripts/python-base.sh)
cargo build --release --locked --quiet
out=${DEMO_OUT:-target/demo}
mkdir -p "$out"
rm -rf "$out/oci" "$out/stroop.tar"
./target/release/dallinger-oci build demo/stroop \
  --base "rootfs:$base" \
  --build-sdists --builder-base "rootfs:$builder" \
  --output "oci:$out/oci" \
  --output "docker-archive:$out/stroop.tar" \
  --digest-file "$out/digest"
