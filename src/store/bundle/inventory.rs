//! What the store holds (bundles, blobs, their sizes), garbage collection, and the
//! leftovers of interrupted imports and downloads.

#[allow(unused_imports)]
use super::*;

// ---- stale temp files ----------------------------------------------------------------------

pub(super) fn pid_alive(pid: i32) -> bool {
    match rustix::process::Pid::from_raw(pid) {
        None => false,
        Some(p) => !matches!(
            rustix::process::test_kill_process(p),
            Err(rustix::io::Errno::SRCH)
        ),
    }
}

/// The pid at the end of `.tmp-<x>-<pid>` / `import-<pid>-<n>.part`.
pub(super) fn temp_owner(name: &str) -> Option<i32> {
    if let Some(rest) = name.strip_prefix(".tmp-") {
        return rest.rsplit('-').next()?.parse().ok();
    }
    if let Some(rest) = name.strip_prefix("import-") {
        return rest.split('-').next()?.parse().ok();
    }
    None
}

/// Temp folders of dead imports (`bundles/.tmp-*`), and staged import blobs of dead
/// processes (`blobs/.tmp/import-*.part`). Download parts (`<sha>.part`) are progress
/// and are not listed here.
pub(super) fn stale_temps(home: &Home) -> Vec<PathBuf> {
    let me = std::process::id() as i32;
    let mut out = Vec::new();
    let dirs = [
        (home.bundles_dir(), ".tmp-"),
        (home.blobs_dir().join(".tmp"), "import-"),
    ];
    for (dir, prefix) in dirs {
        let Ok(rd) = fs::read_dir(&dir) else { continue };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !name.starts_with(prefix) {
                continue;
            }
            match temp_owner(&name) {
                Some(pid) if pid == me || pid_alive(pid) => {}
                _ => out.push(e.path()),
            }
        }
    }
    out
}

pub(super) fn remove_path(p: &Path) -> io::Result<()> {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => remove_tree(p),
        Ok(_) => fs::remove_file(p),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Remove a folder tree that may contain read-only folders (imported payloads).
pub(crate) fn remove_tree(p: &Path) -> io::Result<()> {
    fn make_writable(p: &Path) -> io::Result<()> {
        let m = fs::symlink_metadata(p)?;
        if m.is_dir() {
            if m.permissions().mode() & 0o700 != 0o700 {
                fs::set_permissions(p, fs::Permissions::from_mode(0o700))?;
            }
            for e in fs::read_dir(p)? {
                let e = e?;
                if e.file_type()?.is_dir() {
                    make_writable(&e.path())?;
                }
            }
        }
        Ok(())
    }
    match make_writable(p) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        r => r?,
    }
    match fs::remove_dir_all(p) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        r => r,
    }
}

/// Make the payload read-only (folders `0555`, deepest first) and fsync every folder.
pub(super) fn seal_tree(dir: &Path) -> io::Result<()> {
    for e in fs::read_dir(dir)? {
        let e = e?;
        if e.file_type()?.is_dir() {
            seal_tree(&e.path())?;
        }
    }
    fsutil::sync_dir(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o555))
}

// ---- list and gc ---------------------------------------------------------------------------

/// What a stored item is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StoredKind {
    /// `blobs/<sha256>`.
    Blob,
    /// `bundles/<digest>/`.
    Bundle,
}

/// One blob or bundle in the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoredItem {
    /// Blob or bundle.
    pub kind: StoredKind,
    /// SHA-256 (blob content, or bundle file).
    pub digest: String,
    /// Where it is.
    pub path: PathBuf,
    /// Bytes on disk (a bundle folder: the sum of its files).
    pub size: u64,
    /// Bundles: the clawspec name.
    pub name: Option<String>,
    /// Bundles: the blobs it needs (its images).
    pub blobs: Vec<String>,
    /// Bundles: false when `bundle.json` is missing or unreadable (garbage).
    pub complete: bool,
}

impl StoredItem {
    /// The blobs this bundle needs that are not in the store (none for a blob).
    pub fn missing(&self, home: &Home) -> Vec<&str> {
        self.blobs
            .iter()
            .filter(|b| !home.blob(b).is_file())
            .map(String::as_str)
            .collect()
    }
}

pub(super) fn tree_size(p: &Path) -> u64 {
    let Ok(m) = fs::symlink_metadata(p) else {
        return 0;
    };
    if !m.is_dir() {
        return m.len();
    }
    fs::read_dir(p)
        .map(|rd| rd.flatten().map(|e| tree_size(&e.path())).sum())
        .unwrap_or(0)
}

