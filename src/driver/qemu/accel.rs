//! Choosing the accelerator: `kvm` when it really works, `tcg` otherwise.
//!
//! `CLAWFARM_ACCEL` (or the global `--accel` flag) is `auto` (default), `kvm` or `tcg`.
//! `kvm` and `tcg` are used as asked. `auto` never trusts the mere presence of
//! `/dev/kvm` (nested virtualisation often gives a `/dev/kvm` whose guests hang):
//!
//! 1. `/dev/kvm` must open read-write;
//! 2. a verdict cached in `<home>/accel.json` for this kernel release and QEMU version is
//!    used as is;
//! 3. otherwise a probe runs: a 512-byte boot sector written here as bytes
//!    ([`PROBE_BOOT_SECTOR`], source in `assets/kvm-probe.S`), booted from a virtio disk under
//!    `-accel kvm`, that prints `CLAWFARM-KVM-PROBE R`, `P` and `L` on the serial port from
//!    real, protected and long mode. No full line within [`PROBE_TIMEOUT`] → `tcg`;
//! 4. a guest can still hang where the probe did not (observed: GRUB never prints under a
//!    nested KVM that passes the probe), so a start under an `auto`-chosen KVM is watched:
//!    no serial output within the watchdog time (`CLAWFARM_KVM_WATCHDOG`, default 20 s), or
//!    a QEMU run state of `internal-error`, kills it and restarts under TCG, and the
//!    verdict is cached.
//!
//! The choice and its reason end up in `Runtime.accel`, e.g. `tcg (kvm probe failed: no
//! output in 5s)`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::home::Home;
use crate::util::fsutil;

/// How long the KVM probe may take to print its line.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// What the probe prints (followed by a newline) when it reached long mode.
pub const PROBE_OK: &str = "CLAWFARM-KVM-PROBE RPWL";

/// The probe boot sector (512 bytes, ends in `55 aa`), assembled from `assets/kvm-probe.S`:
/// real mode prints `CLAWFARM-KVM-PROBE R` on COM1, enters protected mode and prints `P`,
/// writes 16 MiB of memory and prints `W`, enters long mode with identity-mapped 2 MiB
/// pages and prints `L` and a newline, then halts.
pub const PROBE_BOOT_SECTOR: &str = concat!(
    "fa31c08ed88ec08ed0bc007cbaf803bec27cac84c07403eeebf80f0116f87c0f20c06683c8010f22c0ea2e7c",
    "080066b810008ed88ec08ed066baf803b050eebb10000000bf00001000b90000040089d8f3ab4b75efb057ee",
    "bf0010000031c0b9000c0000f3abc7050010000003200000c7050020000003300000c7050030000083000000",
    "b8001000000f22d80f20e083c8200f22e0b9800000c00f320d000100000f300f20c00d000000800f22c0eab5",
    "7c0000180066baf803b04ceeb00aeef4ebfd434c41574641524d2d4b564d2d50524f42452052009000000000",
    "00000000ffff0000009acf00ffff00000092cf00ffff0000009aaf001f00d87c",
);

/// The accelerator policy asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccelMode {
    /// KVM when it is verified to work, else TCG.
    #[default]
    Auto,
    /// KVM, unchecked.
    Kvm,
    /// TCG (software emulation).
    Tcg,
}

impl AccelMode {
    /// Parse `auto|kvm|tcg` (the value of `CLAWFARM_ACCEL`).
    pub fn parse(s: &str) -> Option<AccelMode> {
        match s.trim().to_ascii_lowercase().as_str() {
            "" | "auto" => Some(AccelMode::Auto),
            "kvm" => Some(AccelMode::Kvm),
            "tcg" => Some(AccelMode::Tcg),
            _ => None,
        }
    }
}

/// An accelerator QEMU can run with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// Hardware virtualisation.
    Kvm,
    /// Software emulation.
    Tcg,
}

impl fmt::Display for Accel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        })
    }
}

/// A decision: the accelerator, why, and whether the start must be watched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccelChoice {
    /// The accelerator.
    pub accel: Accel,
    /// Why (`requested`, `probe ok`, `kvm probe failed: …`, `cached: …`, …).
    pub why: String,
    /// True when `auto` chose KVM: the boot watchdog applies.
    pub watch: bool,
    /// The cache key of this host (kernel release and QEMU version), when computed.
    pub key: Option<String>,
}

impl fmt::Display for AccelChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.accel, self.why)
    }
}

/// One cached verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    /// Does KVM work for guests on this host?
    pub kvm_ok: bool,
    /// Why we think so.
    pub reason: String,
    /// When it was decided (RFC 3339).
    pub checked_at: String,
}

