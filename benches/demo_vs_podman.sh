#!/usr/bin/env bash
# Demo build benchmark, in one run: a cold `dallinger-oci build` of demo/stroop
# with each compression in BENCH_COMPRESSIONS (default "gzip zstd"), against
# `podman build` of the Dockerfile Dallinger generates for the same experiment
# (`dallinger docker build`), and the compressed size of each image.
# Figures only, no asserts.
#
# Environment: BENCH_RUNS (hyperfine runs per command, default 3),
# BENCH_COMPRESSIONS (default "gzip zstd"; `C+pyc` adds --compile-bytecode,
# the .pyc files pip writes; a compression the binary rejects is reported and
# left out, the others still run).
#
# What is measured:
# - wall time: hyperfine, each run cold. Ours: an empty DALLINGER_OCI_CACHE and
#   no output layout before every run (`--prepare`), so every layer (the base's
#   too) is written and compressed again. Podman: its own storage (--root and
#   --runroot under the work directory, overlay driver, fixtures/containers.conf:
#   runc), podman's default --layers=true, and before every run every image but
#   the imported base is removed, so no step is cached.
# - downloads are warm for both, and the same: one wheel directory holds the
#   demo's 82 pinned wheels (psycopg2's built once from its sdist by
#   `dallinger-oci lock --build-sdists` in the builder base of scripts/demo.sh);
#   ours reads it with `--find-links DIR --offline`, pip with
#   `--no-index --find-links DIR`. Nothing is fetched from the network during
#   a timed run. The wheels are fetched (and psycopg2 built) once per script
#   run, untimed; the base tarballs (scripts/python-base.sh) are made once and
#   kept in the user's cache.
# - `podman build` leaves uncompressed layers in containers-storage; ours writes
#   compressed blobs into an OCI layout. So the podman push of the built image
#   to an OCI layout, which gzips each layer as a registry push does
#   (`--compression-format gzip`), is timed on its own, and the table also shows
#   build + push (sum of the means, sd from the sum of the variances).
# - peak RSS: `/usr/bin/time -v` of one more cold run of each, "Maximum resident
#   set size": the largest single process of the tree (dallinger-oci, podman, or
#   a process it waited for, such as pip in a RUN step), not a sum.
# - compressed size: the sum of the layer blob sizes in the image manifest
#   (`skopeo inspect --raw`) of our output layout and of the layout podman
#   pushed; the config blob is not counted.
# - ours builds with its defaults, so without .pyc files; pip writes them, as
#   Dallinger's Dockerfile does (its default); `gzip+pyc` in BENCH_COMPRESSIONS
#   is ours with --compile-bytecode, like for like.
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
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${BENCH_RUNS:-3}
compressions=${BENCH_COMPRESSIONS:-gzip zstd}
work=$(mktemp -d)
export CONTAINERS_CONF=$PWD/fixtures/containers.conf
podman="podman --root $work/podman/root --runroot $work/podman/run --storage-driver overlay"
cleanup() {
  $podman rmi -a -f >/dev/null 2>&1 || true
  findmnt -rn -o TARGET | grep "^$work/" | sort -r | xargs -r umount 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

cargo build --release --locked --quiet
bin=$PWD/target/release/dallinger-oci
base=$(bash scripts/python-base.sh)
builder=$(BASE_PACKAGES=python3,libpq5,libstdc++6,build-essential,python3-dev,libpq-dev,python3-pip,python3-setuptools,python3-wheel \
  bash scripts/python-base.sh)

# The wheel directory both sides read: what a lock fetches and builds.
cp -r demo/stroop "$work/lock-exp"
DALLINGER_OCI_CACHE=$work/prefill "$bin" lock "$work/lock-exp" --base "rootfs:$base" \
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

# ---- ours ------------------------------------------------------------------
cp -r demo/stroop "$work/stroop"
ours=()
for c in $compressions; do
  # `C+pyc`: compression C with --compile-bytecode, the .pyc files pip writes.
  extra=""
  case "$c" in *+pyc) extra="--compile-bytecode" ;; esac
  if "$bin" build --compression "${c%+pyc}" --help >/dev/null 2>"$work/probe.err"; then
    flag="--compression ${c%+pyc} $extra"
  elif [ "$c" = gzip ]; then
    echo "NOTE: this dallinger-oci rejects --compression ($(head -n1 "$work/probe.err")); the gzip row is built without it (gzip is then its only format)" | tee -a "$work/notes" >&2
    flag=""
  else
    echo "SKIPPED $c: this dallinger-oci rejects --compression $c: $(head -n1 "$work/probe.err")" | tee -a "$work/notes" >&2
    continue
  fi
  ours+=("$c")
  echo "$bin build $work/stroop --base rootfs:$base --find-links $work/wheelhouse --offline $flag --output oci:$work/out-$c" >"$work/ours-$c.cmd"
