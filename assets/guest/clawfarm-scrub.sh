#!/bin/sh
# clawfarm export scrub: runs in a throwaway VM booted from a COPY of an instance's disk
# (never in the instance itself), removes everything that belongs to that instance or could
# carry a secret, discards the freed blocks and powers the VM off. See rfc/009-export.md.
#
# Started by the scrub seed (src/driver/qemu/seed.rs, render_scrub_user_data) as a transient
# unit ordered after cloud-final, so cloud-init has finished writing its own state first.
# Reports "CLAWFARM-SCRUB ok" (or "CLAWFARM-SCRUB failed: STEP") on the serial console.
set -u
say() { printf 'CLAWFARM-SCRUB %s\n' "$*" > /dev/ttyS0 2>/dev/null || true; }
fail() { say "failed: $*"; sync; echo o > /proc/sysrq-trigger; sleep 30; exit 1; }

# Overwrite a file's bytes with zeros before unlinking it (ext4 overwrites in place), so
# the old blocks do not keep the content; fstrim then discards them.
wipe() {
    for f in "$@"; do
        [ -f "$f" ] && [ ! -L "$f" ] || { [ -L "$f" ] && rm -f "$f"; continue; }
        size=$(stat -c %s "$f" 2>/dev/null || echo 0)
        if [ "$size" -gt 0 ]; then
            dd if=/dev/zero of="$f" bs=4096 count=$(( (size + 4095) / 4096 )) \
                conv=notrunc,fsync status=none 2>/dev/null || true
        fi
        rm -f "$f"
    done
}
# Wipe every file under each folder, then remove the folders.
wipe_tree() {
    for d in "$@"; do
        [ -d "$d" ] || { wipe "$d"; continue; }
        find "$d" -xdev -type f -print0 2>/dev/null | xargs -0 -r sh -c '
            for f; do
                s=$(stat -c %s "$f" 2>/dev/null || echo 0)
                [ "$s" -gt 0 ] && dd if=/dev/zero of="$f" bs=4096 count=$(( (s + 4095) / 4096 )) conv=notrunc,fsync status=none 2>/dev/null
                rm -f "$f"
            done' sh
        rm -rf "$d"
    done
}

say started
cloud-init status --wait >/dev/null 2>&1 || true

# Nothing of the instance may keep running or writing while files go.
systemctl stop clawfarm-bootstrap.service >/dev/null 2>&1 || true
for u in $(getent passwd | awk -F: '$3 >= 1000 && $3 < 60000 {print $1}'); do
    loginctl terminate-user "$u" >/dev/null 2>&1 || true
    pkill -KILL -u "$u" >/dev/null 2>&1 || true
done

# 1. clawfarm's per-instance files: params env file, runner config, phase scripts and logs,
#    per-instance phase markers. (The install digests in /var/lib/clawfarm/installed stay:
#    they let the next instance skip an install the disk already holds.)
wipe_tree /etc/clawfarm /var/log/clawfarm /var/lib/clawfarm/state
wipe /usr/local/lib/clawfarm/*.sh

# 2. cloud-init's per-instance state (user-data copies hold the params file) and its logs,
#    so the next instance runs cloud-init afresh with its own seed.
wipe_tree /var/lib/cloud
wipe /var/log/cloud-init.log /var/log/cloud-init-output.log

# 3. SSH: host keys and every authorized key.
wipe /etc/ssh/ssh_host_*
for h in /root /home/*; do
    wipe "$h/.ssh/authorized_keys" "$h/.ssh/authorized_keys2"
done

# 4. Identity: machine id (systemd makes a new one on the next boot).
: > /etc/machine-id || fail machine-id
wipe /var/lib/dbus/machine-id
wipe /var/lib/systemd/random-seed /var/lib/systemd/credential.secret

# 5. Shell and REPL histories, and agent credentials (OpenClaw: ~/.openclaw/.env,
#    credentials/, agents/*/agent/auth-profiles.json), npm logs.
for h in /root /home/*; do
    wipe "$h/.bash_history" "$h/.zsh_history" "$h/.python_history" \
        "$h/.node_repl_history" "$h/.lesshst" "$h/.viminfo" "$h/.wget-hsts" \
        "$h/.openclaw/.env" "$h"/.openclaw/agents/*/agent/auth-profiles.json
    wipe_tree "$h/.openclaw/credentials" "$h/.npm/_logs" "$h/.cache/openclaw/logs"
done

# 6. Temporary files.
# (Wiped, not just unlinked: a freed 4 KiB block inside a 64 KiB qcow2 cluster that still
# holds other data is not discarded by fstrim, so its old bytes would stay in the layer.)
for d in /tmp /var/tmp; do
    for e in "$d"/* "$d"/.[!.]*; do
        [ -e "$e" ] || [ -L "$e" ] || continue
        case "$e" in */.X11-unix|*/.ICE-unix|*/.font-unix) continue ;; esac
        wipe_tree "$e"
    done
done

# 7. Logs: the journal (journald stopped first) and every file under /var/log (emptied;
#    rotated ones removed).
systemctl stop systemd-journald.socket systemd-journald-dev-log.socket \
    systemd-journald-audit.socket systemd-journald.service >/dev/null 2>&1 || true
wipe_tree /var/log/journal
mkdir -p /var/log/journal
find /var/log -xdev -type f \( -name '*.gz' -o -name '*.[0-9]' -o -name '*.old' \) -print0 \
    | xargs -0 -r rm -f
find /var/log -xdev -type f -print0 | xargs -0 -r truncate -s 0

# 8. Free space: blocks freed earlier (by the instance itself: cloud-init rewrites its
#    state files on every boot, package managers replace files) still hold old bytes.
#    fstrim discards every free block; the scrub VM's disk is an overlay with 4 KiB
#    clusters, so each discarded block reads as zeros from then on. Then sync, remount
#    read-only and power off at once.
sync
fstrim -v / > /dev/ttyS0 2>&1 || fail fstrim
sync
say ok
echo s > /proc/sysrq-trigger
echo u > /proc/sysrq-trigger
sleep 1
echo o > /proc/sysrq-trigger
sleep 30
