#!/usr/bin/env bash
# Makes (or reuses) a Debian bookworm root filesystem with Python, for use as
# `--base rootfs:FILE`. Prints the tarball's path. The tarball is cached under
# the dallinger-oci cache, keyed by every option that shapes it, and is
# byte-reproducible for a given state of the Debian archive (SOURCE_DATE_EPOCH).
set -euo pipefail

suite=${BASE_SUITE:-bookworm}
variant=${BASE_VARIANT:-apt}
packages=${BASE_PACKAGES:-python3,libpq5,libstdc++6}
mirror=${BASE_MIRROR:-http://deb.debian.org/debian}
epoch=${BASE_SOURCE_DATE_EPOCH:-946684800}
# A Debian architecture (amd64, arm64); a foreign one is made under
# qemu-user-static through binfmt_misc (mmdebstrap's foreign mode).
arch=${BASE_ARCH:-}

cache=${DALLINGER_OCI_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/dallinger-oci}
# The extract variant's dpkg status is written by a hook below (its version is in the key).
key=$(printf '%s\n' "$suite" "$variant" "$packages" "$mirror" "$epoch" ${arch:+"$arch"} \
  $([ "$variant" != extract ] || echo extract-status-1) | sha256sum | cut -c1-16)
out="$cache/bases/$suite-python-$key.tar"

if [ ! -s "$out" ]; then
  # One maker per base at a time: a second caller (another test, another
  # build) waits for the first one's tarball instead of making it again beside it.
  mkdir -p "$(dirname "$out")"
  exec 9>>"$out.lock"
  flock 9
fi
if [ ! -s "$out" ]; then
  command -v mmdebstrap >/dev/null || {
    echo "installing mmdebstrap" >&2
    apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mmdebstrap >&2
  }
  tmp="$out.partial.$$"
  trap 'rm -f "$tmp"' EXIT
  echo "making the $suite Python base with mmdebstrap (about 30 s)" >&2
  hooks=()
  if [ "$variant" = extract ]; then
    # The extract variant only unpacks (no maintainer script runs, so a
    # foreign architecture needs no emulation) and leaves dpkg's status
    # empty: record each unpacked package there, as an install would, so
    # what reads the status (the Python version, Debian packages) sees them.
    hooks+=(--extract-hook='set -e; export LC_ALL=C; s="$1/var/lib/dpkg/status"; : > "$s";
      for deb in "$1"/var/cache/apt/archives/*.deb; do
        dpkg-deb -f "$deb" | awk '"'"'{ print } /^Package:/ { print "Status: install ok installed" }'"'"' >> "$s"
        echo >> "$s"
      done')
  fi
  SOURCE_DATE_EPOCH=$epoch mmdebstrap --quiet --variant="$variant" --include="$packages" \
    ${arch:+--architectures="$arch"} "${hooks[@]}" --mode=root --format=tar "$suite" "$tmp" "$mirror" >&2
  mv "$tmp" "$out"
fi
echo "$out"
