//! `.clawbox` bundles: identify ([`inspect`]), import ([`import`]), list and collect
//! garbage ([`list`], [`gc`]).
//!
//! Two forms (see `rfc/003-blobs-and-bundles.md`):
//!
//! * **tar.gz** holding `clawspec.json`, usually `run.qcow2` (any top-level file named by a
//!   `clawbox:///NAME` image ref), optionally a `claw/…` payload;
//! * **JSON**: a plain clawspec (first non-blank byte `{`) whose images are all remote.
//!
//! A bundle is identified by the SHA-256 of its file bytes (its *digest*). Importing puts it
//! in `<home>/bundles/<digest>/` (`clawspec.json`, `claw/`, `bundle.json` as the completion
//! marker) and its in-bundle images in the blob store. Import is one pass over the file:
//! one thread reads, hashes (the digest) and gunzips; another untars, hashes each image
//! while writing it to a staged blob, and writes the payload. Every entry is checked: no
//! absolute paths, no `..`, no links, no devices or FIFOs, no duplicates, size limits per
//! entry and in total. A refused bundle leaves nothing behind.

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, LazyLock, Mutex};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::home::Home;
use crate::input::clawspec::ClawSpec;
use crate::store::blob::{BlobStore, ImageSource, parse_ref};
use crate::store::part::{BUF_SIZE, BlobError, DiskProblem, HEAD_CAP, Part, check_disk_header};
use crate::store::progress::{Progress, Tracker};
use crate::util::digest::{is_sha256_hex, sha256_hex};
use crate::util::fsutil;
use crate::util::lock::try_lock_file;

mod cache;
mod inventory;
mod untar;

use crate::util::text::now_rfc3339;
use cache::*;
pub use cache::{cached_digest, clear_process_cache};
use inventory::*;
pub use inventory::{GcFailure, GcReport, StoredItem, StoredKind, gc, list};
use untar::*;

/// Kind of `.clawbox`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BundleKind {
    /// tar.gz with `clawspec.json`, optional `run.qcow2`, optional `claw/`.
    TarGz,
    /// A plain JSON clawspec whose images are all remote.
    Json,
}

/// A bundle as the planner sees it: identified by the SHA-256 of its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleDesired {
    /// SHA-256 of the bundle file; also its folder name under `bundles/`.
    pub digest: String,
    /// Where to import it from (local path, or the blob of a downloaded URL bundle).
    pub source: PathBuf,
    /// Form of the bundle.
    pub kind: BundleKind,
    /// The validated clawspec it carries.
    pub clawspec: Arc<ClawSpec>,
    /// True when `bundles/<digest>/` is complete (nothing to import).
    pub imported: bool,
}

/// Name of the clawspec inside a tar.gz bundle and inside an imported bundle folder.
pub const CLAWSPEC_JSON: &str = "clawspec.json";
/// Payload folder inside a bundle and inside an imported bundle folder.
pub const PAYLOAD_DIR: &str = "claw";
/// Completion marker (metadata) of an imported bundle.
pub const BUNDLE_JSON: &str = "bundle.json";
/// The stat cache of [`inspect`], under `bundles/`.
pub const STAT_CACHE: &str = "stat-cache.json";

/// Limits applied to every bundle entry while importing or inspecting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportOptions {
    /// Largest entry (bytes). Default 16 GiB (a qcow2 disk of a real agent image is a
    /// few GiB).
    pub max_entry_bytes: u64,
    /// Most bytes the gzip stream may expand to, tar headers included (gzip-bomb guard).
    /// Default 32 GiB.
    pub max_total_bytes: u64,
    /// Most bytes the stream may expand to per compressed byte of the bundle file, above
    /// [`ImportOptions::ratio_floor_bytes`] (gzip-bomb guard: real qcow2 images compress
    /// 2-10×, a bomb 1000×). Default 200.
    pub max_ratio: u64,
    /// Expansion always allowed whatever the ratio. Default 256 MiB.
    pub ratio_floor_bytes: u64,
    /// Most entries. Default 100 000.
    pub max_entries: u64,
    /// Largest `clawspec.json` (tar entry or JSON bundle). Default 16 MiB.
    pub max_clawspec_bytes: u64,
}

impl Default for ImportOptions {
    fn default() -> Self {
        ImportOptions {
            max_entry_bytes: 16 << 30,
            max_total_bytes: 32 << 30,
            max_ratio: 200,
            ratio_floor_bytes: 256 << 20,
            max_entries: 100_000,
            max_clawspec_bytes: 16 << 20,
        }
    }
}

