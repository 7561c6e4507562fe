#!/bin/bash
# Demo install step: runs once per instance, as root, with the params in the environment.
set -euo pipefail
mkdir -p /srv/gateway
cp -r /opt/claw/www/. /srv/gateway/
# Record what the gateway serves; the model name is a non-secret param.
printf 'model=%s\n' "${MODEL:-unset}" > /srv/gateway/model.txt
# Phases append here, so the order install -> start -> provision can be checked over ssh.
echo "install: $(date -u +%FT%TZ)" >> /var/lib/clawfarm-demo.order
