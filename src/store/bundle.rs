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

use crate::desired::{BundleDesired, BundleKind};
use crate::home::Home;
use crate::input::clawspec::ClawSpec;
use crate::store::blob::{
    BUF_SIZE, BlobError, BlobStore, DiskProblem, HEAD_CAP, ImageSource, Part, check_disk_header,
    flock_blocking, parse_ref, try_flock,
};
use crate::store::progress::{Progress, Tracker};
use crate::util::digest::{is_sha256_hex, sha256_hex};
use crate::util::fsutil;

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
    /// Largest entry (bytes). Default 64 GiB.
    pub max_entry_bytes: u64,
    /// Most bytes the gzip stream may expand to, tar headers included (gzip-bomb guard).
    /// Default 128 GiB.
    pub max_total_bytes: u64,
    /// Most entries. Default 100 000.
    pub max_entries: u64,
    /// Largest `clawspec.json` (tar entry or JSON bundle). Default 16 MiB.
    pub max_clawspec_bytes: u64,
}

impl Default for ImportOptions {
    fn default() -> Self {
        ImportOptions {
            max_entry_bytes: 64 << 30,
            max_total_bytes: 128 << 30,
            max_entries: 100_000,
            max_clawspec_bytes: 16 << 20,
        }
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
    #[error("{bundle}: invalid {entry}")]
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
    #[error("cannot fetch bundle {url}")]
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

fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
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
            source: Box::new(source),
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
    match head.iter().find(|b| !b.is_ascii_whitespace()) {
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

// ---- the tar.gz pipeline -------------------------------------------------------------------

/// The inflating side's view of the compressed bytes (a `BufRead` over channel blocks).
struct RawReader {
    rx: Receiver<Vec<u8>>,
    recycle: SyncSender<Vec<u8>>,
    cur: Vec<u8>,
    pos: usize,
}

impl Read for RawReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let avail = io::BufRead::fill_buf(self)?;
        let n = avail.len().min(buf.len());
        buf[..n].copy_from_slice(&avail[..n]);
        io::BufRead::consume(self, n);
        Ok(n)
    }
}

impl io::BufRead for RawReader {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if self.pos == self.cur.len() {
            let old = std::mem::take(&mut self.cur);
            if old.capacity() >= CHUNK {
                let _ = self.recycle.try_send(old);
            }
            self.pos = 0;
            // A closed channel is the end of the file (or a read error, which the reading
            // stage reports).
            if let Ok(b) = self.rx.recv() {
                self.cur = b;
            }
        }
        Ok(&self.cur[self.pos..])
    }
    fn consume(&mut self, n: usize) {
        self.pos = (self.pos + n).min(self.cur.len());
    }
}

/// Stage 1: read the bundle file in large blocks, hash every byte (the digest), report
/// progress, pass the blocks on. Once the next stage hangs up (tar end, or clawspec found
/// while scanning) it only reads and hashes.
fn read_side(
    mut file: File,
    mut tracker: Tracker,
    tx: SyncSender<Vec<u8>>,
    recycle: Receiver<Vec<u8>>,
) -> io::Result<String> {
    let mut hasher = Sha256::new();
    let mut sending = true;
    let mut spare = Vec::new();
    loop {
        let mut buf = if sending {
            recycle.try_recv().unwrap_or_default()
        } else {
            std::mem::take(&mut spare)
        };
        buf.resize(CHUNK, 0);
        let mut n = 0;
        while n < CHUNK {
            match file.read(&mut buf[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracker.finish(false);
                    return Err(e);
                }
            }
        }
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        tracker.advance(n as u64);
        if sending {
            buf.truncate(n);
            if let Err(e) = tx.send(buf) {
                sending = false;
                spare = e.0;
            }
        } else {
            spare = buf;
        }
    }
    tracker.finish(true);
    Ok(hex::encode(hasher.finalize()))
}

/// Decompressed bytes arrive in blocks of this size.
const CHUNK: usize = 1 << 20;
/// Blocks in flight between the two threads.
const DEPTH: usize = 4;

/// The untar side's view of the decompressed stream.
struct ChannelReader {
    rx: Receiver<Vec<u8>>,
    recycle: SyncSender<Vec<u8>>,
    cur: Vec<u8>,
    pos: usize,
    guard: Rc<StreamGuard>,
}

