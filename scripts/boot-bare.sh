#!/usr/bin/env bash
# Proof that the clawfarm guest contract works with a bare qemu-system-x86_64 under TCG.
#
# Usage: scripts/boot-bare.sh IMAGE WORKDIR
#   IMAGE    the guest image (scripts/build-guest-image.sh prints its path)
#   WORKDIR  a folder for this run (created; overlay, seed, keys, logs go there)
#
# What it does:
#   1. writes test scripts, a payload folder and a volume folder, and a seed with clawfarm's
#      own Rust code (examples/guest_tool.rs → clawfarm::seed::write_seed);
#   2. boot 1: a qcow2 overlay on IMAGE, the status port + fw_cfg nonce, payload and volume ext4 disks (no 9p);
#      waits for the status line of the last phase (read with clawfarm::guest::read_status):
#      provision step "flaky" must fail with exit code 42 (its flag file is missing);
#      then checks over SSH (pinned host key, StrictHostKeyChecking=yes) as user claw;
#   3. powers off, writes the flag file into the volume disk (debugfs), boot 2 with a new nonce:
#      waits for "done"; checks install/provision did not rerun, start did, the failed
#      step was retried, and the daemon started by start_script is serving.
# Prints timings; exits non-zero on the first failed check.
#
# Environment: CLAWFARM_BOOT_TIMEOUT (s, default 600), QEMU (default qemu-system-x86_64),
# KEEP=1 leaves the VM of boot 2 running (its pid is in WORKDIR/qemu.pid).
set -euo pipefail

IMAGE="$(readlink -f "${1:?usage: boot-bare.sh IMAGE WORKDIR}")"
WORK="${2:?usage: boot-bare.sh IMAGE WORKDIR}"
TIMEOUT="${CLAWFARM_BOOT_TIMEOUT:-600}"
QEMU="${QEMU:-qemu-system-x86_64}"
REPO="${CLAWFARM_REPO:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$REPO/target}"

mkdir -p "$WORK"
WORK="$(cd "$WORK" && pwd)"
log() { printf '[boot-bare] %s\n' "$*" >&2; }
die() { log "FAIL: $*"; exit 1; }
ok() { log "ok: $*"; }

QEMU_PID=""
stop_vm() {
  if [[ -n "$QEMU_PID" ]] && kill -0 "$QEMU_PID" 2>/dev/null; then
    kill "$QEMU_PID" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$QEMU_PID" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$QEMU_PID" 2>/dev/null || true
  fi
  QEMU_PID=""
}
trap '[[ "${KEEP:-}" == 1 ]] || stop_vm' EXIT

