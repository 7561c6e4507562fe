//! The real driver: blob store and bundle import, qcow2 overlays, cloud-init seeds, and
//! QEMU processes that outlive clawfarm. See `rfc/005-qemu-driver.md`.
//!
//! Every method checks before it acts, so a rerun after a crash converges:
//!
//! * `create_disk` keeps an overlay that already backs on the right blob;
//! * `write_seed` keeps keys once generated and rewrites `seed.img` only when its content
//!   (its cloud-init instance id, a digest of the content) changes;
//! * `start` adopts a QEMU of this instance that is already running (found through the
//!   record, `runtime.json` or QEMU's pidfile, and verified through `/proc`);
//! * `stop` of a stopped VM and `remove` of a missing folder succeed.

pub mod accel;
pub mod cmdline;
pub mod confine;
pub mod disks;
pub mod export;
pub mod guest;
pub mod layout;
pub mod procfs;
pub mod qmp;
pub mod seed;
pub mod snapshot;
pub mod sshkeys;

use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::{Context, bail};
use async_trait::async_trait;
use tokio::time::Instant;

use self::accel::{Accel, AccelChoice, AccelMode};
use self::cmdline::{PAYLOAD_SERIAL, QemuSpec, parse_args, volume_serial};
use self::layout::{InstanceFiles, volume_disk, volumes_dir};
use self::qmp::Qmp;
use self::seed::SeedInput;
use crate::desired::{BundleDesired, DesiredInstance, gateway_port};
use crate::driver::boot::GuestStatus;
use crate::driver::{
    Checkpoint, Driver, DriverError, ExportFigures, GuestHealth, Liveness, LogKind, StopOutcome,
};
use crate::home::Home;
use crate::input::clawspec::Image;
use crate::state::record::{ProcessId, Record, Runtime};
use crate::store::blob::BlobStore;
use crate::store::part::qcow2_backing;
use crate::store::progress::Progress;
use crate::util::fsutil;
use crate::util::text::now_rfc3339;

/// Settings of the host driver (from the environment by default).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QemuConfig {
    /// `qemu-system-x86_64` (`CLAWFARM_QEMU`).
    pub qemu: PathBuf,
    /// `qemu-img` (`CLAWFARM_QEMU_IMG`).
    pub qemu_img: PathBuf,
    /// Accelerator policy (`CLAWFARM_ACCEL`, `--accel`).
    pub accel: AccelMode,
    /// How long `stop` waits for the guest to power off after `system_powerdown`
    /// (`CLAWFARM_STOP_TIMEOUT`, default 60 s) before `quit` and then SIGKILL.
    pub stop_timeout: Duration,
    /// How long `wait_ready` waits (`CLAWFARM_READY_TIMEOUT`, default 600 s).
    pub ready_timeout: Duration,
    /// How long an `auto`-chosen KVM guest may stay silent on its serial console
    /// (`CLAWFARM_KVM_WATCHDOG`, default 20 s).
    pub kvm_watchdog: Duration,
    /// Extra CA certificates for guests (`CLAWFARM_GUEST_CA_CERTS`: a PEM file, or `host`
    /// for this host's bundle `/etc/ssl/certs/ca-certificates.crt`).
    pub guest_ca_certs: Option<PathBuf>,
    /// HTTP(S) proxy URL for guests (`CLAWFARM_GUEST_PROXY`). The guest's proxy is now
    /// always clawfarm's egress proxy (`rfc/012-sandbox.md`): an instance whose network
    /// policy uses it refuses to start while this is set (no chaining yet).
    pub guest_proxy: Option<String>,
    /// The user QEMU runs as when clawfarm is root (`CLAWFARM_QEMU_USER`, default
    /// `clawfarm-qemu`; created when missing). QEMU never runs as root.
    pub qemu_user: String,
    /// The egress proxy (`CLAWFARM_EGRESS_PORT`, `CLAWFARM_RUN_DIR`, `CLAWFARM_EGRESS_BIN`).
    pub egress: crate::egress::EgressConfig,
}

impl Default for QemuConfig {
    fn default() -> Self {
        QemuConfig {
            qemu: "qemu-system-x86_64".into(),
            qemu_img: "qemu-img".into(),
            accel: AccelMode::Auto,
            stop_timeout: Duration::from_secs(60),
            ready_timeout: Duration::from_secs(600),
            kvm_watchdog: Duration::from_secs(20),
            guest_ca_certs: None,
            guest_proxy: None,
            qemu_user: confine::DEFAULT_USER.into(),
            egress: crate::egress::EgressConfig::default(),
        }
    }
}

/// The host's CA bundle (Debian/Ubuntu path), for `CLAWFARM_GUEST_CA_CERTS=host`.
pub const HOST_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// A duration from the environment: `90` (seconds) or humantime (`90s`, `2m`).
fn env_duration(name: &str, default: Duration) -> anyhow::Result<Duration> {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => {
            let v = v.trim();
            if let Ok(s) = v.parse::<u64>() {
                return Ok(Duration::from_secs(s));
            }
            humantime::parse_duration(v)
                .with_context(|| format!("{name}={v:?} is not a duration (e.g. 60, 60s, 2m)"))
        }
        _ => Ok(default),
    }
}

impl QemuConfig {
    /// Read the `CLAWFARM_*` variables (see the fields).
    pub fn from_env() -> anyhow::Result<Self> {
        let d = QemuConfig::default();
        let accel = match std::env::var("CLAWFARM_ACCEL") {
            Ok(v) => AccelMode::parse(&v).ok_or_else(|| {
                anyhow::anyhow!("CLAWFARM_ACCEL={v:?} is not one of auto, kvm, tcg")
            })?,
            Err(_) => d.accel,
        };
        Ok(QemuConfig {
            qemu: std::env::var_os("CLAWFARM_QEMU")
                .map(PathBuf::from)
                .unwrap_or(d.qemu),
            qemu_img: std::env::var_os("CLAWFARM_QEMU_IMG")
                .map(PathBuf::from)
                .unwrap_or(d.qemu_img),
            accel,
            stop_timeout: env_duration("CLAWFARM_STOP_TIMEOUT", d.stop_timeout)?,
            ready_timeout: env_duration("CLAWFARM_READY_TIMEOUT", d.ready_timeout)?,
            kvm_watchdog: env_duration("CLAWFARM_KVM_WATCHDOG", d.kvm_watchdog)?,
            guest_ca_certs: std::env::var_os("CLAWFARM_GUEST_CA_CERTS")
                .filter(|v| !v.is_empty())
                .map(|v| {
                    if v == "host" {
                        PathBuf::from(HOST_CA_BUNDLE)
                    } else {
                        PathBuf::from(v)
                    }
                }),
            guest_proxy: std::env::var("CLAWFARM_GUEST_PROXY")
                .ok()
                .filter(|v| !v.trim().is_empty()),
            qemu_user: std::env::var("CLAWFARM_QEMU_USER")
                .ok()
                .filter(|v| !v.trim().is_empty())
                .unwrap_or(d.qemu_user),
            egress: crate::egress::EgressConfig::from_env()?,
        })
    }
}

/// A QEMU process this process spawned; a reaper thread collects its exit status.
struct Spawned {
    pid: u32,
    exit: Arc<Mutex<Option<ExitStatus>>>,
}