impl ImportOptions {
    /// The expansion limit for a bundle file of `compressed` bytes: the ratio cap (at
    /// least the floor), never above [`ImportOptions::max_total_bytes`].
    pub fn expansion_limit(&self, compressed: u64) -> u64 {
        compressed
            .saturating_mul(self.max_ratio)
            .max(self.ratio_floor_bytes)
            .min(self.max_total_bytes)
    }
}

/// Why an archive entry is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The path starts at `/`.
    #[error("absolute path")]
    AbsolutePath,
    /// The path has a `..` component.
    #[error("path has a `..` component")]
    ParentDir,
    /// A symbolic link (all links are refused).
    #[error("symbolic link (bundles may not contain links)")]
    Symlink,
    /// A hard link (all links are refused).
    #[error("hard link (bundles may not contain links)")]
    HardLink,
    /// A character or block device.
    #[error("device node")]
    Device,
    /// A named pipe.
    #[error("FIFO")]
    Fifo,
    /// A GNU sparse file.
    #[error("sparse file")]
    Sparse,
    /// Any other tar entry type.
    #[error("unsupported entry type {0:?}")]
    UnsupportedType(char),
    /// The entry is larger than [`ImportOptions::max_entry_bytes`].
    #[error("entry is {size} bytes, over the {limit}-byte limit")]
    TooLarge {
        /// Entry size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// Same path as an earlier entry.
    #[error("duplicate entry")]
    Duplicate,
    /// More entries than [`ImportOptions::max_entries`].
    #[error("more than {limit} entries")]
    TooManyEntries {
        /// The limit.
        limit: u64,
    },
    /// More than 1 MiB of headers (GNU long names, PAX records) before an entry.
    #[error("more than {limit} bytes of headers before the next entry")]
    HeadersTooLarge {
        /// The limit.
        limit: u64,
    },
    /// `clawspec.json` is a folder or another non-regular entry.
    #[error("clawspec.json is not a regular file")]
    ClawspecNotRegular,
}

