#!/usr/bin/env bash
# The test command (README, .ci/run): host set-up, quality gates, the whole test suite
# including the end-to-end suite that boots real guests under QEMU/TCG.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup-host.sh
command -v cargo-nextest >/dev/null || true

echo "== cargo fmt --check" >&2
cargo fmt --check
echo "== cargo clippy" >&2
cargo clippy --all-targets -- -D warnings

echo "== guest image (cached)" >&2
export CLAWFARM_GUEST_IMAGE="${CLAWFARM_GUEST_IMAGE:-$(scripts/build-guest-image.sh | tail -n 1)}"
# The cloud-kernel variant (Debian's linux-image-cloud-amd64: no 9p), booted by
# e2e_qemu::e2e_checkpoints: payload and volumes reach the guest without 9p (rfc/011).
export CLAWFARM_GUEST_IMAGE_CLOUD="${CLAWFARM_GUEST_IMAGE_CLOUD:-$(CLAWFARM_GUEST_KERNEL=cloud scripts/build-guest-image.sh | tail -n 1)}"

echo "== cargo test" >&2
export CLAWFARM_E2E=1
cargo test -- --test-threads 2
