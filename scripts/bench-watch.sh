#!/usr/bin/env bash
# Watch-mode figures on the fake driver (no VMs; this measures clawfarm itself):
#  1. latency from a manifest write to the first action, median over 20 edits;
#  2. CPU time and RSS of an idle watch over 60 s with 10 manifests.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
tdir=${CARGO_TARGET_DIR:-target}; case $tdir in /*) ;; *) tdir=$PWD/$tdir ;; esac
bin=$tdir/release/clawfarm
work=$(mktemp -d)
export CLAWFARM_DRIVER=fake CLAWFARM_HOME=$work/home TEST_KEY=k
cleanup() { [ -n "${wpid:-}" ] && kill "$wpid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

cat > "$work/demo.clawbox" <<'JSON'
{"schema_version": 3, "name": "bench",
 "image": [{"name": "base", "ref": "https://example.invalid/base.qcow2",
            "sha256": "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"}],
 "bootstrap": {"id": "openclaw", "install_script": "true", "start_script": "true",
   "params": {"required": [{"key": "API_KEY", "label": "key", "secret": true}]}}}
JSON
mkdir -p "$work/m"
manifest() { # name cpus
  printf 'apiVersion: clawfarm/v1\nkind: Claw\nmetadata:\n  name: %s\nspec:\n  clawbox: ../demo.clawbox\n  cpus: %s\n  params:\n    API_KEY: {env: TEST_KEY}\n' "$1" "$2"
}
for i in $(seq 0 9); do manifest "agent-$i" 1 > "$work/m/agent-$i.yaml"; done

"$bin" watch "$work/m" --resync 30s 2>"$work/watch.log" &
wpid=$!
# Wait for the initial pass to settle.
for _ in $(seq 100); do
  n=$(grep -c '"wait-ready","result":"ok"' "$work/home/events.jsonl" 2>/dev/null || true)
  [ "${n:-0}" -ge 10 ] && break
  sleep 0.1
done

python3 - "$work" "$wpid" <<'PY'
import json, os, sys, time, statistics
work, pid = sys.argv[1], int(sys.argv[2])
ev_path = os.path.join(work, "home", "events.jsonl")
def events():
    with open(ev_path) as f:
        return [json.loads(l) for l in f if l.strip().endswith("}")]
def parse(ts):
    # 2026-11-21T10:00:00.123Z
    import datetime
    return datetime.datetime.strptime(ts, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=datetime.timezone.utc).timestamp()
lat = []
for k in range(20):
    n = len(events())
    name = f"agent-{k % 10}"
    cpus = 2 + k
    text = ("apiVersion: clawfarm/v1\nkind: Claw\nmetadata:\n  name: %s\nspec:\n  clawbox: ../demo.clawbox\n"
            "  cpus: %d\n  params:\n    API_KEY: {env: TEST_KEY}\n" % (name, cpus))
    tmp = os.path.join(work, "m", f".{name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
    t0 = time.time()
    os.rename(tmp, os.path.join(work, "m", f"{name}.yaml"))   # editors save by rename
    first = None
    deadline = time.time() + 10
    while first is None and time.time() < deadline:
        for e in events()[n:]:
            if e["result"] == "started" and e["instance"] != "-":
                first = parse(e["time"]); break
        time.sleep(0.01)
    assert first is not None, "no action after an edit"
    lat.append((first - t0) * 1000)
    time.sleep(0.6)
print(f"edit -> first action: median {statistics.median(lat):.0f} ms, min {min(lat):.0f}, max {max(lat):.0f} (20 edits; debounce 300 ms)")

def cpu_ticks():
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return int(f[11]) + int(f[12])   # utime + stime
def rss_kib():
    for l in open(f"/proc/{pid}/status"):
        if l.startswith("VmRSS:"):
            return int(l.split()[1])
time.sleep(2)
hz = os.sysconf("SC_CLK_TCK")
c0 = cpu_ticks(); t0 = time.time()
time.sleep(60)
c1 = cpu_ticks(); t1 = time.time()
print(f"idle watch, 10 manifests, {t1-t0:.0f} s: CPU {(c1-c0)/hz*1000:.0f} ms (clock tick {1000/hz:.0f} ms) ({(c1-c0)/hz/(t1-t0)*100:.2f} %), RSS {rss_kib()/1024:.1f} MiB (includes 2 resyncs at 30 s)")
PY
