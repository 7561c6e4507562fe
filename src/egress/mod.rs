//! Guest egress (`rfc/012-sandbox.md`): the policy decisions, the HTTP proxy every guest
//! connection goes through in `allow` and `open` mode, the host firewall that confines
//! QEMU's own sockets, and the registry the proxy reads instances from.
//!
//! * `none`: QEMU's user network runs with `restrict=on`; the guest can open no connection
//!   at all (port forwards into the guest still work). No proxy.
//! * `allow` / `open`: the guest is given `http_proxy=http://CLAWID:TOKEN@10.0.2.2:PORT`;
//!   an nftables rule lets processes of the QEMU user open new connections only to
//!   `127.0.0.1:PORT` (the proxy), so a guest that ignores the proxy reaches nothing; the
//!   proxy checks each destination ([`policy::decide`]) and writes an event per verdict.

pub mod firewall;
pub mod policy;
pub mod proxy;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

use crate::input::network::Network;
use crate::util::fsutil;

/// The default port of the proxy on 127.0.0.1 (one proxy per host, `CLAWFARM_EGRESS_PORT`).
pub const DEFAULT_PORT: u16 = 18780;
/// The address a guest reaches the host's 127.0.0.1 at (QEMU user networking).
pub const GUEST_GATEWAY: &str = "10.0.2.2";
/// The path the proxy answers for its own health check.
pub const HEALTH_PATH: &str = "/.clawfarm-egress";
/// The body of that answer.
pub const HEALTH_BODY: &str = "clawfarm-egress";

/// Where the proxy listens and keeps its state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressConfig {
    /// Port on 127.0.0.1 (`CLAWFARM_EGRESS_PORT`, default [`DEFAULT_PORT`]).
    pub port: u16,
    /// State folder (`CLAWFARM_RUN_DIR`, default `/run/clawfarm`): `egress/<CLAWID>.json`
    /// registrations, `egress.log`.
    pub run_dir: PathBuf,
    /// The program started as the proxy (`CLAWFARM_EGRESS_BIN`, default this executable):
    /// run as `<bin> egress-proxy`.
    pub bin: Option<PathBuf>,
}

impl Default for EgressConfig {
    fn default() -> Self {
        EgressConfig {
            port: DEFAULT_PORT,
            run_dir: PathBuf::from("/run/clawfarm"),
            bin: None,
        }
    }
}

impl EgressConfig {
    /// From `CLAWFARM_EGRESS_PORT`, `CLAWFARM_RUN_DIR`, `CLAWFARM_EGRESS_BIN`.
    pub fn from_env() -> anyhow::Result<Self> {
        let d = Self::default();
        let port = match std::env::var("CLAWFARM_EGRESS_PORT") {
            Ok(v) if !v.trim().is_empty() => v
                .trim()
                .parse::<u16>()
                .ok()
                .filter(|p| *p >= 1024)
                .ok_or_else(|| {
                    anyhow::anyhow!("CLAWFARM_EGRESS_PORT={v:?} is not a port from 1024 to 65535")
                })?,
            _ => d.port,
        };
        Ok(EgressConfig {
            port,
            run_dir: std::env::var_os("CLAWFARM_RUN_DIR")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
                .unwrap_or(d.run_dir),
            bin: std::env::var_os("CLAWFARM_EGRESS_BIN")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from),
        })
    }

    /// `<run_dir>/egress`.
    pub fn registry_dir(&self) -> PathBuf {
        self.run_dir.join("egress")
    }

    /// The registration file of `clawid`.
    pub fn registration(&self, clawid: &str) -> PathBuf {
        self.registry_dir().join(format!("{clawid}.json"))
    }
}

/// What the proxy knows about one running instance (`<run_dir>/egress/<CLAWID>.json`,
/// root 0600, written at each start, removed at stop).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    /// CLAWID.
    pub clawid: String,
    /// The event log of the instance's home (verdicts are appended there).
    pub events: PathBuf,
    /// SHA-256 (hex) of the instance's proxy token.
    pub token_sha256: String,
    /// The policy.
    pub network: Network,
}