/// Errors about bundles. Messages name the bundle (and the entry) and never repeat their
/// source.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// A local file operation failed.
    #[error("{action} {path}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file concerned.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// Neither gzip nor JSON.
    #[error("{bundle}: not a .clawbox (neither a gzip archive nor a JSON clawspec)")]
    NotABundle {
        /// The bundle file.
        bundle: String,
    },
    /// The path is not a regular file.
    #[error("{bundle}: not a regular file")]
    NotAFile {
        /// The bundle path.
        bundle: String,
    },
    /// The gzip or tar stream is damaged.
    #[error("{bundle}: damaged archive")]
    Corrupt {
        /// The bundle file.
        bundle: String,
        /// The decoder's error.
        #[source]
        source: io::Error,
    },
    /// An entry breaks a safety rule; nothing was kept.
    #[error("{bundle}: entry {entry:?} refused: {reason}")]
    Refused {
        /// The bundle file.
        bundle: String,
        /// The entry path as written in the archive.
        entry: String,
        /// Which rule.
        reason: Refusal,
    },
    /// The archive expands beyond [`ImportOptions::max_total_bytes`] (gzip bomb guard).
    #[error("{bundle}: expands to more than {limit} bytes (reached in entry {entry:?}); refused")]
    ExpansionLimit {
        /// The bundle file.
        bundle: String,
        /// The entry being read when the limit was reached.
        entry: String,
        /// The limit.
        limit: u64,
    },
    /// No `clawspec.json` in a tar.gz bundle.
    #[error("{bundle}: no clawspec.json in the archive")]
    MissingClawspec {
        /// The bundle file.
        bundle: String,
    },
    /// `clawspec.json` is over [`ImportOptions::max_clawspec_bytes`].
    #[error("{bundle}: {entry} is {size} bytes, over the {limit}-byte limit")]
    ClawspecTooLarge {
        /// The bundle file.
        bundle: String,
        /// The entry (or the JSON bundle itself).
        entry: String,
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// `clawspec.json` does not parse or validate.
    #[error("{bundle}: invalid {}", clawspec_entry(.bundle, .entry))]
    Clawspec {
        /// The bundle file.
        bundle: String,
        /// The entry (or the JSON bundle itself).
        entry: String,
        /// The parser's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// An image ref of the clawspec is unusable.
    #[error("{bundle}: image {image:?} has an unusable ref")]
    BadRef {
        /// The bundle file.
        bundle: String,
        /// The image name.
        image: String,
        /// Why.
        #[source]
        source: Box<BlobError>,
    },
    /// A JSON bundle names an image inside a bundle.
    #[error(
        "{bundle}: image {image:?} refers to {reference}, but a JSON bundle carries no files (its images must be remote)"
    )]
    ClawboxInJson {
        /// The bundle file.
        bundle: String,
        /// The image name.
        image: String,
        /// The ref.
        reference: String,
    },
    /// A `clawbox:///NAME` image whose file is not in the archive.
    #[error(
        "{bundle}: image {image:?} refers to {reference}, but the archive has no entry {entry:?}"
    )]
    MissingImage {
        /// The bundle file.
        bundle: String,
        /// The image name.
        image: String,
        /// The ref.
        reference: String,
        /// The missing entry.
        entry: String,
    },
    /// An in-bundle image does not hash to the clawspec's digest.
    #[error(
        "{bundle}: entry {entry:?} does not match image {image:?} of the clawspec: expected sha256 {expected}, got {actual}"
    )]
    ImageMismatch {
        /// The bundle file.
        bundle: String,
        /// The entry.
        entry: String,
        /// The image name.
        image: String,
        /// Digest in the clawspec.
        expected: String,
        /// Digest of the entry.
        actual: String,
    },
    /// An in-bundle image is a qcow2 we refuse (backing file, external data file).
    #[error("{bundle}: entry {entry:?} refused: {problem}")]
    Disk {
        /// The bundle file.
        bundle: String,
        /// The entry.
        entry: String,
        /// What is wrong.
        problem: DiskProblem,
    },
    /// An entry could not be written out.
    #[error("{bundle}: cannot write entry {entry:?} to {path}")]
    Extract {
        /// The bundle file.
        bundle: String,
        /// The entry.
        entry: String,
        /// Where it was being written.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The bundle file changed between planning and import.
    #[error("{bundle}: changed since it was planned (digest was {expected}, is now {actual})")]
    Changed {
        /// The bundle file.
        bundle: String,
        /// Planned digest.
        expected: String,
        /// Digest now.
        actual: String,
    },
    /// The blob store could not be used.
    #[error("cannot use the blob store in {path}")]
    Store {
        /// The blob folder.
        path: PathBuf,
        /// Why.
        #[source]
        source: Box<BlobError>,
    },
    /// A remote bundle could not be fetched.
    #[error("cannot fetch bundle{}", unless_named(.url, .source))]
    Fetch {
        /// The URL.
        url: String,
        /// Why.
        #[source]
        source: Box<BlobError>,
    },
    /// An imported bundle folder is incomplete or damaged.
    #[error("imported bundle {dir} is damaged: {detail}")]
    Damaged {
        /// The bundle folder.
        dir: PathBuf,
        /// What is wrong.
        detail: String,
    },
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> BundleError {
    let path = path.to_path_buf();
    move |source| BundleError::Io {
        action,
        path,
        source,
    }
}

/// Parse a clawspec. One place to swap in `ClawSpec::parse` when it lands.
fn parse_clawspec(bytes: &[u8]) -> Result<ClawSpec, Box<dyn std::error::Error + Send + Sync>> {
    ClawSpec::parse(bytes).map_err(Into::into)
}

// ---- metadata ------------------------------------------------------------------------------

/// `bundles/<digest>/bundle.json`: written last, its presence means "imported".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleMeta {
    /// Form of the bundle.
    pub kind: BundleKind,
    /// The clawspec's `name`.
    pub name: String,
    /// Where it was imported from (canonical path; a blob path for URL bundles).
    pub source: PathBuf,
    /// SHA-256 of the bundle file.
    pub digest: String,
    /// SHA-256 of the `run` image, if the clawspec has one.
    pub run_blob: Option<String>,
    /// SHA-256 of the `base` image.
    pub base_blob: Option<String>,
    /// Every image digest of the clawspec (the blobs this bundle needs).
    #[serde(default)]
    pub blobs: Vec<String>,
    /// True when the bundle had a `claw/` payload.
    pub has_payload: bool,
    /// RFC 3339 UTC time of the import.
    pub imported_at: String,
}

/// A bundle in `bundles/<digest>/`.
#[derive(Debug, Clone)]
pub struct ImportedBundle {
    /// SHA-256 of the bundle file.
    pub digest: String,
    /// `bundles/<digest>/`.
    pub dir: PathBuf,
    /// Its `bundle.json`.
    pub meta: BundleMeta,
    /// Its clawspec.
    pub clawspec: Arc<ClawSpec>,
    /// False when it was already imported and nothing was done.
    pub fresh: bool,
}

impl ImportedBundle {
    /// `bundles/<digest>/claw/` (exists only when [`BundleMeta::has_payload`]).
    pub fn payload_dir(&self) -> PathBuf {
        self.dir.join(PAYLOAD_DIR)
    }
}