/// Limits on what the `tar` crate may read, shared between the reader it owns and the
/// untar loop that sees the entries.
struct StreamGuard {
    /// Bytes handed to the `tar` crate so far.
    delivered: Cell<u64>,
    /// Total expansion limit ([`ImportOptions::max_total_bytes`]).
    limit: u64,
    /// Set when `limit` was reached.
    exceeded: Cell<bool>,
    /// Stream offset the `tar` crate may read up to: the end of the current entry plus
    /// [`HEADER_SLACK`]. It bounds what the crate buffers in memory on its own (GNU long
    /// names, PAX records, sparse maps) between two entries.
    allowed_end: Cell<u64>,
    /// Set when `allowed_end` was reached.
    header_overflow: Cell<bool>,
}

/// Most bytes of headers (tar, GNU long name, PAX) between two entries.
const HEADER_SLACK: u64 = 1 << 20;

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.pos == self.cur.len() {
            let old = std::mem::take(&mut self.cur);
            if old.capacity() >= CHUNK {
                let _ = self.recycle.try_send(old);
            }
            self.pos = 0;
            match self.rx.recv() {
                Ok(b) => self.cur = b,
                // The inflating side stopped: end of stream (or its error, reported by it).
                Err(_) => return Ok(0),
            }
        }
        // There is more data: may the crate have it?
        let g = &*self.guard;
        let delivered = g.delivered.get();
        if delivered >= g.allowed_end.get() {
            g.header_overflow.set(true);
            return Err(io::Error::other("entry headers too large"));
        }
        if delivered >= g.limit {
            g.exceeded.set(true);
            return Err(io::Error::other("expansion limit reached"));
        }
        let room = g.allowed_end.get().min(g.limit) - delivered;
        let n = buf
            .len()
            .min(self.cur.len() - self.pos)
            .min(usize::try_from(room).unwrap_or(usize::MAX));
        buf[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        g.delivered.set(delivered + n as u64);
        Ok(n)
    }
}

/// Stage 2: gunzip, hand blocks of decompressed bytes to the untar stage. Returns the
/// decompression error, if any. Stops early when the untar stage hangs up.
fn inflate_side(
    raw: RawReader,
    tx: SyncSender<Vec<u8>>,
    recycle: Receiver<Vec<u8>>,
) -> Option<io::Error> {
    let mut dec = flate2::bufread::MultiGzDecoder::new(raw);
    loop {
        let mut buf = recycle.try_recv().unwrap_or_default();
        buf.resize(CHUNK, 0);
        let mut n = 0;
        let mut failure = None;
        while n < CHUNK {
            match dec.read(&mut buf[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        if n > 0 {
            buf.truncate(n);
            if tx.send(buf).is_err() {
                return None;
            }
        }
        if failure.is_some() || n < CHUNK {
            return failure;
        }
    }
}

/// Where a normalized archive path belongs.
enum Place {
    /// The root itself (`./`).
    Root,
    /// `clawspec.json`.
    Clawspec,
    /// `claw` or `claw/…` (relative path under the payload folder, empty for `claw`).
    Payload(PathBuf),
    /// A top-level file or folder (candidate `clawbox:///NAME` image).
    Top(String),
    /// Anything else: checked, then skipped.
    Other,
}

/// Normalize an entry path: refuse absolute paths and `..`, drop `.`.
fn normalize(path: &Path) -> Result<Vec<String>, Refusal> {
    let mut parts = Vec::new();
    for c in path.components() {
        match c {
            Component::RootDir | Component::Prefix(_) => return Err(Refusal::AbsolutePath),
            Component::ParentDir => return Err(Refusal::ParentDir),
            Component::CurDir => {}
            Component::Normal(s) => parts.push(s.to_string_lossy().into_owned()),
        }
    }
    Ok(parts)
}

fn place(parts: &[String]) -> Place {
    match parts {
        [] => Place::Root,
        [one] if one == CLAWSPEC_JSON => Place::Clawspec,
        [first, rest @ ..] if first == PAYLOAD_DIR => Place::Payload(rest.iter().collect()),
        [one] => Place::Top(one.clone()),
        _ => Place::Other,
    }
}

/// An in-bundle image read from the archive (written to a staged blob unless the blob is
/// already in the store).
struct Staged {
    entry: String,
    sha: String,
    head: Vec<u8>,
    part: Option<Part>,
}

/// Everything an import creates before it commits; removed on drop unless committed.
struct Scratch {
    tmp_dir: Option<PathBuf>,
    staged: Vec<Staged>,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        for s in self.staged.drain(..) {
            if let Some(p) = s.part {
                p.discard();
            }
        }
        if let Some(d) = self.tmp_dir.take() {
            let _ = remove_tree(&d);
        }
    }
}

/// What thread B is asked to do.
enum Mode<'a> {
    /// Find and parse `clawspec.json`, then stop.
    Scan,
    /// Extract into `tmp_dir`, staging images in `store`.
    Import {
        store: &'a BlobStore,
        tmp_dir: &'a Path,
    },
}

/// What thread B found.
#[derive(Default)]
struct TarOut {
    clawspec: Option<(Vec<u8>, ClawSpec)>,
    has_payload: bool,
}

struct Untar<'a> {
    bundle: &'a str,
    opts: &'a ImportOptions,
    guard: Rc<StreamGuard>,
    current: String,
}

