//! Checkpoints, restore and suspend of a QEMU instance. See `rfc/011-checkpoints.md`.
//!
//! A checkpoint is a QEMU internal snapshot taken with the QMP `snapshot-save` job: the VM
//! state (RAM and devices) goes into the instance overlay `disk.qcow2`, and every writable
//! disk (the overlay and each volume qcow2) gets a snapshot of the same tag, so a restore
//! puts disk, volumes and memory back together. The read-only seed and payload disks have
//! none (they never change). Next to the snapshot, `checkpoints/<tag>.json` keeps what the
//! host needs to talk to the restored guest: the boot nonce the guest runs with and its
//! status lines (so `ps` says `ready` at once).
//!
//! Suspend is a checkpoint named [`SUSPEND_TAG`] taken with the VM paused, recorded in
//! `suspend.json`, then QMP `quit`. `start` resumes it with `-loadvm` (same device
//! arguments, same nonce) instead of a cold boot, then drops the snapshot.
//!
//! Crash safety (`kill -9` of clawfarm or QEMU at any step): the snapshot table of a qcow2
//! changes in one step at the end of a save, so a snapshot is either complete or absent;
//! `suspend.json` is written only after the save succeeded and names the tag, and `start`
//! checks that every disk has it before resuming (else it cold boots and says why). A
//! clawfarm killed between pause and quit leaves a paused VM: `start` (adoption) continues
//! it and drops the stale `suspend.json`.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::time::Instant;

use super::cmdline::{DISK_NODE, volume_serial};
use super::layout::{InstanceFiles, volume_disk};
use super::qmp::Qmp;
use super::{QemuDriver, append_log};
use crate::driver::Checkpoint;
use crate::state::record::Record;
use crate::util::fsutil;
use crate::util::text::now_rfc3339;

/// The snapshot tag of a suspended VM.
pub const SUSPEND_TAG: &str = "clawfarm-suspend";

/// `suspend.json`: a suspended VM to resume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SuspendState {
    /// Snapshot tag ([`SUSPEND_TAG`]).
    pub tag: String,
    /// The boot nonce the guest runs with.
    pub nonce: String,
    /// Bundle digest when it was saved.
    pub bundle: String,
    /// When.
    #[serde(with = "crate::state::record::rfc3339")]
    pub saved_at: SystemTime,
}

/// `checkpoints/<tag>.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointMeta {
    /// The tag.
    pub tag: String,
    /// The boot nonce the guest ran with.
    pub nonce: String,
    /// Bundle digest of the instance.
    pub bundle: String,
    /// Volume names included.
    pub volumes: Vec<String>,
    /// The guest's status lines of that boot, up to the checkpoint.
    pub status: Vec<String>,
}

/// One internal snapshot of a qcow2 file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapInfo {
    /// Tag.
    pub name: String,
    /// VM state bytes (0 on disks without VM state).
    pub vm_state_size: u64,
    /// When (seconds since the epoch).
    pub date_sec: u64,
}

