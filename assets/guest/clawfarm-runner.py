#!/usr/bin/python3
"""clawfarm phase runner: runs a claw's phases in the guest and reports them to the host.

Written into the guest by cloud-init (user-data made by clawfarm's src/seed.rs) and run by
clawfarm-bootstrap.service on every boot, after cloud-final.service.

Per boot:  cloud-init (ok/failed from `cloud-init status`) -> mount (payload and volume disks:
           ext4 on virtio-blk, found by serial)
           -> the phases of /etc/clawfarm/runner.json in order (install, start, provision[i])
           -> done.
A phase with "once": true (install, provision steps) is skipped when it already succeeded for
this cloud-init instance id; a failed one is retried on the next boot. An install whose script
(same sha256) already succeeded on this disk, for any instance id, is reported "skipped" (a
disk exported by `clawfarm export` and booted as a new instance). Any failure stops the
sequence: the failed line is the last line of that boot, and no "done" follows.

Each status line is one JSON object (ASCII) written to the virtio-serial port
/dev/virtio-ports/org.clawfarm.status and, prefixed with "CLAWFARM-STATUS ", to /dev/ttyS0:
  {"boot": NONCE, "phase": P, ["step": I, "name": N,] "status": S, ["code": C,] ["tail": T,] "ts": TS}
NONCE is the per-start value the host passes with -fw_cfg name=opt/org.clawfarm/boot,string=...

The environment variable CLAWFARM_RUNNER_ROOT prefixes every absolute path (tests only).
"""

import datetime
import glob
import hashlib
import json
import os
import shlex
import subprocess
import sys
import time

ROOT = os.environ.get("CLAWFARM_RUNNER_ROOT", "")
PORT_NAME = "org.clawfarm.status"
NONCE_FILE = "/sys/firmware/qemu_fw_cfg/by_name/opt/org.clawfarm/boot/raw"
CONFIG = "/etc/clawfarm/runner.json"
LOG_DIR = "/var/log/clawfarm"
STATE_DIR = "/var/lib/clawfarm/state"
# Digests of the install scripts that ran to success on this disk (kept by `clawfarm export`,
# so an instance from an exported box skips an install its layer already holds).
INSTALLED_DIR = "/var/lib/clawfarm/installed"
TAIL_LINES = 20
TAIL_BYTES = 4000


def p(path):
    return ROOT + path


def now():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def read_nonce():
    if not ROOT:
        subprocess.run(["modprobe", "qemu_fw_cfg"], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, check=False)
    try:
        with open(p(NONCE_FILE), "rb") as f:
            raw = f.read(256).decode("ascii", "replace")
    except OSError:
        return ""
    return "".join(c for c in raw if c.isalnum() or c in "._-")


def status_port():
    path = p("/dev/virtio-ports/" + PORT_NAME)
    if os.path.exists(path):
        return path
    # udev makes the symlink; fall back to the sysfs name of each port.
    for name_file in glob.glob(p("/sys/class/virtio-ports/*/name")):
        try:
            with open(name_file) as f:
                if f.read().strip() == PORT_NAME:
                    dev = p("/dev/" + os.path.basename(os.path.dirname(name_file)))
                    if os.path.exists(dev):
                        return dev
        except OSError:
            pass
    return None


def write_all(path, data):
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NOCTTY | os.O_APPEND | os.O_CREAT, 0o600)
    except OSError:
        return
    try:
        os.write(fd, data)
    except OSError:
        pass
    finally:
        os.close(fd)


class Reporter:
    def __init__(self):
        self.nonce = read_nonce()
        self.port = status_port()
        os.makedirs(p(LOG_DIR), mode=0o700, exist_ok=True)

    def emit(self, phase, status, step=None, name=None, code=None, tail=None):
        line = {"boot": self.nonce, "phase": phase}
        if step is not None:
            line["step"] = step
            if name:
                line["name"] = name
        line["status"] = status
        if code is not None:
            line["code"] = code
        if tail is not None:
            line["tail"] = tail
        line["ts"] = now()
        text = json.dumps(line, ensure_ascii=True) + "\n"
        if self.port:
            write_all(self.port, text.encode("ascii"))
        write_all(p("/dev/ttyS0"), ("CLAWFARM-STATUS " + text).encode("ascii"))
        write_all(p(LOG_DIR + "/status.log"), text.encode("ascii"))


