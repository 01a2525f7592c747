#!/usr/bin/env bash
# Issue 12's speed list, in one run, on the bundled demo (demo/stroop:
# Dallinger 12.3.0 and its 82 pins): cold builds (gzip, zstd, gzip with
# --compile-bytecode) against `podman build` of Dallinger's generated
# Dockerfile; rebuilds after a one-line edit of experiment.py, with and
# without a lock, against podman's rebuild; `digest`; a fresh-runner push
# after an edit against a full cold push, with the bytes each uploads; the
# peak RSS of every command. Prints one Markdown table. Figures only, no
# asserts; a command this dallinger-oci does not support (yet) is reported in
# its row as "fails: <its error line>" and the script goes on.
#
# Environment: BENCH_RUNS (hyperfine runs per row, default 3); BENCH_PREFILL
# (see benches/demo_setup.sh: the set-up's lock starts from a copy of that
# cache; the lock-warmed rows below then start from what the lock left). Run
# it on a quiet machine: every figure is wall time. DALLINGER_OCI_JOBS is passed through
# (compression threads; unset: one per core); the other DALLINGER_OCI_*
# settings that change what is built are unset, the flags below say it all.
#
# What is measured, for every row:
# - wall time: hyperfine, mean ± sd over BENCH_RUNS runs, each after the row's
#   `--prepare` (which resets its state; the prepare is not timed).
# - peak RSS: `/usr/bin/time -v` of one more run of the command, untimed, just
#   before hyperfine's and after the same prepare, "Maximum resident set size":
#   the largest single process of the tree (dallinger-oci, podman, or a process
#   it waited for, such as pip in a RUN step or the sandbox's Python), not a sum.
#   That run is also the one whose output the notes column reads (bytes
#   uploaded, digests), and the one whose failure makes a row "fails".
# - inputs, the same for every row and for podman: one wheel directory of the
#   demo's 82 pinned wheels (psycopg2's built once from its sdist by
#   `dallinger-oci lock --build-sdists` in the builder base of
#   scripts/demo.sh); the lock that `lock` wrote then (PyPI URLs, sha256s, the
#   base's digest); the base, the mmdebstrap bookworm Python tarball of
#   scripts/python-base.sh, as an OCI layout (one gzip layer, made once with
#   umoci, untimed), so a cold build copies the base's blob and never
#   recompresses it. podman imports the same tarball. Nothing is fetched from
#   the network during a timed run except in the row that says so.
# - "cold build": an empty cache directory (layer store, unpack cache, blob
#   store: `rm -rf`) and no output layout before every run; the wheels come
#   from the wheel directory (`--find-links DIR --offline`): warm downloads,
#   cold everything else. podman: its own storage (as in demo_vs_podman.sh),
#   every image but the imported base removed before every run, so no step is
#   cached; its build leaves uncompressed layers (no push is timed here, see
#   demo_vs_podman.sh for podman's push).
# - "rebuild after an edit": before every run experiment.py is the demo's with
#   one line appended (a comment holding a new nonce, so the code layer is new
#   every run); the cache is warm (one untimed build of the unedited
#   experiment with the same flags first); the output is the same `oci:`
#   layout every time (an existing layout: new blobs added, index.json
#   rewritten). "no lock": the experiment has no pylock.dallinger-oci.toml.
#   "lock": the lock from the set-up, `--locked --offline`, the cache the one
#   `lock` filled (its downloads), as after `lock` on a developer's machine.
#   podman: the same edit in its build context, its cache warm (only `COPY .
#   /experiment` and what follows run again).
# - "push": to a local `docker-registry` (127.0.0.1, storage in the work
#   directory, access log on), the image named for it in config.txt. "cold
#   push": empty cache and empty registry storage before every run, wheels
#   from the wheel directory, no lock (as the cold builds; a locked build
#   takes no wheel from --find-links). "fresh-runner push": an empty cache
#   directory, the one-line edit, `push --locked --offline` and no wheel
#   directory (a fresh CI runner with the repository checked out), the
#   registry holding the previous push (the cold push's last run, then each
#   previous run). Bytes uploaded, from the registry's access log: the blobs
#   whose upload completed (`PUT …/blobs/uploads/…?digest=`, 201) in the
#   untimed run, with their sizes in the registry's storage; and the
#   "Uploaded N bytes" line of our stderr. The fresh-runner push's digest is
#   compared with what `build` gives for the same edit from a warm cache.
# - "digest": `dallinger-oci digest` after the edit, with the lock, from the
#   warm cache and from an empty one, compared with the digest `build` prints
#   for the same inputs (a warm build, run after the untimed run).
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${BENCH_RUNS:-3}
unset DALLINGER_OCI_COMPRESSION DALLINGER_OCI_COMPILE_BYTECODE DALLINGER_OCI_BUILD_SDISTS \
  DALLINGER_OCI_NO_DEPS DALLINGER_OCI_REGISTRY_USERNAME DALLINGER_OCI_REGISTRY_PASSWORD