fn meta_for(
    kind: BundleKind,
    spec: &ClawSpec,
    source: &Path,
    digest: &str,
    has_payload: bool,
) -> BundleMeta {
    let by_name = |n: &str| {
        spec.image
            .iter()
            .find(|i| i.name == n)
            .map(|i| i.sha256.clone())
    };
    BundleMeta {
        kind,
        name: spec.name.clone(),
        source: source.to_path_buf(),
        digest: digest.to_string(),
        run_blob: by_name("run"),
        base_blob: by_name("base"),
        blobs: spec.image.iter().map(|i| i.sha256.clone()).collect(),
        has_payload,
        imported_at: now_rfc3339(),
    }
}

/// True when `bundles/<digest>/bundle.json` exists.
pub fn is_imported(home: &Home, digest: &str) -> bool {
    is_sha256_hex(digest) && home.bundle_dir(digest).join(BUNDLE_JSON).is_file()
}

/// Read an imported bundle.
pub fn read_imported(home: &Home, digest: &str) -> Result<ImportedBundle, BundleError> {
    let dir = home.bundle_dir(digest);
    let meta_path = dir.join(BUNDLE_JSON);
    let meta_bytes = fs::read(&meta_path).map_err(io_err("cannot read", &meta_path))?;
    let meta: BundleMeta =
        serde_json::from_slice(&meta_bytes).map_err(|e| BundleError::Damaged {
            dir: dir.clone(),
            detail: format!("bad {BUNDLE_JSON}: {e}"),
        })?;
    let spec = cached_spec(home, digest)?;
    Ok(ImportedBundle {
        digest: digest.to_string(),
        dir,
        meta,
        clawspec: spec,
        fresh: false,
    })
}

/// The clawspec of an imported bundle, parsed once per process.
fn cached_spec(home: &Home, digest: &str) -> Result<Arc<ClawSpec>, BundleError> {
    if let Some(s) = with_cache(home, |c| c.specs.get(digest).cloned()) {
        return Ok(s);
    }
    let dir = home.bundle_dir(digest);
    let p = dir.join(CLAWSPEC_JSON);
    let bytes = fs::read(&p).map_err(io_err("cannot read", &p))?;
    let spec = Arc::new(
        parse_clawspec(&bytes).map_err(|source| BundleError::Clawspec {
            bundle: dir.display().to_string(),
            entry: CLAWSPEC_JSON.into(),
            source,
        })?,
    );
    with_cache(home, |c| c.specs.insert(digest.to_string(), spec.clone()));
    Ok(spec)
}

// ---- checks on clawspecs -------------------------------------------------------------------

/// Check every image ref; in a JSON bundle none may point into the bundle.
fn validate_refs(kind: BundleKind, spec: &ClawSpec, bundle: &str) -> Result<(), BundleError> {
    for img in &spec.image {
        let src = parse_ref(&img.reference).map_err(|source| BundleError::BadRef {
            bundle: bundle.to_string(),
            image: img.name.clone(),
            source: Box::new(source.into()),
        })?;
        if !is_sha256_hex(&img.sha256) {
            return Err(BundleError::BadRef {
                bundle: bundle.to_string(),
                image: img.name.clone(),
                source: Box::new(BlobError::BadDigest {
                    sha256: img.sha256.clone(),
                }),
            });
        }
        if kind == BundleKind::Json && matches!(src, ImageSource::Clawbox(_)) {
            return Err(BundleError::ClawboxInJson {
                bundle: bundle.to_string(),
                image: img.name.clone(),
                reference: img.reference.clone(),
            });
        }
    }
    Ok(())
}

/// `(image name, entry name, sha256)` of every in-bundle image.
fn clawbox_images(spec: &ClawSpec) -> Vec<(String, String, String)> {
    spec.image
        .iter()
        .filter_map(|i| match parse_ref(&i.reference) {
            Ok(ImageSource::Clawbox(entry)) => Some((i.name.clone(), entry, i.sha256.clone())),
            _ => None,
        })
        .collect()
}

/// `" URL"`, or nothing when the cause already names the URL (a message names its source
/// once).
fn unless_named(url: &str, source: &BlobError) -> String {
    if source.to_string().contains(url) {
        String::new()
    } else {
        format!(" {url}")
    }
}

/// The entry named in a clawspec error: a JSON bundle *is* its clawspec, so its path is
/// not said twice.
fn clawspec_entry<'a>(bundle: &str, entry: &'a str) -> &'a str {
    if entry == bundle { "clawspec" } else { entry }
}

fn parse_and_validate(
    kind: BundleKind,
    bytes: &[u8],
    bundle: &str,
    entry: &str,
) -> Result<ClawSpec, BundleError> {
    let spec = parse_clawspec(bytes).map_err(|source| BundleError::Clawspec {
        bundle: bundle.to_string(),
        entry: entry.to_string(),
        source,
    })?;
    validate_refs(kind, &spec, bundle)?;
    Ok(spec)
}