done
for c in "${ours[@]}"; do
  prepare="rm -rf $work/cache $work/out-$c && sync"
  DALLINGER_OCI_CACHE=$work/cache hyperfine --runs "$runs" --export-json "$work/ours-$c.json" \
    --prepare "$prepare" -n "dallinger-oci build ($c)" "$(cat "$work/ours-$c.cmd")"
  eval "$prepare"
  DALLINGER_OCI_CACHE=$work/cache /usr/bin/time -v sh -c "$(cat "$work/ours-$c.cmd")" >/dev/null 2>"$work/ours-$c.time"
  skopeo inspect --raw "oci:$work/out-$c" >"$work/ours-$c.inspect"
done

# ---- podman ----------------------------------------------------------------
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
image=localhost/bench/stroop:latest
base_id=$($podman image inspect --format '{{.Id}}' localhost/bench/python-base:latest)
# Every image but the base goes (the built one takes its step images with it),
# and the run stops if anything else is left, so no step can come from a cache.
cat >"$work/podman-wipe.sh" <<WIPE
set -eu
$podman rm -a -f >/dev/null
$podman rmi -f $image >/dev/null 2>&1 || true
for id in \$($podman images -a -q --no-trunc | sed 's/^sha256://'); do
  [ "\$id" = $base_id ] || $podman rmi -f "\$id" >/dev/null
done
[ "\$($podman images -a -q | wc -l)" = 1 ] || { echo "podman storage not wiped" >&2; exit 1; }
sync
WIPE
build="$podman build --quiet -v $work/wheelhouse:/wheelhouse:ro -v $work/pip:/pip:ro -t $image $ctx"
push="$podman push --quiet --compression-format gzip $image oci:$work/podman-oci:stroop"
hyperfine --runs "$runs" --export-json "$work/podman-build.json" \
  --prepare "sh $work/podman-wipe.sh" -n "podman build" "$build"
hyperfine --runs "$runs" --export-json "$work/podman-push.json" \
  --prepare "rm -rf $work/podman-oci && sync" -n "podman push oci: (gzip)" "$push"
rm -rf "$work/podman-oci"
/usr/bin/time -v $push >/dev/null 2>"$work/podman-push.time"
sh "$work/podman-wipe.sh"
/usr/bin/time -v $build >/dev/null 2>"$work/podman-build.time"
skopeo inspect --raw "oci:$work/podman-oci:stroop" >"$work/podman.inspect"

python3 - "$work" "$wheels" "${ours[@]}" <<'PY'
import json, math, re, sys
work, wheels, ours = sys.argv[1], sys.argv[2], sys.argv[3:]
def timing(name):
    r = json.load(open(f"{work}/{name}.json"))["results"][0]
    return r["mean"], r["stddev"] or 0.0, len(r["times"])
def rss(name):
    text = open(f"{work}/{name}.time").read()
    return int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", text).group(1)) / 1024
def size(name):
    layers = json.load(open(f"{work}/{name}.inspect"))["layers"]
    types = sorted({l["mediaType"].rsplit(".", 1)[-1] for l in layers})
    return sum(l["size"] for l in layers), len(layers), "/".join(types)
rows = []
for c in ours:
    rows.append(("dallinger-oci build", c, *timing(f"ours-{c}"), rss(f"ours-{c}"), size(f"ours-{c}")))
pb, pp = timing("podman-build"), timing("podman-push")
psize = size("podman")
rows.append(("podman build", "none (storage)", *pb, rss("podman-build"), None))
rows.append(("podman push oci:", "gzip", *pp, rss("podman-push"), psize))
rows.append(("podman build + push", "gzip", pb[0] + pp[0], math.sqrt(pb[1] ** 2 + pp[1] ** 2), pb[2],
             max(rss("podman-build"), rss("podman-push")), psize))
print(f"\nDallinger demo (demo/stroop), {wheels} wheels from one local directory for both; cold caches")
print(f"{'tool':<22} {'compression':<15} {'wall (mean ± sd)':>20} {'runs':>4} {'peak RSS':>10} {'compressed image':>30}")
for tool, comp, mean, sd, n, peak, sz in rows:
    peak_s = f"{peak:.0f} MB" if peak is not None else "-"
    sz_s = f"{sz[0]/1e6:.1f} MB ({sz[1]} layers, {sz[2]})" if sz else "-"
    sd_s = f"{sd:.2f}" if n > 1 else "-"
    print(f"{tool:<22} {comp:<15} {f'{mean:.2f} ± {sd_s} s':>20} {n:>4} {peak_s:>10} {sz_s:>30}")
print("compressed image: sum of the layer sizes in the manifest (skopeo inspect --raw), config not counted")
try:
    print(open(f"{work}/notes").read(), end="")
except FileNotFoundError:
    pass
PY