. benches/demo_setup.sh
demo_setup_init

# ---- set-up, untimed -------------------------------------------------------
# The base as an OCI layout (one gzip layer; the PATH our rootfs bases get).
base_oci=$work/base-oci
umoci init --layout "$base_oci"
umoci new --image "$base_oci:base"
umoci raw add-layer --image "$base_oci:base" "$base"
umoci config --image "$base_oci:base" --config.env 'PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
umoci gc --layout "$base_oci"
base_ref=oci:$base_oci:base
demo_wheelhouse "$base_ref"
lock=$work/lock-exp/pylock.dallinger-oci.toml
wh=$work/wheelhouse

# A one-line edit of DIR/experiment.py: the demo's, plus a comment with a nonce.
cat >"$work/edit.sh" <<EDIT
set -eu
cp "$PWD/demo/stroop/experiment.py" "\$1/experiment.py"
printf '# edited for the benchmark: %s\n' "\$(date +%s%N)" >>"\$1/experiment.py"
EDIT
edit="sh $work/edit.sh"
# exp NAME [lock]: a copy of the demo at $work/NAME, with the lock if asked.
exp() {
  cp -r demo/stroop "$work/$1"
  if [ "${2:-}" = lock ]; then cp "$lock" "$work/$1/"; fi
}

# The error line of a failed command's stderr (ours starts with "error:"),
# else its first line.
first_error() {
  grep -m1 '^error' "$1" || head -n1 "$1" | grep . || echo "no message on stderr"
}

# The rows run; each one's files are $work/row-ID.*.
ids=()
# row ID WHAT PREPARE COMMAND [CHECK]: PREPARE, one untimed run of COMMAND
# under /usr/bin/time -v (its stdout, stderr and the registry's access log
# kept), then hyperfine with the same PREPARE. A failing command is recorded
# with its error line and the row is not timed. CHECK, when given, is run after
# the untimed run; the first sha256 digest of its stdout is set beside the
# command's.
row() {
  local id=$1 what=$2 prepare=$3 cmd=$4 check=${5:-} f=$work/row-$1 log_from
  ids+=("$id")
  printf '%s\n' "$what" >"$f.what"
  printf '%s\n' "$cmd" >"$f.cmd"
  printf '%s\n' "$prepare" >"$f.prep"
  echo "== $id: $cmd" >&2
  if ! sh -c "$prepare" >"$f.prepare" 2>&1; then
    { echo "its set-up (--prepare) fails: $(head -n1 "$f.prepare")"; } >"$f.fail"
    return
  fi
  log_from=$(wc -l <"$work/registry.log")
  if ! /usr/bin/time -v -o "$f.time" sh -c "$cmd" >"$f.out" 2>"$f.err"; then
    first_error "$f.err" >"$f.fail"
    return
  fi
  tail -n +"$((log_from + 1))" "$work/registry.log" >"$f.access"
  if [ -n "$check" ]; then
    sh -c "$check" >"$f.check" 2>"$f.check-err" || first_error "$f.check-err" >"$f.check-fail"
  fi
  hyperfine --runs "$runs" --export-json "$f.json" --prepare "$prepare" -n "$id" "$cmd" ||
    echo "a timed run failed (the untimed one had passed)" >"$f.fail"
}

