#!/usr/bin/env bash
# Blob verify and bundle import against the standard tools, on one generated file.
#
#   scripts/bench-blobs.sh [MIB]        default 1024 (1 GiB)
#
# Prints, for the same file:
#   verify:  blob verify (clawfarm's SHA-256)      vs  sha256sum
#   import:  clawfarm bundle import (with fsync)   vs  tar xzf + sha256sum (no fsync)
# as best-of-N wall times, the CPU time (user+sys) of that run, and ratios (>1 means
# clawfarm is faster). On a shared machine the CPU ratio is the steadier figure.
#
# Inputs are generated once into ${TMPDIR:-/tmp}/clawfarm-bench-<MIB> and kept for
# reruns (the gzip step is the slow part); BENCH_CLEAN=1 removes them at the end.
# Runs are short but CPU-bound: check `uptime` first, the machine is shared.
set -euo pipefail

MIB=${1:-1024}
RUNS=${RUNS:-3}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
DIR=${TMPDIR:-/tmp}/clawfarm-bench-$MIB
BIN=$CARGO_TARGET_DIR/release/examples/blobbench

echo "building the blobbench example (release)..." >&2
(cd "$ROOT" && cargo build --quiet --release --example blobbench)

mkdir -p "$DIR/src"
if [[ ! -s $DIR/b.clawbox ]]; then
  echo "generating $MIB MiB of semi-compressible data and a tar.gz bundle in $DIR..." >&2
  "$BIN" gen "$DIR/src/run.qcow2" "$MIB" >/dev/null
  RUN_SHA=$(sha256sum "$DIR/src/run.qcow2" | cut -d' ' -f1)
  cat >"$DIR/src/clawspec.json" <<EOF
{"schema_version":3,"name":"bench","image":[
 {"name":"base","ref":"ubuntu:24.04","sha256":"1111111111111111111111111111111111111111111111111111111111111111"},
 {"name":"run","ref":"clawbox:///run.qcow2","sha256":"$RUN_SHA"}],
 "bootstrap":{"id":"openclaw","install_script":"true","start_script":"true","params":{"required":[]}}}
EOF
  tar -cf - -C "$DIR/src" clawspec.json run.qcow2 | gzip -1 >"$DIR/b.clawbox.tmp"
  mv "$DIR/b.clawbox.tmp" "$DIR/b.clawbox"
fi
FILE=$DIR/src/run.qcow2
BOX=$DIR/b.clawbox

# best-of-RUNS of a command (after a warm-up run that fills the page cache): prints
# "WALL CPU" for the run with the best wall time (CPU = user + sys, children included).
best() {
  local best="" cpu="" line w c TIMEFORMAT='%R %U %S'
  "$@" >/dev/null
  for _ in $(seq "$RUNS"); do
    line=$({ time "$@" >/dev/null; } 2>&1 | tail -1)
    w=$(awk '{ print $1 }' <<<"$line")
    c=$(awk '{ print $2 + $3 }' <<<"$line")
    if [[ -z $best ]] || awk -v d="$w" -v b="$best" 'BEGIN { exit !(d < b) }'; then
      best=$w
      cpu=$c
    fi
  done
  echo "$best $cpu"
}

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }

pipeline() {
  rm -rf "$DIR/x" && mkdir "$DIR/x"
  tar xzf "$BOX" -C "$DIR/x" && sha256sum "$DIR/x/run.qcow2"
}
ours_import() {
  rm -rf "$DIR/home" 2>/dev/null || { chmod -R u+w "$DIR/home" && rm -rf "$DIR/home"; }
  "$BIN" import "$BOX" "$DIR/home"
}

echo "machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "file: $(numfmt --to=iec "$(stat -c %s "$FILE")") data, bundle $(numfmt --to=iec "$(stat -c %s "$BOX")") (gzip -1)"

read -r W_SHA C_SHA < <(best sha256sum "$FILE")
read -r W_VER C_VER < <(best "$BIN" verify "$FILE")
printf 'verify   sha256sum        %7ss (cpu %6ss)   clawfarm %7ss (cpu %6ss)   wall ratio %sx  cpu ratio %sx\n' \
  "$W_SHA" "$C_SHA" "$W_VER" "$C_VER" "$(ratio "$W_SHA" "$W_VER")" "$(ratio "$C_SHA" "$C_VER")"

read -r W_PIPE C_PIPE < <(best pipeline)
read -r W_IMP C_IMP < <(best ours_import)
printf 'import   tar xzf+sha256sum %7ss (cpu %6ss)   clawfarm %7ss (cpu %6ss)   wall ratio %sx  cpu ratio %sx\n' \
  "$W_PIPE" "$C_PIPE" "$W_IMP" "$C_IMP" "$(ratio "$W_PIPE" "$W_IMP")" "$(ratio "$C_PIPE" "$C_IMP")"
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"

rm -rf "$DIR/x"
chmod -R u+w "$DIR/home" 2>/dev/null || true
rm -rf "$DIR/home"
if [[ ${BENCH_CLEAN:-0} == 1 ]]; then rm -rf "$DIR"; fi
