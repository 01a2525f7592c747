#!/usr/bin/env bash
# Makes (or reuses) a Debian bookworm root filesystem for a stand-in of the
# official `redis` or `postgres` image, for tests that cannot reach a registry:
#   bash scripts/service-base.sh redis|postgres
# Prints the tarball's path. Cached like scripts/python-base.sh, keyed by
# every option that shapes it, the entrypoint script included.
set -euo pipefail

service=${1:?usage: service-base.sh redis|postgres}
case "$service" in
  redis) packages=redis-server ;;
  postgres) packages=postgresql-15 ;;
  *) echo "unknown service $service: use redis or postgres" >&2; exit 2 ;;
esac
here=$(cd "$(dirname "$0")/.." && pwd)
entrypoint="$here/fixtures/service-images/$service-entrypoint.sh"
suite=${BASE_SUITE:-bookworm}
mirror=${BASE_MIRROR:-http://deb.debian.org/debian}
epoch=${BASE_SOURCE_DATE_EPOCH:-946684800}

cache=${DALLINGER_OCI_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/dallinger-oci}
key=$(
  { printf '%s\n' "$suite" "$packages" "$mirror" "$epoch"; cat "$entrypoint"; } | sha256sum | cut -c1-16
)
out="$cache/bases/$suite-$service-$key.tar"

if [ ! -s "$out" ]; then
  # One maker per base at a time: a second caller (another test, another
  # build) waits for the first one's tarball instead of making it again beside it.
  mkdir -p "$(dirname "$out")"
  exec 9>>"$out.lock"
  flock 9
fi
if [ ! -s "$out" ]; then
  tmp="$out.partial.$$"
  trap 'rm -f "$tmp"' EXIT
  echo "making the $suite $service stand-in with mmdebstrap (about 30 s)" >&2
  # The client programs (pg_isready, psql) are linked into /usr/local/bin so
  # the health check finds them without Debian's cluster wrapper; the cluster
  # Debian's postinst creates is dropped: the entrypoint makes its own.
  SOURCE_DATE_EPOCH=$epoch mmdebstrap --quiet --variant=apt --include="$packages" \
    --aptopt='APT::Install-Recommends "false"' \
    --customize-hook="upload $entrypoint /usr/local/bin/docker-entrypoint.sh" \
    --customize-hook='chmod 755 "$1/usr/local/bin/docker-entrypoint.sh"' \
    --customize-hook='for b in "$1"/usr/lib/postgresql/*/bin/pg_isready "$1"/usr/lib/postgresql/*/bin/psql; do [ -e "$b" ] && ln -s "${b#"$1"}" "$1/usr/local/bin/"; done; rm -rf "$1"/var/lib/postgresql/*/main "$1"/etc/postgresql/*/main "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin; true' \
    --mode=root --format=tar "$suite" "$tmp" "$mirror" >&2
  mv "$tmp" "$out"
fi
echo "$out"
