#!/usr/bin/env bash
# The whole test suite: system packages, then every Rust test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-test-deps.sh
cargo test --workspace --locked