impl Spawned {
    fn exited(&self) -> Option<ExitStatus> {
        *self.exit.lock().expect("exit lock")
    }
}

/// How a QEMU process is confined at spawn: its user and its cgroups.
#[derive(Debug, Clone, Default)]
struct Confinement {
    user: Option<confine::QemuUser>,
    cgroup: Option<Arc<confine::CgroupJoin>>,
}

/// Why a launch attempt failed.
enum LaunchError {
    /// QEMU exited during start-up; the text is what it printed.
    Exited(ExitStatus, String),
    /// Anything else.
    Other(anyhow::Error),
}

/// The host driver.
#[derive(Debug)]
pub struct QemuDriver {
    home: Home,
    cfg: QemuConfig,
    blobs: BlobStore,
}

impl QemuDriver {
    /// A driver over `home`, configured from the environment.
    pub fn new(home: Home) -> anyhow::Result<Self> {
        Ok(Self::with_config(home, QemuConfig::from_env()?))
    }

    /// A driver with explicit settings.
    pub fn with_config(home: Home, cfg: QemuConfig) -> Self {
        QemuDriver {
            blobs: BlobStore::new(&home),
            home,
            cfg,
        }
    }

    /// The runtime root.
    pub fn home(&self) -> &Home {
        &self.home
    }

    /// The settings.
    pub fn config(&self) -> &QemuConfig {
        &self.cfg
    }

    /// The files of an instance.
    pub fn files(&self, clawid: &str) -> InstanceFiles {
        InstanceFiles::new(&self.home, clawid)
    }

    /// The live QEMU process of `clawid`, verified through `/proc`. Candidates, in order:
    /// the record's process, `runtime.json`'s, and the pid in QEMU's pidfile.
    pub fn running(&self, clawid: &str, rec: Option<&Record>) -> Option<ProcessId> {
        let files = self.files(clawid);
        let marker = files.marker();
        if let Some(p) = rec.and_then(|r| r.runtime.process.as_ref())
            && procfs::is_alive(p, &marker)
        {
            return Some(p.clone());
        }
        if let Some(p) = read_runtime(&files).and_then(|r| r.process)
            && procfs::is_alive(&p, &marker)
        {
            return Some(p);
        }
        let pid: u32 = std::fs::read_to_string(files.pidfile())
            .ok()?
            .trim()
            .parse()
            .ok()?;
        procfs::identify(pid, &marker)
    }

    /// The runtime of the live QEMU of `rec` (`None` when it is not running): from
    /// `runtime.json` or the record when they name the live process, else read back from
    /// its command line.
    fn runtime_of(&self, rec: &Record) -> Option<Runtime> {
        let p = self.running(&rec.clawid, Some(rec))?;
        let files = self.files(&rec.clawid);
        if let Some(rt) = read_runtime(&files)
            && rt.process.as_ref() == Some(&p)
        {
            return Some(rt);
        }
        if rec.runtime.process.as_ref() == Some(&p) {
            return Some(rec.runtime.clone());
        }
        let parsed = parse_args(&procfs::cmdline(p.pid).ok()?);
        Some(Runtime {
            process: Some(p),
            boot_nonce: parsed.nonce,
            accel: parsed.accel.map(|a| format!("{a} (adopted)")),
            ssh_port: parsed.ssh_port,
            started_at: None,
        })
    }