/// Whether `clawid` is safe as a file name (the proxy gets it from the guest).
pub fn valid_clawid(clawid: &str) -> bool {
    !clawid.is_empty()
        && clawid.len() <= 80
        && clawid
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Write the registration of an instance (atomically).
pub fn register(cfg: &EgressConfig, reg: &Registration) -> anyhow::Result<()> {
    let dir = cfg.registry_dir();
    fsutil::create_dir_mode(&cfg.run_dir, 0o755)
        .with_context(|| format!("cannot create {}", cfg.run_dir.display()))?;
    fsutil::create_dir_mode(&dir, 0o700)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    let p = cfg.registration(&reg.clawid);
    fsutil::write_atomic(&p, &serde_json::to_vec_pretty(reg)?, 0o600)
        .with_context(|| format!("cannot write {}", p.display()))
}

/// Remove the registration of an instance (nothing when there is none).
pub fn unregister(cfg: &EgressConfig, clawid: &str) {
    let _ = std::fs::remove_file(cfg.registration(clawid));
}

/// Read the registration of `clawid`.
pub fn lookup(cfg: &EgressConfig, clawid: &str) -> Option<Registration> {
    if !valid_clawid(clawid) {
        return None;
    }
    let b = std::fs::read(cfg.registration(clawid)).ok()?;
    serde_json::from_slice(&b).ok()
}

/// The proxy token of an instance: made once (32 random hex characters, 0600), kept in
/// the instance folder so the seed (and the guest's configuration) stays the same.
pub fn ensure_token(path: &Path) -> anyhow::Result<String> {
    if let Ok(t) = std::fs::read_to_string(path) {
        let t = t.trim().to_string();
        if t.len() == 32 && t.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(t);
        }
    }
    let bytes: [u8; 16] = rand::random();
    let t = hex::encode(bytes);
    fsutil::write_atomic(path, format!("{t}\n").as_bytes(), 0o600)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(t)
}

/// The URL the guest uses as its HTTP(S) proxy.
pub fn proxy_url(cfg: &EgressConfig, clawid: &str, token: &str) -> String {
    format!("http://{clawid}:{token}@{GUEST_GATEWAY}:{}", cfg.port)
}

/// Whether a clawfarm egress proxy answers on 127.0.0.1:`port`: `Ok(true)` yes,
/// `Ok(false)` nothing listens, `Err` something else listens there.
pub fn probe(port: u16) -> anyhow::Result<bool> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return Ok(false),
        Err(e) => return Err(e).with_context(|| format!("cannot connect to {addr}")),
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(3)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(3)));
    let _ = write!(s, "GET {HEALTH_PATH} HTTP/1.0\r\n\r\n");
    let mut buf = Vec::new();
    let _ = s.take(4096).read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    if text.starts_with("HTTP/1.") && text.contains(HEALTH_BODY) {
        Ok(true)
    } else {
        bail!(
            "127.0.0.1:{port} is taken by a program that is not clawfarm's egress proxy; \
             stop it or set CLAWFARM_EGRESS_PORT"
        )
    }
}

/// Make sure the proxy runs: probe it, else start `<bin> egress-proxy` detached (own
/// session, output to `<run_dir>/egress.log`) and wait until it answers.
pub fn ensure_proxy(cfg: &EgressConfig) -> anyhow::Result<()> {
    if probe(cfg.port)? {
        return Ok(());
    }
    fsutil::create_dir_mode(&cfg.run_dir, 0o755)
        .with_context(|| format!("cannot create {}", cfg.run_dir.display()))?;
    let bin = match &cfg.bin {
        Some(b) => b.clone(),
        None => std::env::current_exe().context("cannot find the clawfarm executable")?,
    };
    let log_path = cfg.run_dir.join("egress.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("cannot open {}", log_path.display()))?;
    let err = log.try_clone()?;
    let mut cmd = Command::new(&bin);
    cmd.arg("egress-proxy")
        .env("CLAWFARM_EGRESS_PORT", cfg.port.to_string())
        .env("CLAWFARM_RUN_DIR", &cfg.run_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(err));
    // SAFETY: setsid only; the proxy outlives this process like QEMU does.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot run {} egress-proxy", bin.display()))?;
    std::thread::spawn(move || child.wait());
    let t0 = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(100));
        match probe(cfg.port) {
            Ok(true) => return Ok(()),
            Ok(false) if t0.elapsed() < Duration::from_secs(10) => {}
            Ok(false) => bail!(
                "the egress proxy did not answer on 127.0.0.1:{} within 10s (see {})",
                cfg.port,
                log_path.display()
            ),
            Err(e) => return Err(e),
        }
    }
}
