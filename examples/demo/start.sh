#!/bin/bash
# Demo start step: runs on every boot. Starts a stand-in gateway on 18789 (the OpenClaw
# gateway's port) that serves the payload copied by install.sh. The runner's unit uses
# KillMode=process, so this background server outlives the step.
set -euo pipefail
echo "start: $(date -u +%FT%TZ)" >> /var/lib/clawfarm-demo.order
cd /srv/gateway
nohup python3 -m http.server 18789 --bind 0.0.0.0 >/var/log/demo-gateway.log 2>&1 &
# Wait until it listens, so "start ok" means the gateway is up.
for _ in $(seq 50); do
  python3 - <<'PY' && exit 0
import socket, sys
s = socket.socket()
s.settimeout(0.2)
sys.exit(0 if s.connect_ex(("127.0.0.1", 18789)) == 0 else 1)
PY
  sleep 0.2
done
echo "gateway did not start" >&2
exit 1
