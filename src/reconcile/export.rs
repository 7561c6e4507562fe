//! `clawfarm export ID|NAME -o FILE.clawbox` as a library call (see `rfc/010-export.md`):
//! quiesce the instance (a clean shutdown), copy its disk, give the instance back its run
//! state, scrub the copy in a throwaway VM, write the copy's changes relative to the base
//! image as a compressed qcow2 layer, scan that layer for every secret param value of the
//! instance (and its base64 and URL encodings), and only then write the `.clawbox`
//! (`clawspec.json`, `run.qcow2`, `claw/`) atomically. Any failure leaves no output file.

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::ops::{OnWait, lock_record};
use crate::driver::{Driver, ExportFigures, Liveness};
use crate::home::Home;
use crate::input::clawspec::{ClawSpec, Image};
use crate::state::events::{Event, EventSink};
use crate::state::record::Phase;
use crate::store::bundle::{self, CLAWSPEC_JSON};
use crate::util::secret::Secret;

/// The in-bundle name of the exported layer.
pub const RUN_QCOW2: &str = "run.qcow2";
/// The ref of the exported layer in the clawspec.
pub const RUN_REF: &str = "clawbox:///run.qcow2";
/// Secret values shorter than this are not scanned for (they would match by chance);
/// the report says so.
pub const MIN_SCAN_LEN: usize = 6;

/// What an export did.
#[derive(Debug, Clone)]
pub struct ExportReport {
    /// The instance.
    pub clawid: String,
    /// The file written.
    pub out: PathBuf,
    /// Size of the `.clawbox`.
    pub bundle_bytes: u64,
    /// Size of the compressed layer.
    pub layer_bytes: u64,
    /// sha256 of the layer (the clawspec's `run` image).
    pub layer_sha256: String,
    /// Driver figures (disk size, scrub and flatten times).
    pub figures: ExportFigures,
    /// Whole export.
    pub elapsed: Duration,
    /// The instance was running and was started again.
    pub restarted: bool,
    /// Secret params that were scanned for.
    pub scanned: Vec<String>,
    /// Secret params too short to scan for.
    pub unscanned: Vec<String>,
}

/// A secret found in a layer: the param and where (never the value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// The param key.
    pub key: String,
    /// Which encoding matched (`plain`, `base64`, `url-encoded`).
    pub encoding: &'static str,
    /// Byte offset in the layer's raw data.
    pub offset: u64,
}