/// `<home>/accel.json`: verdicts by host key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccelCache {
    /// Host key → verdict.
    pub hosts: BTreeMap<String, Verdict>,
}

/// Path of the cache.
pub fn cache_path(home: &Home) -> PathBuf {
    home.root().join("accel.json")
}

/// Read the cache (missing or unreadable: empty).
pub fn read_cache(home: &Home) -> AccelCache {
    std::fs::read(cache_path(home))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// Remember `verdict` for `key`.
pub fn remember(home: &Home, key: &str, kvm_ok: bool, reason: &str) {
    let mut c = read_cache(home);
    c.hosts.insert(
        key.to_string(),
        Verdict {
            kvm_ok,
            reason: reason.to_string(),
            checked_at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        },
    );
    let p = cache_path(home);
    let data = serde_json::to_vec_pretty(&c).unwrap_or_default();
    if let Err(e) = fsutil::write_atomic(&p, &data, 0o644) {
        tracing::warn!("cannot write {}: {e}", p.display());
    }
}

/// The host key: kernel release and QEMU version (`6.1.0-18-amd64 | QEMU emulator version
/// 7.2.22 …`).
pub async fn host_key(qemu: &Path) -> String {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown-kernel".into());
    let version = tokio::process::Command::new(qemu)
        .arg("--version")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .await
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(str::to_string)
        })
        .unwrap_or_else(|| "unknown-qemu".into());
    format!("{kernel} | {version}")
}

/// Why `/dev/kvm` is not usable, or `None` when it opens read-write.
pub fn dev_kvm_problem() -> Option<String> {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(_) => None,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some("no /dev/kvm".into()),
        Err(e) => Some(format!("cannot open /dev/kvm: {e}")),
    }
}

/// Decide from the inputs (pure; [`choose`] gathers them).
pub fn decide(
    mode: AccelMode,
    dev_problem: Option<&str>,
    cached: Option<&Verdict>,
    probe: impl FnOnce() -> Result<(), String>,
) -> (AccelChoice, Option<(bool, String)>) {
    let c = |accel, why: String, watch| AccelChoice {
        accel,
        why,
        watch,
        key: None,
    };
    match mode {
        AccelMode::Tcg => (c(Accel::Tcg, "requested".into(), false), None),
        AccelMode::Kvm => (c(Accel::Kvm, "requested".into(), false), None),
        AccelMode::Auto => {
            if let Some(p) = dev_problem {
                return (c(Accel::Tcg, p.to_string(), false), None);
            }
            if let Some(v) = cached {
                return if v.kvm_ok {
                    (c(Accel::Kvm, format!("cached: {}", v.reason), true), None)
                } else {
                    (c(Accel::Tcg, format!("cached: {}", v.reason), false), None)
                };
            }
            match probe() {
                Ok(()) => (
                    c(Accel::Kvm, "probe ok".into(), true),
                    Some((true, "probe ok".into())),
                ),
                Err(why) => {
                    let why = format!("kvm probe failed: {why}");
                    (c(Accel::Tcg, why.clone(), false), Some((false, why)))
                }
            }
        }
    }
}

/// Choose the accelerator for a start (runs the probe when `auto` has no cached verdict).
pub async fn choose(home: &Home, mode: AccelMode, qemu: &Path) -> AccelChoice {
    if mode != AccelMode::Auto {
        return decide(mode, None, None, || Ok(())).0;
    }
    let dev = dev_kvm_problem();
    if dev.is_some() {
        return decide(mode, dev.as_deref(), None, || Ok(())).0;
    }
    let key = host_key(qemu).await;
    let cache = read_cache(home);
    let cached = cache.hosts.get(&key);
    let probe_result = if cached.is_none() {
        Some(probe_kvm(home, qemu, PROBE_TIMEOUT).await)
    } else {
        None
    };
    let (mut choice, verdict) = decide(mode, None, cached, move || probe_result.unwrap_or(Ok(())));
    if let Some((ok, why)) = verdict {
        remember(home, &key, ok, &why);
    }
    choice.key = Some(key);
    choice
}

/// The probe disk: the boot sector padded to 1 MiB (SeaBIOS does not boot a virtio disk
/// of one sector).
pub fn probe_disk() -> Vec<u8> {
    let mut d = hex::decode(PROBE_BOOT_SECTOR).expect("probe bytes are hex");
    d.resize(510, 0);
    d.extend_from_slice(&[0x55, 0xaa]);
    d.resize(1 << 20, 0);
    d
}

