//! The guest→host status protocol: what the in-guest phase runner reports, and the host-side
//! parser of it.
//!
//! # Channel
//!
//! The host gives the guest a virtio-serial port backed by a file and a per-start nonce:
//!
//! ```text
//! -device virtio-serial-pci
//! -chardev file,id=clawstatus,path=<dir>/status.log,append=on
//! -device virtserialport,chardev=clawstatus,name=org.clawfarm.status
//! -fw_cfg name=opt/org.clawfarm/boot,string=<nonce>
//! ```
//!
//! (see [`qemu_status_args`]). QEMU appends to `status.log` (the driver moves it aside at
//! a cold boot and keeps it at a resume, whose guest goes on with the nonce it booted with). The guest writes
//! JSON lines to `/dev/virtio-ports/org.clawfarm.status` and echoes each one to `/dev/ttyS0`
//! prefixed with `CLAWFARM-STATUS `, so [`read_status`] also works on a serial log.
//!
//! # Lines
//!
//! ```text
//! {"boot": "<nonce>", "phase": "<phase>", ["step": <int>, "name": "<name>",] "status": "started"|"ok"|"failed"|"skipped", ["code": <int>,] ["tail": "<last 20 log lines>",] "ts": "<RFC 3339 UTC>"}
//! ```
//!
//! Phases per boot, in order: `cloud-init` (`started` from cloud-init's `bootcmd`; `ok` or
//! `failed` once cloud-init's final stage is over), `mount` (only when there is a payload or a volume),
//! `install` (first boot of an instance, until it succeeds), `start` (every boot),
//! `provision` with `step` 0, 1, … (once per instance each), then `done` `ok`. Phases that
//! already succeeded for this instance are skipped silently. The first `failed` ends the
//! sequence for that boot: no `done` follows. `code` is the exit code (128+signal when
//! killed); `tail` comes with `failed` only. The nonce is the one read from fw_cfg; lines
//! with another nonce (an earlier start) never count.

use std::io;
use std::path::Path;

use crate::driver::boot::{FailedPhase, GuestEvent, GuestPhase, GuestStatus, StepState};

/// Name of the virtio-serial port the guest writes status lines to.
pub const STATUS_PORT_NAME: &str = "org.clawfarm.status";
/// fw_cfg item name carrying the per-start boot nonce.
pub const NONCE_FW_CFG_NAME: &str = "opt/org.clawfarm/boot";
/// Where the guest reads the nonce (module `qemu_fw_cfg`).
pub const NONCE_SYSFS_PATH: &str = "/sys/firmware/qemu_fw_cfg/by_name/opt/org.clawfarm/boot/raw";
/// Prefix of the status lines echoed on the serial console.
pub const SERIAL_PREFIX: &str = "CLAWFARM-STATUS ";

/// The QEMU arguments of the status channel: a virtio-serial port writing to
/// `status_log` and the fw_cfg nonce. `nonce` must be `[A-Za-z0-9._-]` (the guest drops
/// other characters) and should be fresh random for every start.
pub fn qemu_status_args(status_log: &Path, nonce: &str) -> Vec<String> {
    vec![
        "-device".into(),
        "virtio-serial-pci".into(),
        "-chardev".into(),
        format!(
            "file,id=clawstatus,path={},append=on",
            status_log.display().to_string().replace(',', ",,")
        ),
        "-device".into(),
        format!("virtserialport,chardev=clawstatus,name={STATUS_PORT_NAME}"),
        "-fw_cfg".into(),
        format!("name={NONCE_FW_CFG_NAME},string={nonce}"),
    ]
}

/// A fresh random boot nonce (32 hex digits).
pub fn new_nonce() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