: >"$work/registry.log" # the pushes' registry writes here (started below)

# The rows run fastest first (each resets its own state; podman-edit needs
# podman-cold's storage, push-fresh push-cold's registry); they are printed in
# the order of the table's "order" list.
# ---- rebuilds after a one-line edit -----------------------------------------
exp nolock
rebuild="$bin build $work/nolock --cache-dir $work/warm --base $base_ref --find-links $wh --offline --output oci:$work/warm-out"
nice $rebuild >/dev/null 2>&1 || true
row edit-nolock "rebuild after the edit, no lock: warm cache, wheels from the wheel directory (--find-links --offline), same oci: layout" "$edit $work/nolock" "$rebuild"

exp locked lock
cp -r "$work/prefill" "$work/warm-locked"
locked_args="--base $base_ref --locked --offline"
locked="$bin build $work/locked --cache-dir $work/warm-locked $locked_args --output oci:$work/warm-out"
nice $locked >/dev/null 2>&1 || true
row edit-locked "rebuild after the edit, lock: lock, then --locked --offline from the cache lock filled, same oci: layout" "$edit $work/locked" "$locked"

exp index
cp -r "$work/prefill" "$work/warm-index"
index="$bin build $work/index --cache-dir $work/warm-index --base $base_ref --build-sdists --builder-base rootfs:$builder --output oci:$work/warm-out"
nice $index >/dev/null 2>&1 || true
row edit-index "rebuild after the edit, no lock, against PyPI (network; --build-sdists for psycopg2): warm cache, same oci: layout" "$edit $work/index" "$index"

# ---- digest ----------------------------------------------------------------
row digest-warm "digest after the edit, lock, warm cache; against the digest build prints" "$edit $work/locked" \
  "$bin digest $work/locked --cache-dir $work/warm-locked $locked_args" "$locked"
row digest-empty "digest after the edit, lock, empty cache; against the digest a warm build prints" "rm -rf $work/digest-cache && $edit $work/locked" \
  "$bin digest $work/locked --cache-dir $work/digest-cache $locked_args" "$locked"

# ---- pushes ----------------------------------------------------------------
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
host=127.0.0.1:$port
cat >"$work/registry.yml" <<YAML
version: 0.1
log:
  level: error
  accesslog: {disabled: false}
storage:
  filesystem: {rootdirectory: $work/storage}
  delete: {enabled: true}
http: {addr: $host}
YAML
docker-registry serve "$work/registry.yml" >>"$work/registry.log" 2>&1 &
registry_pid=$!
demo_cleanup_extra='kill $registry_pid 2>/dev/null'
for _ in $(seq 50); do curl -fs "http://$host/v2/" >/dev/null && break; sleep 0.1; done
curl -fs "http://$host/v2/" >/dev/null || { echo "docker-registry did not start: $(tail -n3 "$work/registry.log")" >&2; exit 1; }

# The same experiment twice, named for the registry: without the lock for the
# cold push (as the cold builds: a locked build does not take its wheels from
# --find-links), with it for the fresh runner. The lock is not in the image.
exp push-cold
exp push lock
for d in push-cold push; do
  sed -i "s|^docker_image_base_name = .*|docker_image_base_name = $host/bench/stroop|" "$work/$d/config.txt"
done
row push-cold "cold push: empty cache and registry, wheels from the wheel directory (--find-links --offline), no lock" \
  "rm -rf $work/push-cache $work/storage/docker && sync" \
  "$bin push $work/push-cold --cache-dir $work/push-cache --base $base_ref --find-links $wh --offline"
