#!/usr/bin/env bash
# Install what clawfarm's demo and tests need on a fresh Debian bookworm host. Idempotent:
# does nothing when everything is present.
set -euo pipefail

need=()
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
command -v qemu-img >/dev/null || need+=(qemu-utils/bookworm)
command -v debootstrap >/dev/null || need+=(debootstrap)
[ -e /usr/lib/grub/i386-pc/boot.img ] || need+=(grub-pc-bin)
command -v grub-mkimage >/dev/null || need+=(grub2-common)
command -v mkfs.ext4 >/dev/null || need+=(e2fsprogs)
command -v sfdisk >/dev/null || need+=(fdisk)
command -v ssh >/dev/null || need+=(openssh-client)
command -v tmux >/dev/null || need+=(tmux)
command -v curl >/dev/null || need+=(curl)
# The dashboard's browser tests (tests/ui_browser.rs) drive headless Chromium over WebDriver.
command -v chromium >/dev/null || need+=(chromium)
command -v chromedriver >/dev/null || need+=(chromium-driver)
command -v nft >/dev/null || need+=(nftables)

if [ ${#need[@]} -gt 0 ]; then
  echo "setup-host: installing ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # Installing qemu-system-x86 removes a backports qemu-utils if one is present, so
  # qemu-utils is pinned to bookworm's (downgrading when needed).
  case " ${need[*]} " in *" qemu-system-x86 "*)
    need+=(qemu-utils/bookworm)
    have_utils=$(dpkg-query -W -f='${Version}' qemu-utils 2>/dev/null || true)
    case "$have_utils" in *bpo*)
      echo "setup-host: NOTE: replacing qemu-utils $have_utils (backports) with bookworm's," \
        "which qemu-system-x86 needs (a downgrade of your installed package)" >&2 ;;
    esac ;;
  esac
  apt-get install -y -qq --no-install-recommends --allow-downgrades "${need[@]}" >&2
fi
command -v qemu-img >/dev/null || {
  apt-get install -y -qq --no-install-recommends --allow-downgrades qemu-utils/bookworm >&2
}
# QEMU never runs as root: clawfarm starts it as this system user (rfc/012-sandbox.md).
if ! getent passwd clawfarm-qemu >/dev/null; then
  echo "setup-host: creating system user clawfarm-qemu" >&2
  useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin \
    --user-group clawfarm-qemu
fi
echo "setup-host: ok ($(qemu-system-x86_64 --version | head -1))" >&2