// ---- kind detection ------------------------------------------------------------------------

fn detect_kind(f: &mut File, bundle: &str) -> Result<BundleKind, BundleError> {
    let mut head = [0u8; 4096];
    let mut n = 0;
    while n < head.len() {
        match f.read(&mut head[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(source) => {
                return Err(BundleError::Io {
                    action: "cannot read",
                    path: bundle.into(),
                    source,
                });
            }
        }
    }
    let head = &head[..n];
    if head.starts_with(&[0x1f, 0x8b]) {
        return Ok(BundleKind::TarGz);
    }
    // A JSON clawspec saved by an editor that writes a UTF-8 byte order mark is still JSON.
    let text = head.strip_prefix(&[0xef, 0xbb, 0xbf]).unwrap_or(head);
    match text.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => Ok(BundleKind::Json),
        _ => Err(BundleError::NotABundle {
            bundle: bundle.to_string(),
        }),
    }
}

fn open_bundle(path: &Path) -> Result<(File, fs::Metadata), BundleError> {
    let f = File::open(path).map_err(io_err("cannot open bundle", path))?;
    let m = f.metadata().map_err(io_err("cannot stat bundle", path))?;
    if !m.is_file() {
        return Err(BundleError::NotAFile {
            bundle: path.display().to_string(),
        });
    }
    Ok((f, m))
}

fn read_json_bundle(
    mut f: File,
    size: u64,
    bundle: &str,
    opts: &ImportOptions,
) -> Result<(Vec<u8>, String, ClawSpec), BundleError> {
    if size > opts.max_clawspec_bytes {
        return Err(BundleError::ClawspecTooLarge {
            bundle: bundle.to_string(),
            entry: bundle.to_string(),
            size,
            limit: opts.max_clawspec_bytes,
        });
    }
    let mut bytes = Vec::with_capacity(size as usize);
    (&mut f)
        .take(opts.max_clawspec_bytes + 1)
        .read_to_end(&mut bytes)
        .map_err(io_err("cannot read", Path::new(bundle)))?;
    if bytes.len() as u64 > opts.max_clawspec_bytes {
        return Err(BundleError::ClawspecTooLarge {
            bundle: bundle.to_string(),
            entry: bundle.to_string(),
            size: bytes.len() as u64,
            limit: opts.max_clawspec_bytes,
        });
    }
    let digest = sha256_hex(&bytes);
    let spec = parse_and_validate(BundleKind::Json, &bytes, bundle, bundle)?;
    Ok((bytes, digest, spec))
}

// ---- inspect -------------------------------------------------------------------------------

/// Identify a local bundle for the planner without importing it.
///
/// The digest comes from the stat cache (`bundles/stat-cache.json`, keyed by canonical
/// path, size, mtime and inode) when the file is unchanged, so a steady-state plan costs a
/// `realpath` and a `stat` per call. Otherwise the file is read once: hashed, and for a
/// tar.gz gunzipped only until `clawspec.json` is found. The clawspec comes from
/// `bundles/<digest>/` when imported.
pub fn inspect(home: &Home, path: &Path) -> Result<BundleDesired, BundleError> {
    inspect_with(home, path, &ImportOptions::default())
}

/// [`inspect`] with explicit limits.
pub fn inspect_with(
    home: &Home,
    path: &Path,
    opts: &ImportOptions,
) -> Result<BundleDesired, BundleError> {
    let canon = fs::canonicalize(path).map_err(io_err("cannot open bundle", path))?;
    let meta = fs::metadata(&canon).map_err(io_err("cannot stat bundle", &canon))?;
    if !meta.is_file() {
        return Err(BundleError::NotAFile {
            bundle: canon.display().to_string(),
        });
    }
    let key = StatKey::of(&meta);
    if let Some((digest, kind, spec)) = lookup(home, &canon, &key) {
        let imported = is_imported(home, &digest);
        let spec = match spec {
            Some(s) => Some(s),
            None if imported => Some(cached_spec(home, &digest)?),
            None => pending_spec(home, &digest, kind),
        };
        if let Some(clawspec) = spec {
            return Ok(BundleDesired {
                digest,
                source: canon,
                kind,
                clawspec,
                imported,
            });
        }
    }
    let bundle = canon.display().to_string();
    let (mut f, _) = open_bundle(&canon)?;
    let kind = detect_kind(&mut f, &bundle)?;
    let (f, _) = open_bundle(&canon)?;
    let (digest, spec_bytes, spec) = match kind {
        BundleKind::Json => {
            let (bytes, digest, spec) = read_json_bundle(f, meta.len(), &bundle, opts)?;
            (digest, bytes, spec)
        }
        BundleKind::TarGz => {
            let mut scratch = Scratch {
                tmp_dir: None,
                staged: Vec::new(),
            };
            let tracker = Progress::silent().start(&bundle, Some(meta.len()));
            let (digest, out) = run_pipeline(f, &bundle, opts, &Mode::Scan, &mut scratch, tracker)?;
            let (bytes, spec) = out.clawspec.ok_or_else(|| BundleError::MissingClawspec {
                bundle: bundle.clone(),
            })?;
            (digest, bytes, spec)
        }
    };
    let spec = Arc::new(spec);
    remember(home, &canon, key, &digest, kind);
    with_cache(home, |c| c.specs.insert(digest.clone(), spec.clone()));
    let imported = is_imported(home, &digest);
    if !imported {
        remember_pending_spec(home, &digest, &spec_bytes);
    }
    Ok(BundleDesired {
        imported,
        digest,
        source: canon,
        kind,
        clawspec: spec,
    })
}

