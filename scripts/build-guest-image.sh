#!/usr/bin/env bash
# Build the clawfarm guest image: a small Debian 12 (bookworm) cloud image made from Debian
# packages, booted by BIOS GRUB from an MBR disk, with cloud-init (NoCloud) and a serial
# console. The result is cached by the hash of this script's own content:
#
#   ${CLAWFARM_CACHE:-$HOME/.cache/clawfarm}/guest/debian-12-clawfarm-<hash>.qcow2
#   ${CLAWFARM_CACHE:-$HOME/.cache/clawfarm}/guest/debian-12-clawfarm.qcow2 -> (the above)
#
# Usage: scripts/build-guest-image.sh [OUT]
#   OUT (optional): also make OUT a symlink to the cached image.
# The last line on stdout is the absolute path of the cached image. Progress goes to stderr.
#
# Safe to rerun after being killed: everything is built in a private temp folder inside the
# cache folder (mounts left by a killed debootstrap are unmounted first) and renamed into
# place at the end; concurrent runs are serialised by flock.
#
# Environment:
#   CLAWFARM_CACHE          cache root (default $HOME/.cache/clawfarm)
#   CLAWFARM_DEBIAN_MIRROR  Debian mirror (default: the host's apt source, else deb.debian.org)
#   CLAWFARM_SKIP_APT=1     do not apt-get install the host tools (they must be present)
#   CLAWFARM_GUEST_KERNEL   generic (default: linux-image-amd64) or cloud
#                           (linux-image-cloud-amd64, the kernel of Debian's official
#                           genericcloud images: no 9p at all). The cloud variant is cached
#                           as debian-12-clawfarm-cloud-<hash>.qcow2.
set -euo pipefail

SELF="$(readlink -f "${BASH_SOURCE[0]}")"
KERNEL_FLAVOUR="${CLAWFARM_GUEST_KERNEL:-generic}"
case "$KERNEL_FLAVOUR" in
  generic) KERNEL_PKG=linux-image-amd64; VARIANT="" ;;
  cloud) KERNEL_PKG=linux-image-cloud-amd64; VARIANT="-cloud" ;;
  *) printf '[build-guest-image] CLAWFARM_GUEST_KERNEL=%s is not generic or cloud\n' \
       "$KERNEL_FLAVOUR" >&2; exit 2 ;;
esac
HASH="$( (cat "$SELF"; echo "$KERNEL_FLAVOUR") | sha256sum | cut -c1-16)"
CACHE_ROOT="${CLAWFARM_CACHE:-$HOME/.cache/clawfarm}"
DIR="$CACHE_ROOT/guest"
NAME="debian-12-clawfarm$VARIANT-$HASH.qcow2"
FINAL="$DIR/$NAME"
LINK="$DIR/debian-12-clawfarm$VARIANT.qcow2"
OUT="${1:-}"

# Root filesystem label: used in fstab, on the kernel command line and by GRUB's search.
LABEL="clawroot"
# Fixed filesystem UUID (all clones share it, as with any cloud image).
FS_UUID="c1a3fa4e-0000-4c1a-8f00-00000000c1a3"
DISK_SIZE_MIB=4096          # virtual size of the disk (qcow2 stays small)
PART_START_SECTOR=2048      # partition at 1 MiB; GRUB core.img lives in sectors 1..2047
SUITE=bookworm
PACKAGES=(
  # what the brief's recipe needs
  cloud-init python3-cffi-backend openssh-server sudo systemd-sysv ifupdown isc-dhcp-client
  # The kernel ($CLAWFARM_GUEST_KERNEL). Neither the payload nor the volumes need 9p any more
  # (they are virtio-blk disks with ext4), so the cloud flavour works as well. Module trees for
  # hardware a QEMU guest never has are pruned below to keep the image small.
  "$KERNEL_PKG"
  # udev creates /dev/virtio-ports/<name>; kmod for modprobe; initramfs for root=LABEL=
  udev kmod initramfs-tools
  # small conveniences the phase runner and agents expect
  iproute2 procps curl ca-certificates netbase dbus less
  # growpart + resize2fs, so a driver may grow the overlay disk and cloud-init grows the fs
  cloud-guest-utils fdisk e2fsprogs
)

log() { printf '[build-guest-image] %s\n' "$*" >&2; }
publish_links() {
  ln -sfn "$NAME" "$DIR/.link.$$" && mv -fT "$DIR/.link.$$" "$LINK"
  if [[ -n "$OUT" ]]; then ln -sfn "$FINAL" "$OUT"; fi
}