impl Untar<'_> {
    fn refuse(&self, entry: &str, reason: Refusal) -> BundleError {
        BundleError::Refused {
            bundle: self.bundle.to_string(),
            entry: entry.to_string(),
            reason,
        }
    }

    /// An error while reading the archive stream.
    fn read_error(&self, e: io::Error) -> BundleError {
        if self.guard.header_overflow.get() {
            let entry = if self.current.is_empty() {
                "(first header)".to_string()
            } else {
                format!("(headers after {})", self.current)
            };
            BundleError::Refused {
                bundle: self.bundle.to_string(),
                entry,
                reason: Refusal::HeadersTooLarge {
                    limit: HEADER_SLACK,
                },
            }
        } else if self.guard.exceeded.get() {
            BundleError::ExpansionLimit {
                bundle: self.bundle.to_string(),
                entry: self.current.clone(),
                limit: self.opts.max_total_bytes,
            }
        } else {
            BundleError::Corrupt {
                bundle: self.bundle.to_string(),
                source: e,
            }
        }
    }

    fn run<R: Read>(
        &mut self,
        reader: R,
        mode: &Mode<'_>,
        scratch: &mut Scratch,
    ) -> Result<TarOut, BundleError> {
        let mut out = TarOut::default();
        let mut archive = tar::Archive::new(reader);
        let mut seen: BTreeSet<Vec<String>> = BTreeSet::new();
        let mut count = 0u64;
        let mut buf = vec![0u8; BUF_SIZE];
        let entries = archive.entries().map_err(|e| self.read_error(e))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| self.read_error(e))?;
            // The crate may read this entry, its padding and the next headers, no more.
            let end = entry
                .raw_file_position()
                .saturating_add(entry.size().div_ceil(512).saturating_mul(512))
                .saturating_add(HEADER_SLACK);
            self.guard.allowed_end.set(end);
            let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            self.current = raw.clone();
            count += 1;
            if count > self.opts.max_entries {
                return Err(self.refuse(
                    &raw,
                    Refusal::TooManyEntries {
                        limit: self.opts.max_entries,
                    },
                ));
            }
            if entry.header().entry_type() == tar::EntryType::XGlobalHeader {
                // PAX global header (`git archive` writes one): metadata only, skipped.
                continue;
            }
            let path = entry.path().map_err(|e| self.read_error(e))?.into_owned();
            let parts = normalize(&path).map_err(|r| self.refuse(&raw, r))?;
            let etype = entry.header().entry_type();
            use tar::EntryType as T;
            let is_dir = match etype {
                T::Regular | T::Continuous => false,
                T::Directory => true,
                T::Symlink => return Err(self.refuse(&raw, Refusal::Symlink)),
                T::Link => return Err(self.refuse(&raw, Refusal::HardLink)),
                T::Char | T::Block => return Err(self.refuse(&raw, Refusal::Device)),
                T::Fifo => return Err(self.refuse(&raw, Refusal::Fifo)),
                T::GNUSparse => return Err(self.refuse(&raw, Refusal::Sparse)),
                other => {
                    return Err(
                        self.refuse(&raw, Refusal::UnsupportedType(other.as_byte() as char))
                    );
                }
            };
            let size = entry.size();
            if size > self.opts.max_entry_bytes {
                return Err(self.refuse(
                    &raw,
                    Refusal::TooLarge {
                        size,
                        limit: self.opts.max_entry_bytes,
                    },
                ));
            }
            if !parts.is_empty() && !seen.insert(parts.clone()) {
                return Err(self.refuse(&raw, Refusal::Duplicate));
            }
            match place(&parts) {
                Place::Root | Place::Other => {}
                Place::Clawspec => {
                    if is_dir {
                        return Err(self.refuse(&raw, Refusal::ClawspecNotRegular));
                    }
                    if size > self.opts.max_clawspec_bytes {
                        return Err(BundleError::ClawspecTooLarge {
                            bundle: self.bundle.to_string(),
                            entry: raw,
                            size,
                            limit: self.opts.max_clawspec_bytes,
                        });
                    }
                    let mut bytes = Vec::with_capacity(size as usize);
                    entry
                        .read_to_end(&mut bytes)
                        .map_err(|e| self.read_error(e))?;
                    let spec = parse_and_validate(BundleKind::TarGz, &bytes, self.bundle, &raw)?;
                    out.clawspec = Some((bytes, spec));
                    if let Mode::Scan = mode {
                        return Ok(out);
                    }
                }
                Place::Payload(rel) => {
                    let Mode::Import { tmp_dir, .. } = mode else {
                        continue;
                    };
                    out.has_payload = true;
                    let dest = tmp_dir.join(PAYLOAD_DIR).join(&rel);
                    let extract_err = |source| BundleError::Extract {
                        bundle: self.bundle.to_string(),
                        entry: raw.clone(),
                        path: dest.clone(),
                        source,
                    };
                    if is_dir {
                        fs::create_dir_all(&dest).map_err(extract_err)?;
                    } else {
                        let mode_bits = entry.header().mode().unwrap_or(0o644);
                        self.write_payload_file(&mut entry, &dest, mode_bits, &mut buf)
                            .map_err(|e| match e {
                                CopyError::Read(e) => self.read_error(e),
                                CopyError::Write(e) => extract_err(e),
                            })?;
                    }
                }
                Place::Top(name) => {
                    let Mode::Import { store, .. } = mode else {
                        continue;
                    };
                    if is_dir {
                        continue;
                    }
                    // With the clawspec known, only referenced images are kept; before it,
                    // every top-level file is staged and the unreferenced ones dropped later.
                    let expected = match &out.clawspec {
                        Some((_, spec)) => {
                            match clawbox_images(spec)
                                .into_iter()
                                .find(|(_, e, _)| *e == name)
                            {
                                Some((image, _, sha)) => Some((image, sha)),
                                None => continue,
                            }
                        }
                        None => None,
                    };
                    let hash_only = expected.as_ref().is_some_and(|(_, sha)| store.has(sha));
                    let staged =
                        self.stage(&mut entry, store, &raw, name, hash_only, &mut buf, scratch)?;
                    if let Some((image, sha)) = expected
                        && staged.sha != sha
                    {
                        return Err(BundleError::ImageMismatch {
                            bundle: self.bundle.to_string(),
                            entry: raw,
                            image,
                            expected: sha,
                            actual: staged.sha.clone(),
                        });
                    }
                }
            }
        }
        Ok(out)
    }

    fn write_payload_file<R: Read>(
        &self,
        entry: &mut R,
        dest: &Path,
        mode_bits: u32,
        buf: &mut [u8],
    ) -> Result<(), CopyError> {
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent).map_err(CopyError::Write)?;
        }
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(dest)
            .map_err(CopyError::Write)?;
        loop {
            let n = match entry.read(buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(CopyError::Read(e)),
            };
            f.write_all(&buf[..n]).map_err(CopyError::Write)?;
        }
        f.sync_all().map_err(CopyError::Write)?;
        // Payload is read-only; keep only the executable bit (no setuid/setgid/sticky,
        // nothing group- or world-writable).
        let m = if mode_bits & 0o111 != 0 { 0o555 } else { 0o444 };
        f.set_permissions(fs::Permissions::from_mode(m))
            .map_err(CopyError::Write)
    }

    #[allow(clippy::too_many_arguments)]
    fn stage<'s, R: Read>(
        &self,
        entry: &mut R,
        store: &BlobStore,
        raw: &str,
        name: String,
        hash_only: bool,
        buf: &mut [u8],
        scratch: &'s mut Scratch,
    ) -> Result<&'s Staged, BundleError> {
        let mut part = None;
        let mut hasher = Sha256::new();
        let mut head = Vec::new();
        if !hash_only {
            let p = store.staging_path();
            let created = Part::create(&p).map_err(|source| BundleError::Extract {
                bundle: self.bundle.to_string(),
                entry: raw.to_string(),
                path: p.clone(),
                source,
            })?;
            part = Some(created);
        }
        scratch.staged.push(Staged {
            entry: name,
            sha: String::new(),
            head: Vec::new(),
            part,
        });
        let idx = scratch.staged.len() - 1;
        loop {
            let n = match entry.read(buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.read_error(e)),
            };
            let chunk = &buf[..n];
            match scratch.staged[idx].part.as_mut() {
                Some(p) => p.append(chunk).map_err(|source| BundleError::Extract {
                    bundle: self.bundle.to_string(),
                    entry: raw.to_string(),
                    path: p.path.clone(),
                    source,
                })?,
                None => {
                    hasher.update(chunk);
                    if head.len() < HEAD_CAP {
                        let take = (HEAD_CAP - head.len()).min(n);
                        head.extend_from_slice(&chunk[..take]);
                    }
                }
            }
        }
        let s = &mut scratch.staged[idx];
        match &s.part {
            Some(p) => {
                s.sha = p.digest();
                s.head = p.head().to_vec();
            }
            None => {
                s.sha = hex::encode(hasher.finalize());
                s.head = head;
            }
        }
        Ok(s)
    }
}