/// The internal snapshots of qcow2 `file` (`qemu-img info -U`: works while QEMU runs).
pub fn list_snapshots(qemu_img: &Path, file: &Path) -> anyhow::Result<Vec<SnapInfo>> {
    let out = Command::new(qemu_img)
        .args(["info", "-U", "--output=json"])
        .arg(file)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {}", qemu_img.display()))?;
    if !out.status.success() {
        bail!(
            "qemu-img info {} failed: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let v: Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("qemu-img info {} printed no JSON", file.display()))?;
    Ok(parse_snapshots(&v))
}

/// The `snapshots` of a `qemu-img info --output=json` document.
pub fn parse_snapshots(v: &Value) -> Vec<SnapInfo> {
    v.get("snapshots")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|s| {
                    Some(SnapInfo {
                        name: s.get("name")?.as_str()?.to_string(),
                        vm_state_size: s.get("vm-state-size").and_then(Value::as_u64).unwrap_or(0),
                        date_sec: s.get("date-sec").and_then(Value::as_u64).unwrap_or(0),
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Run a QMP job command (`snapshot-save`, `snapshot-load`, `snapshot-delete`) and wait
/// until it concludes; its error, if any, becomes ours. The job is dismissed.
pub async fn run_job(
    q: &mut Qmp,
    command: &str,
    mut args: Value,
    within: Duration,
) -> anyhow::Result<()> {
    let job = format!(
        "cf-{command}-{}",
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    );
    args["job-id"] = json!(job);
    q.execute(command, Some(args)).await?;
    let t0 = Instant::now();
    loop {
        let jobs = q.execute("query-jobs", None).await?;
        let me = jobs
            .as_array()
            .and_then(|a| a.iter().find(|j| j["id"] == json!(job)))
            .cloned();
        match me {
            None => return Ok(()),
            Some(j) if j["status"] == "concluded" || j["status"] == "null" => {
                let _ = q.execute("job-dismiss", Some(json!({"id": job}))).await;
                if let Some(e) = j.get("error").and_then(Value::as_str) {
                    bail!("{command}: {e}");
                }
                return Ok(());
            }
            Some(_) => {}
        }
        if t0.elapsed() > within {
            bail!("{command} did not finish within {}s", within.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The raw status lines of boot `nonce` in `status_log`.
pub fn status_lines(status_log: &Path, nonce: &str) -> Vec<String> {
    let needle = format!("\"{nonce}\"");
    std::fs::read_to_string(status_log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(&needle))
        .map(str::to_string)
        .collect()
}

/// Append `lines` to `status_log` unless they are there already.
fn put_status_lines(status_log: &Path, lines: &[String]) -> anyhow::Result<()> {
    let have = std::fs::read_to_string(status_log).unwrap_or_default();
    let missing: String = lines
        .iter()
        .filter(|l| !have.contains(l.as_str()))
        .map(|l| format!("{l}\n"))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(status_log)
        .with_context(|| format!("cannot open {}", status_log.display()))?;
    f.write_all(missing.as_bytes())
        .with_context(|| format!("cannot write {}", status_log.display()))
}

/// Read `suspend.json` (None when absent or unreadable).
pub fn read_suspend(files: &InstanceFiles) -> Option<SuspendState> {
    serde_json::from_slice(&std::fs::read(files.suspend()).ok()?).ok()
}

fn meta_path(files: &InstanceFiles, tag: &str) -> std::path::PathBuf {
    files.checkpoints_dir().join(format!("{tag}.json"))
}

fn read_meta(files: &InstanceFiles, tag: &str) -> Option<CheckpointMeta> {
    serde_json::from_slice(&std::fs::read(meta_path(files, tag)).ok()?).ok()
}

/// Free bytes of the filesystem holding `dir`.
fn free_bytes(dir: &Path) -> Option<u64> {
    let s = rustix::fs::statvfs(dir).ok()?;
    Some(s.f_bavail.saturating_mul(s.f_frsize))
}

impl QemuDriver {
    /// `(block node, qcow2 file, volume name)` of every writable disk of `rec`: the
    /// overlay first, then the volumes.
    pub(super) fn snapshot_disks(
        &self,
        rec: &Record,
    ) -> Vec<(String, std::path::PathBuf, Option<String>)> {
        let mut v = vec![(DISK_NODE.to_string(), self.files(&rec.clawid).disk(), None)];
        for (i, vol) in rec.build.volumes.iter().enumerate() {
            v.push((
                volume_serial(i),
                volume_disk(&self.home, &rec.clawid, &vol.name),
                Some(vol.name.clone()),
            ));
        }
        v
    }

    /// Nodes whose disk holds snapshot `tag`, and the ones that do not.
    fn who_has(&self, rec: &Record, tag: &str) -> anyhow::Result<(Vec<String>, Vec<String>)> {
        let (mut has, mut lacks) = (Vec::new(), Vec::new());
        for (node, file, _) in self.snapshot_disks(rec) {
            if list_snapshots(&self.cfg.qemu_img, &file)?
                .iter()
                .any(|s| s.name == tag)
            {
                has.push(node);
            } else {
                lacks.push(node);
            }
        }
        Ok((has, lacks))
    }

    pub(super) async fn qmp(&self, clawid: &str) -> anyhow::Result<Qmp> {
        let mut q = Qmp::connect(&self.files(clawid).qmp_sock(), Duration::from_secs(5))
            .await
            .with_context(|| format!("cannot reach the VM monitor of {clawid}"))?;
        q.set_command_timeout(Duration::from_secs(30));
        Ok(q)
    }

    /// Save snapshot `tag` of every writable disk (VM state in the overlay), after
    /// deleting stale snapshots of that tag (left on a kept volume by an earlier instance).
    async fn save(&self, q: &mut Qmp, rec: &Record, tag: &str) -> anyhow::Result<()> {
        let (has, _) = self.who_has(rec, tag)?;
        if !has.is_empty() {
            run_job(
                q,
                "snapshot-delete",
                json!({"tag": tag, "devices": has}),
                Duration::from_secs(120),
            )
            .await?;
        }
        let nodes: Vec<String> = self.snapshot_disks(rec).into_iter().map(|d| d.0).collect();
        let need = rec.resources.memory_mib.saturating_mul(1 << 20) + (64 << 20);
        let dir = self.files(&rec.clawid).dir;
        if let Some(free) = free_bytes(&dir)
            && free < need
        {
            bail!(
                "not enough disk space for the VM state of {}: need about {}, {} free in {}",
                rec.clawid,
                crate::util::text::human_bytes(need),
                crate::util::text::human_bytes(free),
                dir.display()
            );
        }
        run_job(
            q,
            "snapshot-save",
            json!({"tag": tag, "vmstate": DISK_NODE, "devices": nodes}),
            Duration::from_secs(1800),
        )
        .await
    }

    pub(super) async fn checkpoint_of(
        &self,
        rec: &Record,
        tag: &str,
    ) -> anyhow::Result<Checkpoint> {
        crate::driver::check_tag(tag)?;
        let files = self.files(&rec.clawid);
        let Some(rt) = self.runtime_of(rec) else {
            bail!(
                "instance {} is not running; checkpoints are taken of a running VM",
                rec.clawid
            );
        };
        if list_snapshots(&self.cfg.qemu_img, &files.disk())?
            .iter()
            .any(|s| s.name == tag)
        {
            bail!("instance {} already has a checkpoint {tag}", rec.clawid);
        }
        let nonce = rt.boot_nonce.clone().unwrap_or_default();
        let meta = CheckpointMeta {
            tag: tag.to_string(),
            nonce: nonce.clone(),
            bundle: rec.build.bundle.clone(),
            volumes: rec.build.volumes.iter().map(|v| v.name.clone()).collect(),
            status: status_lines(&files.status_log(), &nonce),
        };
        fsutil::create_dir_mode(&files.checkpoints_dir(), 0o700)?;
        let mp = meta_path(&files, tag);
        fsutil::write_atomic(&mp, &serde_json::to_vec_pretty(&meta)?, 0o600)
            .with_context(|| format!("cannot write {}", mp.display()))?;
        let mut q = self.qmp(&rec.clawid).await?;
        let t0 = Instant::now();
        if let Err(e) = self.save(&mut q, rec, tag).await {
            let _ = std::fs::remove_file(&mp);
            return Err(e.context(format!("checkpoint {tag} of {} failed", rec.clawid)));
        }
        append_log(
            &files.qemu_log(),
            &format!(
                "[{}] clawfarm: checkpoint {tag} saved ({:.1}s)",
                now_rfc3339(),
                t0.elapsed().as_secs_f64()
            ),
        );
        self.checkpoints_of(rec)?
            .into_iter()
            .find(|c| c.tag == tag)
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "checkpoint {tag} of {} is not on its disk after the save",
                    rec.clawid
                )
            })
    }

    pub(super) fn checkpoints_of(&self, rec: &Record) -> anyhow::Result<Vec<Checkpoint>> {
        let files = self.files(&rec.clawid);
        if !files.disk().is_file() {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        for s in list_snapshots(&self.cfg.qemu_img, &files.disk())? {
            if s.name.starts_with(crate::driver::RESERVED_TAG_PREFIX) {
                continue;
            }
            let meta = read_meta(&files, &s.name);
            out.push(Checkpoint {
                created_at: SystemTime::UNIX_EPOCH + Duration::from_secs(s.date_sec),
                vm_state_bytes: s.vm_state_size,
                volumes: meta.as_ref().map(|m| m.volumes.clone()).unwrap_or_default(),
                bundle: meta.map(|m| m.bundle),
                tag: s.name,
            });
        }
        out.sort_by_key(|c| c.created_at);
        Ok(out)
    }

    pub(super) async fn restore_of(
        &self,
        rec: &Record,
        tag: &str,
    ) -> anyhow::Result<crate::state::record::Runtime> {
        let files = self.files(&rec.clawid);
        let all = self.checkpoints_of(rec)?;
        let Some(c) = all.iter().find(|c| c.tag == tag) else {
            let have: Vec<&str> = all.iter().map(|c| c.tag.as_str()).collect();
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
        let meta = read_meta(&files, tag).ok_or_else(|| {
            anyhow::anyhow!(
                "checkpoint {tag} of {} has no metadata {}",
                rec.clawid,
                meta_path(&files, tag).display()
            )
        })?;
        if c.bundle.as_deref() != Some(rec.build.bundle.as_str()) {
            bail!(
                "checkpoint {tag} of {} was taken with bundle {}, the instance now runs {}",
                rec.clawid,
                meta.bundle,
                rec.build.bundle
            );
        }
        let (_, lacks) = self.who_has(rec, tag)?;
        if !lacks.is_empty() {
            bail!(
                "checkpoint {tag} of {} cannot be restored: disk(s) {} have no snapshot {tag} \
                 (added after the checkpoint?)",
                rec.clawid,
                lacks.join(", ")
            );
        }
        put_status_lines(&files.status_log(), &meta.status)?;
        let t0 = Instant::now();
        let rt = match self.runtime_of(rec) {
            Some(mut rt) => {
                let mut q = self.qmp(&rec.clawid).await?;
                let nodes: Vec<String> =
                    self.snapshot_disks(rec).into_iter().map(|d| d.0).collect();
                run_job(
                    &mut q,
                    "snapshot-load",
                    json!({"tag": tag, "vmstate": DISK_NODE, "devices": nodes}),
                    Duration::from_secs(1800),
                )
                .await
                .with_context(|| format!("restore of {} to {tag} failed", rec.clawid))?;
                if q.query_status().await? != "running" {
                    q.execute("cont", None).await?;
                }
                rt.boot_nonce = Some(meta.nonce.clone());
                super::write_runtime(&files, &rt)?;
                rt
            }
            None => {
                let _ = std::fs::remove_file(files.suspend());
                self.start_from(rec, tag, &meta.nonce).await?
            }
        };
        append_log(
            &files.qemu_log(),
            &format!(
                "[{}] clawfarm: restored checkpoint {tag} ({:.1}s)",
                now_rfc3339(),
                t0.elapsed().as_secs_f64()
            ),
        );
        self.fix_clock(rec);
        Ok(rt)
    }

    pub(super) async fn suspend_of(&self, rec: &Record) -> anyhow::Result<Duration> {
        let files = self.files(&rec.clawid);
        let Some(rt) = self.runtime_of(rec) else {
            if read_suspend(&files).is_some() {
                return Ok(Duration::ZERO);
            }
            bail!("instance {} is not running", rec.clawid);
        };
        let t0 = Instant::now();
        let mut q = self.qmp(&rec.clawid).await?;
        // Paused from here on: nothing the guest does after the snapshot can be lost.
        q.execute("stop", None).await?;
        let r = self.save(&mut q, rec, SUSPEND_TAG).await;
        if let Err(e) = r {
            let _ = q.execute("cont", None).await;
            return Err(e.context(format!(
                "suspend of {} failed; it keeps running",
                rec.clawid
            )));
        }
        let st = SuspendState {
            tag: SUSPEND_TAG.to_string(),
            nonce: rt.boot_nonce.clone().unwrap_or_default(),
            bundle: rec.build.bundle.clone(),
            saved_at: SystemTime::now(),
        };
        fsutil::write_atomic(&files.suspend(), &serde_json::to_vec_pretty(&st)?, 0o600)
            .with_context(|| format!("cannot write {}", files.suspend().display()))?;
        q.quit().await?;
        if let Some(p) = &rt.process
            && !super::wait_gone(p, &files.marker(), Duration::from_secs(20)).await
        {
            super::kill(p.pid, rustix::process::Signal::KILL);
            super::wait_gone(p, &files.marker(), Duration::from_secs(5)).await;
        }
        super::clean_stale(&files);
        let took = t0.elapsed();
        append_log(
            &files.qemu_log(),
            &format!(
                "[{}] clawfarm: suspended ({:.1}s)",
                now_rfc3339(),
                took.as_secs_f64()
            ),
        );
        Ok(took)
    }

    /// Why the saved suspend state of `rec` cannot be resumed (`Ok` when it can).
    pub(super) fn resumable(&self, rec: &Record, st: &SuspendState) -> Result<(), String> {
        if st.bundle != rec.build.bundle {
            return Err(format!(
                "it was saved with bundle {}, the instance now has {}",
                st.bundle, rec.build.bundle
            ));
        }
        match self.who_has(rec, &st.tag) {
            Ok((_, lacks)) if lacks.is_empty() => Ok(()),
            Ok((_, lacks)) => Err(format!(
                "disk(s) {} have no snapshot {}",
                lacks.join(", "),
                st.tag
            )),
            Err(e) => Err(format!("{e:#}")),
        }
    }

    /// After a resume: drop the suspend snapshot inside the running QEMU (the job runs on
    /// in QEMU; nobody waits for it) and `suspend.json`.
    pub(super) async fn forget_suspend(&self, rec: &Record) {
        let files = self.files(&rec.clawid);
        let _ = std::fs::remove_file(files.suspend());
        if let Ok(mut q) = self.qmp(&rec.clawid).await
            && let Ok((has, _)) = self.who_has(rec, SUSPEND_TAG)
            && !has.is_empty()
        {
            let _ = run_job(
                &mut q,
                "snapshot-delete",
                json!({"tag": SUSPEND_TAG, "devices": has}),
                Duration::from_secs(60),
            )
            .await;
        }
    }

    /// Set the guest clock to the host's after a resume or restore (the guest slept through
    /// the gap), in the background, best effort: over SSH a root shell in the guest says
    /// `ready`, then the host sends its time at that moment (so SSH and sudo start-up, slow
    /// under TCG, do not count) and the guest sets it with `date`. A detached `bash` does it,
    /// so it finishes even when clawfarm exits first; the outcome goes to `qemu.log`.
    pub(super) fn fix_clock(&self, rec: &Record) {
        let Ok(ssh) = self.ssh_command_of(
            rec,
            &["sudo -n sh -c 'echo ready; read t; date -u -s \"@$t\" >/dev/null'".to_string()],
        ) else {
            return;
        };
        const SCRIPT: &str = r#"log=$1; shift
coproc S { "$@" 2>/dev/null; }
IFS= read -r l <&"${S[0]}"
if [ "$l" = ready ]; then date -u +%s.%N >&"${S[1]}"; fi
if wait "$S_PID" && [ "$l" = ready ]; then m="set from the host"; else m="not set (ssh failed)"; fi
printf '[%s] clawfarm: guest clock %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$m" >> "$log"
"#;
        let mut cmd = Command::new("bash");
        cmd.arg("-c")
            .arg(SCRIPT)
            .arg("clock-fix")
            .arg(self.files(&rec.clawid).qemu_log())
            .arg(ssh.get_program())
            .args(ssh.get_args())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        match cmd.spawn() {
            Ok(child) => drop(super::reap(child)),
            Err(e) => tracing::warn!("instance {}: cannot fix the guest clock: {e}", rec.clawid),
        }
    }

    /// Delete the snapshots of volume disks kept after `rm` (they belong to checkpoints of
    /// the removed instance); returns bytes of VM state freed (volumes have none, so 0 is
    /// normal) and the count.
    pub(super) fn drop_volume_snapshots(&self, clawid: &str) -> usize {
        let dir = super::layout::volumes_dir(&self.home, clawid);
        let mut n = 0;
        let Ok(rd) = std::fs::read_dir(&dir) else {
            return 0;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.extension().is_none_or(|x| x != "qcow2") {
                continue;
            }
            for s in list_snapshots(&self.cfg.qemu_img, &p).unwrap_or_default() {
                let ok = Command::new(&self.cfg.qemu_img)
                    .args(["snapshot", "-d", &s.name])
                    .arg(&p)
                    .stdin(Stdio::null())
                    .output()
                    .is_ok_and(|o| o.status.success());
                n += usize::from(ok);
            }
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_from_qemu_img_json() {
        let v: Value = serde_json::from_str(
            r#"{"virtual-size": 1, "snapshots": [
                {"id": "1", "name": "t1", "vm-state-size": 1090519, "date-sec": 1700000000,
                 "date-nsec": 5, "vm-clock-sec": 1, "vm-clock-nsec": 2, "icount": 0},
                {"id": "2", "name": "clawfarm-suspend", "vm-state-size": 0, "date-sec": 1700000001}
            ]}"#,
        )
        .unwrap();
        let s = parse_snapshots(&v);
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].name, "t1");
        assert_eq!(s[0].vm_state_size, 1090519);
        assert_eq!(s[1].date_sec, 1700000001);
        assert!(parse_snapshots(&serde_json::json!({})).is_empty());
    }

    #[test]
    fn status_lines_are_put_back_once() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("status.log");
        std::fs::write(
            &p,
            "{\"boot\": \"n1\", \"phase\": \"done\"}\n{\"boot\": \"n2\"}\n",
        )
        .unwrap();
        let l = status_lines(&p, "n1");
        assert_eq!(
            l,
            vec!["{\"boot\": \"n1\", \"phase\": \"done\"}".to_string()]
        );
        std::fs::write(&p, "").unwrap();
        put_status_lines(&p, &l).unwrap();
        put_status_lines(&p, &l).unwrap();
        assert_eq!(status_lines(&p, "n1"), l);
    }
}