# ---- fast path: cached -----------------------------------------------------------------
if [[ -f "$FINAL" ]]; then
  [[ -L "$LINK" && "$(readlink "$LINK")" == "$NAME" ]] || publish_links
  [[ -z "$OUT" ]] || ln -sfn "$FINAL" "$OUT"
  echo "$FINAL"
  exit 0
fi

if [[ $EUID -ne 0 ]]; then
  log "building the image needs root (debootstrap, device nodes, file ownership)"
  exit 1
fi

mkdir -p "$DIR"
exec 9>"$DIR/.build.lock"
log "waiting for the build lock $DIR/.build.lock"
flock 9
if [[ -f "$FINAL" ]]; then # built by a concurrent run while we waited
  publish_links
  echo "$FINAL"
  exit 0
fi

# Unmount everything below $1 (deepest first), then remove it without crossing filesystems.
cleanup_dir() {
  local d="$1" m
  [[ -e "$d" ]] || return 0
  d="$(readlink -f "$d")"
  while read -r m; do
    umount -l "$m" 2>/dev/null || true
  done < <(awk -v p="$d/" '{ m=$5; gsub(/\\040/, " ", m); if (index(m, p) == 1) print m }' /proc/self/mountinfo | sort -r)
  rm -rf --one-file-system "$d"
}

# Leftovers of killed runs (we hold the lock, so nobody else is building).
for stale in "$DIR"/.build.*; do
  [[ -d "$stale" ]] && { log "removing stale build folder $stale"; cleanup_dir "$stale"; }
done
rm -f "$DIR"/.*.qcow2.tmp "$DIR"/.link.* 2>/dev/null || true

WORK="$DIR/.build.$$"
mkdir -p "$WORK"
trap 'cleanup_dir "$WORK"' EXIT
trap 'exit 130' INT TERM HUP
START=$(date +%s)

# ---- host tools --------------------------------------------------------------------------
need_tools() {
  local t
  for t in debootstrap grub-mkimage mkfs.ext4 qemu-img flock; do
    command -v "$t" >/dev/null 2>&1 || return 1
  done
  [[ -f /usr/lib/grub/i386-pc/boot.img ]] || return 1
}
if ! need_tools; then
  if [[ "${CLAWFARM_SKIP_APT:-}" == 1 ]]; then
    log "missing host tools (debootstrap grub-pc-bin e2fsprogs qemu-utils) and CLAWFARM_SKIP_APT=1"
    exit 1
  fi
  log "installing host tools"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq --no-install-recommends debootstrap grub-pc-bin e2fsprogs \
    qemu-utils util-linux ca-certificates >&2
fi

MIRROR="${CLAWFARM_DEBIAN_MIRROR:-}"
if [[ -z "$MIRROR" ]]; then
  MIRROR="$(grep -rhoE '^(URIs:|deb) *(\[[^]]*\] *)?https?://[^ ]+/debian/?( |$)' \
    /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null | grep -oE 'https?://[^ ]+' | head -1 || true)"
  MIRROR="${MIRROR:-http://deb.debian.org/debian}"
fi
log "mirror: $MIRROR"

# ---- root filesystem -----------------------------------------------------------------------
ROOT="$WORK/rootfs"
mkdir -p "$ROOT"
log "debootstrap $SUITE (a few minutes)"
debootstrap --variant=minbase --include="$(IFS=,; echo "${PACKAGES[*]}")" \
  "$SUITE" "$ROOT" "$MIRROR" > "$WORK/debootstrap.log" 2>&1 || {
    tail -n 40 "$WORK/debootstrap.log" >&2
    log "debootstrap failed (log above)"
    exit 1
  }
# debootstrap unmounts what it mounted; be sure before copying the tree into an image.
awk -v p="$(readlink -f "$ROOT")/" 'index($5, p) == 1 { print $5 }' /proc/self/mountinfo \
  | sort -r | xargs -r -n1 umount -l