fn parse_line(line: &str, nonce: &str) -> Option<GuestEvent> {
    // Serial logs carry a prefix (possibly after console noise on the same line).
    let json = match line.find(SERIAL_PREFIX) {
        Some(i) => &line[i + SERIAL_PREFIX.len()..],
        None => line,
    };
    let json = json.trim();
    if !json.starts_with('{') {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(json).ok()?;
    if v.get("boot")?.as_str()? != nonce {
        return None;
    }
    let state = match v.get("status")?.as_str()? {
        "started" => StepState::Started,
        "ok" => StepState::Ok,
        "failed" => StepState::Failed,
        "skipped" => StepState::Skipped,
        _ => return None,
    };
    let phase = match v.get("phase")?.as_str()? {
        "cloud-init" => GuestPhase::CloudInit,
        "mount" => GuestPhase::Mount,
        "install" => GuestPhase::Install,
        "start" => GuestPhase::Start,
        "done" => GuestPhase::Done,
        "provision" => GuestPhase::Provision {
            step: v
                .get("step")
                .and_then(|s| s.as_u64())
                .and_then(|s| u32::try_from(s).ok())?,
            name: v
                .get("name")
                .and_then(|n| n.as_str())
                .filter(|n| !n.is_empty())
                .map(str::to_string),
        },
        other => GuestPhase::Other(other.to_string()),
    };
    Some(GuestEvent {
        phase,
        state,
        code: v
            .get("code")
            .and_then(|c| c.as_i64())
            .and_then(|c| i32::try_from(c).ok()),
        tail: v.get("tail").and_then(|t| t.as_str()).map(str::to_string),
        ts: v.get("ts").and_then(|t| t.as_str()).map(str::to_string),
    })
}

/// Parse the status lines in `data` (a `status.log` or a serial log) for boot `nonce`.
///
/// Only complete lines count: a last line without its newline is still being written and
/// is left for the next read. Lines that are not JSON, or carry another nonce, are
/// ignored. An empty `nonce` matches nothing.
pub fn parse_status(data: &[u8], nonce: &str) -> GuestStatus {
    let mut st = GuestStatus::default();
    if nonce.is_empty() {
        return st;
    }
    let complete = match data.iter().rposition(|&b| b == b'\n') {
        Some(i) => &data[..i],
        None => return st,
    };
    for raw in complete.split(|&b| b == b'\n') {
        let line = String::from_utf8_lossy(raw);
        if line.trim().is_empty() {
            continue;
        }
        let Some(ev) = parse_line(&line, nonce) else {
            st.ignored += 1;
            continue;
        };
        st.booted = true;
        st.last = Some(ev.phase.to_string());
        st.last_state = Some(ev.state);
        match (&ev.phase, ev.state) {
            (GuestPhase::Done, StepState::Ok) => {
                st.done = true;
                st.failed = None;
            }
            (_, StepState::Failed) => {
                st.done = false;
                st.failed = Some(FailedPhase {
                    phase: ev.phase.to_string(),
                    code: ev.code.unwrap_or(-1),
                    tail: ev.tail.clone().unwrap_or_default(),
                });
            }
            // A phase starting again in the same boot (the runner was restarted by hand):
            // the earlier outcome no longer stands.
            (_, StepState::Started) => {
                st.done = false;
                st.failed = None;
            }
            _ => {}
        }
        st.events.push(ev);
    }
    st
}

/// Read `path` (the status log; or a serial log) and parse it for boot `nonce`
/// ([`parse_status`]). A file that does not exist yet reads as nothing reported.
pub fn read_status(path: &Path, nonce: &str) -> io::Result<GuestStatus> {
    match read_tail(path, MAX_STATUS_BYTES) {
        Ok(data) => Ok(parse_status(&data, nonce)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(GuestStatus::default()),
        Err(e) => Err(io::Error::new(
            e.kind(),
            format!("reading guest status {}: {e}", path.display()),
        )),
    }
}

/// The guest writes its status log; only its last 4 MiB are read (the current boot's lines
/// are at its end), so a guest that floods it costs the host nothing.
pub const MAX_STATUS_BYTES: u64 = 4 << 20;

/// The last `limit` bytes of `path`, starting at a line boundary when the file is longer.
pub fn read_tail(path: &Path, limit: u64) -> io::Result<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path)?;
    let len = f.metadata()?.len();
    if len <= limit {
        let mut out = Vec::with_capacity(len as usize);
        f.take(limit).read_to_end(&mut out)?;
        return Ok(out);
    }
    f.seek(SeekFrom::Start(len - limit))?;
    let mut out = Vec::with_capacity(limit as usize);
    f.take(limit).read_to_end(&mut out)?;
    let start = out
        .iter()
        .position(|&b| b == b'\n')
        .map_or(out.len(), |i| i + 1);
    out.drain(..start);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const N: &str = "abc123";

    fn line(phase: &str, status: &str, extra: &str) -> String {
        format!(
            "{{\"boot\": \"{N}\", \"phase\": \"{phase}\"{extra}, \"status\": \"{status}\", \"ts\": \"2025-01-01T00:00:00Z\"}}\n"
        )
    }

    #[test]
    fn a_flooded_status_log_is_read_from_its_end_only() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("status.log");
        // 6 MiB of junk from an earlier boot, then the current boot's lines.
        let mut s = "x".repeat(1000) + "\n";
        s = s.repeat(6 * 1024);
        s += &line("cloud-init", "started", "");
        s += &line("cloud-init", "ok", ", \"code\": 0");
        std::fs::write(&p, &s).unwrap();
        let tail = read_tail(&p, MAX_STATUS_BYTES).unwrap();
        assert!(tail.len() as u64 <= MAX_STATUS_BYTES);
        assert!(tail.starts_with(b"x") || tail.starts_with(b"{"));
        let st = read_status(&p, N).unwrap();
        assert_eq!(st.events.len(), 2);
        let short = dir.path().join("short.log");
        std::fs::write(&short, line("install", "started", "")).unwrap();
        assert_eq!(read_status(&short, N).unwrap().events.len(), 1);
    }

    #[test]
    fn full_success() {
        let mut s = String::new();
        s += &line("cloud-init", "started", "");
        s += &line("cloud-init", "ok", ", \"code\": 0");
        s += &line("install", "started", "");
        s += &line("install", "ok", ", \"code\": 0");
        s += &line("start", "started", "");
        s += &line("start", "ok", ", \"code\": 0");
        s += &line("provision", "started", ", \"step\": 0, \"name\": \"setup\"");
        s += &line(
            "provision",
            "ok",
            ", \"step\": 0, \"name\": \"setup\", \"code\": 0",
        );
        s += &line("done", "ok", ", \"code\": 0");
        let st = parse_status(s.as_bytes(), N);
        assert!(st.booted && st.done);
        assert_eq!(st.failed, None);
        assert_eq!(st.last.as_deref(), Some("done"));
        assert_eq!(st.events.len(), 9);
        assert_eq!(
            st.events[6].phase,
            GuestPhase::Provision {
                step: 0,
                name: Some("setup".into())
            }
        );
        assert_eq!(st.summary(), "done");
    }

    #[test]
    fn stale_nonce_lines_ignored() {
        let old = line("done", "ok", ", \"code\": 0").replace(N, "oldnonce");
        let mut s = old.clone();
        s += &line("cloud-init", "started", "");
        let st = parse_status(s.as_bytes(), N);
        assert!(st.booted);
        assert!(!st.done, "a done of an earlier boot must not count");
        assert_eq!(st.ignored, 1);
        assert_eq!(st.last.as_deref(), Some("cloud-init"));
        // Only stale lines: nothing booted.
        let st = parse_status(old.as_bytes(), N);
        assert!(!st.booted && !st.done);
        // An empty nonce matches nothing, not even lines with an empty boot field.
        let empty = line("done", "ok", "").replace(N, "");
        assert!(!parse_status(empty.as_bytes(), "").done);
        assert!(!parse_status(empty.as_bytes(), N).done);
    }

    #[test]
    fn partial_last_line_and_garbage_tolerated() {
        let mut s = String::from("\u{0}\u{1}garbage\n{not json}\n\n");
        s += &line("cloud-init", "started", "");
        s += &line("done", "ok", ", \"code\": 0")[..30];
        let st = parse_status(s.as_bytes(), N);
        assert!(st.booted);
        assert!(!st.done, "the partial line must not count yet");
        assert_eq!(st.ignored, 2);
        // Invalid UTF-8 does not stop the parse.
        let mut b = vec![0xff, 0xfe, b'\n'];
        b.extend_from_slice(line("done", "ok", "").as_bytes());
        assert!(parse_status(&b, N).done);
    }

    #[test]
    fn failure_captured() {
        let mut s = String::new();
        s += &line("cloud-init", "started", "");
        s += &line("provision", "started", ", \"step\": 1, \"name\": \"setup\"");
        s += &line(
            "provision",
            "failed",
            ", \"step\": 1, \"name\": \"setup\", \"code\": 7, \"tail\": \"boom\\nline\"",
        );
        let st = parse_status(s.as_bytes(), N);
        assert!(!st.done);
        let f = st.failed.clone().unwrap();
        assert_eq!(f.phase, "provision[1] setup");
        assert_eq!(f.code, 7);
        assert_eq!(f.tail, "boom\nline");
        assert_eq!(st.summary(), "failed: provision[1] setup (exit 7)");
        assert_eq!(st.last_state, Some(StepState::Failed));
    }

    #[test]
    fn serial_log_lines_with_prefix_and_noise() {
        let s = format!(
            "[   12.3] random kernel text\n[  OK  ] Started x.\n{}{}",
            "noise CLAWFARM-STATUS ",
            line("install", "failed", ", \"code\": 2, \"tail\": \"t\"")
        );
        let st = parse_status(s.as_bytes(), N);
        assert_eq!(st.failed.unwrap().phase, "install");
    }

    #[test]
    fn unknown_phase_kept() {
        let s = line("future-phase", "started", "");
        let st = parse_status(s.as_bytes(), N);
        assert_eq!(st.last.as_deref(), Some("future-phase"));
    }

    #[test]
    fn read_status_missing_file_is_empty() {
        let d = tempfile::tempdir().unwrap();
        let st = read_status(&d.path().join("status.log"), N).unwrap();
        assert_eq!(st, GuestStatus::default());
        let e = read_status(d.path(), N).unwrap_err();
        assert!(e.to_string().contains(&d.path().display().to_string()));
    }

    #[test]
    fn qemu_args_shape() {
        let a = qemu_status_args(Path::new("/x/status.log"), "n1");
        assert_eq!(
            a.join(" "),
            "-device virtio-serial-pci -chardev file,id=clawstatus,path=/x/status.log,append=on \
             -device virtserialport,chardev=clawstatus,name=org.clawfarm.status \
             -fw_cfg name=opt/org.clawfarm/boot,string=n1"
        );
        let n = new_nonce();
        assert_eq!(n.len(), 32);
        assert!(n.chars().all(|c| c.is_ascii_hexdigit()));
    }
}