row push-fresh "fresh-runner push after the edit: empty cache, no wheel directory, --locked --offline, the registry holding the previous push" \
  "rm -rf $work/fresh-cache && $edit $work/push && sync" \
  "$bin push $work/push --cache-dir $work/fresh-cache --base $base_ref --locked --offline" \
  "$bin build $work/push --cache-dir $work/warm-locked $locked_args"

# ---- cold builds -----------------------------------------------------------
exp cold
cold_prep="rm -rf $work/cache $work/out && sync"
cold="$bin build $work/cold --cache-dir $work/cache --base $base_ref --find-links $wh --offline --output oci:$work/out"
row cold-gzip "cold build, gzip: empty cache and output, wheels from the wheel directory, oci: base" "$cold_prep" "$cold --compression gzip"
row cold-zstd "cold build, zstd: as cold-gzip, --compression zstd" "$cold_prep" "$cold --compression zstd"
row cold-pyc "cold build, gzip, --compile-bytecode (the .pyc pip writes): as cold-gzip" "$cold_prep" "$cold --compression gzip --compile-bytecode"
demo_podman_setup
row podman-cold "podman build of Dallinger's Dockerfile, cold: every step runs (pip from the wheel directory, .pyc as by default)" "sh $work/podman-wipe.sh" "$podman_build"
row podman-edit "podman build after the edit: its cache warm, COPY . /experiment and the steps after it run" "$edit $ctx" "$podman_build"

# ---- the table ---------------------------------------------------------------
python3 - "$work" "$runs" "$wheels" "$(nproc)" "$("$bin" --version) (commit $(git describe --always --dirty 2>/dev/null || echo unknown))" "${ids[@]}" <<'PY'
import json, math, os, re, sys
work, runs, wheels, cpus, version, ids = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6:]
order = ["cold-gzip", "cold-zstd", "cold-pyc", "podman-cold", "edit-nolock", "edit-locked", "edit-index",
         "podman-edit", "digest-warm", "digest-empty", "push-cold", "push-fresh"]
ids.sort(key=lambda id: order.index(id) if id in order else len(order))
def read(id, ext):
    try:
        return open(f"{work}/row-{id}.{ext}").read()
    except FileNotFoundError:
        return None
def short(text):
    return text.strip().replace(work, "$work").replace(os.getcwd() + "/", "").replace("|", "\\|")
def timing(id):
    text = read(id, "json")
    if text is None or read(id, "fail") is not None:
        return None
    try:
        r = json.loads(text)["results"][0]
    except (ValueError, LookupError):
        return None
    return r["mean"], r["stddev"] or 0.0, len(r["times"]), r["user"], r["system"]
def rss(id):
    text = read(id, "time")
    m = text and re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    return int(m.group(1)) / 1024 if m else None
def digest(text):
    m = text and re.search(r"sha256:[0-9a-f]{64}", text)
    return m.group(0) if m else None
def fmt_time(t):
    mean, sd, n = t[:3]
    unit, scale = ("ms", 1e3) if mean < 1 else ("s", 1)
    digits = 0 if unit == "ms" else 2
    sd_s = f" ± {sd * scale:.{digits}f}" if n > 1 else ""
    return f"{mean * scale:.{digits}f}{sd_s} {unit}"