# Host tools. On a fresh machine qemu-utils may come from backports (newer) and installing
# qemu-system-x86 would remove it: install both from bookworm, allowing the downgrade.
need=()
command -v "$QEMU" >/dev/null 2>&1 || need+=(qemu-system-x86 qemu-utils/bookworm)
command -v qemu-img >/dev/null 2>&1 || need+=(qemu-utils/bookworm)
command -v ssh >/dev/null 2>&1 || need+=(openssh-client)
command -v python3 >/dev/null 2>&1 || need+=(python3)
if (( ${#need[@]} )); then
  log "installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq --no-install-recommends --allow-downgrades \
    $(printf '%s\n' "${need[@]}" | sort -u) >&2
fi

log "building the helper (cargo build --example guest_tool)"
(cd "$REPO" && cargo build -q --example guest_tool)
TOOL="$CARGO_TARGET_DIR/debug/examples/guest_tool"

# ---- test content -----------------------------------------------------------------------
rm -rf "$WORK/scripts" "$WORK/payload" "$WORK/vol" "$WORK/seed"
mkdir -p "$WORK/scripts" "$WORK/payload" "$WORK/vol"
echo "payload file from the host" > "$WORK/payload/hello.txt"
cat > "$WORK/scripts/install.sh" <<'EOF'
#!/bin/bash
set -e
echo install >> /var/lib/claw-order
echo "install sees GREETING=$GREETING and payload $(cat /opt/claw/hello.txt)"
cp /opt/claw/hello.txt /root/hello-copy
EOF
cat > "$WORK/scripts/start.sh" <<'EOF'
#!/bin/bash
set -e
echo start >> /var/lib/claw-order
mkdir -p /srv/www && echo "served by start_script" > /srv/www/index.html
cd /srv/www
nohup python3 -m http.server 8080 --bind 127.0.0.1 > /var/log/clawfarm/http.log 2>&1 &
echo "http.server pid $!"
EOF
cat > "$WORK/scripts/p0.sh" <<'EOF'
echo provision0 >> /var/lib/claw-order
EOF
cat > "$WORK/scripts/p1.py" <<'EOF'
#!/usr/bin/python3
import os
with open("/var/lib/claw-order", "a") as f:
    f.write("provision1 step=%s token_len=%d\n" % (os.environ["CLAWFARM_STEP"], len(os.environ["TOKEN"])))
EOF
cat > "$WORK/scripts/flaky.sh" <<'EOF'
echo provision2-try >> /var/lib/claw-order
if [ ! -e /srv/vol/ok ]; then
  echo "flag /srv/vol/ok missing, failing on purpose" >&2
  exit 42
fi
echo provision2 >> /var/lib/claw-order
EOF

GREETING="hello 'world' \$HOME \"q\""
"$TOOL" seed --out "$WORK/seed" --hostname claw-bare \
  --install "$WORK/scripts/install.sh" --start "$WORK/scripts/start.sh" \
  --provision "first=$WORK/scripts/p0.sh" --provision "=$WORK/scripts/p1.py" \
  --provision "flaky=$WORK/scripts/flaky.sh" \
  --param "GREETING=$GREETING" --param "TOKEN=s3cret-token" \
  --payload-serial claw-payload --volume "claw-vol0:/srv/vol" > /dev/null
SEED="$WORK/seed/seed.img"
ok "seed written by clawfarm::seed::write_seed ($(stat -c %s "$SEED") bytes, mode $(stat -c %a "$SEED"))"

# Payload and volume as ext4 disks (what the driver does; no 9p): the payload read-only, the
# volume raw here so the host reads and writes it with debugfs while the VM is off.
rm -f "$WORK/payload.img" "$WORK/vol.img"
truncate -s 16M "$WORK/payload.img"
mkfs.ext4 -q -F -m 0 -O ^has_journal -E root_owner=0:0 -d "$WORK/payload" "$WORK/payload.img"
truncate -s 256M "$WORK/vol.img"
mkfs.ext4 -q -F -m 0 -E root_owner=0:0 "$WORK/vol.img"

rm -f "$WORK/overlay.qcow2"
qemu-img create -q -f qcow2 -F qcow2 -b "$IMAGE" "$WORK/overlay.qcow2"

PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
echo "[127.0.0.1]:$PORT $(cut -d' ' -f1-2 "$WORK/seed/host_ed25519.pub")" > "$WORK/known_hosts"
SSH=(ssh -i "$WORK/seed/id_ed25519" -o IdentitiesOnly=yes -o BatchMode=yes
  -o StrictHostKeyChecking=yes -o UserKnownHostsFile="$WORK/known_hosts"
  -o ConnectTimeout=10 -o LogLevel=ERROR -p "$PORT" claw@127.0.0.1)
gssh() { "${SSH[@]}" "$@"; }

# ---- VM lifecycle -----------------------------------------------------------------------
start_vm() { # $1 = nonce
  : > "$WORK/serial.log"
  "$QEMU" -accel tcg -m 1024 -smp 2 -nodefaults -display none \
    -serial "file:$WORK/serial.log" \
    -drive "if=none,id=disk0,format=qcow2,file=$WORK/overlay.qcow2" \
    -device virtio-blk-pci,drive=disk0,bootindex=0 \
    -drive "if=virtio,format=raw,file=$SEED,readonly=on" \
    -netdev "user,id=n0,hostfwd=tcp:127.0.0.1:$PORT-:22" -device virtio-net-pci,netdev=n0,romfile= \
    -device virtio-serial-pci \
    -chardev "file,id=clawstatus,path=$WORK/status.log" \
    -device virtserialport,chardev=clawstatus,name=org.clawfarm.status \
    -fw_cfg "name=opt/org.clawfarm/boot,string=$1" \
    -drive "if=none,id=payload,format=raw,file=$WORK/payload.img,readonly=on" \
    -device virtio-blk-pci,drive=payload,serial=claw-payload \
    -drive "if=none,id=vol0,format=raw,file=$WORK/vol.img" \
    -device virtio-blk-pci,drive=vol0,serial=claw-vol0 \
    > "$WORK/qemu.out" 2>&1 &
  QEMU_PID=$!
  echo "$QEMU_PID" > "$WORK/qemu.pid"
}

# Wait until the status log of boot $1 shows done or a failure; prints the status JSON.
wait_final() {
  local nonce="$1" t0="$2" st
  while :; do
    kill -0 "$QEMU_PID" 2>/dev/null || { cat "$WORK/qemu.out" >&2; die "qemu exited"; }
    st="$("$TOOL" status "$WORK/status.log" "$nonce")"
    if [[ "$st" == *'"done":true'* || "$st" == *'"failed":{'* ]]; then
      echo "$st"
      return 0
    fi
    (( $(date +%s) - t0 < TIMEOUT )) || { tail -n 30 "$WORK/serial.log" >&2; die "no final status after ${TIMEOUT}s: $st"; }
    sleep 1
  done
}

wait_ssh() {
  for _ in $(seq 60); do
    gssh true 2>/dev/null && return 0
    sleep 2
  done
  die "ssh did not come up"
}

expect_eq() { # what expected actual
  [[ "$3" == "$2" ]] || die "$1: expected [$2], got [$3]"
  ok "$1"
}

# ---- boot 1: first boot of the instance, provision step 2 fails -----------------------
NONCE1="$("$TOOL" nonce)"
# A stale line from an "earlier start" in the file must never count (QEMU truncates the
# file anyway; this guards the parser and the truncation).
echo '{"boot": "stale", "phase": "done", "status": "ok", "code": 0, "ts": "x"}' > "$WORK/status.log"
log "boot 1 (nonce $NONCE1, port $PORT)"
T0=$(date +%s.%N)
start_vm "$NONCE1"
ST1="$(wait_final "$NONCE1" "${T0%.*}")"
T1=$(date +%s.%N)
BOOT1=$(python3 -c "print(round($T1 - $T0, 1))")
log "boot 1 final status after ${BOOT1}s: $ST1"
grep -q '"boot": "stale"' "$WORK/status.log" && die "QEMU did not truncate status.log"
python3 - "$ST1" <<'EOF' || die "boot 1 status is not provision[2] flaky failed with 42"
import json, sys
s = json.loads(sys.argv[1])
f = s["failed"]
assert not s["done"] and f["phase"] == "provision[2] flaky" and f["code"] == 42, s
assert "failing on purpose" in f["tail"], f["tail"]
EOF
ok "failing provision step reported: provision[2] flaky, code 42, tail has its stderr"
CLOUD_STARTED=$(grep -c "\"boot\": \"$NONCE1\", \"phase\": \"cloud-init\", \"status\": \"started\"" "$WORK/status.log" || true)
expect_eq "cloud-init started reported by bootcmd" 1 "$CLOUD_STARTED"
grep -q "CLAWFARM-STATUS {\"boot\": \"$NONCE1\"" "$WORK/serial.log" || die "no status echo on the serial console"
ok "status lines echoed on ttyS0 with the CLAWFARM-STATUS prefix"

wait_ssh
ok "ssh as claw with the pinned host key (StrictHostKeyChecking=yes)"
gssh sudo -n true || die "sudo -n true"
ok "sudo -n true"
expect_eq "params.env mode/owner" "600 root" "$(gssh sudo stat -c "'%a %U'" /etc/clawfarm/params.env)"
PARAMS="$(gssh sudo cat /etc/clawfarm/params.env)"
grep -qxF "GREETING='hello '\\''world'\\'' \$HOME \"q\"'" <<<"$PARAMS" || die "params.env content: $PARAMS"
grep -qxF "TOKEN='s3cret-token'" <<<"$PARAMS" || die "params.env TOKEN line"
gssh cat /etc/clawfarm/params.env >/dev/null 2>&1 && die "claw can read params.env"
ok "params.env content and root-only"
expect_eq "install saw the param and the payload" \
  "install sees GREETING=$GREETING and payload payload file from the host" \
  "$(gssh sudo grep "'^install sees'" /var/log/clawfarm/install.log)"
expect_eq "phase order (boot 1)" \
  "install start provision0 provision1 step=1 token_len=12 provision2-try" \
  "$(gssh cat /var/lib/claw-order | tr '\n' ' ' | sed 's/ $//')"
expect_eq "payload at /opt/claw" "payload file from the host" "$(gssh cat /opt/claw/hello.txt)"
gssh sudo touch /opt/claw/x 2>/dev/null && die "payload disk is writable"
ok "payload disk is read-only"
gssh sudo sh -c "'echo from-guest > /srv/vol/guest.txt; sync'"
expect_eq "volume disk is read-write" "from-guest" "$(debugfs -R 'cat /guest.txt' "$WORK/vol.img" 2>/dev/null)"
SEEDDEV="$(gssh sudo blkid -L CIDATA)"
expect_eq "seed file names" "meta-data network-config user-data" \
  "$(gssh "sudo mkdir -p /mnt/seed && sudo mount -o ro $SEEDDEV /mnt/seed && ls /mnt/seed | tr '\n' ' ' | sed 's/ \$//'; sudo umount /mnt/seed")"
expect_eq "cloud-init status" "status: done" "$(gssh cloud-init status)"
SCHEMA="$(gssh sudo cloud-init schema --system 2>&1 || true)"
[[ "$SCHEMA" == *"Valid cloud-config"* ]] || die "cloud-init schema --system: $SCHEMA"
ok "user-data passes cloud-init's schema"
expect_eq "hostname" "claw-bare" "$(gssh hostname)"
expect_eq "NoCloud datasource" "DataSourceNoCloud [seed=$SEEDDEV][dsmode=net]" "$(gssh sudo cat /run/cloud-init/status.json | python3 -c 'import json,sys; print(json.load(sys.stdin)["v1"]["datasource"])')"
gssh ip -4 -o addr show eth0 | grep -q 10.0.2.15 || die "eth0 has no DHCP address"
ok "eth0 got its address by DHCP"
expect_eq "bootstrap unit enabled for later boots" "enabled" "$(gssh systemctl is-enabled clawfarm-bootstrap.service)"
expect_eq "host keys in the guest" "/etc/ssh/ssh_host_ed25519_key.pub" "$(gssh ls /etc/ssh/ | grep '^ssh_host_.*pub$' | sed 's|^|/etc/ssh/|')"

gssh systemd-analyze > "$WORK/systemd-analyze.txt" 2>&1 || true
gssh systemd-analyze blame 2>/dev/null | head -n 15 >> "$WORK/systemd-analyze.txt" || true
log "powering off"
gssh sudo systemctl poweroff >/dev/null 2>&1 || true
for _ in $(seq 120); do kill -0 "$QEMU_PID" 2>/dev/null || break; sleep 1; done
kill -0 "$QEMU_PID" 2>/dev/null && { log "guest did not power off; killing qemu"; stop_vm; }
QEMU_PID=""
cp "$WORK/status.log" "$WORK/status.boot1.log"
cp "$WORK/serial.log" "$WORK/serial.boot1.log"

# ---- boot 2: same disk, new nonce, the flag exists now ------------------------------------
debugfs -w -R "write /dev/null ok" "$WORK/vol.img" >/dev/null 2>&1
NONCE2="$("$TOOL" nonce)"
log "boot 2 (nonce $NONCE2)"
T0=$(date +%s.%N)
start_vm "$NONCE2"
ST2="$(wait_final "$NONCE2" "${T0%.*}")"
T1=$(date +%s.%N)
BOOT2=$(python3 -c "print(round($T1 - $T0, 1))")
log "boot 2 final status after ${BOOT2}s: $ST2"
[[ "$ST2" == *'"done":true'* ]] || die "boot 2 did not reach done: $ST2"
ok "boot 2 reached done"
grep -qai "ordering cycle" "$WORK/serial.log" && die "systemd reported an ordering cycle on boot 2"
ST1B="$("$TOOL" status "$WORK/status.log" "$NONCE1")"
[[ "$ST1B" == *'"booted":false'* ]] || die "boot 1 lines still count after boot 2: $ST1B"
ok "boot 1 lines do not count under boot 2 (QEMU truncated status.log; nonce differs)"
STARTED2="$(grep -o "\"boot\": \"$NONCE2\", \"phase\": \"[a-z-]*\"\(, \"step\": [0-9]*\)\?[^}]*\"status\": \"started\"" "$WORK/status.log" | sed -E 's/.*"phase": "([a-z-]+)"(, "step": ([0-9]+))?.*/\1\3/' | tr '\n' ' ' | sed 's/ $//')"
expect_eq "phases started on boot 2" "cloud-init mount start provision2" "$STARTED2"
wait_ssh
expect_eq "phase order (after boot 2)" \
  "install start provision0 provision1 step=1 token_len=12 provision2-try start provision2-try provision2" \
  "$(gssh cat /var/lib/claw-order | tr '\n' ' ' | sed 's/ $//')"
sleep 3
expect_eq "daemon from start_script survives the runner" "served by start_script" \
  "$(gssh curl -fsS http://127.0.0.1:8080/index.html)"
expect_eq "bootstrap unit state" "active" "$(gssh systemctl is-active clawfarm-bootstrap.service)"
gssh systemd-analyze > "$WORK/systemd-analyze.boot2.txt" 2>&1 || true
gssh systemd-analyze blame 2>/dev/null | head -n 15 >> "$WORK/systemd-analyze.boot2.txt" || true

log "timings: boot 1 (first boot of the instance) to final status ${BOOT1}s; boot 2 (reboot) to done ${BOOT2}s"
echo "boot1_to_final_s=$BOOT1 boot2_to_done_s=$BOOT2"
if [[ "${KEEP:-}" == 1 ]]; then
  log "KEEP=1: VM left running, pid $QEMU_PID, ssh: ${SSH[*]}"
else
  gssh sudo systemctl poweroff >/dev/null 2>&1 || true
  for _ in $(seq 60); do kill -0 "$QEMU_PID" 2>/dev/null || break; sleep 1; done
fi
log "ALL CHECKS PASSED"
