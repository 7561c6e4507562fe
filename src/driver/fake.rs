//! A recording fake driver for fast tests. It keeps its "VMs" as small files in the
//! instance folders, so it behaves the same across processes (two concurrent `apply`
//! processes, a rerun after `kill -9`), and it records every call in order.
//!
//! Selected in the binary with `CLAWFARM_DRIVER=fake` (tests only). Failure injection:
//! `CLAWFARM_FAKE_FAIL=verb:clawid-or-name-prefix[,…]` makes that action fail, and
//! `CLAWFARM_FAKE_DELAY_MS=N` makes every action take N ms (for crash tests).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use anyhow::{Context, bail};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::Checkpoint;
use super::boot::{GuestEvent, GuestPhase, GuestStatus, StepState};
use super::{Driver, DriverError, ExportFigures, GuestHealth, Liveness, LogKind, StopOutcome};
use crate::desired::{BundleDesired, DesiredInstance};
use crate::home::Home;
use crate::input::clawspec::Image;
use crate::state::record::{ProcessId, Record, Runtime};
use crate::util::fsutil::write_atomic;

/// The fake seed's param values (stands in for the real seed's params file).
const PARAMS_FILE: &str = "params.fake";
/// The fake disk: what an export's layer holds (a test may write a "secret" into it).
pub const DISK_FILE: &str = "disk.fake";

/// The fake VM state file in an instance folder.
const VM_FILE: &str = "fake-vm.json";

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct FakeVm {
    running: bool,
    /// Stands in for the QEMU process start time; bumps on every start.
    boot: u64,
    /// The boot whose guest state runs (after a resume or restore), when not `boot`.
    #[serde(default)]
    guest: Option<u64>,
    /// Saved state that the next start resumes.
    #[serde(default)]
    suspended: bool,
    /// Checkpoints, oldest first.
    #[serde(default)]
    checkpoints: Vec<FakeCheckpoint>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct FakeCheckpoint {
    tag: String,
    created_secs: u64,
    guest: u64,
    bundle: String,
}

impl FakeVm {
    /// The boot nonce the guest runs with.
    fn nonce(&self) -> String {
        format!("fake-{}", self.guest.unwrap_or(self.boot))
    }
}

/// The fake driver.
#[derive(Debug)]
pub struct FakeDriver {
    home: Home,
    calls: Mutex<Vec<String>>,
    fail: Mutex<Vec<(String, String)>>,
    delay: Duration,
    unhealthy: Mutex<Vec<String>>,
}

impl FakeDriver {
    /// A fake over `home`, configured from `CLAWFARM_FAKE_FAIL` / `CLAWFARM_FAKE_DELAY_MS`.
    pub fn new(home: Home) -> Self {
        let fail = std::env::var("CLAWFARM_FAKE_FAIL")
            .ok()
            .map(|s| parse_fail(&s))
            .unwrap_or_default();
        let delay = std::env::var("CLAWFARM_FAKE_DELAY_MS")
            .ok()
            .and_then(|s| s.parse().ok())
            .map(Duration::from_millis)
            .unwrap_or_default();
        FakeDriver {
            home,
            calls: Mutex::new(Vec::new()),
            fail: Mutex::new(fail),
            delay,
            unhealthy: Mutex::new(Vec::new()),
        }
    }

    /// Make `verb` (e.g. `write-seed`) fail for instances whose CLAWID starts with `prefix`.
    pub fn fail_on(&self, verb: &str, prefix: &str) {
        self.fail
            .lock()
            .expect("lock")
            .push((verb.into(), prefix.into()));
    }

    /// Stop failing.
    pub fn clear_failures(&self) {
        self.fail.lock().expect("lock").clear();
    }

    /// Make the guest of instances whose CLAWID starts with `prefix` report a failed phase.
    pub fn make_unhealthy(&self, prefix: &str) {
        self.unhealthy.lock().expect("lock").push(prefix.into());
    }

    /// Every call so far, e.g. `create-disk demo-a-1b2c3d`, in order.
    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().expect("lock").clone()
    }

    /// Simulate a VM crash (what `kill -9` of QEMU does): the VM is no longer running.
    pub fn crash(home: &Home, clawid: &str) -> std::io::Result<()> {
        let p = home.claw_dir(clawid).join(VM_FILE);
        let mut vm: FakeVm = std::fs::read(&p)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        vm.running = false;
        write_atomic(&p, &serde_json::to_vec(&vm)?, 0o600)
    }

    async fn enter(&self, verb: &str, target: &str) -> Result<(), DriverError> {
        self.calls
            .lock()
            .expect("lock")
            .push(format!("{verb} {target}"));
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        let fail = self
            .fail
            .lock()
            .expect("lock")
            .iter()
            .any(|(v, p)| v == verb && target.starts_with(p.as_str()));
        if fail {
            bail!("injected failure of {verb} {target}");
        }
        Ok(())
    }

    fn dir(&self, clawid: &str) -> PathBuf {
        self.home.claw_dir(clawid)
    }

    fn vm(&self, clawid: &str) -> Option<FakeVm> {
        let b = std::fs::read(self.dir(clawid).join(VM_FILE)).ok()?;
        serde_json::from_slice(&b).ok()
    }

    fn set_vm(&self, clawid: &str, vm: &FakeVm) -> Result<(), DriverError> {
        let p = self.dir(clawid).join(VM_FILE);
        write_atomic(&p, &serde_json::to_vec(vm)?, 0o600)
            .with_context(|| format!("cannot write {}", p.display()))
    }
}

