#!/usr/bin/env bash
# The main job, on a fresh machine: set up the host, build (or reuse) the guest image, serve
# it over HTTP on 127.0.0.1, build the demo bundle with tar, apply examples/agents/, and end
# with a ready VM whose gateway answers on 127.0.0.1:18789. The VM is left running:
#   clawfarm ps; clawfarm ssh demo-a; clawfarm rm -f demo-a
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup-host.sh
echo "== building clawfarm" >&2
cargo build --release --quiet
tdir=${CARGO_TARGET_DIR:-target}; case $tdir in /*) ;; *) tdir=$PWD/$tdir ;; esac
clawfarm=$tdir/release/clawfarm

echo "== guest image (cached after the first build, ~5 min)" >&2
image=$(scripts/build-guest-image.sh | tail -n 1)
image=$(readlink -f "$image")

# Serve the image on 127.0.0.1 so the bundle's base image is a real HTTP download.
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
python3 -m http.server "$port" --bind 127.0.0.1 --directory "$(dirname "$image")" \
  >/tmp/clawfarm-demo-httpd.log 2>&1 &
httpd=$!
trap 'kill $httpd 2>/dev/null || true' EXIT

echo "== building the demo bundle" >&2
examples/demo/build-bundle.sh "$image" "http://127.0.0.1:$port/$(basename "$image")" >/dev/null

# The demo's "secret" (a real deployment would export a real key, or use {file: …}).
export DEMO_OPENAI_API_KEY=${DEMO_OPENAI_API_KEY:-demo-key-not-secret}

echo "== clawfarm validate / plan / apply" >&2
"$clawfarm" validate -f examples/agents/
"$clawfarm" plan -f examples/agents/ || [ $? -eq 2 ]
start=$(date +%s)
"$clawfarm" apply -f examples/agents/
echo "apply -> ready in $(( $(date +%s) - start )) s" >&2

"$clawfarm" ps
echo "== the gateway answers on 127.0.0.1:18789" >&2
curl -fsS http://127.0.0.1:18789/model.txt
curl -fsS -o /dev/null -w 'GET / -> %{http_code}\n' http://127.0.0.1:18789/
echo "demo-a is running. Try: $clawfarm ssh demo-a -- sudo -n cat /etc/clawfarm/params.env | cut -c1-20" >&2
echo "Remove it with: $clawfarm rm -f demo-a" >&2
