# Set-up shared by the demo benchmarks (demo_vs_podman.sh, cold_builds.sh);
# sourced, not run. Nothing here is timed.
#
# After `demo_setup_init`: $work (a temporary directory, removed on exit with
# podman's storage and mounts under it), $podman (podman with its own storage
# under $work, runc from fixtures/containers.conf), $bin (the release binary,
# built here), $base (the mmdebstrap bookworm Python tarball of
# scripts/python-base.sh) and $builder (the same plus a compiler and headers).
# Scripts that need more on exit add a command to $demo_cleanup_extra.
#
# `demo_wheelhouse BASE_REF` locks demo/stroop against BASE_REF with
# `dallinger-oci lock --build-sdists` (psycopg2 built once from its sdist in
# $builder), with network, into $work/lock-exp (its lock beside config.txt),
# and fills $work/wheelhouse with the 82 pinned wheels (checked against the pin
# count) and $work/pip with pip's own wheel ($pip_whl: its file name).
# BENCH_PREFILL=DIR starts that lock from a copy of DIR (the $work/prefill of
# an earlier run, kept by hand), so its downloads, the built psycopg2 and the
# unpacked builder are not made again; DIR itself is never changed.
#
# `demo_podman_setup` imports $base into podman's storage, writes the build
# context of Dallinger's generated Dockerfile into $ctx (see below for what is
# adapted), and $work/podman-wipe.sh, which removes every image but the base
# (so no step can come from podman's cache). $podman_build is the build command
# (the wheel directory and pip mounted read-only), $podman_image its tag.
#
# Dallinger's Dockerfile (as `dallinger docker build` writes it, see
# `build_image` in dallinger/docker/tools.py) is adapted only where
# this machine needs it:
# 1. FROM: ghcr.io/dallinger/dallinger:12.3.0 is not reachable here; the base is
#    the same mmdebstrap bookworm Python tarball our build uses, imported with
#    `podman import` (with the PATH our rootfs bases get).
# 2. Dallinger's base image already holds Dallinger and its pins, installed by
#    its own Dockerfile from a wheel directory (`pip install --find-links
#    file:///wheelhouse -r requirements.txt -c constraints.txt`). Ours does not,
#    so the last pip step installs the whole `requirements.txt` (which is the
#    experiment's constraints.txt, as in Dallinger's build context), Dallinger
#    included, instead of `grep -v ^dallinger`; with `--no-index --find-links
#    /wheelhouse` (the wheel directory, mounted with `podman build -v`); with
#    `--break-system-packages` (Debian's Python is marked externally managed,
#    the python.org one in Dallinger's base is not); and without `|| true`, so
#    a failed install fails the run instead of timing an empty image.
# 3. The base has no pip (Dallinger's gets it from Debian's python3-pip); pip
#    is run from its wheel, mounted read-only at /pip, so no pip lands in the
#    image, as none lands in ours.
# 4. `COPY dallinger-*.whl .` is left out: it matches nothing here (no editable
#    Dallinger), which BuildKit allows and podman refuses.
# The build context is made as Dallinger makes its temporary directory: the
# experiment, Dallinger's frontend files, Procfile (Procfile_no_clock) and
# default prepare_docker_image.sh from the Dallinger wheel where the
# experiment has none, constraints.txt renamed to requirements.txt; the
# experiment's config.txt stays (Dallinger writes a generated one instead).

demo_cleanup_extra=":"
demo_cleanup() {
  eval "$demo_cleanup_extra" || true
  $podman rmi -a -f >/dev/null 2>&1 || true
  findmnt -rn -o TARGET | grep "^$work/" | sort -r | xargs -r umount 2>/dev/null || true
  rm -rf "$work"
}

demo_setup_init() {
  work=$(mktemp -d)
  export CONTAINERS_CONF=$PWD/fixtures/containers.conf
  podman="podman --root $work/podman/root --runroot $work/podman/run --storage-driver overlay"
  trap demo_cleanup EXIT
  nice cargo build --release --locked --quiet
  bin=$PWD/target/release/dallinger-oci
  base=$(bash scripts/python-base.sh)
  builder=$(BASE_PACKAGES=python3,libpq5,libstdc++6,build-essential,python3-dev,libpq-dev,python3-pip,python3-setuptools,python3-wheel \
    bash scripts/python-base.sh)
}

