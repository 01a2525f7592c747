#!/usr/bin/env bash
# Makes (or reuses) a Python virtual environment holding the real Dallinger
# 12.4.0 package from PyPI, for the tests that compare our file selection
# with `dallinger deployment-files list` (tests/integration/deploy_toml.rs).
# Only what that command imports is installed: dallinger itself without its
# dependencies, and click (scripts/test-venv.sh). Prints the venv's bin
# directory.
set -euo pipefail
exec "$(dirname "$0")/test-venv.sh" dallinger --no-deps "dallinger==12.4.0" "click==8.5.0"