    /// The image the instance disk backs on: the bundle's `run` layer, else its `base`.
    fn backing_image(inst: &DesiredInstance) -> anyhow::Result<&Image> {
        let imgs = &inst.bundle.clawspec.image;
        imgs.iter()
            .find(|i| i.name == "run")
            .or_else(|| imgs.iter().find(|i| i.name == "base"))
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "bundle {} of instance {} has neither a run nor a base image",
                    inst.bundle.digest,
                    inst.clawid
                )
            })
    }

    fn seed_input(
        &self,
        inst: &DesiredInstance,
        files: &InstanceFiles,
    ) -> anyhow::Result<SeedInput> {
        let comment = format!("clawfarm@{}", inst.clawid);
        let (_, login_pub) = ensure_keypair(&files.key(), &files.key_pub(), &comment)?;
        let (host_priv, host_pub) =
            ensure_keypair(&files.host_key(), &files.host_key_pub(), &comment)?;
        let spec = &inst.bundle.clawspec;
        let payload = self
            .home
            .bundle_dir(&inst.bundle.digest)
            .join(crate::store::bundle::PAYLOAD_DIR)
            .is_dir();
        let mut input = SeedInput {
            instance_id: String::new(),
            hostname: hostname_for(&inst.name),
            ssh_authorized_key: login_pub,
            host_key_private: host_priv,
            host_key_public: host_pub,
            params: inst
                .params
                .iter()
                .map(|p| (p.key.clone(), p.value.clone()))
                .collect(),
            install_script: spec.bootstrap.install_script.clone(),
            start_script: spec.bootstrap.start_script.clone(),
            provision: spec
                .provision
                .iter()
                .map(|s| seed::ProvisionStep {
                    name: s.name.clone(),
                    shell: s.shell.clone(),
                    script: s.script.clone(),
                })
                .collect(),
            payload_serial: payload.then(|| PAYLOAD_SERIAL.to_string()),
            volumes: inst
                .volumes
                .iter()
                .enumerate()
                .map(|(i, v)| (volume_serial(i), v.guest_path.clone()))
                .collect(),
            ca_certs: match &self.cfg.guest_ca_certs {
                Some(p) => {
                    let text = std::fs::read_to_string(p).with_context(|| {
                        format!("cannot read the guest CA certificates {}", p.display())
                    })?;
                    let certs = seed::split_pem(&text);
                    if certs.is_empty() {
                        bail!(
                            "{} (CLAWFARM_GUEST_CA_CERTS) holds no PEM certificate",
                            p.display()
                        );
                    }
                    certs
                }
                None => Vec::new(),
            },
            // Always present (whatever the policy), so a policy change needs no new seed;
            // under `none` the proxy is unreachable (restricted network).
            proxy: Some(crate::util::secret::Secret::new(crate::egress::proxy_url(
                &self.cfg.egress,
                &inst.clawid,
                &crate::egress::ensure_token(&files.egress_token())?,
            ))),
        };
        input.instance_id = seed::instance_id_for(&input);
        Ok(input)
    }

    fn spec_for(
        &self,
        rec: &Record,
        accel: Accel,
        ssh_port: u16,
        nonce: &str,
        loadvm: Option<&str>,
    ) -> QemuSpec {
        let payload = self.files(&rec.clawid).payload_img();
        QemuSpec {
            clawid: rec.clawid.clone(),
            files: self.files(&rec.clawid),
            accel,
            cpus: rec.resources.cpus,
            memory_mib: rec.resources.memory_mib,
            ssh_port,
            ports: rec.resources.ports.clone(),
            nonce: nonce.to_string(),
            payload: payload.is_file().then_some(payload),
            volumes: rec
                .build
                .volumes
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    (
                        volume_serial(i),
                        volume_disk(&self.home, &rec.clawid, &v.name),
                    )
                })
                .collect(),
            loadvm: loadvm.map(str::to_string),
            restrict_net: !rec.resources.network.uses_proxy(),
        }
    }

    /// The user and cgroups of a new QEMU of `rec`; for `allow`/`open` also the host
    /// firewall, the egress proxy and the instance's registration with it.
    fn confinement(&self, rec: &Record) -> anyhow::Result<Confinement> {
        let net = &rec.resources.network;
        if net.uses_proxy()
            && let Some(p) = &self.cfg.guest_proxy
        {
            // The guest's proxy is clawfarm's egress proxy; the egress proxy does not chain to
            // another one yet, and the firewall would block a direct use of `p`.
            let shown = p.split('@').next_back().unwrap_or(p);
            bail!(
                "instance {}: CLAWFARM_GUEST_PROXY ({shown}) cannot be used with network policy \
                 {}: the guest's proxy is clawfarm's egress proxy, which does not forward \
                 through another proxy yet (rfc/012-sandbox.md); unset CLAWFARM_GUEST_PROXY",
                rec.clawid,
                net.egress
            );
        }
        let files = self.files(&rec.clawid);
        let user = confine::qemu_user(&self.cfg.qemu_user)?;
        let cgroup = match confine::CgroupFs::detect() {
            Some(fs) => {
                let l = confine::Limits::of(rec.resources.cpus, rec.resources.memory_mib);
                match confine::prepare_cgroup(&fs, &rec.clawid, l) {
                    Ok(c) => Some(Arc::new(c)),
                    Err(e) => {
                        // A container with a read-only cgroup tree, or clawfarm not root:
                        // the VM starts unbounded and says so (rfc/012-sandbox.md).
                        let msg = format!("cpu and memory are not bounded: {e:#}");
                        tracing::warn!("instance {}: {msg}", rec.clawid);
                        append_log(
                            &files.qemu_log(),
                            &format!("[{}] clawfarm: {msg}", now_rfc3339()),
                        );
                        None
                    }
                }
            }
            None => {
                append_log(
                    &files.qemu_log(),
                    &format!(
                        "[{}] clawfarm: no cgroup cpu and memory controllers: cpu and memory are not bounded",
                        now_rfc3339()
                    ),
                );
                None
            }
        };
        if net.uses_proxy() {
            let uid = user.map_or_else(|| rustix::process::geteuid().as_raw(), |u| u.uid);
            crate::egress::firewall::ensure(uid, self.cfg.egress.port)?;
            crate::egress::ensure_proxy(&self.cfg.egress)?;
            let token = crate::egress::ensure_token(&files.egress_token())?;
            crate::egress::register(
                &self.cfg.egress,
                &crate::egress::Registration {
                    clawid: rec.clawid.clone(),
                    events: std::path::absolute(self.home.events_log())
                        .unwrap_or_else(|_| self.home.events_log()),
                    token_sha256: crate::util::digest::sha256_hex(token.as_bytes()),
                    network: net.clone(),
                },
            )?;
        } else {
            crate::egress::unregister(&self.cfg.egress, &rec.clawid);
        }
        Ok(Confinement { user, cgroup })
    }

    /// Spawn QEMU detached (own session, stdio to `qemu.log`) and wait until its QMP
    /// socket answers, or it exits. `resume` is `(snapshot tag, boot nonce)` to start from
    /// a saved state (`-loadvm`) instead of a cold boot.
    async fn launch_once(
        &self,
        rec: &Record,
        choice: &AccelChoice,
        ssh_port: u16,
        resume: Option<(&str, &str)>,
        conf: &Confinement,
    ) -> Result<(Runtime, Spawned), LaunchError> {
        let files = self.files(&rec.clawid);
        let nonce = match resume {
            Some((_, n)) => n.to_string(),
            None => guest::new_nonce(),
        };
        let spec = self.spec_for(rec, choice.accel, ssh_port, &nonce, resume.map(|r| r.0));
        for (_, disk) in &spec.volumes {
            if !disk.is_file() {
                return Err(LaunchError::Other(anyhow::anyhow!(
                    "instance {} has no volume disk {}",
                    rec.clawid,
                    disk.display()
                )));
            }
        }
        if let Some(u) = conf.user {
            let vols: Vec<PathBuf> = spec.volumes.iter().map(|(_, d)| d.clone()).collect();
            confine::prepare_files(&self.home, &files, &vols, u).map_err(LaunchError::Other)?;
        }
        let args = spec.args();
        let other = |e: anyhow::Error| LaunchError::Other(e);

        // known_hosts for this port (the host key is pinned in the seed).
        let host_pub = std::fs::read_to_string(files.host_key_pub())
            .with_context(|| format!("cannot read {}", files.host_key_pub().display()))
            .map_err(other)?;
        let kh = sshkeys::known_hosts_line("127.0.0.1", ssh_port, host_pub.trim()) + "\n";
        fsutil::write_atomic(&files.known_hosts(), kh.as_bytes(), 0o600)
            .with_context(|| format!("cannot write {}", files.known_hosts().display()))
            .map_err(other)?;
        // Keep the serial console of the previous boot; QEMU truncates serial.log.
        let _ = std::fs::rename(files.serial_log(), files.serial_prev_log());
        if resume.is_none() {
            // A cold boot starts a fresh status log (QEMU appends); a resumed guest goes on
            // with the boot, and the lines, it had.
            let _ = std::fs::rename(files.status_log(), files.status_prev_log());
        }

        let log_path = files.qemu_log();
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&log_path)
            .with_context(|| format!("cannot open {}", log_path.display()))
            .map_err(other)?;
        let offset = log.seek(SeekFrom::End(0)).unwrap_or(0);
        let _ = writeln!(
            log,
            "[{}] clawfarm: starting QEMU for {} (accel {choice}, ssh 127.0.0.1:{ssh_port}, boot {})\n  {} {}",
            now_rfc3339(),
            rec.clawid,
            &nonce[..8.min(nonce.len())],
            self.cfg.qemu.display(),
            args.join(" ")
        );
        let err_log = log
            .try_clone()
            .with_context(|| format!("cannot open {}", log_path.display()))
            .map_err(other)?;
        let mut cmd = Command::new(&self.cfg.qemu);
        cmd.args(&args)
            .current_dir(&files.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(err_log));
        // QEMU never runs as root: std sets the groups (none), gid and uid before the
        // pre_exec hook runs.
        if let Some(u) = conf.user {
            cmd.uid(u.uid).gid(u.gid);
        }
        let cgroup = conf.cgroup.clone();
        // SAFETY: setsid, getpid and write are async-signal-safe and allocate nothing. A new
        // session detaches QEMU from our terminal and process group: Ctrl-C or the end of
        // clawfarm never reaches it. The cgroup files were opened before the fork.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setsid() < 0 {
                    return Err(io::Error::last_os_error());
                }
                if let Some(cg) = &cgroup {
                    cg.join_self()?;
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot run {}", self.cfg.qemu.display()))
            .map_err(other)?;
        let spawned = reap(child);
        let t0 = Instant::now();
        loop {
            if let Some(st) = spawned.exited() {
                let text = read_from(&log_path, offset);
                return Err(LaunchError::Exited(st, text));
            }
            if files.qmp_sock().exists()
                && let Ok(mut q) = Qmp::connect(&files.qmp_sock(), Duration::from_secs(2)).await
                && q.query_status().await.is_ok()
            {
                break;
            }
            if t0.elapsed() > Duration::from_secs(30) {
                kill(spawned.pid, rustix::process::Signal::KILL);
                return Err(other(anyhow::anyhow!(
                    "QEMU of {} did not open its QMP socket {} within 30s",
                    rec.clawid,
                    files.qmp_sock().display()
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let start_time = procfs::stat(spawned.pid)
            .with_context(|| format!("cannot read /proc/{}/stat", spawned.pid))
            .map_err(other)?
            .start_time;
        let rt = Runtime {
            process: Some(ProcessId {
                pid: spawned.pid,
                start_time,
            }),
            boot_nonce: Some(nonce),
            accel: Some(choice.to_string()),
            ssh_port: Some(ssh_port),
            started_at: Some(SystemTime::now()),
        };
        write_runtime(&files, &rt).map_err(other)?;
        Ok((rt, spawned))
    }

    /// Launch, retrying with another SSH port when the chosen one was taken meanwhile.
    async fn launch(
        &self,
        rec: &Record,
        choice: &AccelChoice,
        resume: Option<(&str, &str)>,
        conf: &Confinement,
    ) -> anyhow::Result<(Runtime, Spawned)> {
        let mut last = String::new();
        for _ in 0..3 {
            let port = free_port().context("cannot find a free port on 127.0.0.1")?;
            match self.launch_once(rec, choice, port, resume, conf).await {
                Ok(v) => return Ok(v),
                Err(LaunchError::Other(e)) => return Err(e),
                Err(LaunchError::Exited(st, text)) => {
                    let ours = format!("127.0.0.1:{port}-:22");
                    last = qemu_errors(&text);
                    if text.contains("host forwarding rule") && text.contains(&ours) {
                        continue;
                    }
                    bail!(
                        "QEMU of {} exited at start ({st}): {}",
                        rec.clawid,
                        if last.is_empty() {
                            "no message (see qemu.log)".into()
                        } else {
                            last
                        }
                    );
                }
            }
        }
        bail!(
            "QEMU of {} could not bind an SSH port on 127.0.0.1: {last}",
            rec.clawid
        )
    }

    /// Start the VM of `rec` from internal snapshot `tag` (`-loadvm`), with the boot nonce
    /// its guest runs with.
    pub(crate) async fn start_from(
        &self,
        rec: &Record,
        tag: &str,
        nonce: &str,
    ) -> anyhow::Result<Runtime> {
        let files = self.files(&rec.clawid);
        clean_stale(&files);
        let conf = self.confinement(rec)?;
        let choice = accel::choose(&self.home, self.cfg.accel, &self.cfg.qemu).await;
        let (rt, _) = self.launch(rec, &choice, Some((tag, nonce)), &conf).await?;
        Ok(rt)
    }

    /// Watch an `auto`-chosen KVM start: `Err(why)` when the guest stays silent, QEMU
    /// exits, or the VM hits a KVM internal error.
    async fn kvm_watchdog(&self, files: &InstanceFiles, s: &Spawned) -> Result<(), String> {
        let t0 = Instant::now();
        let mut last_status = Instant::now();
        loop {
            if std::fs::metadata(files.serial_log()).is_ok_and(|m| m.len() > 0) {
                return Ok(());
            }
            if let Some(st) = s.exited() {
                return Err(format!("QEMU exited under kvm ({st})"));
            }
            if last_status.elapsed() >= Duration::from_secs(2) {
                last_status = Instant::now();
                if let Ok(mut q) = Qmp::connect(&files.qmp_sock(), Duration::from_secs(2)).await
                    && let Ok(st) = q.query_status().await
                    && (st == "internal-error" || st == "guest-panicked")
                {
                    return Err(format!("VM state {st} under kvm"));
                }
            }
            if t0.elapsed() >= self.cfg.kvm_watchdog {
                return Err(format!(
                    "no serial output in {}s under kvm",
                    self.cfg.kvm_watchdog.as_secs()
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Stop the VM of `rec` and say how it ended: `system_powerdown` and up to
    /// [`QemuConfig::stop_timeout`] for the guest to power off, then QMP `quit`, then
    /// SIGKILL. Without QMP: SIGTERM, then SIGKILL.
    pub async fn stop_instance(&self, rec: &Record) -> anyhow::Result<StopOutcome> {
        let files = self.files(&rec.clawid);
        let Some(p) = self.running(&rec.clawid, Some(rec)) else {
            clean_stale(&files);
            return Ok(StopOutcome::NotRunning);
        };
        let marker = files.marker();
        let t0 = Instant::now();
        let soft = match Qmp::connect(&files.qmp_sock(), Duration::from_secs(5)).await {
            Ok(mut q) => {
                if let Err(e) = q.execute("system_powerdown", None).await {
                    tracing::warn!("instance {}: {e}", rec.clawid);
                }
                if wait_gone(&p, &marker, self.cfg.stop_timeout).await {
                    Some(StopOutcome::PoweredOff(t0.elapsed()))
                } else {
                    tracing::warn!(
                        "instance {}: guest did not power off within {}s; sending quit",
                        rec.clawid,
                        self.cfg.stop_timeout.as_secs()
                    );
                    if let Err(e) = q.quit().await {
                        tracing::warn!("instance {}: {e}", rec.clawid);
                    }
                    wait_gone(&p, &marker, Duration::from_secs(10))
                        .await
                        .then(|| StopOutcome::Quit(t0.elapsed()))
                }
            }
            Err(e) => {
                tracing::warn!("instance {}: {e}; sending SIGTERM", rec.clawid);
                kill(p.pid, rustix::process::Signal::TERM);
                wait_gone(&p, &marker, Duration::from_secs(10))
                    .await
                    .then(|| StopOutcome::Terminated(t0.elapsed()))
            }
        };
        let outcome = match soft {
            Some(o) => o,
            None => {
                if procfs::is_alive(&p, &marker) {
                    kill(p.pid, rustix::process::Signal::KILL);
                }
                if !wait_gone(&p, &marker, Duration::from_secs(5)).await {
                    bail!(
                        "QEMU of {} (pid {}) is still running after SIGKILL",
                        rec.clawid,
                        p.pid
                    );
                }
                StopOutcome::Killed(t0.elapsed())
            }
        };
        append_log(
            &files.qemu_log(),
            &format!("[{}] clawfarm: stopped: {outcome}", now_rfc3339()),
        );
        clean_stale(&files);
        // The VM ran past any saved suspend state: resuming it would lose that.
        let _ = std::fs::remove_file(files.suspend());
        Ok(outcome)
    }

    /// The `ssh` command that logs in to the running VM of `rec` as user `claw`, with the
    /// instance key and the pinned host key (`StrictHostKeyChecking=yes`).
    fn ssh_command_of(&self, rec: &Record, command: &[String]) -> anyhow::Result<Command> {
        let rt = self
            .live_runtime(rec)
            .ok_or_else(|| anyhow::anyhow!("instance {} is not running", rec.clawid))?;
        let port = rt
            .ssh_port
            .ok_or_else(|| anyhow::anyhow!("instance {} has no SSH port", rec.clawid))?;
        let files = self.files(&rec.clawid);
        let mut c = Command::new("ssh");
        c.arg("-i")
            .arg(files.key())
            .args(["-p", &port.to_string()])
            .args(["-o", "StrictHostKeyChecking=yes"])
            .arg("-o")
            .arg(format!(
                "UserKnownHostsFile=\"{}\"",
                files.known_hosts().display()
            ))
            .args(["-o", "IdentitiesOnly=yes"])
            .args(["-o", "BatchMode=yes"])
            .args(["-o", "ConnectTimeout=10"])
            .args(["-o", "LogLevel=ERROR"])
            .arg("--")
            .arg(format!("{}@127.0.0.1", seed::GUEST_USER))
            .args(command);
        Ok(c)
    }
}

#[async_trait]
impl Driver for QemuDriver {
    fn kind(&self) -> &'static str {
        "qemu"
    }

    async fn import_bundle(&self, bundle: &BundleDesired) -> Result<(), DriverError> {
        crate::store::bundle::import_desired(&self.home, bundle, &Progress::stderr()).await?;
        Ok(())
    }

    async fn fetch_blob(&self, image: &Image) -> Result<(), DriverError> {
        self.blobs.ensure(image, None, &Progress::stderr()).await?;
        Ok(())
    }

    async fn create_disk(&self, inst: &DesiredInstance) -> Result<(), DriverError> {
        let files = self.files(&inst.clawid);
        let img = Self::backing_image(inst)?;
        let blob = self.home.blob(&img.sha256);
        let mut blob = std::path::absolute(&blob).unwrap_or(blob);
        // A run layer backs on its base (rfc/010): link the two once, in the store.
        if img.name == "run"
            && let Some(base) = inst.bundle.clawspec.image.iter().find(|i| i.name == "base")
            && blob.is_file()
        {
            let (home, qi) = (self.home.clone(), self.cfg.qemu_img.clone());
            let (run, base) = (img.sha256.clone(), base.sha256.clone());
            blob =
                tokio::task::spawn_blocking(move || export::layer_on_base(&home, &qi, &run, &base))
                    .await??;
        }
        if !blob.is_file() {
            bail!(
                "instance {}: the {} image (blob {}) is not in the store",
                inst.clawid,
                img.name,
                blob.display()
            );
        }
        fsutil::create_dir_mode(&files.dir, 0o700)
            .with_context(|| format!("cannot create {}", files.dir.display()))?;
        let disk = files.disk();
        if disk.exists() {
            let backing = qcow2_backing(&disk)
                .with_context(|| format!("cannot read the qcow2 header of {}", disk.display()))?;
            return match backing {
                Some(b) if Path::new(&b) == blob => Ok(()),
                Some(b) => bail!(
                    "disk {} backs on {b}, not on the {} image {}",
                    disk.display(),
                    img.name,
                    blob.display()
                ),
                None => bail!("disk {} has no backing file", disk.display()),
            };
        }
        let qemu_img = self.cfg.qemu_img.clone();
        let tmp = files.disk_tmp();
        tokio::task::spawn_blocking(move || create_overlay(&qemu_img, &blob, &tmp, &disk))
            .await??;
        Ok(())
    }

    async fn write_seed(&self, inst: &DesiredInstance) -> Result<(), DriverError> {
        let files = self.files(&inst.clawid);
        fsutil::create_dir_mode(&files.dir, 0o700)
            .with_context(|| format!("cannot create {}", files.dir.display()))?;
        let input = self.seed_input(inst, &files)?;
        let current = std::fs::read_to_string(files.seed_id()).unwrap_or_default();
        if !(files.seed().is_file() && current.trim() == input.instance_id) {
            let path = files.seed();
            let id_path = files.seed_id();
            let id = input.instance_id.clone();
            tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
                seed::write_seed(&path, &input)?;
                fsutil::write_atomic(&id_path, format!("{id}\n").as_bytes(), 0o600)
                    .with_context(|| format!("cannot write {}", id_path.display()))
            })
            .await??;
        }
        // The payload as a read-only ext4 disk (rebuilt when the bundle changes).
        let payload = self
            .home
            .bundle_dir(&inst.bundle.digest)
            .join(crate::store::bundle::PAYLOAD_DIR);
        if payload.is_dir() {
            let (img, id_file, digest) = (
                files.payload_img(),
                files.payload_id(),
                inst.bundle.digest.clone(),
            );
            tokio::task::spawn_blocking(move || {
                disks::ensure_payload_image(&payload, &img, &id_file, &digest)
            })
            .await??;
        } else {
            let _ = std::fs::remove_file(files.payload_img());
        }
        // Volume disks: made once, kept by `rm` without `--purge`.
        let vdir = volumes_dir(&self.home, &inst.clawid);
        fsutil::create_dir_mode(&vdir, 0o700)
            .with_context(|| format!("cannot create {}", vdir.display()))?;
        for v in &inst.volumes {
            let disk = volume_disk(&self.home, &inst.clawid, &v.name);
            let old_folder = vdir.join(&v.name);
            let (qemu_img, name) = (self.cfg.qemu_img.clone(), v.name.clone());
            tokio::task::spawn_blocking(move || {
                disks::ensure_volume(&qemu_img, &disk, &name, Some(&old_folder))
            })
            .await??;
        }
        Ok(())
    }

    async fn start(&self, rec: &Record) -> Result<Runtime, DriverError> {
        let files = self.files(&rec.clawid);
        if let Some(rt) = self.runtime_of(rec) {
            // clawfarm pauses a VM only while it suspends it: a paused VM found here is a
            // suspend (or a checkpoint) interrupted by a crash of clawfarm. It goes on; a
            // saved suspend state is stale.
            if let Ok(mut q) = self.qmp(&rec.clawid).await
                && q.query_status().await.is_ok_and(|s| s == "paused")
            {
                let _ = q.execute("cont", None).await;
                append_log(
                    &files.qemu_log(),
                    &format!(
                        "[{}] clawfarm: found the VM paused (interrupted suspend); continued",
                        now_rfc3339()
                    ),
                );
            }
            let _ = std::fs::remove_file(files.suspend());
            // Adopt: never a second QEMU for one instance.
            if read_runtime(&files).as_ref() != Some(&rt) {
                write_runtime(&files, &rt)?;
            }
            return Ok(rt);
        }
        for (what, p) in [("disk", files.disk()), ("seed", files.seed())] {
            if !p.is_file() {
                bail!("instance {} has no {what} {}", rec.clawid, p.display());
            }
        }
        let sock = files.qmp_sock();
        if sock.as_os_str().len() > 107 {
            bail!(
                "the QMP socket path {} is longer than a unix socket allows (107 bytes); \
                 use a shorter --home",
                sock.display()
            );
        }
        clean_stale(&files);
        if let Some(st) = snapshot::read_suspend(&files) {
            let why = match self.resumable(rec, &st) {
                Ok(()) => match self.start_from(rec, &st.tag, &st.nonce).await {
                    Ok(rt) => {
                        self.forget_suspend(rec).await;
                        self.fix_clock(rec);
                        append_log(
                            &files.qemu_log(),
                            &format!("[{}] clawfarm: resumed the suspended VM", now_rfc3339()),
                        );
                        return Ok(rt);
                    }
                    Err(e) => format!("{e:#}"),
                },
                Err(why) => why,
            };
            let msg = format!("the suspended state is unusable ({why}); cold boot instead");
            tracing::warn!("instance {}: {msg}", rec.clawid);
            append_log(
                &files.qemu_log(),
                &format!("[{}] clawfarm: {msg}", now_rfc3339()),
            );
            let _ = std::fs::remove_file(files.suspend());
            clean_stale(&files);
        }
        let choice = accel::choose(&self.home, self.cfg.accel, &self.cfg.qemu).await;
        let conf = self.confinement(rec)?;
        let (rt, spawned) = self.launch(rec, &choice, None, &conf).await?;
        if !(choice.watch && choice.accel == Accel::Kvm) {
            return Ok(rt);
        }
        let Err(why) = self.kvm_watchdog(&files, &spawned).await else {
            return Ok(rt);
        };
        let why = format!("kvm watchdog: {why}");
        tracing::warn!("instance {}: {why}; restarting under tcg", rec.clawid);
        append_log(
            &files.qemu_log(),
            &format!("[{}] clawfarm: {why}; restarting under tcg", now_rfc3339()),
        );
        kill(spawned.pid, rustix::process::Signal::KILL);
        if let Some(p) = &rt.process {
            wait_gone(p, &files.marker(), Duration::from_secs(10)).await;
        }
        if let Some(key) = &choice.key {
            accel::remember(&self.home, key, false, &why);
        }
        clean_stale(&files);
        let tcg = AccelChoice {
            accel: Accel::Tcg,
            why,
            watch: false,
            key: choice.key.clone(),
        };
        let (rt, _) = self.launch(rec, &tcg, None, &conf).await?;
        Ok(rt)
    }

    async fn wait_ready(&self, rec: &Record) -> Result<(), DriverError> {
        let files = self.files(&rec.clawid);
        let nonce = rec
            .runtime
            .boot_nonce
            .clone()
            .ok_or_else(|| anyhow::anyhow!("instance {} was not started", rec.clawid))?;
        let gateway = gateway_port(&rec.resources).map(|p| p.host);
        let t0 = Instant::now();
        let mut last_qmp = Instant::now();
        loop {
            let st = guest::read_status(&files.status_log(), &nonce)?;
            if let Some(f) = &st.failed {
                bail!("{}", failure_message(&f.phase, f.code, &f.tail));
            }
            if st.done {
                match gateway {
                    None => return Ok(()),
                    Some(port) => {
                        if tokio::task::spawn_blocking(move || {
                            http_answers(port, Duration::from_secs(3))
                        })
                        .await
                        .unwrap_or(false)
                        {
                            return Ok(());
                        }
                    }
                }
            }
            if self.running(&rec.clawid, Some(rec)).is_none() {
                let tail = qemu_errors(&read_tail(&files.qemu_log(), 4096));
                bail!(
                    "QEMU of {} exited before the guest was ready (guest: {}){}",
                    rec.clawid,
                    st.summary(),
                    if tail.is_empty() {
                        String::new()
                    } else {
                        format!("; qemu.log: {tail}")
                    }
                );
            }
            if last_qmp.elapsed() >= Duration::from_secs(10) {
                last_qmp = Instant::now();
                if let Ok(mut q) = Qmp::connect(&files.qmp_sock(), Duration::from_secs(2)).await
                    && let Ok(s) = q.query_status().await
                    && (s == "internal-error" || s == "guest-panicked")
                {
                    bail!("the VM of {} stopped: QEMU run state {s}", rec.clawid);
                }
            }
            if t0.elapsed() >= self.cfg.ready_timeout {
                let gw = match (st.done, gateway) {
                    (true, Some(p)) => format!("; gateway 127.0.0.1:{p} does not answer HTTP"),
                    _ => String::new(),
                };
                bail!(
                    "instance {} was not ready after {}s (guest: {}{gw})",
                    rec.clawid,
                    self.cfg.ready_timeout.as_secs(),
                    st.summary()
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    async fn stop(&self, rec: &Record) -> Result<StopOutcome, DriverError> {
        let outcome = self.stop_instance(rec).await?;
        crate::egress::unregister(&self.cfg.egress, &rec.clawid);
        if let Some(fs) = confine::CgroupFs::detect() {
            confine::remove_cgroup(&fs, &rec.clawid);
        }
        if !outcome.graceful() {
            tracing::warn!("instance {}: {outcome}", rec.clawid);
        } else {
            tracing::info!("instance {}: {outcome}", rec.clawid);
        }
        Ok(outcome)
    }

    async fn remove(&self, clawid: &str, purge: bool) -> Result<(), DriverError> {
        let rec = Record::read(&Record::path(&self.home, clawid)).ok();
        if let Some(p) = self.running(clawid, rec.as_ref()) {
            bail!(
                "instance {clawid} is still running (QEMU pid {}); stop it first",
                p.pid
            );
        }
        let files = self.files(clawid);
        crate::egress::unregister(&self.cfg.egress, clawid);
        if let Some(fs) = confine::CgroupFs::detect() {
            confine::remove_cgroup(&fs, clawid);
        }
        remove_tree(&files.dir)?;
        if purge {
            remove_tree(&volumes_dir(&self.home, clawid))?;
        } else {
            // Kept volumes lose the snapshots of the removed instance's checkpoints.
            self.drop_volume_snapshots(clawid);
        }
        Ok(())
    }

    fn probe(&self, rec: &Record) -> Liveness {
        match self.running(&rec.clawid, Some(rec)) {
            Some(p) => Liveness::Running(p),
            None if rec.runtime.process.is_some() => Liveness::Exited,
            None => Liveness::NotStarted,
        }
    }

    fn guest_health(&self, rec: &Record) -> GuestHealth {
        let Some(nonce) = self
            .live_runtime(rec)
            .and_then(|r| r.boot_nonce)
            .or_else(|| rec.runtime.boot_nonce.clone())
        else {
            return GuestHealth::Booting { last: None };
        };
        let st = match guest::read_status(&self.files(&rec.clawid).status_log(), &nonce) {
            Ok(st) => st,
            Err(_) => return GuestHealth::Booting { last: None },
        };
        if let Some(f) = st.failed {
            return GuestHealth::Unhealthy {
                phase: f.phase,
                code: f.code,
                tail: f.tail,
            };
        }
        if !st.done {
            return GuestHealth::Booting { last: st.last };
        }
        match gateway_port(&rec.resources).map(|p| p.host) {
            Some(port) if !http_answers(port, Duration::from_millis(500)) => {
                if rec.phase == crate::state::record::Phase::Ready {
                    GuestHealth::Unhealthy {
                        phase: format!("gateway 127.0.0.1:{port}"),
                        code: -1,
                        tail: "no HTTP answer".into(),
                    }
                } else {
                    GuestHealth::Booting {
                        last: Some(format!("done; waiting for gateway 127.0.0.1:{port}")),
                    }
                }
            }
            _ => GuestHealth::Ready,
        }
    }

    fn live_runtime(&self, rec: &Record) -> Option<Runtime> {
        self.runtime_of(rec)
    }

    fn boot_report(&self, clawid: &str, nonce: &str) -> io::Result<GuestStatus> {
        guest::read_status(&self.files(clawid).status_log(), nonce)
    }

    fn log_path(&self, clawid: &str, kind: LogKind) -> PathBuf {
        let files = self.files(clawid);
        match kind {
            LogKind::Serial => files.serial_log(),
            LogKind::Vmm => files.qemu_log(),
        }
    }

    fn ssh_command(&self, rec: &Record, command: &[String]) -> Result<Command, DriverError> {
        self.ssh_command_of(rec, command)
    }

    fn has_booted(&self, clawid: &str) -> bool {
        let files = self.files(clawid);
        files.disk().is_file()
            && (std::fs::metadata(files.serial_log()).is_ok_and(|m| m.len() > 0)
                || std::fs::metadata(files.serial_prev_log()).is_ok_and(|m| m.len() > 0))
    }

    fn param_values(
        &self,
        clawid: &str,
    ) -> Result<Vec<(String, crate::util::secret::Secret)>, DriverError> {
        let p = self.files(clawid).seed();
        let img = std::fs::read(&p).with_context(|| format!("cannot read {}", p.display()))?;
        seed::read_seed_params(&img)
            .with_context(|| format!("cannot read the params of {}", p.display()))
    }

    async fn export_snapshot(&self, rec: &Record, work: &Path) -> Result<(), DriverError> {
        if self.running(&rec.clawid, Some(rec)).is_some() {
            bail!(
                "instance {} is running; its disk cannot be copied consistently",
                rec.clawid
            );
        }
        let disk = self.files(&rec.clawid).disk();
        let work = work.to_path_buf();
        let qi = self.cfg.qemu_img.clone();
        tokio::task::spawn_blocking(move || export::snapshot(&qi, &disk, &work)).await?
    }

    async fn export_layer(
        &self,
        rec: &Record,
        base: &Image,
        work: &Path,
        out: &Path,
    ) -> Result<ExportFigures, DriverError> {
        let base_blob = std::path::absolute(self.home.blob(&base.sha256))?;
        if !base_blob.is_file() {
            bail!(
                "the base image (blob {}) is not in the store",
                base_blob.display()
            );
        }
        let disk_bytes = std::fs::metadata(self.files(&rec.clawid).disk())
            .map(|m| m.len())
            .unwrap_or(0);
        let accel = accel::choose(&self.home, self.cfg.accel, &self.cfg.qemu)
            .await
            .accel;
        let scrub = export::scrub(
            &self.cfg.qemu,
            accel,
            work,
            rec.resources.memory_mib,
            self.cfg.ready_timeout,
            confine::qemu_user(&self.cfg.qemu_user)?,
        )
        .await?;
        let t0 = Instant::now();
        let (qi, work2, out2) = (
            self.cfg.qemu_img.clone(),
            work.to_path_buf(),
            out.to_path_buf(),
        );
        tokio::task::spawn_blocking(move || export::flatten(&qi, &work2, &base_blob, &out2))
            .await??;
        Ok(ExportFigures {
            disk_bytes,
            scrub,
            flatten: t0.elapsed(),
        })
    }

    async fn layer_raw(&self, layer: &Path, raw: &Path) -> Result<(), DriverError> {
        let (qi, layer, raw) = (
            self.cfg.qemu_img.clone(),
            layer.to_path_buf(),
            raw.to_path_buf(),
        );
        tokio::task::spawn_blocking(move || export::to_raw(&qi, &layer, &raw)).await?
    }

    async fn checkpoint(&self, rec: &Record, tag: &str) -> Result<Checkpoint, DriverError> {
        self.checkpoint_of(rec, tag).await
    }

    async fn checkpoints(&self, rec: &Record) -> Result<Vec<Checkpoint>, DriverError> {
        self.checkpoints_of(rec)
    }

    async fn restore(&self, rec: &Record, tag: &str) -> Result<Runtime, DriverError> {
        self.restore_of(rec, tag).await
    }

    async fn suspend(&self, rec: &Record) -> Result<Duration, DriverError> {
        self.suspend_of(rec).await
    }

    fn suspended(&self, clawid: &str) -> bool {
        snapshot::read_suspend(&self.files(clawid)).is_some()
    }

    async fn export_volume(
        &self,
        rec: &Record,
        volume: &str,
        dest: &Path,
    ) -> Result<(), DriverError> {
        if !rec.build.volumes.iter().any(|v| v.name == volume) {
            let names: Vec<&str> = rec.build.volumes.iter().map(|v| v.name.as_str()).collect();
            bail!(
                "instance {} has no volume {volume:?} (it has: {})",
                rec.clawid,
                if names.is_empty() {
                    "none".into()
                } else {
                    names.join(", ")
                }
            );
        }
        if let Some(p) = self.running(&rec.clawid, Some(rec)) {
            bail!(
                "instance {} is running (QEMU pid {}); stop it first, its volume may be mid-write",
                rec.clawid,
                p.pid
            );
        }
        let disk = volume_disk(&self.home, &rec.clawid, volume);
        let (qemu_img, dest) = (self.cfg.qemu_img.clone(), dest.to_owned());
        tokio::task::spawn_blocking(move || disks::export_volume(&qemu_img, &disk, &dest))
            .await??;
        Ok(())
    }
}

// ---- helpers -------------------------------------------------------------------------------

/// `provision[1] setup failed with exit code 3` and the last lines of its log.
pub fn failure_message(phase: &str, code: i32, tail: &str) -> String {
    let lines: Vec<&str> = tail.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = lines[lines.len().saturating_sub(10)..].join("\n  ");
    if tail.is_empty() {
        format!("{phase} failed with exit code {code}")
    } else {
        format!("{phase} failed with exit code {code}; its log ends with:\n  {tail}")
    }
}

/// A guest host name from an instance name: lowercase letters, digits and `-`, ≤ 63.
pub fn hostname_for(name: &str) -> String {
    let mut h: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(63)
        .collect();
    while h.ends_with('-') {
        h.pop();
    }
    let h = h.trim_start_matches('-').to_string();
    if h.is_empty() { "claw".into() } else { h }
}

/// Read (or create once, 0600) the key pair at `private`/`public`; returns
/// `(private_openssh, public_line)`.
fn ensure_keypair(
    private: &Path,
    public: &Path,
    comment: &str,
) -> anyhow::Result<(String, String)> {
    if let Ok(k) = std::fs::read_to_string(private) {
        let p = match std::fs::read_to_string(public) {
            Ok(p) => p.trim().to_string(),
            Err(_) => sshkeys::public_line_of(&k)
                .with_context(|| format!("cannot read the key {}", private.display()))?,
        };
        return Ok((k, p));
    }
    let (k, p) = sshkeys::generate_keypair(comment)?;
    fsutil::write_atomic(public, format!("{p}\n").as_bytes(), 0o644)
        .with_context(|| format!("cannot write {}", public.display()))?;
    fsutil::write_atomic(private, k.as_bytes(), 0o600)
        .with_context(|| format!("cannot write {}", private.display()))?;
    Ok((k, p))
}

fn read_runtime(files: &InstanceFiles) -> Option<Runtime> {
    let b = std::fs::read(files.runtime()).ok()?;
    serde_json::from_slice(&b).ok()
}

fn write_runtime(files: &InstanceFiles, rt: &Runtime) -> anyhow::Result<()> {
    let p = files.runtime();
    let data = serde_json::to_vec_pretty(rt)?;
    fsutil::write_atomic(&p, &data, 0o600).with_context(|| format!("cannot write {}", p.display()))
}

/// Remove what a QEMU leaves behind when it is not running (socket, pidfile, runtime).
fn clean_stale(files: &InstanceFiles) {
    for p in [files.qmp_sock(), files.pidfile(), files.runtime()] {
        let _ = std::fs::remove_file(p);
    }
}

fn remove_tree(dir: &Path) -> anyhow::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("cannot remove {}", dir.display())),
    }
}

/// Wait for the child in a thread (so it never lingers as a zombie while we run) and keep
/// its exit status. When clawfarm exits first, QEMU is re-parented and keeps running.
fn reap(mut child: std::process::Child) -> Spawned {
    let exit = Arc::new(Mutex::new(None));
    let e2 = exit.clone();
    let pid = child.id();
    std::thread::Builder::new()
        .name(format!("reap-{pid}"))
        .spawn(move || {
            if let Ok(st) = child.wait() {
                *e2.lock().expect("exit lock") = Some(st);
            }
        })
        .expect("cannot spawn a thread");
    Spawned { pid, exit }
}

fn kill(pid: u32, sig: rustix::process::Signal) {
    if let Some(p) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(p, sig);
    }
}

/// Poll until `p` is gone (or no longer ours); true when it is gone within `within`.
async fn wait_gone(p: &ProcessId, marker: &str, within: Duration) -> bool {
    let t0 = Instant::now();
    loop {
        if !procfs::is_alive(p, marker) {
            return true;
        }
        if t0.elapsed() >= within {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A free TCP port on 127.0.0.1 (bound and released; QEMU binds it right after).
pub fn free_port() -> io::Result<u16> {
    let l = std::net::TcpListener::bind(("127.0.0.1", 0))?;
    Ok(l.local_addr()?.port())
}

/// True when an HTTP server answers a `GET /` on 127.0.0.1:`port` (any status). With
/// user-mode networking a TCP connect alone always succeeds (QEMU accepts for the guest),
/// so an answer is required.
pub fn http_answers(port: u16, within: Duration) -> bool {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, within) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(within));
    let _ = s.set_write_timeout(Some(within));
    if s.write_all(b"GET / HTTP/1.0\r\nHost: 127.0.0.1\r\nUser-Agent: clawfarm\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut buf = [0u8; 5];
    s.read_exact(&mut buf).is_ok() && &buf == b"HTTP/"
}

/// Append one line to a log file (best effort).
pub fn append_log(path: &Path, line: &str) {
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
    {
        let _ = writeln!(f, "{line}");
    }
}

/// The text of `path` from byte `offset` on.
fn read_from(path: &Path, offset: u64) -> String {
    let mut s = Vec::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        let _ = f.seek(SeekFrom::Start(offset));
        let _ = f.read_to_end(&mut s);
    }
    String::from_utf8_lossy(&s).into_owned()
}

/// The last `max` bytes of `path` (whole lines).
pub fn read_tail(path: &Path, max: u64) -> String {
    let len = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let s = read_from(path, len.saturating_sub(max));
    if len > max {
        s.split_once('\n').map(|x| x.1.to_string()).unwrap_or(s)
    } else {
        s
    }
}

/// QEMU's own error lines in `text` (`qemu-system-x86_64: …`), warnings left out,
/// joined with `; `.
fn qemu_errors(text: &str) -> String {
    text.lines()
        .filter(|l| !l.starts_with('[') && !l.starts_with("  "))
        .filter(|l| !l.contains("warning:") && !l.trim().is_empty())
        .map(|l| l.trim())
        .collect::<Vec<_>>()
        .join("; ")
}

/// `qemu-img create -f qcow2 -F FORMAT -b BLOB TMP` (FORMAT read from the blob), then fsync
/// and rename TMP to DISK
/// (0600). Copies nothing: the overlay holds only a header until the guest writes.
pub fn create_overlay(qemu_img: &Path, blob: &Path, tmp: &Path, disk: &Path) -> anyhow::Result<()> {
    let _ = std::fs::remove_file(tmp);
    // The backing format is the stored image's own, never assumed (RFC 003 §10).
    // A linked run layer (rfc/010) names its base on purpose: it is made by the driver
    // itself from two verified blobs, and it is always a qcow2.
    let linked = blob
        .parent()
        .and_then(|p| p.file_name())
        .is_some_and(|n| n == "layers");
    let backing_format = if linked {
        "qcow2"
    } else {
        match crate::store::part::disk_format(blob)? {
            crate::store::part::DiskFormat::Qcow2 => "qcow2",
            crate::store::part::DiskFormat::Raw => "raw",
        }
    };
    let out = Command::new(qemu_img)
        .args(["create", "-q", "-f", "qcow2", "-F", backing_format, "-b"])
        .arg(blob)
        .arg(tmp)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {}", qemu_img.display()))?;
    if !out.status.success() {
        let _ = std::fs::remove_file(tmp);
        bail!(
            "qemu-img create of {} failed ({}): {}",
            disk.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let r = (|| -> io::Result<()> {
        std::fs::set_permissions(tmp, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        std::fs::File::open(tmp)?.sync_all()?;
        std::fs::rename(tmp, disk)?;
        fsutil::sync_dir(disk.parent().unwrap_or(Path::new(".")))
    })();
    r.with_context(|| format!("cannot put the overlay in place at {}", disk.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostnames() {
        assert_eq!(hostname_for("demo-1"), "demo-1");
        assert_eq!(hostname_for("Demo_X."), "demo-x");
        assert_eq!(hostname_for("---"), "claw");
        assert_eq!(hostname_for(&"a".repeat(80)).len(), 63);
    }

    #[test]
    fn failure_messages() {
        assert_eq!(
            failure_message("provision[1] setup", 3, ""),
            "provision[1] setup failed with exit code 3"
        );
        let m = failure_message("install", 1, "a\n\nb\n");
        assert_eq!(
            m,
            "install failed with exit code 1; its log ends with:\n  a\n  b"
        );
    }

    #[test]
    fn qemu_error_lines() {
        let t = "[2025-01-01T00:00:00Z] clawfarm: starting\n  qemu-system-x86_64 -m 1\n\
                 qemu-system-x86_64: warning: host doesn't support requested feature\n\
                 qemu-system-x86_64: -netdev user: could not set up host forwarding rule 'tcp:127.0.0.1:5-:22'\n";
        assert_eq!(
            qemu_errors(t),
            "qemu-system-x86_64: -netdev user: could not set up host forwarding rule 'tcp:127.0.0.1:5-:22'"
        );
    }

    #[test]
    fn http_answer_needs_http() {
        let l = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
        let port = l.local_addr().unwrap().port();
        let t = std::thread::spawn(move || {
            // First client: an HTTP answer. Second: accepted and closed (what user-mode
            // networking does when nothing listens in the guest).
            let (mut s, _) = l.accept().unwrap();
            let mut b = [0u8; 64];
            let _ = s.read(&mut b);
            s.write_all(b"HTTP/1.0 404 Not Found\r\n\r\n").unwrap();
            drop(s);
            let (s, _) = l.accept().unwrap();
            drop(s);
        });
        assert!(http_answers(port, Duration::from_secs(2)));
        assert!(!http_answers(port, Duration::from_secs(2)));
        t.join().unwrap();
        let closed = free_port().unwrap();
        assert!(!http_answers(closed, Duration::from_millis(300)));
    }

    #[test]
    fn durations_from_env_values() {
        // Not through the real environment (tests run in parallel): the parser only.
        assert_eq!(
            humantime::parse_duration("2m").unwrap(),
            Duration::from_secs(120)
        );
        assert_eq!(
            env_duration("CLAWFARM_TEST_UNSET_VARIABLE", Duration::from_secs(7)).unwrap(),
            Duration::from_secs(7)
        );
    }
}