demo_wheelhouse() {
  local base_ref=$1 pins
  # The wheel directory both sides read: what a lock fetches and builds.
  cp -r demo/stroop "$work/lock-exp"
  if [ -n "${BENCH_PREFILL:-}" ]; then cp -a "$BENCH_PREFILL" "$work/prefill"; fi
  DALLINGER_OCI_CACHE=$work/prefill nice "$bin" lock "$work/lock-exp" --base "$base_ref" \
    --build-sdists --builder-base "rootfs:$builder" >/dev/null
  mkdir "$work/wheelhouse" "$work/pip"
  find "$work/prefill" -type f -name '*.whl' -exec cp -n {} "$work/wheelhouse/" \;
  wheels=$(find "$work/wheelhouse" -name '*.whl' | wc -l)
  pins=$(grep -c '^[A-Za-z0-9]' demo/stroop/constraints.txt)
  [ "$wheels" = "$pins" ] || { echo "the lock left $wheels wheels in $work/prefill, not the $pins pins of demo/stroop/constraints.txt" >&2; exit 1; }
  # pip itself, to run from its wheel: Debian's (python3-pip-whl), else PyPI's.
  pip_whl=$(find /usr/share/python-wheels -name 'pip-*.whl' 2>/dev/null | head -n1)
  if [ -n "$pip_whl" ]; then
    cp "$pip_whl" "$work/pip/"
  else
    python3 -m pip download --quiet --no-deps --only-binary=:all: --dest "$work/pip" pip
  fi
  pip_whl=$(basename "$(find "$work/pip" -name 'pip-*.whl' | head -n1)")
}

demo_podman_setup() {
  local base_id
  $podman import --quiet --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    "$base" localhost/bench/python-base:latest >/dev/null
  ctx=$work/context
  cp -r demo/stroop "$ctx"
  mv "$ctx/constraints.txt" "$ctx/requirements.txt"
  python3 - "$work/wheelhouse" "$ctx" <<'PY'
# Dallinger's DallingerFileSource: its frontend, Procfile and default prepare
# script, where the experiment has none.
import glob, os, sys, zipfile
wheelhouse, ctx = sys.argv[1:]
whl = zipfile.ZipFile(glob.glob(f"{wheelhouse}/dallinger-*.whl")[0])
files = {n[len("dallinger/frontend/"):]: n for n in whl.namelist()
         if n.startswith("dallinger/frontend/") and not n.endswith("/")}
files["Procfile"] = "dallinger/heroku/Procfile_no_clock"
files["prepare_docker_image.sh"] = "dallinger/docker/prepare_docker_image.sh"
for rel, name in files.items():
    dest = os.path.join(ctx, rel)
    if not os.path.exists(dest):
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        with open(dest, "wb") as f:
            f.write(whl.read(name))
PY
  # Dallinger's generated Dockerfile; the adapted lines are marked (see above).
  cat >"$ctx/Dockerfile" <<DOCKERFILE
# syntax=docker/dockerfile:1
        # adapted (1): FROM ghcr.io/dallinger/dallinger:12.3.0
        FROM localhost/bench/python-base:latest
        #
        RUN mkdir /experiment
        WORKDIR /experiment
        #
        COPY requirements.txt requirements.txt
        # adapted (4): COPY dallinger-*.whl .
        COPY *prepare_docker_image.sh prepare_docker_image.sh
        #
        # If a dallinger wheel is present, install it.
        # This will be true if Dallinger was installed with the editable \`-e\` flag
        # Note: We uninstall dallinger first to make sure the installation isn't skipped.
        RUN if [ -f dallinger-*.whl ]; then \\
            echo "Dallinger wheel found, will install it"; \\
            pip uninstall -y dallinger && pip install dallinger-*.whl; \\
        else \\
            echo "No Dallinger wheel found, using base image version"; \\
        fi
        # If a dependency needs the ssh client and git, install them
        RUN grep git+ requirements.txt && \\
            apt-get update && \\
            apt-get install -y openssh-client git && \\
            rm -rf /var/lib/apt/lists || true
        RUN  echo 'Running script prepare_docker_image.sh' && \\
            chmod 755 ./prepare_docker_image.sh && \\
            ./prepare_docker_image.sh
        RUN mkdir -p ~/.ssh && echo "Host *\\n    StrictHostKeyChecking no" >> ~/.ssh/config
        # adapted (2, 3): grep -v ^dallinger requirements.txt > /tmp/requirements_no_dallinger.txt && python3 -m pip install -r /tmp/requirements_no_dallinger.txt || true
        RUN python3 /pip/$pip_whl/pip install --no-index --find-links /wheelhouse --break-system-packages -r requirements.txt
        COPY . /experiment
        ENV PORT=5000
        CMD dallinger_heroku_web
DOCKERFILE
  podman_image=localhost/bench/stroop:latest
  base_id=$($podman image inspect --format '{{.Id}}' localhost/bench/python-base:latest)
  # Every image but the base goes (the built one takes its step images with it),
  # and the run stops if anything else is left, so no step can come from a cache.
  cat >"$work/podman-wipe.sh" <<WIPE
set -eu
$podman rm -a -f >/dev/null
$podman rmi -f $podman_image >/dev/null 2>&1 || true
for id in \$($podman images -a -q --no-trunc | sed 's/^sha256://'); do
  [ "\$id" = $base_id ] || $podman rmi -f "\$id" >/dev/null
done
[ "\$($podman images -a -q | wc -l)" = 1 ] || { echo "podman storage not wiped" >&2; exit 1; }
sync
WIPE
  podman_build="$podman build --quiet -v $work/wheelhouse:/wheelhouse:ro -v $work/pip:/pip:ro -t $podman_image $ctx"
}