KVER="$(basename "$(ls -d "$ROOT"/lib/modules/*-amd64 | sort -V | tail -1)")"
log "kernel $KVER"
# Drop drivers for hardware that a QEMU/virtio guest does not have (~200 MB), then depmod.
for d in sound drivers/gpu drivers/media drivers/net/wireless drivers/infiniband \
    drivers/staging drivers/iio drivers/comedi drivers/mtd drivers/bluetooth drivers/isdn \
    drivers/nfc drivers/atm net/bluetooth net/mac80211 net/wireless net/nfc net/atm; do
  rm -rf "$ROOT/lib/modules/$KVER/kernel/$d"
done
find "$ROOT/lib/modules/$KVER/kernel/drivers/net/ethernet" -mindepth 1 -maxdepth 1 \
  ! -name intel ! -name realtek -exec rm -rf {} +
chroot "$ROOT" depmod -a "$KVER"
[[ -f "$ROOT/boot/vmlinuz-$KVER" && -f "$ROOT/boot/initrd.img-$KVER" ]] || {
  log "kernel or initrd missing in /boot"; exit 1; }
# The status channel, the payload and the volumes need these; fail the build loudly if the
# kernel lacks one.
for mod in qemu_fw_cfg virtio_console virtio_blk ext4; do
  if ! grep -qE "/$mod\.ko(\.[a-z]+)?:" "$ROOT/lib/modules/$KVER/modules.dep" \
     && ! grep -qE "/$mod\.ko" "$ROOT/lib/modules/$KVER/modules.builtin"; then
    log "kernel $KVER has no module $mod"; exit 1
  fi
done

log "configuring the root filesystem"
cat > "$ROOT/etc/fstab" <<EOF
LABEL=$LABEL / ext4 rw,discard,errors=remount-ro 0 1
EOF
echo clawfarm > "$ROOT/etc/hostname"
cat > "$ROOT/etc/hosts" <<EOF
127.0.0.1 localhost
::1 localhost ip6-localhost ip6-loopback
EOF
# cloud-init writes /etc/network/interfaces.d/50-cloud-init; the source line applies it.
cat > "$ROOT/etc/network/interfaces" <<EOF
source /etc/network/interfaces.d/*

auto lo
iface lo inet loopback
EOF
mkdir -p "$ROOT/etc/network/interfaces.d"
echo 'LANG=C.UTF-8' > "$ROOT/etc/default/locale"
mkdir -p "$ROOT/etc/cloud/cloud.cfg.d"
cat > "$ROOT/etc/cloud/cloud.cfg.d/99-clawfarm.cfg" <<EOF
# clawfarm guest defaults
datasource_list: [NoCloud, None]
locale: C.UTF-8
# Only the modules a claw seed uses: every module costs Python time, which is slow under TCG.
cloud_init_modules: [migrator, seed_random, bootcmd, write-files, growpart, resizefs,
  set_hostname, update_hostname, update_etc_hosts, users-groups, ssh]
cloud_config_modules: [locale, set-passwords, runcmd]
cloud_final_modules: [scripts-per-once, scripts-per-boot, scripts-per-instance, scripts-user,
  final-message]
EOF
# Periodic jobs a short-lived sandbox does not want (CPU and network under TCG).
for unit in apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer e2scrub_reap.service \
    fstrim.timer; do
  ln -sfn /dev/null "$ROOT/etc/systemd/system/$unit"
done
# Load the modules the status channel needs at every boot.
cat > "$ROOT/etc/modules-load.d/clawfarm.conf" <<EOF
qemu_fw_cfg
virtio_console
EOF
# Serial console login (getty) on ttyS0.
mkdir -p "$ROOT/etc/systemd/system/getty.target.wants"
ln -sfn /lib/systemd/system/serial-getty@.service \
  "$ROOT/etc/systemd/system/getty.target.wants/serial-getty@ttyS0.service"
# Per-clone identity: machine-id and SSH host keys are made on first boot / by cloud-init.
: > "$ROOT/etc/machine-id"
rm -f "$ROOT/var/lib/dbus/machine-id" "$ROOT"/etc/ssh/ssh_host_*
: > "$ROOT/etc/resolv.conf"
# Slim down.
rm -rf "$ROOT"/var/cache/apt/archives/*.deb "$ROOT"/var/lib/apt/lists/* \
  "$ROOT"/var/log/*.log "$ROOT"/var/log/apt/* "$ROOT"/usr/share/doc/* "$ROOT"/usr/share/man/* \
  "$ROOT"/usr/share/info/* "$ROOT"/tmp/*
cat > "$ROOT/etc/apt/sources.list" <<EOF
deb http://deb.debian.org/debian $SUITE main
deb http://deb.debian.org/debian $SUITE-updates main
deb http://deb.debian.org/debian-security $SUITE-security main
EOF

# GRUB: modules next to grub.cfg (for anything not embedded) and the boot menu.
mkdir -p "$ROOT/boot/grub/i386-pc"
cp /usr/lib/grub/i386-pc/*.mod /usr/lib/grub/i386-pc/*.lst "$ROOT/boot/grub/i386-pc/"
CMDLINE="root=LABEL=$LABEL rw console=ttyS0,115200 net.ifnames=0"
cat > "$ROOT/boot/grub/grub.cfg" <<EOF
serial --unit=0 --speed=115200
terminal_input serial
terminal_output serial
set timeout=0
set default=0
menuentry 'Debian 12 (clawfarm)' {
  search --no-floppy --label --set=root $LABEL
  echo 'clawfarm: loading linux $KVER'
  linux /boot/vmlinuz-$KVER $CMDLINE
  initrd /boot/initrd.img-$KVER
}
EOF

# ---- disk image ---------------------------------------------------------------------------
RAW="$WORK/disk.raw"
SECTORS=$((DISK_SIZE_MIB * 2048))
PART_SECTORS=$((SECTORS - PART_START_SECTOR))
truncate -s "${DISK_SIZE_MIB}M" "$RAW"

log "mkfs.ext4 -d (label $LABEL)"
mkfs.ext4 -q -F -L "$LABEL" -U "$FS_UUID" -O ^metadata_csum_seed,^orphan_file \
  -E "offset=$((PART_START_SECTOR * 512)),root_owner=0:0" -d "$ROOT" \
  "$RAW" "$((PART_SECTORS / 2))k" >&2

# Little-endian byte strings for printf %b.
le32() { printf '\\x%02x\\x%02x\\x%02x\\x%02x' $(($1 & 255)) $((($1 >> 8) & 255)) $((($1 >> 16) & 255)) $((($1 >> 24) & 255)); }
put() { printf '%b' "$2" | dd of="$RAW" bs=1 seek="$1" conv=notrunc status=none; }

log "MBR partition table + GRUB"
# Disk signature, then partition 1: active, type 0x83, CHS(start)=0/32/33, CHS(end)=max, LBA.
put 440 "$(le32 $((0xc1a3fa4e)))\\x00\\x00"
put 446 "\\x80\\x20\\x21\\x00\\x83\\xfe\\xff\\xff$(le32 $PART_START_SECTOR)$(le32 $PART_SECTORS)"
put 510 '\x55\xaa'

# core.img: embedded early config finds the root by label and hands over to normal mode,
# which reads /boot/grub/grub.cfg from it.
cat > "$WORK/early.cfg" <<EOF
search --no-floppy --label --set=root $LABEL
set prefix=(\$root)/boot/grub
EOF
grub-mkimage -O i386-pc -o "$WORK/core.img" -c "$WORK/early.cfg" -p /boot/grub \
  biosdisk part_msdos ext2 search search_label normal linux boot serial terminal \
  configfile echo test
CORE_BYTES=$(stat -c %s "$WORK/core.img")
if (( CORE_BYTES > (PART_START_SECTOR - 1) * 512 )); then
  log "core.img ($CORE_BYTES bytes) does not fit before the partition"; exit 1
fi
# boot.img: boot code only (first 440 bytes), the partition table stays. Its kernel sector
# pointer (8 bytes LE at 0x5c) must say 1: core.img's first sector. GRUB's default is 1;
# we write it anyway so the layout does not depend on that default.
dd if=/usr/lib/grub/i386-pc/boot.img of="$RAW" bs=440 count=1 conv=notrunc status=none
put $((0x5c)) "$(le32 1)\\x00\\x00\\x00\\x00"
dd if="$WORK/core.img" of="$RAW" bs=512 seek=1 conv=notrunc status=none

# ---- qcow2 + publish ------------------------------------------------------------------------
log "qemu-img convert -O qcow2"
TMPQ="$DIR/.$NAME.tmp"
qemu-img convert -O qcow2 "$RAW" "$TMPQ"
sync "$TMPQ"
chmod 0644 "$TMPQ"
mv -f "$TMPQ" "$FINAL"
publish_links
# Older cached images (other script versions) are left alone: running claws may back on them.
log "done in $(( $(date +%s) - START )) s: $FINAL ($(du -h "$FINAL" | cut -f1) on disk)"
echo "$FINAL"