/// Every blob and bundle in the store, bundles first, each sorted by digest.
pub fn list(home: &Home) -> Vec<StoredItem> {
    let mut out = Vec::new();
    if let Ok(rd) = fs::read_dir(home.bundles_dir()) {
        let mut v: Vec<StoredItem> = rd
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                if !is_sha256_hex(&name) || !e.file_type().ok()?.is_dir() {
                    return None;
                }
                let path = e.path();
                let meta: Option<BundleMeta> = fs::read(path.join(BUNDLE_JSON))
                    .ok()
                    .and_then(|b| serde_json::from_slice(&b).ok());
                Some(StoredItem {
                    kind: StoredKind::Bundle,
                    size: tree_size(&path),
                    name: meta.as_ref().map(|m| m.name.clone()),
                    blobs: meta
                        .as_ref()
                        .map(|m| {
                            let mut b: BTreeSet<String> = m.blobs.iter().cloned().collect();
                            b.extend(m.run_blob.iter().cloned());
                            b.extend(m.base_blob.iter().cloned());
                            b.into_iter().collect()
                        })
                        .unwrap_or_default(),
                    complete: meta.is_some(),
                    digest: name,
                    path,
                })
            })
            .collect();
        v.sort_by(|a, b| a.digest.cmp(&b.digest));
        out.extend(v);
    }
    if let Ok(rd) = fs::read_dir(home.blobs_dir()) {
        let mut v: Vec<StoredItem> = rd
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let m = e.metadata().ok()?;
                if !is_sha256_hex(&name) || !m.is_file() {
                    return None;
                }
                Some(StoredItem {
                    kind: StoredKind::Blob,
                    digest: name,
                    path: e.path(),
                    size: m.len(),
                    name: None,
                    blobs: Vec::new(),
                    complete: true,
                })
            })
            .collect();
        v.sort_by(|a, b| a.digest.cmp(&b.digest));
        out.extend(v);
    }
    out
}

/// A removal that failed during [`gc`].
#[derive(Debug)]
pub struct GcFailure {
    /// What could not be removed.
    pub path: PathBuf,
    /// Why.
    pub error: io::Error,
}

/// What [`gc`] removed (or would remove, with `dry_run`).
#[derive(Debug, Default)]
pub struct GcReport {
    /// True when nothing was actually removed.
    pub dry_run: bool,
    /// Bundles and blobs removed (or to remove).
    pub removed: Vec<StoredItem>,
    /// Bundles and blobs kept.
    pub kept: Vec<StoredItem>,
    /// Leftovers of interrupted imports and downloads removed (or to remove).
    pub temp: Vec<PathBuf>,
    /// Bytes freed (or to free), leftovers included.
    pub freed_bytes: u64,
    /// Removals that failed.
    pub failures: Vec<GcFailure>,
}

/// Remove what no instance uses.
///
/// * a bundle is kept when its digest is in `referenced` (the CLI passes the bundle
///   digests of every instance record);
/// * a blob is kept when its digest is in `referenced`, or it is an image (run, base, any
///   other) of a kept bundle;
/// * incomplete bundle folders, temp folders of dead imports, staged blobs of dead
///   processes and download `.part` files nobody is writing are removed.
///
/// Run it under the apply lock: a blob that an apply is about to use must not go.
pub fn gc(home: &Home, referenced: &BTreeSet<String>, dry_run: bool) -> GcReport {
    let mut report = GcReport {
        dry_run,
        ..GcReport::default()
    };
    let items = list(home);
    let mut protected: BTreeSet<String> = referenced.clone();
    for it in &items {
        if it.kind == StoredKind::Bundle && it.complete && referenced.contains(&it.digest) {
            protected.extend(it.blobs.iter().cloned());
        }
    }
    let remove = |it: StoredItem, report: &mut GcReport| {
        if !dry_run && let Err(error) = remove_path(&it.path) {
            report.failures.push(GcFailure {
                path: it.path.clone(),
                error,
            });
            report.kept.push(it);
            return;
        }
        report.freed_bytes += it.size;
        report.removed.push(it);
    };
    for it in items {
        let keep = match it.kind {
            StoredKind::Bundle => it.complete && referenced.contains(&it.digest),
            StoredKind::Blob => protected.contains(&it.digest),
        };
        if keep {
            report.kept.push(it);
        } else {
            remove(it, &mut report);
        }
    }

    let mut temps = stale_temps(home);
    // Cached clawspecs of bundles that are imported (redundant) or that no instance uses.
    if let Ok(rd) = fs::read_dir(home.bundles_dir().join(SPECS_DIR)) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let digest = name.strip_suffix(".json").unwrap_or(&name);
            if !referenced.contains(digest) || is_imported(home, digest) {
                temps.push(e.path());
            }
        }
    }
    let store = BlobStore::new(home);
    let mut held = Vec::new();
    if let Ok(rd) = fs::read_dir(store.tmp_dir()) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(sha) = name.strip_suffix(".part") else {
                continue;
            };
            if !is_sha256_hex(sha) {
                continue;
            }
            // Only parts nobody is downloading; keep the lock until the part is gone.
            if let Ok(Some(l)) = try_lock_file(&store.lock_path(sha), 0o644) {
                held.push(l);
                temps.push(e.path());
            }
        }
    }
    for t in temps {
        let size = tree_size(&t);
        if !dry_run && let Err(error) = remove_path(&t) {
            report.failures.push(GcFailure { path: t, error });
            continue;
        }
        report.freed_bytes += size;
        report.temp.push(t);
    }
    drop(held);
    report
}
