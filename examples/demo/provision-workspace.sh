#!/bin/bash
# Demo provision step: prepare a workspace for the claw user.
set -euo pipefail
install -d -o claw -g claw /home/claw/workspace
echo "provision: $(date -u +%FT%TZ)" >> /var/lib/clawfarm-demo.order