def tail_of(path, start=0, end=None):
    """The last lines of `path` between offsets `start` and `end` (this run's output)."""
    try:
        with open(path, "rb") as f:
            if end is None:
                f.seek(0, os.SEEK_END)
                end = f.tell()
            f.seek(max(start, end - 64 * 1024))
            data = f.read(end - f.tell())
    except OSError as e:
        return "(no log: %s)" % e
    lines = data.decode("utf-8", "replace").splitlines()[-TAIL_LINES:]
    text = "\n".join(lines)
    return text[-TAIL_BYTES:]


def script_digest(path):
    """The sha256 of a phase script (hex), or None when it cannot be read."""
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    except OSError:
        return None


def exit_code(rc):
    return 128 - rc if rc < 0 else rc


def check_cloud_init(rep):
    """Report how cloud-init ended on this boot (the runner starts after cloud-final)."""
    log = p(LOG_DIR + "/cloud-init.log")
    cmd = os.environ.get("CLAWFARM_CLOUD_INIT_STATUS", "cloud-init status --long")
    with open(log, "ab") as out:
        out.write(("=== clawfarm cloud-init status %s ===\n" % now()).encode())
        out.flush()
        start = out.tell()
        try:
            rc = subprocess.run(shlex.split(cmd), stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, check=False).returncode
        except OSError as e:
            out.write(("cannot run %s: %s\n" % (cmd, e)).encode())
            rc = 127
    # 0: done; 2: done with recoverable errors (newer cloud-init); 1: error.
    if rc in (0, 2):
        rep.emit("cloud-init", "ok", code=0)
        return True
    rep.emit("cloud-init", "failed", code=exit_code(rc), tail=tail_of(log, start))
    return False


def find_disk(serial, wait=30.0):
    """The block device whose virtio serial is `serial`: /dev/disk/by-id/virtio-SERIAL
    (udev), else a scan of /sys/block/*/serial. Waits up to `wait` s for it to appear."""
    deadline = time.time() + wait
    while True:
        link = p("/dev/disk/by-id/virtio-" + serial)
        if os.path.exists(link):
            return link
        for f in sorted(glob.glob(p("/sys/block/*/serial"))):
            try:
                with open(f) as fh:
                    if fh.read().strip() == serial:
                        return p("/dev/" + os.path.basename(os.path.dirname(f)))
            except OSError:
                pass
        if time.time() >= deadline:
            return None
        time.sleep(0.5)


def do_mounts(rep, mounts):
    """Mount the payload and volume disks (ext4 on virtio-blk, found by serial)."""
    if not mounts:
        return True
    log = p(LOG_DIR + "/mount.log")
    rep.emit("mount", "started")
    failed = 0
    with open(log, "ab") as out:
        out.write(("=== clawfarm mount %s ===\n" % now()).encode())
        out.flush()
        start = out.tell()
        for m in mounts:
            path = p(m["path"])
            os.makedirs(path, exist_ok=True)
            if os.path.ismount(path):
                out.write(("%s already mounted\n" % path).encode())
                continue
            serial = m.get("serial", "")
            dev = find_disk(serial, 0.0 if os.environ.get("CLAWFARM_MOUNT") else 30.0)
            if dev is None:
                if os.environ.get("CLAWFARM_MOUNT"):
                    dev = "/dev/disk/by-id/virtio-" + serial  # tests: no devices
                else:
                    out.write(("no disk with serial %s\n" % serial).encode())
                    failed = 1
                    break
            opts = "ro,noload" if m.get("readonly") else "rw"
            cmd = os.environ.get("CLAWFARM_MOUNT", "mount")
            argv = shlex.split(cmd) + ["-t", "ext4", "-o", opts, dev, path]
            out.write(("+ %s\n" % " ".join(shlex.quote(a) for a in argv)).encode())
            out.flush()
            rc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, check=False).returncode
            if rc != 0:
                failed = exit_code(rc)
                break
    if failed:
        rep.emit("mount", "failed", code=failed, tail=tail_of(log, start))
        return False
    rep.emit("mount", "ok", code=0)
    return True