// ---- import --------------------------------------------------------------------------------

/// Import a bundle (tar.gz or JSON) into `bundles/<digest>/`, its in-bundle images into
/// the blob store. Idempotent: an imported bundle is returned without work.
pub async fn import(
    home: &Home,
    path: &Path,
    progress: &Progress,
) -> Result<ImportedBundle, BundleError> {
    import_with(home, path, progress, &ImportOptions::default()).await
}

/// [`import`] with explicit limits.
pub async fn import_with(
    home: &Home,
    path: &Path,
    progress: &Progress,
    opts: &ImportOptions,
) -> Result<ImportedBundle, BundleError> {
    let (home, path, progress, opts) = (
        home.clone(),
        path.to_path_buf(),
        progress.clone(),
        opts.clone(),
    );
    let shown = path.clone();
    tokio::task::spawn_blocking(move || import_blocking(&home, &path, &progress, &opts))
        .await
        .map_err(|e| BundleError::Io {
            action: "import worker failed for",
            path: shown,
            source: io::Error::other(e.to_string()),
        })?
}

/// Import what the planner identified; fails with [`BundleError::Changed`] when the file
/// no longer has the planned digest.
pub async fn import_desired(
    home: &Home,
    bundle: &BundleDesired,
    progress: &Progress,
) -> Result<ImportedBundle, BundleError> {
    if is_imported(home, &bundle.digest) {
        return read_imported(home, &bundle.digest);
    }
    let got = import(home, &bundle.source, progress).await?;
    if got.digest != bundle.digest {
        return Err(BundleError::Changed {
            bundle: bundle.source.display().to_string(),
            expected: bundle.digest.clone(),
            actual: got.digest,
        });
    }
    Ok(got)
}

