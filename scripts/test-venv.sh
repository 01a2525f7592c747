#!/usr/bin/env bash
# test-venv.sh NAME PIP_ARG...: makes (or reuses) a Python virtual
# environment for tests under the test cache, `pip install PIP_ARG...` in
# it, and prints its bin directory. Debian's pip refuses system installs, so
# the tools tests run from PyPI live in venvs, made once (keyed by the
# arguments, pins included) and reused.
set -euo pipefail

name=$1
shift
cache=${DALLINGER_OCI_TEST_CACHE:-$HOME/.cache/dallinger-oci-tests}
key=$(printf '%s\n' "$@" | sha256sum | cut -c1-16)
venv="$cache/$name-$key"

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
  "$venv/bin/pip" install --quiet --disable-pip-version-check "$@" >&2
  touch "$venv/complete"
fi
echo "$venv/bin"
