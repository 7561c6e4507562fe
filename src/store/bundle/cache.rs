//! The stat cache: a bundle file whose (device, inode, size, mtime) is unchanged keeps its
//! digest and clawspec, so `inspect` never re-reads it, across processes.

#[allow(unused_imports)]
use super::*;

// ---- the stat cache ------------------------------------------------------------------------

/// What identifies an unchanged file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct StatKey {
    size: u64,
    mtime_ns: i64,
    ino: u64,
    dev: u64,
}

impl StatKey {
    pub(super) fn of(m: &fs::Metadata) -> StatKey {
        StatKey {
            size: m.len(),
            mtime_ns: m
                .mtime()
                .saturating_mul(1_000_000_000)
                .saturating_add(m.mtime_nsec()),
            ino: m.ino(),
            dev: m.dev(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct StatEntry {
    #[serde(flatten)]
    key: StatKey,
    digest: String,
    kind: BundleKind,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub(super) struct StatCacheFile {
    version: u32,
    entries: BTreeMap<PathBuf, StatEntry>,
}

#[derive(Default)]
pub(super) struct HomeCache {
    loaded: bool,
    stat: HashMap<PathBuf, StatEntry>,
    /// Clawspecs by bundle digest (identical bytes, identical spec).
    pub(super) specs: HashMap<String, Arc<ClawSpec>>,
}

pub(super) static CACHES: LazyLock<Mutex<HashMap<PathBuf, HomeCache>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

pub(super) fn with_cache<T>(home: &Home, f: impl FnOnce(&mut HomeCache) -> T) -> T {
    let mut all = CACHES.lock().unwrap_or_else(|p| p.into_inner());
    let c = all.entry(home.root().to_path_buf()).or_default();
    if !c.loaded {
        c.loaded = true;
        if let Some(file) = read_stat_file(home) {
            c.stat.extend(file.entries);
        }
    }
    f(c)
}

pub(super) fn stat_cache_path(home: &Home) -> PathBuf {
    home.bundles_dir().join(STAT_CACHE)
}

pub(super) fn read_stat_file(home: &Home) -> Option<StatCacheFile> {
    let bytes = fs::read(stat_cache_path(home)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Remember `path` → digest, in memory and (when `bundles/` exists) on disk.
pub(super) fn remember(home: &Home, path: &Path, key: StatKey, digest: &str, kind: BundleKind) {
    let entry = StatEntry {
        key,
        digest: digest.to_string(),
        kind,
    };
    with_cache(home, |c| c.stat.insert(path.to_path_buf(), entry.clone()));
    // A read-only verb keeps what it learnt in memory only.
    if home.is_read_only() || !home.bundles_dir().is_dir() {
        return;
    }
    // Merge with what other processes wrote since we loaded; drop entries of files that
    // are gone. Losing an entry to a concurrent writer only costs a re-hash.
    let mut file = read_stat_file(home).unwrap_or_default();
    file.version = 1;
    file.entries.insert(path.to_path_buf(), entry);
    file.entries.retain(|p, _| p.exists());
    match serde_json::to_vec_pretty(&file) {
        Ok(bytes) => {
            if let Err(e) = fsutil::write_atomic(&stat_cache_path(home), &bytes, 0o644) {
                tracing::warn!(error = %e, "cannot write the bundle stat cache");
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot encode the bundle stat cache"),
    }
}

pub(super) fn lookup(
    home: &Home,
    path: &Path,
    key: &StatKey,
) -> Option<(String, BundleKind, Option<Arc<ClawSpec>>)> {
    with_cache(home, |c| {
        let e = c.stat.get(path).filter(|e| e.key == *key)?;
        let spec = c.specs.get(&e.digest).cloned();
        Some((e.digest.clone(), e.kind, spec))
    })
}

/// Forget what this process cached about bundles (tests: simulate a new process).
#[doc(hidden)]
pub fn clear_process_cache() {
    CACHES.lock().unwrap_or_else(|p| p.into_inner()).clear();
}

/// The digest of `path` from the stat cache, without reading the file.
pub fn cached_digest(home: &Home, path: &Path) -> Option<(String, BundleKind)> {
    let canon = fs::canonicalize(path).ok()?;
    let m = fs::metadata(&canon).ok()?;
    lookup(home, &canon, &StatKey::of(&m)).map(|(d, k, _)| (d, k))
}

/// `bundles/.specs/<digest>.json`: the clawspec of an inspected, not yet imported bundle,
/// so that a later process planning it again needs neither a re-hash nor a re-scan.
pub(super) fn pending_spec_path(home: &Home, digest: &str) -> PathBuf {
    home.bundles_dir()
        .join(SPECS_DIR)
        .join(format!("{digest}.json"))
}

/// Folder of [`pending_spec_path`] files.
pub(super) const SPECS_DIR: &str = ".specs";

pub(super) fn remember_pending_spec(home: &Home, digest: &str, bytes: &[u8]) {
    if home.is_read_only() || !home.bundles_dir().is_dir() {
        return;
    }
    let p = pending_spec_path(home, digest);
    let r = p
        .parent()
        .map_or(Ok(()), fs::create_dir_all)
        .and_then(|()| fsutil::write_atomic(&p, bytes, 0o644));
    if let Err(e) = r {
        tracing::warn!(path = %p.display(), error = %e, "cannot cache a clawspec");
    }
}

pub(super) fn pending_spec(home: &Home, digest: &str, kind: BundleKind) -> Option<Arc<ClawSpec>> {
    let p = pending_spec_path(home, digest);
    let bytes = fs::read(&p).ok()?;
    let spec = parse_and_validate(kind, &bytes, &p.display().to_string(), CLAWSPEC_JSON).ok()?;
    let spec = Arc::new(spec);
    with_cache(home, |c| c.specs.insert(digest.to_string(), spec.clone()));
    Some(spec)
}