static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// The synchronous import (what [`import`] runs on a blocking thread).
pub fn import_blocking(
    home: &Home,
    path: &Path,
    progress: &Progress,
    opts: &ImportOptions,
) -> Result<ImportedBundle, BundleError> {
    let canon = fs::canonicalize(path).map_err(io_err("cannot open bundle", path))?;
    let bundle = canon.display().to_string();
    // Steady state: the stat cache knows the digest and the bundle is imported.
    let known = cached_digest(home, &canon);
    if let Some((d, _)) = &known
        && is_imported(home, d)
    {
        return read_imported(home, d);
    }
    home.ensure()
        .map_err(io_err("cannot create", home.root()))?;
    let store = BlobStore::new(home);
    store.ensure_dirs().map_err(|source| BundleError::Store {
        path: home.blobs_dir(),
        source: Box::new(source),
    })?;
    let locks = home.bundles_dir().join(".locks");
    fs::create_dir_all(&locks).map_err(io_err("cannot create", &locks))?;
    for p in stale_temps(home) {
        tracing::info!(path = %p.display(), "removing leftovers of an interrupted import");
        if let Err(e) = remove_path(&p) {
            tracing::warn!(path = %p.display(), error = %e, "cannot remove");
        }
    }

    // With a known digest, serialize with other importers of the same bundle.
    let _lock = match &known {
        Some((d, _)) => {
            let lp = locks.join(format!("{d}.lock"));
            let l = crate::util::lock::lock(
                &lp,
                &format!("the import lock of bundle {d}"),
                None,
                |_| {},
            )
            .map_err(|e| BundleError::Store {
                path: lp.clone(),
                source: Box::new(BlobError::io("cannot lock", &lp)(io::Error::other(e))),
            })?;
            if is_imported(home, d) {
                return read_imported(home, d);
            }
            // Holding the lock, any other temp folder of this digest is dead.
            if let Ok(rd) = fs::read_dir(home.bundles_dir()) {
                let prefix = format!(".tmp-{d}-");
                for e in rd.flatten() {
                    if e.file_name().to_string_lossy().starts_with(&prefix) {
                        let _ = remove_tree(&e.path());
                    }
                }
            }
            Some(l)
        }
        None => None,
    };

    let (mut f, meta) = open_bundle(&canon)?;
    let key = StatKey::of(&meta);
    let kind = detect_kind(&mut f, &bundle)?;
    let (f, _) = open_bundle(&canon)?;
    let pid = std::process::id();
    let tmp_name = match &known {
        Some((d, _)) => format!(".tmp-{d}-{pid}"),
        None => format!(
            ".tmp-pending{}-{pid}",
            TMP_SEQ.fetch_add(1, Ordering::Relaxed)
        ),
    };
    let tmp_dir = home.bundles_dir().join(tmp_name);
    let _ = remove_tree(&tmp_dir);
    fs::create_dir(&tmp_dir).map_err(io_err("cannot create", &tmp_dir))?;
    let mut scratch = Scratch {
        tmp_dir: Some(tmp_dir.clone()),
        staged: Vec::new(),
    };

    let (digest, spec_bytes, spec, has_payload) = match kind {
        BundleKind::Json => {
            let (bytes, digest, spec) = read_json_bundle(f, meta.len(), &bundle, opts)?;
            (digest, bytes, spec, false)
        }
        BundleKind::TarGz => {
            let label = canon
                .file_name()
                .map(|n| format!("import {}", n.to_string_lossy()))
                .unwrap_or_else(|| "import".into());
            let tracker = progress.start(&label, Some(meta.len()));
            let mode = Mode::Import {
                store: &store,
                tmp_dir: &tmp_dir,
            };
            let (digest, out) = run_pipeline(f, &bundle, opts, &mode, &mut scratch, tracker)?;
            let (bytes, spec) = out.clawspec.ok_or_else(|| BundleError::MissingClawspec {
                bundle: bundle.clone(),
            })?;
            publish_images(&store, &spec, &bundle, &mut scratch)?;
            (digest, bytes, spec, out.has_payload)
        }
    };
    remember(home, &canon, key, &digest, kind);
    if is_imported(home, &digest) {
        // Imported meanwhile (by another process, or under another path).
        return read_imported(home, &digest);
    }

    let bundle_meta = meta_for(kind, &spec, &canon, &digest, has_payload);
    let payload = tmp_dir.join(PAYLOAD_DIR);
    if has_payload {
        fs::create_dir_all(&payload).map_err(io_err("cannot create", &payload))?;
        seal_tree(&payload).map_err(io_err("cannot seal", &payload))?;
    }
    let spec_path = tmp_dir.join(CLAWSPEC_JSON);
    fsutil::write_atomic(&spec_path, &spec_bytes, 0o444)
        .map_err(io_err("cannot write", &spec_path))?;
    let meta_bytes = serde_json::to_vec_pretty(&bundle_meta).map_err(|e| BundleError::Io {
        action: "cannot encode",
        path: tmp_dir.join(BUNDLE_JSON),
        source: io::Error::other(e.to_string()),
    })?;
    let meta_path = tmp_dir.join(BUNDLE_JSON);
    fsutil::write_atomic(&meta_path, &meta_bytes, 0o444)
        .map_err(io_err("cannot write", &meta_path))?;

    let final_dir = home.bundle_dir(&digest);
    commit_dir(home, &tmp_dir, &final_dir, &digest)?;
    scratch.tmp_dir = None;
    let _ = fs::remove_file(pending_spec_path(home, &digest));
    let spec = Arc::new(spec);
    with_cache(home, |c| c.specs.insert(digest.clone(), spec.clone()));
    Ok(ImportedBundle {
        digest,
        dir: final_dir,
        meta: bundle_meta,
        clawspec: spec,
        fresh: true,
    })
}