def run_phase(rep, cfg, ph, env_base, state):
    phase = ph["phase"]
    step = ph.get("step")
    name = ph.get("name")
    key = phase if step is None else "%s-%d" % (phase, step)
    marker = os.path.join(state, key + ".ok")
    if ph.get("once") and os.path.exists(marker):
        return True
    installed = None
    if phase == "install":
        digest = script_digest(p(ph["script"]))
        if digest:
            installed = p(os.path.join(INSTALLED_DIR, digest))
            if os.path.exists(installed):
                with open(marker, "w") as f:
                    f.write(now() + " skipped: installed on this disk\n")
                rep.emit(phase, "skipped", step=step, name=name, code=0)
                return True
    log = p("%s/%s.log" % (LOG_DIR, key))
    rep.emit(phase, "started", step=step, name=name)
    env = dict(env_base)
    env["CLAWFARM_PHASE"] = phase
    if step is not None:
        env["CLAWFARM_STEP"] = str(step)
        env["CLAWFARM_STEP_NAME"] = name or ""
    # The params file is sourced with allexport, then the phase's shell runs its script.
    argv = ["/bin/sh", "-c", 'set -a; . "$0"; set +a; exec "$@"', p(cfg["params_env"])]
    argv += shlex.split(ph.get("shell") or "/bin/bash") + [p(ph["script"])]
    cwd = env.get("CLAWFARM_PAYLOAD") or "/"
    if not os.path.isdir(cwd):
        cwd = "/"
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, ("=== clawfarm %s %s ===\n" % (key, now())).encode())
        start = os.lseek(fd, 0, os.SEEK_END)
        try:
            # Output goes straight to the log file (no pipe): a daemon the script leaves in
            # the background keeps the fd and does not hold the runner.
            rc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=fd, stderr=fd,
                                cwd=cwd, env=env, start_new_session=True,
                                check=False).returncode
        except OSError as e:
            os.write(fd, ("cannot run %s: %s\n" % (argv, e)).encode())
            rc = 127
        end = os.lseek(fd, 0, os.SEEK_END)
        os.write(fd, ("=== exit %d ===\n" % exit_code(rc)).encode())
    finally:
        os.close(fd)
    code = exit_code(rc)
    if code != 0:
        rep.emit(phase, "failed", step=step, name=name, code=code,
                 tail=tail_of(log, start, end))
        return False
    if ph.get("once"):
        with open(marker, "w") as f:
            f.write(now() + "\n")
    if installed:
        os.makedirs(os.path.dirname(installed), mode=0o700, exist_ok=True)
        with open(installed, "w") as f:
            f.write(now() + "\n")
    rep.emit(phase, "ok", step=step, name=name, code=0)
    return True


def main():
    rep = Reporter()
    try:
        with open(p(CONFIG)) as f:
            cfg = json.load(f)
    except (OSError, ValueError) as e:
        rep.emit("cloud-init", "failed", code=1, tail="clawfarm runner config %s: %s" % (CONFIG, e))
        return 1
    if not check_cloud_init(rep):
        return 1
    if not do_mounts(rep, cfg.get("mounts", [])):
        return 1
    state = p(os.path.join(STATE_DIR, cfg["instance_id"]))
    os.makedirs(state, mode=0o700, exist_ok=True)
    env = {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": "/root",
        "LANG": "C.UTF-8",
        "CLAWFARM_INSTANCE_ID": cfg["instance_id"],
    }
    if cfg.get("payload"):
        env["CLAWFARM_PAYLOAD"] = p(cfg["payload"])
    for ph in cfg.get("phases", []):
        if not run_phase(rep, cfg, ph, env, state):
            return 1
    rep.emit("done", "ok", code=0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