enum CopyError {
    Read(io::Error),
    Write(io::Error),
}

/// Run the pipeline over a tar.gz bundle: read + hash (the digest) → gunzip → untar
/// (+ hash and write images and payload), three threads joined by bounded channels of
/// 1 MiB blocks. Returns the file digest and what the untar stage found. In scan mode it
/// stops untarring at `clawspec.json` (the digest still covers the whole file).
fn run_pipeline(
    file: File,
    bundle: &str,
    opts: &ImportOptions,
    mode: &Mode<'_>,
    scratch: &mut Scratch,
    tracker: Tracker,
) -> Result<(String, TarOut), BundleError> {
    let (raw_tx, raw_rx) = sync_channel::<Vec<u8>>(DEPTH);
    let (raw_recycle_tx, raw_recycle_rx) = sync_channel::<Vec<u8>>(DEPTH + 2);
    let (tx, rx) = sync_channel::<Vec<u8>>(DEPTH);
    let (recycle_tx, recycle_rx) = sync_channel::<Vec<u8>>(DEPTH + 2);
    std::thread::scope(|s| {
        let read_thread = s.spawn(move || read_side(file, tracker, raw_tx, raw_recycle_rx));
        let raw = RawReader {
            rx: raw_rx,
            recycle: raw_recycle_tx,
            cur: Vec::new(),
            pos: 0,
        };
        let inflate_thread = s.spawn(move || inflate_side(raw, tx, recycle_rx));
        let guard = Rc::new(StreamGuard {
            delivered: Cell::new(0),
            limit: opts.max_total_bytes,
            exceeded: Cell::new(false),
            allowed_end: Cell::new(HEADER_SLACK),
            header_overflow: Cell::new(false),
        });
        let reader = ChannelReader {
            rx,
            recycle: recycle_tx,
            cur: Vec::new(),
            pos: 0,
            guard: guard.clone(),
        };
        let mut untar = Untar {
            bundle,
            opts,
            guard,
            current: String::new(),
        };
        // `run` consumes the reader; when it returns, its channel closes, the gunzip stage
        // stops, and the reading stage only finishes the digest.
        let out = untar.run(reader, mode, scratch);
        let inflated = inflate_thread
            .join()
            .unwrap_or_else(|_| Some(io::Error::other("the decompression thread panicked")));
        let digest = read_thread
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the reading thread panicked")));
        let scan = matches!(mode, Mode::Scan);
        match (digest, inflated, out) {
            (Err(e), _, _) => Err(BundleError::Io {
                action: "cannot read",
                path: bundle.into(),
                source: e,
            }),
            (Ok(d), None, Ok(o)) => Ok((d, o)),
            // Scanning stops at clawspec.json: damage after it is import's business (the
            // gunzip stage may have read ahead into it).
            (Ok(d), Some(_), Ok(o)) if scan && o.clawspec.is_some() => Ok((d, o)),
            // A refusal or limit found by the untar stage is the more precise error.
            (_, _, Err(e @ (BundleError::Refused { .. } | BundleError::ExpansionLimit { .. }))) => {
                Err(e)
            }
            (Ok(_), Some(e), _) => Err(BundleError::Corrupt {
                bundle: bundle.to_string(),
                source: e,
            }),
            (Ok(_), None, Err(e)) => Err(e),
        }
    })
}