/// Rename the finished temp folder into place. A complete folder already there wins.
fn commit_dir(home: &Home, tmp: &Path, dest: &Path, digest: &str) -> Result<(), BundleError> {
    for _ in 0..2 {
        match fs::rename(tmp, dest) {
            Ok(()) => {
                return fsutil::sync_dir(&home.bundles_dir())
                    .map_err(io_err("cannot sync", &home.bundles_dir()));
            }
            Err(_) if is_imported(home, digest) => {
                let _ = remove_tree(tmp);
                return Ok(());
            }
            Err(e) if dest.exists() => {
                // An incomplete folder (no bundle.json) cannot come from us; replace it.
                tracing::warn!(dir = %dest.display(), error = %e, "replacing an incomplete bundle folder");
                remove_tree(dest).map_err(io_err("cannot remove", dest))?;
            }
            Err(e) => {
                return Err(BundleError::Io {
                    action: "cannot rename into place",
                    path: dest.to_path_buf(),
                    source: e,
                });
            }
        }
    }
    Err(BundleError::Io {
        action: "cannot rename into place",
        path: dest.to_path_buf(),
        source: io::Error::from(io::ErrorKind::AlreadyExists),
    })
}

/// Check staged images against the clawspec and move them into the store.
fn publish_images(
    store: &BlobStore,
    spec: &ClawSpec,
    bundle: &str,
    scratch: &mut Scratch,
) -> Result<(), BundleError> {
    let wanted = clawbox_images(spec);
    for (image, entry, sha) in &wanted {
        let Some(s) = scratch.staged.iter().find(|s| &s.entry == entry) else {
            return Err(BundleError::MissingImage {
                bundle: bundle.to_string(),
                image: image.clone(),
                reference: format!("{}{entry}", crate::store::blob::CLAWBOX_SCHEME),
                entry: entry.clone(),
            });
        };
        if &s.sha != sha {
            return Err(BundleError::ImageMismatch {
                bundle: bundle.to_string(),
                entry: entry.clone(),
                image: image.clone(),
                expected: sha.clone(),
                actual: s.sha.clone(),
            });
        }
        if let Err(problem) = check_disk_header(&s.head) {
            return Err(BundleError::Disk {
                bundle: bundle.to_string(),
                entry: entry.clone(),
                problem,
            });
        }
    }
    // Everything verified: publish (or drop what the store already has, or nobody wants).
    for s in std::mem::take(&mut scratch.staged) {
        let Some(part) = s.part else { continue };
        let wanted_here = wanted
            .iter()
            .any(|(_, e, sha)| *e == s.entry && *sha == s.sha);
        if !wanted_here || store.has(&s.sha) {
            part.discard();
            continue;
        }
        let dest = store.path(&s.sha);
        let pp = part.path.clone();
        if let Err(source) = part.sync() {
            part.discard();
            return Err(BundleError::Io {
                action: "cannot sync",
                path: pp,
                source,
            });
        }
        if let Err(source) = part.publish(&dest) {
            let _ = fs::remove_file(&pp);
            return Err(BundleError::Io {
                action: "cannot store blob",
                path: dest,
                source,
            });
        }
        // A download part of the same blob is now useless (unless someone holds it).
        let dl = store.part_path(&s.sha);
        if dl.exists()
            && let Ok(Some(_l)) = try_lock_file(&store.lock_path(&s.sha), 0o644)
        {
            let _ = fs::remove_file(&dl);
        }
    }
    Ok(())
}

/// Download a remote bundle into the blob store (it is a blob like any other: verified,
/// read-only) and return the blob path, to give to [`inspect`] and [`import`].
pub async fn fetch_url_bundle(
    home: &Home,
    url: &str,
    sha256: &str,
    progress: &Progress,
) -> Result<PathBuf, BundleError> {
    // A read-only verb uses the stored blob when there is one, and otherwise fetches into
    // a scratch root that is removed at exit: checking a manifest writes nothing into the
    // home.
    let store_home = if home.is_read_only() {
        let kept = BlobStore::new(home).path(sha256);
        if kept.is_file() {
            return Ok(kept);
        }
        crate::home::scratch_home().map_err(|source| BundleError::Io {
            action: "cannot create a scratch folder for",
            path: url.into(),
            source,
        })?
    } else {
        home.clone()
    };
    BlobStore::new(&store_home)
        .fetch_url(url, sha256, progress)
        .await
        .map_err(|source| BundleError::Fetch {
            url: url.to_string(),
            source: Box::new(source),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_paths() {
        assert_eq!(normalize(Path::new("./a/./b/")).unwrap(), vec!["a", "b"]);
        assert_eq!(normalize(Path::new("/etc/x")), Err(Refusal::AbsolutePath));
        assert_eq!(normalize(Path::new("a/../../x")), Err(Refusal::ParentDir));
        assert!(normalize(Path::new("./")).unwrap().is_empty());
    }

    #[test]
    fn temp_owner_pid() {
        assert_eq!(temp_owner(".tmp-abc-123"), Some(123));
        assert_eq!(temp_owner(".tmp-pending4-77"), Some(77));
        assert_eq!(temp_owner("import-55-3.part"), Some(55));
        assert_eq!(temp_owner("x"), None);
    }
}
