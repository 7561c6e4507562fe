#!/usr/bin/env bash
# Steady-state `clawfarm plan -f DIR` at 1,000 and 10,000 manifests (nothing to do), end to
# end: manifest parsing, bundle identification, params, records, probes, planning.
# Targets on a 2-core machine: <= 50 ms and <= 500 ms. Uses the fake driver (no VMs).
# `scripts/bench-plan.sh [OTHER_BINARY]` also times OTHER_BINARY (e.g. an older build) on
# the same folders in the same run, alternating, so the two figures are comparable.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
tdir=${CARGO_TARGET_DIR:-target}; case $tdir in /*) ;; *) tdir=$PWD/$tdir ;; esac
bin=$tdir/release/clawfarm
other=${1:-}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export CLAWFARM_DRIVER=fake TEST_KEY=bench-secret

cat > "$work/demo.clawbox" <<'JSON'
{"schema_version": 3, "name": "bench",
 "image": [{"name": "base", "ref": "https://example.invalid/base.qcow2",
            "sha256": "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"}],
 "bootstrap": {"id": "openclaw", "install_script": "true", "start_script": "true",
   "params": {"required": [{"key": "API_KEY", "label": "key", "secret": true}],
              "optional": [{"key": "MODEL", "label": "model", "secret": false, "default": "m"}]}}}
JSON

for n in 1000 10000; do
  dir=$work/m$n; home=$work/h$n
  mkdir -p "$dir"
  python3 - "$dir" "$n" <<'PY'
import sys, os
d, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    with open(os.path.join(d, f"agent-{i:05}.yaml"), "w") as f:
        f.write(f"""apiVersion: clawfarm/v1
kind: Claw
metadata:
  name: agent-{i:05}
spec:
  clawbox: ../demo.clawbox
  state: stopped
  cpus: 1
  memory: 512MiB
  params:
    MODEL: gpt-4o
    API_KEY: {{env: TEST_KEY}}
""")
PY
  CLAWFARM_HOME=$home "$bin" apply -f "$dir" --parallelism 16 >/dev/null 2>&1
  CLAWFARM_HOME=$home "$bin" plan -f "$dir" >/dev/null   # exit 0 = steady
  runs=$([ "$n" -eq 1000 ] && echo 20 || echo 5)
  python3 - "$dir" "$home" "$runs" "$n" "$bin" $other <<'PY'
import subprocess, sys, time, os, statistics
d, h, runs, n, bins = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5:]
env = dict(os.environ, CLAWFARM_HOME=h)
ts = {b: [] for b in bins}
for _ in range(runs):
    for b in bins:
        t = time.perf_counter()
        r = subprocess.run([b, "plan", "-f", d], env=env, stdout=subprocess.DEVNULL)
        ts[b].append((time.perf_counter() - t) * 1000)
        assert r.returncode == 0, f"{b}: not steady"
for b in bins:
    print(f"plan, {n} manifests, steady state: median {statistics.median(ts[b]):.0f} ms, "
          f"min {min(ts[b]):.0f} ms ({runs} runs) [{b}]")
PY
done