impl FakeDriver {
    /// Append a line to a fake log (best effort, like a real console).
    fn log(&self, clawid: &str, kind: LogKind, line: &str) {
        let path = self.log_path(clawid, kind);
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
        {
            let _ = writeln!(f, "{line}");
        }
    }
}

fn parse_fail(s: &str) -> Vec<(String, String)> {
    s.split(',')
        .filter_map(|item| {
            let (v, p) = item.split_once(':')?;
            Some((v.trim().to_string(), p.trim().to_string()))
        })
        .collect()
}

#[async_trait]
impl Driver for FakeDriver {
    fn kind(&self) -> &'static str {
        "fake"
    }

    async fn import_bundle(&self, bundle: &BundleDesired) -> Result<(), DriverError> {
        self.enter("import-bundle", &bundle.digest).await?;
        if bundle.source.is_file() {
            // A real bundle file: import it for real (store effects are cheap and safe;
            // only VMs are faked).
            crate::store::bundle::import_desired(
                &self.home,
                bundle,
                &crate::store::progress::Progress::silent(),
            )
            .await?;
            return Ok(());
        }
        // A synthetic bundle of a unit test: leave the same completion marker.
        let dir = self.home.bundle_dir(&bundle.digest);
        std::fs::create_dir_all(&dir)?;
        write_atomic(
            &dir.join("clawspec.json"),
            serde_json::to_string(&*bundle.clawspec)?.as_bytes(),
            0o644,
        )?;
        write_atomic(&dir.join("bundle.json"), b"{\"fake\": true}", 0o644)?;
        Ok(())
    }

    async fn fetch_blob(&self, image: &Image) -> Result<(), DriverError> {
        self.enter("fetch-blob", &image.sha256).await?;
        let p = self.home.blob(&image.sha256);
        if !p.exists() {
            std::fs::create_dir_all(self.home.blobs_dir())?;
            write_atomic(&p, image.reference.as_bytes(), 0o444)?;
        }
        Ok(())
    }

    async fn create_disk(&self, inst: &DesiredInstance) -> Result<(), DriverError> {
        self.enter("create-disk", &inst.clawid).await?;
        let dir = self.dir(&inst.clawid);
        std::fs::create_dir_all(&dir)?;
        let disk = dir.join("disk.fake");
        if !disk.exists() {
            write_atomic(&disk, inst.build.bundle.as_bytes(), 0o600)?;
        }
        Ok(())
    }

    async fn write_seed(&self, inst: &DesiredInstance) -> Result<(), DriverError> {
        self.enter("write-seed", &inst.clawid).await?;
        // The fake seed holds digests, like a record; the real seed holds values.
        let content = serde_json::to_vec(&inst.build)?;
        write_atomic(&self.dir(&inst.clawid).join("seed.fake"), &content, 0o600)?;
        // The values, as the real seed holds them (0600), for the export's secret scan.
        // Hex, so that a search of the home for a value in clear finds nothing here either.
        let values: Vec<(&str, String)> = inst
            .params
            .iter()
            .map(|p| (p.key.as_str(), hex::encode(p.value.expose())))
            .collect();
        write_atomic(
            &self.dir(&inst.clawid).join(PARAMS_FILE),
            &serde_json::to_vec(&values)?,
            0o600,
        )?;
        Ok(())
    }

    async fn start(&self, rec: &Record) -> Result<Runtime, DriverError> {
        self.enter("start", &rec.clawid).await?;
        if !self.dir(&rec.clawid).join("disk.fake").exists() {
            bail!("instance {} has no disk", rec.clawid);
        }
        let mut vm = self.vm(&rec.clawid).unwrap_or_default();
        if !vm.running {
            let resume = std::mem::take(&mut vm.suspended);
            vm.guest = if resume {
                Some(vm.guest.unwrap_or(vm.boot))
            } else {
                None
            };
            vm.running = true;
            vm.boot += 1;
            self.set_vm(&rec.clawid, &vm)?;
            self.log(
                &rec.clawid,
                LogKind::Serial,
                &format!(
                    "fake VM boot {} {}",
                    vm.boot,
                    if resume { "resumed" } else { "started" }
                ),
            );
            self.log(
                &rec.clawid,
                LogKind::Vmm,
                &format!("fake VM boot {} started", vm.boot),
            );
        }
        Ok(Runtime {
            process: Some(ProcessId {
                pid: 0,
                start_time: vm.boot,
            }),
            boot_nonce: Some(vm.nonce()),
            accel: Some("fake".into()),
            ssh_port: None,
            started_at: Some(SystemTime::now()),
        })
    }

    async fn wait_ready(&self, rec: &Record) -> Result<(), DriverError> {
        self.enter("wait-ready", &rec.clawid).await?;
        match self.guest_health(rec) {
            GuestHealth::Ready => Ok(()),
            GuestHealth::Unhealthy { phase, code, .. } => {
                bail!("guest phase {phase} failed with exit code {code}")
            }
            GuestHealth::Booting { .. } => bail!("instance {} is not running", rec.clawid),
        }
    }

    async fn stop(&self, rec: &Record) -> Result<StopOutcome, DriverError> {
        self.enter("stop", &rec.clawid).await?;
        if let Some(mut vm) = self.vm(&rec.clawid)
            && vm.running
        {
            vm.running = false;
            self.set_vm(&rec.clawid, &vm)?;
            self.log(
                &rec.clawid,
                LogKind::Vmm,
                &format!("fake VM boot {} stopped", vm.boot),
            );
            return Ok(StopOutcome::PoweredOff(Duration::ZERO));
        }
        Ok(StopOutcome::NotRunning)
    }

    async fn remove(&self, clawid: &str, _purge: bool) -> Result<(), DriverError> {
        self.enter("remove", clawid).await?;
        if self.vm(clawid).is_some_and(|vm| vm.running) {
            bail!("instance {clawid} is still running");
        }
        match std::fs::remove_dir_all(self.dir(clawid)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    fn probe(&self, rec: &Record) -> Liveness {
        match self.vm(&rec.clawid) {
            Some(vm) if vm.running => Liveness::Running(ProcessId {
                pid: 0,
                start_time: vm.boot,
            }),
            Some(_) if rec.runtime.process.is_some() => Liveness::Exited,
            _ => Liveness::NotStarted,
        }
    }

    fn guest_health(&self, rec: &Record) -> GuestHealth {
        if !self.vm(&rec.clawid).is_some_and(|vm| vm.running) {
            return GuestHealth::Booting { last: None };
        }
        let bad = self
            .unhealthy
            .lock()
            .expect("lock")
            .iter()
            .any(|p| rec.clawid.starts_with(p.as_str()));
        if bad {
            GuestHealth::Unhealthy {
                phase: "provision[0]".into(),
                code: 3,
                tail: "injected".into(),
            }
        } else {
            GuestHealth::Ready
        }
    }

    fn live_runtime(&self, rec: &Record) -> Option<Runtime> {
        match self.probe(rec) {
            Liveness::Running(p) => Some(Runtime {
                process: Some(p),
                ..rec.runtime.clone()
            }),
            _ => None,
        }
    }

    fn boot_report(&self, clawid: &str, nonce: &str) -> std::io::Result<GuestStatus> {
        let mut st = GuestStatus::default();
        let Some(vm) = self.vm(clawid).filter(|vm| vm.running) else {
            return Ok(st);
        };
        if nonce != vm.nonce() {
            return Ok(st);
        }
        let ev = |phase, state, code| GuestEvent {
            phase,
            state,
            code,
            tail: None,
            ts: None,
        };
        st.booted = true;
        st.events
            .push(ev(GuestPhase::CloudInit, StepState::Started, None));
        let bad = self
            .unhealthy
            .lock()
            .expect("lock")
            .iter()
            .any(|p| clawid.starts_with(p.as_str()));
        if bad {
            let phase = GuestPhase::Provision {
                step: 0,
                name: None,
            };
            st.events.push(GuestEvent {
                tail: Some("injected".into()),
                ..ev(phase.clone(), StepState::Failed, Some(3))
            });
            st.failed = Some(super::boot::FailedPhase {
                phase: phase.to_string(),
                code: 3,
                tail: "injected".into(),
            });
        } else {
            st.events.push(ev(GuestPhase::Done, StepState::Ok, Some(0)));
            st.done = true;
        }
        let last = st.events.last().expect("one event");
        st.last = Some(last.phase.to_string());
        st.last_state = Some(last.state);
        Ok(st)
    }

    fn log_path(&self, clawid: &str, kind: LogKind) -> PathBuf {
        self.dir(clawid).join(match kind {
            LogKind::Serial => "fake-serial.log",
            LogKind::Vmm => "fake-vmm.log",
        })
    }

    fn ssh_command(&self, rec: &Record, _command: &[String]) -> Result<Command, DriverError> {
        bail!(
            "instance {} runs on the fake driver (CLAWFARM_DRIVER=fake): it has no guest to log in to",
            rec.clawid
        )
    }

    fn has_booted(&self, clawid: &str) -> bool {
        self.vm(clawid).is_some_and(|vm| vm.boot > 0)
    }

    fn param_values(
        &self,
        clawid: &str,
    ) -> Result<Vec<(String, crate::util::secret::Secret)>, DriverError> {
        let p = self.dir(clawid).join(PARAMS_FILE);
        let b = std::fs::read(&p).with_context(|| format!("cannot read {}", p.display()))?;
        let v: Vec<(String, String)> = serde_json::from_slice(&b)?;
        v.into_iter()
            .map(|(k, v)| {
                let v = String::from_utf8(hex::decode(v)?)?;
                Ok((k, crate::util::secret::Secret::new(v)))
            })
            .collect()
    }

    async fn export_snapshot(&self, rec: &Record, work: &Path) -> Result<(), DriverError> {
        self.enter("export-snapshot", &rec.clawid).await?;
        if self.vm(&rec.clawid).is_some_and(|vm| vm.running) {
            bail!(
                "instance {} is running; its disk cannot be copied consistently",
                rec.clawid
            );
        }
        std::fs::create_dir_all(work)?;
        std::fs::copy(self.dir(&rec.clawid).join(DISK_FILE), work.join(DISK_FILE))?;
        Ok(())
    }

    async fn export_layer(
        &self,
        rec: &Record,
        _base: &Image,
        work: &Path,
        out: &Path,
    ) -> Result<ExportFigures, DriverError> {
        self.enter("export-layer", &rec.clawid).await?;
        // The fake layer is the fake disk copy, as is (nothing to scrub in it).
        let data = std::fs::read(work.join(DISK_FILE))?;
        std::fs::write(out, &data)?;
        Ok(ExportFigures {
            disk_bytes: data.len() as u64,
            ..ExportFigures::default()
        })
    }

    async fn layer_raw(&self, layer: &Path, raw: &Path) -> Result<(), DriverError> {
        std::fs::copy(layer, raw)?;
        Ok(())
    }
    async fn checkpoint(&self, rec: &Record, tag: &str) -> Result<Checkpoint, DriverError> {
        self.enter("checkpoint", &rec.clawid).await?;
        super::check_tag(tag)?;
        let mut vm = self.vm(&rec.clawid).unwrap_or_default();
        if !vm.running {
            bail!(
                "instance {} is not running; checkpoints are taken of a running VM",
                rec.clawid
            );
        }
        if vm.checkpoints.iter().any(|c| c.tag == tag) {
            bail!("instance {} already has a checkpoint {tag}", rec.clawid);
        }
        let created_secs = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        vm.checkpoints.push(FakeCheckpoint {
            tag: tag.into(),
            created_secs,
            guest: vm.guest.unwrap_or(vm.boot),
            bundle: rec.build.bundle.clone(),
        });
        self.set_vm(&rec.clawid, &vm)?;
        let c = vm.checkpoints.last().expect("just pushed");
        Ok(fake_checkpoint(c, rec))
    }

    async fn checkpoints(&self, rec: &Record) -> Result<Vec<Checkpoint>, DriverError> {
        let vm = self.vm(&rec.clawid).unwrap_or_default();
        Ok(vm
            .checkpoints
            .iter()
            .map(|c| fake_checkpoint(c, rec))
            .collect())
    }

    async fn restore(&self, rec: &Record, tag: &str) -> Result<Runtime, DriverError> {
        self.enter("restore", &rec.clawid).await?;
        let mut vm = self.vm(&rec.clawid).unwrap_or_default();
        let Some(c) = vm.checkpoints.iter().find(|c| c.tag == tag).cloned() else {
            let have: Vec<&str> = vm.checkpoints.iter().map(|c| c.tag.as_str()).collect();
            bail!(
                "instance {} has no checkpoint {tag:?} (it has: {})",
                rec.clawid,
                if have.is_empty() {
                    "none".to_string()
                } else {
                    have.join(", ")
                }
            );
        };
        if c.bundle != rec.build.bundle {
            bail!(
                "checkpoint {tag} of {} was taken with bundle {}, the instance now runs {}",
                rec.clawid,
                c.bundle,
                rec.build.bundle
            );
        }
        if !vm.running {
            vm.running = true;
            vm.boot += 1;
        }
        vm.suspended = false;
        vm.guest = Some(c.guest);
        self.set_vm(&rec.clawid, &vm)?;
        self.log(
            &rec.clawid,
            LogKind::Vmm,
            &format!("fake VM restored to checkpoint {tag}"),
        );
        Ok(Runtime {
            process: Some(ProcessId {
                pid: 0,
                start_time: vm.boot,
            }),
            boot_nonce: Some(vm.nonce()),
            accel: Some("fake".into()),
            ssh_port: None,
            started_at: Some(SystemTime::now()),
        })
    }

    async fn suspend(&self, rec: &Record) -> Result<Duration, DriverError> {
        self.enter("suspend", &rec.clawid).await?;
        let mut vm = self.vm(&rec.clawid).unwrap_or_default();
        if !vm.running {
            if vm.suspended {
                return Ok(Duration::ZERO);
            }
            bail!("instance {} is not running", rec.clawid);
        }
        vm.guest = Some(vm.guest.unwrap_or(vm.boot));
        vm.running = false;
        vm.suspended = true;
        self.set_vm(&rec.clawid, &vm)?;
        self.log(&rec.clawid, LogKind::Vmm, "fake VM suspended");
        Ok(Duration::ZERO)
    }

    fn suspended(&self, clawid: &str) -> bool {
        self.vm(clawid)
            .is_some_and(|vm| vm.suspended && !vm.running)
    }

    async fn export_volume(
        &self,
        rec: &Record,
        volume: &str,
        dest: &std::path::Path,
    ) -> Result<(), DriverError> {
        self.enter("export-volume", &rec.clawid).await?;
        if !rec.build.volumes.iter().any(|v| v.name == volume) {
            bail!("instance {} has no volume {volume:?}", rec.clawid);
        }
        if self.vm(&rec.clawid).is_some_and(|vm| vm.running) {
            bail!("instance {} is running; stop it first", rec.clawid);
        }
        std::fs::create_dir_all(dest)?;
        std::fs::write(dest.join("fake-volume"), format!("{volume}\n"))?;
        Ok(())
    }
}

fn fake_checkpoint(c: &FakeCheckpoint, rec: &Record) -> Checkpoint {
    Checkpoint {
        tag: c.tag.clone(),
        created_at: SystemTime::UNIX_EPOCH + Duration::from_secs(c.created_secs),
        vm_state_bytes: rec.resources.memory_mib << 20,
        volumes: rec.build.volumes.iter().map(|v| v.name.clone()).collect(),
        bundle: Some(c.bundle.clone()),
    }
}
