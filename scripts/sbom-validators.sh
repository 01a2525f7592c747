#!/usr/bin/env bash
# Makes (or reuses) a Python virtual environment holding the independent SBOM
# validators the tests run: PyPI's spdx-tools (`pyspdxtools -i FILE`) and
# cyclonedx-python-lib's JSON schema validator. Debian's pip refuses system
# installs, so they live in a venv under the test cache, made once (keyed by
# the pinned versions) and reused. Prints the venv's bin directory.
set -euo pipefail

pins=("spdx-tools==0.8.5" "cyclonedx-python-lib[json-validation]==11.12.0")
cache=${DALLINGER_OCI_TEST_CACHE:-$HOME/.cache/dallinger-oci-tests}
key=$(printf '%s\n' "${pins[@]}" | sha256sum | cut -c1-16)
venv="$cache/sbom-validators-$key"

if [ ! -e "$venv/complete" ]; then
  mkdir -p "$cache"
  # One maker at a time: another test waits for the first one's venv.
  exec 9>>"$venv.lock"
  flock 9
fi
if [ ! -e "$venv/complete" ]; then
  # A venv's scripts name its directory, so it is made in place; `complete`
  # is written last, and a venv without it (an interrupted run) is redone.
  rm -rf "$venv"
  python3 -m venv "$venv" >&2
  "$venv/bin/pip" install --quiet --disable-pip-version-check "${pins[@]}" >&2
  touch "$venv/complete"
fi
echo "$venv/bin"