// ---- stale temp files ----------------------------------------------------------------------

fn pid_alive(pid: i32) -> bool {
    match rustix::process::Pid::from_raw(pid) {
        None => false,
        Some(p) => !matches!(
            rustix::process::test_kill_process(p),
            Err(rustix::io::Errno::SRCH)
        ),
    }
}

/// The pid at the end of `.tmp-<x>-<pid>` / `import-<pid>-<n>.part`.
fn temp_owner(name: &str) -> Option<i32> {
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
fn stale_temps(home: &Home) -> Vec<PathBuf> {
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

fn remove_path(p: &Path) -> io::Result<()> {
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
fn seal_tree(dir: &Path) -> io::Result<()> {
    for e in fs::read_dir(dir)? {
        let e = e?;
        if e.file_type()?.is_dir() {
            seal_tree(&e.path())?;
        }
    }
    fsutil::sync_dir(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o555))
}

// ---- the stat cache ------------------------------------------------------------------------

/// What identifies an unchanged file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct StatKey {
    size: u64,
    mtime_ns: i64,
    ino: u64,
    dev: u64,
}

impl StatKey {
    fn of(m: &fs::Metadata) -> StatKey {
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
struct StatEntry {
    #[serde(flatten)]
    key: StatKey,
    digest: String,
    kind: BundleKind,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct StatCacheFile {
    version: u32,
    entries: BTreeMap<PathBuf, StatEntry>,
}

#[derive(Default)]
struct HomeCache {
    loaded: bool,
    stat: HashMap<PathBuf, StatEntry>,
    /// Clawspecs by bundle digest (identical bytes, identical spec).
    specs: HashMap<String, Arc<ClawSpec>>,
}

static CACHES: LazyLock<Mutex<HashMap<PathBuf, HomeCache>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

fn with_cache<T>(home: &Home, f: impl FnOnce(&mut HomeCache) -> T) -> T {
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

fn stat_cache_path(home: &Home) -> PathBuf {
    home.bundles_dir().join(STAT_CACHE)
}

fn read_stat_file(home: &Home) -> Option<StatCacheFile> {
    let bytes = fs::read(stat_cache_path(home)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Remember `path` → digest, in memory and (when `bundles/` exists) on disk.
fn remember(home: &Home, path: &Path, key: StatKey, digest: &str, kind: BundleKind) {
    let entry = StatEntry {
        key,
        digest: digest.to_string(),
        kind,
    };
    with_cache(home, |c| c.stat.insert(path.to_path_buf(), entry.clone()));
    if !home.bundles_dir().is_dir() {
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

fn lookup(
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
fn pending_spec_path(home: &Home, digest: &str) -> PathBuf {
    home.bundles_dir()
        .join(SPECS_DIR)
        .join(format!("{digest}.json"))
}

/// Folder of [`pending_spec_path`] files.
const SPECS_DIR: &str = ".specs";

fn remember_pending_spec(home: &Home, digest: &str, bytes: &[u8]) {
    if !home.bundles_dir().is_dir() {
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

fn pending_spec(home: &Home, digest: &str, kind: BundleKind) -> Option<Arc<ClawSpec>> {
    let p = pending_spec_path(home, digest);
    let bytes = fs::read(&p).ok()?;
    let spec = parse_and_validate(kind, &bytes, &p.display().to_string(), CLAWSPEC_JSON).ok()?;
    let spec = Arc::new(spec);
    with_cache(home, |c| c.specs.insert(digest.to_string(), spec.clone()));
    Some(spec)
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
            let l = flock_blocking(&lp).map_err(|source| BundleError::Store {
                path: lp.clone(),
                source: Box::new(source),
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
            && let Ok(Some(_l)) = try_flock(&store.lock_path(&s.sha))
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
    BlobStore::new(home)
        .fetch_url(url, sha256, progress)
        .await
        .map_err(|source| BundleError::Fetch {
            url: url.to_string(),
            source: Box::new(source),
        })
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

fn tree_size(p: &Path) -> u64 {
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
            if let Ok(Some(l)) = try_flock(&store.lock_path(sha)) {
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
