#!/usr/bin/env bash
# Makes (or reuses) a Python virtual environment holding the independent SBOM
# validators the tests run: PyPI's spdx-tools (`pyspdxtools -i FILE`) and
# cyclonedx-python-lib's JSON schema validator (scripts/test-venv.sh). Prints
# the venv's bin directory.
set -euo pipefail
exec "$(dirname "$0")/test-venv.sh" sbom-validators \
  "spdx-tools==0.8.5" "cyclonedx-python-lib[json-validation]==11.12.0"