def uploads(id):
    """Blobs whose upload completed in the untimed run, from the access log."""
    text = read(id, "access")
    if text is None:
        return None
    blobs, manifests, gets, mounts = set(), 0, 0, 0
    for line in text.splitlines():
        m = re.search(r'"(PUT|POST|PATCH|GET|HEAD) (\S+) HTTP/[^"]*" (\d+)', line)
        if not m:
            continue
        method, uri, status = m.groups()
        if method == "PUT" and status == "201" and "/blobs/uploads/" in uri:
            d = re.search(r"digest=sha256(?:%3A|:)([0-9a-f]{64})", uri)
            if d:
                blobs.add(d.group(1))
        elif method == "PUT" and status == "201" and "/manifests/" in uri:
            manifests += 1
        elif method == "POST" and status == "201" and "mount=" in uri:
            mounts += 1
        elif method == "GET" and "/blobs/sha256" in uri:
            gets += 1
    size = 0
    for hex in blobs:
        path = f"{work}/storage/docker/registry/v2/blobs/sha256/{hex[:2]}/{hex}/data"
        size += os.path.getsize(path) if os.path.exists(path) else 0
    ours = re.search(r"Uploaded (\d+) bytes", read(id, "err") or "")
    return len(blobs), size, manifests, mounts, gets, int(ours.group(1)) if ours else None

t = {id: timing(id) for id in ids}
def ratio(id, to, label):
    if t.get(id) and t.get(to):
        return f"{t[id][0] / t[to][0]:.2f} × {label}"
    return ""
against = {
    "cold-gzip": [("podman-cold", "podman build")],
    "cold-zstd": [("podman-cold", "podman build"), ("cold-gzip", "gzip")],
    "cold-pyc": [("cold-gzip", "gzip"), ("podman-cold", "podman build")],
    "edit-nolock": [("podman-edit", "podman")],
    "edit-locked": [("podman-edit", "podman")],
    "edit-index": [("podman-edit", "podman")],
    "digest-warm": [("edit-locked", "locked rebuild")],
    "digest-empty": [("edit-locked", "locked rebuild")],
    "push-fresh": [("push-cold", "cold push")],
}
print(f"\n## demo/stroop ({wheels} wheels), {version}, {cpus} CPUs, BENCH_RUNS={runs}\n")
print("| row | what | wall (mean ± sd) | runs | CPU user + sys | peak RSS | against | notes |")
print("|---|---|---|---|---|---|---|---|")
for id in ids:
    what = short(read(id, "what"))
    fail = read(id, "fail")
    peak = rss(id)
    notes = []
    if fail is not None:
        wall, n, cpu = f"fails: {short(fail)}", "", ""
    else:
        wall, n = fmt_time(t[id]), str(t[id][2])
        cpu = f"{t[id][3]:.2f} + {t[id][4]:.2f} s"
    up = uploads(id) if id.startswith("push") and fail is None else None
    if up:
        notes.append(f"uploaded {up[0]} blobs, {up[1] / 1e6:.1f} MB (access log), {up[2]} manifest PUTs, "
                     f"{up[3]} blobs mounted, {up[4]} blob GETs")
        if up[5] is not None:
            notes.append(f"stderr: Uploaded {up[5]:,} bytes of blobs")
    if fail is None and read(id, "check") is not None:
        got, want = digest(read(id, "out")), digest(read(id, "check"))
        notes.append(f"digest {'=' if got and got == want else '≠'} warm build's ({(got or 'none')[:19]}…)")
    elif fail is None and read(id, "check-fail") is not None:
        notes.append(f"its warm build fails: {short(read(id, 'check-fail'))}")
    vs = "; ".join(filter(None, (ratio(id, to, label) for to, label in against.get(id, []))))
    peak_s = f"{peak:.0f} MB" if peak is not None and fail is None else "-"
    print(f"| {id} | {what} | {wall} | {n} | {cpu} | {peak_s} | {vs} | {'; '.join(notes)} |")
print("\nwall: hyperfine, each run after the row's prepare (not timed); CPU: hyperfine's mean user and system time of")
print("the command's process tree (processes it does not wait for, such as podman's conmon, not counted); peak RSS: /usr/bin/time -v of one untimed run,")
print("the largest single process; against: ratio of the means. The commands ($work: the script's temporary directory):\n")
for id in ids:
    print(f"- {id}: `{short(read(id, 'cmd'))}`; prepare: `{short(read(id, 'prep'))}`")
PY
