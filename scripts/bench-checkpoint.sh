#!/usr/bin/env bash
# Checkpoint, restore, suspend and resume figures on a real TCG guest (1 GiB RAM), all from one
# run of the e2e test `e2e_checkpoints` (tests/e2e_qemu.rs): cold start → ready, checkpoint
# seconds (and per GiB of guest RAM), VM state size, restore → ready, suspend, resume → ready.
#
# Usage: scripts/bench-checkpoint.sh [IMAGE]
#   IMAGE: guest image (default: the cloud-kernel variant,
#          CLAWFARM_GUEST_KERNEL=cloud scripts/build-guest-image.sh).
# Prints the MEASURE line last. Takes several minutes (one or two cold boots under TCG).
set -euo pipefail
cd "$(dirname "$0")/.."
image=${1:-$(CLAWFARM_GUEST_KERNEL=cloud scripts/build-guest-image.sh | tail -n1)}
log=$(mktemp)
trap 'rm -f "$log"' EXIT
CLAWFARM_E2E=1 CLAWFARM_GUEST_IMAGE=$image \
  cargo test --quiet --test e2e_qemu e2e_checkpoints -- --nocapture >"$log" 2>&1 || {
    tail -n 40 "$log" >&2
    echo "bench-checkpoint: the e2e run failed (log above)" >&2
    exit 1
  }
grep -E '\] (ck ready|checkpoint |restore |suspend |resume |apply after)' "$log" || true
grep 'MEASURE' "$log"