/// The byte strings to look for for one secret value: the value, its base64 forms (at the
/// three alignments a value can have inside a longer base64 text) and its URL encoding.
pub fn needles(value: &str) -> Vec<(&'static str, Vec<u8>)> {
    let v = value.as_bytes();
    let mut out: Vec<(&'static str, Vec<u8>)> = vec![("plain", v.to_vec())];
    for pad in 0..3usize {
        let mut data = vec![0u8; pad];
        data.extend_from_slice(v);
        let enc = crate::driver::qemu::seed::base64_encode(&data);
        // Drop the characters that depend on the padding bytes before and the unknown
        // bytes after the value.
        let skip = if pad == 0 { 0 } else { (pad * 8).div_ceil(6) };
        let full = (data.len() * 8) / 6;
        if full > skip + 3 {
            out.push(("base64", enc.as_bytes()[skip..full].to_vec()));
        }
    }
    let url: String = value
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    if url.as_bytes() != v {
        out.push(("url-encoded", url.clone().into_bytes()));
        out.push(("url-encoded", url.to_lowercase().into_bytes()));
    }
    out
}

/// Scan the (sparse) raw file `raw` for every needle of every `(key, value)`; the first
/// find per file order. Holes are skipped (`SEEK_DATA`).
pub fn scan_raw(raw: &Path, secrets: &[(String, Secret)]) -> anyhow::Result<Option<Found>> {
    let mut pats: Vec<(String, &'static str, Vec<u8>)> = Vec::new();
    for (k, v) in secrets {
        for (enc, n) in needles(v.expose()) {
            if n.len() >= MIN_SCAN_LEN {
                pats.push((k.clone(), enc, n));
            }
        }
    }
    if pats.is_empty() {
        return Ok(None);
    }
    let alt: Vec<String> = pats
        .iter()
        .map(|(_, _, n)| n.iter().map(|b| format!("\\x{b:02x}")).collect::<String>())
        .collect();
    let re = regex::bytes::RegexBuilder::new(&format!("(?-u)(?:{})", alt.join("|")))
        .size_limit(64 << 20)
        .build()
        .context("cannot build the secret scanner")?;
    let longest = pats.iter().map(|p| p.2.len()).max().unwrap_or(0);
    let mut f =
        std::fs::File::open(raw).with_context(|| format!("cannot open {}", raw.display()))?;
    let len = f.metadata()?.len();
    const CHUNK: usize = 8 << 20;
    let mut buf = vec![0u8; CHUNK + longest];
    let mut pos: u64 = 0;
    while pos < len {
        // Skip holes: they read as zeros.
        let data = match rustix::fs::seek(f.as_fd(), rustix::fs::SeekFrom::Data(pos)) {
            Ok(d) => d,
            Err(_) => break, // ENXIO: no data after pos
        };
        let hole = rustix::fs::seek(f.as_fd(), rustix::fs::SeekFrom::Hole(data)).unwrap_or(len);
        let mut at = data;
        while at < hole {
            f.seek(SeekFrom::Start(at))?;
            let want = (CHUNK as u64 + longest as u64).min(len - at) as usize;
            f.read_exact(&mut buf[..want])?;
            if let Some(m) = re.find(&buf[..want]) {
                let hit = &buf[m.start()..m.end()];
                let (key, enc, _) = pats
                    .iter()
                    .find(|p| p.2 == hit)
                    .expect("a match is one of the needles");
                return Ok(Some(Found {
                    key: key.clone(),
                    encoding: enc,
                    offset: at + m.start() as u64,
                }));
            }
            at += CHUNK as u64;
        }
        pos = hole.max(data + 1);
    }
    Ok(None)
}

/// Remove `p` (file or folder) if it exists; best effort.
fn remove_quiet(p: &Path) {
    let _ = std::fs::remove_file(p);
    let _ = std::fs::remove_dir_all(p);
}

/// The export work folder of `clawid` (under the home, on the same file system as the
/// instance disks), as an absolute path: the scrub disk names the disk copy as its backing
/// file (qemu resolves a relative name against the overlay's own folder) and the scrub VM
/// runs in the work folder, so a relative `--home` broke export.
fn work_dir(home: &Home, clawid: &str) -> PathBuf {
    std::path::absolute(home.root())
        .unwrap_or_else(|_| home.root().to_path_buf())
        .join("tmp")
        .join(format!("export-{clawid}-{}", std::process::id()))
}

/// Check the output path before any work: `FILE` must not exist unless `force`, must not
/// be a folder, and its folder must exist.
pub fn check_output(out: &Path, force: bool) -> anyhow::Result<()> {
    if out.is_dir() {
        bail!("{} is a folder, not a .clawbox file", out.display());
    }
    if out.exists() && !force {
        bail!(
            "{} already exists (use --force to overwrite it)",
            out.display()
        );
    }
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !parent.is_dir() {
        bail!("the folder {} does not exist", parent.display());
    }
    Ok(())
}

/// Export instance `id` to `out` (see the module doc). `force` allows replacing an existing
/// `out`; it never overrides a secret found in the layer.
pub async fn export(
    home: &Home,
    driver: &dyn Driver,
    id: &str,
    out: &Path,
    force: bool,
    on_wait: OnWait,
) -> anyhow::Result<ExportReport> {
    let t0 = Instant::now();
    check_output(out, force)?;
    let (h2, id2) = (home.clone(), id.to_string());
    let locked = tokio::task::spawn_blocking(move || lock_record(&h2, &id2, &*on_wait))
        .await
        .context("the lock task failed")??;
    let mut rec = locked.record.clone();
    if rec.phase == Phase::Creating || !driver.has_booted(&rec.clawid) {
        bail!(
            "instance {} has never booted; there is nothing to export",
            rec.clawid
        );
    }
    let imported = bundle::read_imported(home, &rec.build.bundle)
        .with_context(|| format!("the bundle of instance {} is not in the store", rec.clawid))?;
    let spec: ClawSpec = (*imported.clawspec).clone();
    let base: Image = spec.base().clone();
    // Secret values, from where the driver keeps them for the guest.
    let values = driver.param_values(&rec.clawid)?;
    let secret_keys: Vec<&str> = spec
        .params()
        .filter(|(p, _)| p.secret)
        .map(|(p, _)| p.key.as_str())
        .collect();
    let secrets: Vec<(String, Secret)> = values
        .into_iter()
        .filter(|(k, v)| secret_keys.contains(&k.as_str()) && !v.expose().is_empty())
        .collect();
    let (scanned, unscanned): (Vec<_>, Vec<_>) = secrets
        .iter()
        .map(|(k, v)| (k.clone(), v.expose().len() >= MIN_SCAN_LEN))
        .partition(|(_, ok)| *ok);

    let work = work_dir(home, &rec.clawid);
    remove_quiet(&work);
    std::fs::create_dir_all(&work).with_context(|| format!("cannot create {}", work.display()))?;
    let result = async {
        // 1. Quiesce: a clean shutdown (a forced one is not a consistent disk).
        let was_running = matches!(driver.probe(&rec), Liveness::Running(_));
        if was_running {
            let outcome = driver.stop(&rec).await?;
            if !outcome.graceful() {
                rec.mark_stopped("clawfarm export");
                rec.write(home)?;
                bail!(
                    "instance {} did not shut down cleanly ({outcome}); its disk is not exported (it is left stopped)",
                    rec.clawid
                );
            }
        }
        // 2. Copy, then give the instance back its run state at once.
        let snap = driver.export_snapshot(&rec, &work).await;
        if was_running {
            let rt = driver.start(&rec).await?;
            rec.mark_booting(rt);
            rec.write(home)?;
            EventSink::to_file(home.events_log()).emit(Event::new(
                &rec.clawid,
                "start",
                "ok",
                "clawfarm export (running before the export)".into(),
            ));
        }
        snap?;
        // 3. Scrub the copy and write the layer.
        let layer = work.join(RUN_QCOW2);
        let figures = driver.export_layer(&rec, &base, &work, &layer).await?;
        // 4. Scan the layer's bytes for every secret value.
        let raw = work.join("layer.raw");
        driver.layer_raw(&layer, &raw).await?;
        let (raw2, sec2) = (raw.clone(), secrets.clone());
        let found = tokio::task::spawn_blocking(move || scan_raw(&raw2, &sec2)).await??;
        remove_quiet(&raw);
        if let Some(f) = found {
            bail!(
                "the exported layer still holds the value of secret param {} ({}, at byte {} of the layer's data; the guest file is not named); nothing was written. Remove it from the instance (or from the file that holds it) and export again",
                f.key,
                f.encoding,
                f.offset
            );
        }
        // 5. The bundle.
        let layer_sha = crate::util::digest::sha256_file(&layer)
            .with_context(|| format!("cannot hash {}", layer.display()))?;
        let mut spec2 = spec.clone();
        spec2.image.retain(|i| i.name != "run");
        spec2.image.push(Image {
            name: "run".into(),
            reference: RUN_REF.into(),
            sha256: layer_sha.clone(),
        });
        spec2
            .validate()
            .map_err(|e| anyhow::anyhow!("the exported clawspec is invalid: {e}"))?;
        let payload = imported.meta.has_payload.then(|| imported.payload_dir());
        let tmp_out = out.with_file_name(format!(
            ".{}.tmp-{}",
            out.file_name().map(|n| n.to_string_lossy()).unwrap_or_default(),
            std::process::id()
        ));
        let (t2, l2, p2, j2) = (
            tmp_out.clone(),
            layer.clone(),
            payload.clone(),
            spec2.to_json_pretty(),
        );
        let w = tokio::task::spawn_blocking(move || write_box(&t2, &j2, &l2, p2.as_deref())).await?;
        if let Err(e) = w {
            remove_quiet(&tmp_out);
            return Err(e);
        }
        if let Err(e) = std::fs::rename(&tmp_out, out) {
            remove_quiet(&tmp_out);
            return Err(e).with_context(|| format!("cannot write {}", out.display()));
        }
        let layer_bytes = std::fs::metadata(&layer).map(|m| m.len()).unwrap_or(0);
        let bundle_bytes = std::fs::metadata(out).map(|m| m.len()).unwrap_or(0);
        Ok((figures, layer_sha, layer_bytes, bundle_bytes, was_running))
    }
    .await;
    remove_quiet(&work);
    let (figures, layer_sha256, layer_bytes, bundle_bytes, restarted) = match result {
        Ok(v) => v,
        Err(e) => {
            EventSink::to_file(home.events_log()).emit(Event::new(
                &rec.clawid,
                "export",
                "failed",
                format!("{e:#}"),
            ));
            return Err(e);
        }
    };
    EventSink::to_file(home.events_log()).emit(Event::new(
        &rec.clawid,
        "export",
        "ok",
        format!("{} ({} bytes)", out.display(), bundle_bytes),
    ));
    Ok(ExportReport {
        clawid: rec.clawid.clone(),
        out: out.to_path_buf(),
        bundle_bytes,
        layer_bytes,
        layer_sha256,
        figures,
        elapsed: t0.elapsed(),
        restarted,
        scanned: scanned.into_iter().map(|x| x.0).collect(),
        unscanned: unscanned.into_iter().map(|x| x.0).collect(),
    })
}

/// Write the tar.gz: `clawspec.json`, `run.qcow2`, then the payload under `claw/`.
fn write_box(
    path: &Path,
    clawspec: &str,
    layer: &Path,
    payload: Option<&Path>,
) -> anyhow::Result<()> {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    let gz = flate2::write::GzEncoder::new(f, flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    tar.mode(tar::HeaderMode::Deterministic);
    let mut h = tar::Header::new_gnu();
    h.set_size(clawspec.len() as u64);
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::Regular);
    tar.append_data(&mut h, CLAWSPEC_JSON, clawspec.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))?;
    // A plain regular entry: the tar crate would write a sparse file (a qcow2 has holes) as
    // a GNU sparse entry, which the importer refuses (rfc/003 §7).
    let lf =
        std::fs::File::open(layer).with_context(|| format!("cannot open {}", layer.display()))?;
    let mut h = tar::Header::new_gnu();
    h.set_size(lf.metadata()?.len());
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::Regular);
    tar.append_data(&mut h, RUN_QCOW2, lf)
        .with_context(|| format!("cannot write {}", path.display()))?;
    if let Some(p) = payload {
        tar.append_dir_all(bundle::PAYLOAD_DIR, p)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    let gz = tar
        .into_inner()
        .with_context(|| format!("cannot write {}", path.display()))?;
    let mut f = gz
        .finish()
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.flush()?;
    f.sync_all()
        .with_context(|| format!("cannot sync {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_work_folder_is_absolute_with_a_relative_home() {
        let w = work_dir(&Home::new("home1"), "one-8b720d");
        assert!(w.is_absolute(), "{}", w.display());
        assert!(w.ends_with(format!(
            "home1/tmp/export-one-8b720d-{}",
            std::process::id()
        )));
    }

    #[test]
    fn needles_cover_base64_alignments_and_url() {
        let v = "sk-Secret/Value+42";
        let n = needles(v);
        let b64 = |data: &[u8]| crate::driver::qemu::seed::base64_encode(data);
        // The value inside a longer base64 text, at each alignment, contains a needle.
        for prefix in ["", "a", "ab", "abc", "KEY='"] {
            let text = b64(format!("{prefix}{v}' tail").as_bytes());
            assert!(
                n.iter()
                    .filter(|(e, _)| *e == "base64")
                    .any(|(_, x)| text.as_bytes().windows(x.len()).any(|w| w == x.as_slice())),
                "prefix {prefix:?}: {text}"
            );
        }
        assert!(
            n.iter()
                .any(|(e, x)| *e == "url-encoded" && x == b"sk-Secret%2FValue%2B42")
        );
    }

    #[test]
    fn scan_finds_values_in_sparse_files_and_names_the_key() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("raw");
        let f = std::fs::File::create(&p).unwrap();
        f.set_len(64 << 20).unwrap();
        drop(f);
        let secrets = vec![
            ("A".to_string(), Secret::new("alpha-secret-1")),
            ("B".to_string(), Secret::new("bravo/secret+2")),
        ];
        assert_eq!(scan_raw(&p, &secrets).unwrap(), None);
        // Data across a chunk boundary, base64 of a longer text.
        let mut f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
        let at = (8u64 << 20) - 5;
        f.seek(SeekFrom::Start(at)).unwrap();
        let text = crate::driver::qemu::seed::base64_encode(b"X=bravo/secret+2\n");
        f.write_all(text.as_bytes()).unwrap();
        drop(f);
        let found = scan_raw(&p, &secrets).unwrap().unwrap();
        assert_eq!(found.key, "B");
        assert_eq!(found.encoding, "base64");
        assert!(found.offset >= at && found.offset < at + text.len() as u64);
    }

    #[test]
    fn a_sparse_layer_is_a_plain_regular_entry() {
        let d = tempfile::tempdir().unwrap();
        let layer = d.path().join("run.qcow2");
        let mut f = std::fs::File::create(&layer).unwrap();
        f.write_all(b"QFI\xfbhead").unwrap();
        f.set_len(4 << 20).unwrap();
        f.seek(SeekFrom::Start(3 << 20)).unwrap();
        f.write_all(b"tail").unwrap();
        drop(f);
        let out = d.path().join("x.clawbox");
        write_box(&out, "{}", &layer, None).unwrap();
        let mut a = tar::Archive::new(flate2::read::GzDecoder::new(
            std::fs::File::open(&out).unwrap(),
        ));
        let mut seen = Vec::new();
        for e in a.entries().unwrap() {
            let mut e = e.unwrap();
            let t = e.header().entry_type();
            let name = e.path().unwrap().to_string_lossy().into_owned();
            let mut b = Vec::new();
            e.read_to_end(&mut b).unwrap();
            seen.push((name, t, b.len()));
        }
        assert_eq!(seen[1].0, "run.qcow2");
        assert_eq!(seen[1].1, tar::EntryType::Regular);
        assert_eq!(seen[1].2, 4 << 20);
    }

    #[test]
    fn output_checks() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.clawbox");
        check_output(&p, false).unwrap();
        std::fs::write(&p, b"old").unwrap();
        let e = check_output(&p, false).unwrap_err().to_string();
        assert!(e.contains("already exists") && e.contains("--force"), "{e}");
        check_output(&p, true).unwrap();
        let e = check_output(d.path(), true).unwrap_err().to_string();
        assert!(e.contains("is a folder"), "{e}");
        let e = check_output(&d.path().join("no/x.clawbox"), false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not exist"), "{e}");
    }
}