/// Boot the probe under `-accel kvm`; `Err(why)` unless it prints [`PROBE_OK`] in time.
pub async fn probe_kvm(home: &Home, qemu: &Path, within: Duration) -> Result<(), String> {
    let dir = home
        .root()
        .join(format!(".kvm-probe.{}", std::process::id()));
    let r = probe_in(&dir, qemu, within).await;
    let _ = std::fs::remove_dir_all(&dir);
    r
}

async fn probe_in(dir: &Path, qemu: &Path, within: Duration) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let disk = dir.join("probe.img");
    let out = dir.join("serial.out");
    std::fs::write(&disk, probe_disk())
        .map_err(|e| format!("cannot write {}: {e}", disk.display()))?;
    let mut child = tokio::process::Command::new(qemu)
        .args([
            "-accel",
            "kvm",
            "-nodefaults",
            "-no-user-config",
            "-display",
        ])
        .args(["none", "-m", "16", "-serial"])
        .arg(format!("file:{}", super::layout::opt_path(&out)))
        .arg("-drive")
        .arg(format!(
            "file={},format=raw,if=virtio",
            super::layout::opt_path(&disk)
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", qemu.display()))?;
    let t0 = tokio::time::Instant::now();
    let result = loop {
        let got = std::fs::read_to_string(&out).unwrap_or_default();
        if got.contains(&format!("{PROBE_OK}\n")) {
            break Ok(());
        }
        if let Ok(Some(st)) = child.try_wait() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                use tokio::io::AsyncReadExt;
                let _ = e.read_to_string(&mut err).await;
            }
            let last = err
                .lines()
                .rev()
                .find(|l| !l.contains("warning:"))
                .unwrap_or("")
                .trim()
                .to_string();
            break Err(format!("qemu exited with {st}: {last}"));
        }
        if t0.elapsed() >= within {
            break Err(if got.is_empty() {
                format!("no output in {}s", within.as_secs())
            } else {
                format!("stuck after {:?} in {}s", got.trim(), within.as_secs())
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let _ = child.start_kill();
    let _ = child.wait().await;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_sector_is_a_boot_sector() {
        let d = probe_disk();
        assert_eq!(d.len(), 1 << 20);
        assert_eq!(&d[510..512], &[0x55, 0xaa]);
        assert!(
            d.windows(PROBE_OK.len() - 3)
                .any(|w| w == &PROBE_OK.as_bytes()[..PROBE_OK.len() - 3]),
            "the message is in the sector"
        );
    }

    #[test]
    fn decisions() {
        let never = || -> Result<(), String> { panic!("no probe expected") };
        let (c, v) = decide(AccelMode::Tcg, None, None, never);
        assert_eq!(
            (c.to_string(), c.watch, v),
            ("tcg (requested)".into(), false, None)
        );
        let (c, _) = decide(AccelMode::Kvm, Some("no /dev/kvm"), None, never);
        assert_eq!(c.to_string(), "kvm (requested)");
        let (c, _) = decide(AccelMode::Auto, Some("no /dev/kvm"), None, never);
        assert_eq!(c.to_string(), "tcg (no /dev/kvm)");
        let bad = Verdict {
            kvm_ok: false,
            reason: "kvm watchdog: no serial output in 20s".into(),
            checked_at: "x".into(),
        };
        let (c, v) = decide(AccelMode::Auto, None, Some(&bad), never);
        assert_eq!(
            c.to_string(),
            "tcg (cached: kvm watchdog: no serial output in 20s)"
        );
        assert_eq!(v, None);
        let (c, v) = decide(
            AccelMode::Auto,
            None,
            None,
            || Err("no output in 5s".into()),
        );
        assert_eq!(c.to_string(), "tcg (kvm probe failed: no output in 5s)");
        assert_eq!(v, Some((false, "kvm probe failed: no output in 5s".into())));
        let (c, v) = decide(AccelMode::Auto, None, None, || Ok(()));
        assert_eq!((c.to_string(), c.watch), ("kvm (probe ok)".into(), true));
        assert_eq!(v, Some((true, "probe ok".into())));
    }

    #[test]
    fn cache_round_trip() {
        let d = tempfile::tempdir().unwrap();
        let home = Home::new(d.path());
        assert!(read_cache(&home).hosts.is_empty());
        remember(&home, "k1", false, "why");
        remember(&home, "k2", true, "ok");
        let c = read_cache(&home);
        assert!(!c.hosts["k1"].kvm_ok);
        assert!(c.hosts["k2"].kvm_ok);
    }

    #[test]
    fn modes_parse() {
        assert_eq!(AccelMode::parse("KVM"), Some(AccelMode::Kvm));
        assert_eq!(AccelMode::parse(""), Some(AccelMode::Auto));
        assert_eq!(AccelMode::parse("hvf"), None);
    }
}
