//! The content-addressed blob store: `<home>/blobs/<sha256>`, immutable and read-only.
//!
//! Protocol (see `rfc/003-blobs-and-bundles.md`):
//!
//! * a blob is written to `blobs/.tmp/<sha256>.part` (downloads) or
//!   `blobs/.tmp/import-<pid>-<n>.part` (bundle imports), hashed in the same pass, fsynced,
//!   verified, checked (a qcow2 must not name a backing file or an external data file),
//!   made `0444` and renamed into place, then the folder is fsynced;
//! * a present blob is trusted and never fetched again;
//! * a mismatch deletes the `.part`: nothing is left that could be taken for progress;
//! * an interrupted HTTP download keeps its `.part` and resumes it with `Range`;
//! * one download per blob at a time: an in-process async lock, then an exclusive `flock`
//!   on `blobs/.locks/<sha256>.lock`, after which presence is checked again.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, OnceLock, Weak};
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::home::Home;
use crate::input::clawspec::Image;
use crate::store::catalog::{Catalog, CatalogError};
use crate::store::progress::Progress;
use crate::util::digest::is_sha256_hex;
use crate::util::fsutil;

/// Scheme prefix of an image inside its bundle (`clawbox:///run.qcow2`).
pub const CLAWBOX_SCHEME: &str = "clawbox:///";

/// I/O buffer size for hashing and copying.
pub(crate) const BUF_SIZE: usize = 1 << 20;

/// How many leading bytes of a blob are kept to check its disk-image header.
pub(crate) const HEAD_CAP: usize = 64 << 10;

/// Errors of the blob store. Messages name the URL, file or blob concerned and never
/// repeat their source (the caller prints the chain once).
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// The expected digest is not a lowercase 64-hex SHA-256.
    #[error("{sha256:?} is not a lowercase hex SHA-256")]
    BadDigest {
        /// The offending value.
        sha256: String,
    },
    /// An image ref with an unknown scheme or a malformed URL.
    #[error(
        "unsupported image ref {reference:?} (want http(s)://, file:///, clawbox:/// or a catalog name)"
    )]
    UnsupportedRef {
        /// The ref.
        reference: String,
    },
    /// A catalog name that neither the built-in catalog nor the user's knows.
    #[error("unknown image name {name:?} (not in the built-in catalog nor in {catalog})")]
    UnknownName {
        /// The name.
        name: String,
        /// Where user entries are read from.
        catalog: String,
    },
    /// The catalog could not be loaded.
    #[error("cannot resolve image name {name:?}")]
    Catalog {
        /// The name being resolved.
        name: String,
        /// Why.
        #[source]
        source: CatalogError,
    },
    /// A `clawbox:///` image whose bundle has not been imported (its blob is absent).
    #[error(
        "bundle not imported: image {reference} (sha256 {sha256}) of bundle {bundle} is not in the blob store"
    )]
    BundleNotImported {
        /// The ref.
        reference: String,
        /// Expected digest.
        sha256: String,
        /// Bundle digest, or `?` when unknown.
        bundle: String,
    },
    /// The HTTP client could not be built.
    #[error("cannot initialise the HTTP client")]
    Client(#[source] reqwest::Error),
    /// A request failed (connect, TLS, body read).
    #[error("download of {url} failed")]
    Http {
        /// The URL.
        url: String,
        /// The client error.
        #[source]
        source: reqwest::Error,
    },
    /// The server answered with an error status.
    #[error("download of {url} failed: HTTP {status}")]
    Status {
        /// The URL.
        url: String,
        /// The status code.
        status: u16,
    },
    /// The server's answer made no sense (e.g. an unrequested partial response).
    #[error("download of {url} failed: {detail}")]
    Protocol {
        /// The URL.
        url: String,
        /// What was wrong.
        detail: String,
    },
    /// The body ended before the announced length.
    #[error("download of {url} ended early: got {got} of {expected} bytes")]
    ShortBody {
        /// The URL.
        url: String,
        /// Bytes received.
        got: u64,
        /// Bytes announced.
        expected: u64,
    },
    /// The bytes do not hash to the expected digest. Nothing was kept.
    #[error(
        "{source_name}: SHA-256 mismatch: expected {expected}, got {actual} ({size} bytes); nothing was stored"
    )]
    Mismatch {
        /// URL or file the bytes came from.
        source_name: String,
        /// Expected digest.
        expected: String,
        /// Digest of what arrived.
        actual: String,
        /// Bytes received.
        size: u64,
    },
    /// The image is a qcow2 we refuse to store (backing file, external data file, …).
    #[error("{source_name}: refused disk image: {problem}")]
    Disk {
        /// URL, file or bundle entry the image came from.
        source_name: String,
        /// What is wrong with it.
        problem: DiskProblem,
    },
    /// A local file operation failed.
    #[error("{action} {path}")]
    Io {
        /// What was being done (`cannot write`, …).
        action: &'static str,
        /// The file concerned.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
}

impl BlobError {
    pub(crate) fn io(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> BlobError {
        let path = path.to_path_buf();
        move |source| BlobError::Io {
            action,
            path,
            source,
        }
    }

    /// True for errors worth retrying (network trouble, 5xx, short bodies).
    fn retryable(&self) -> bool {
        match self {
            BlobError::Http { .. } | BlobError::ShortBody { .. } => true,
            BlobError::Status { status, .. } => *status >= 500 || *status == 429 || *status == 408,
            _ => false,
        }
    }
}

// ---- disk image headers --------------------------------------------------------------------

/// Format of a disk image, from its first bytes. Drivers must pass it to QEMU explicitly
/// (`format=qcow2` / `format=raw`) and never let QEMU probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskFormat {
    /// A qcow2 image (version 2 or 3) with no backing file and no external data file.
    Qcow2,
    /// Anything else is treated as raw.
    Raw,
}

/// Why a qcow2 header is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiskProblem {
    /// The header names a backing file: booting it would make QEMU open a host path.
    #[error("qcow2 header names a backing file {name:?}")]
    BackingFile {
        /// The backing file name, when it lies within the bytes read.
        name: String,
    },
    /// The qcow2 uses an external data file (incompatible feature bit 2).
    #[error("qcow2 header uses an external data file")]
    ExternalDataFile,
    /// A qcow2 magic with a version this build does not know.
    #[error("qcow2 version {0} is not supported")]
    Version(u32),
    /// The file starts with the qcow2 magic but is shorter than a header.
    #[error("truncated qcow2 header")]
    Truncated,
}

const QCOW2_MAGIC: &[u8; 4] = b"QFI\xfb";

fn be_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_be_bytes(a)
}

fn be_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

/// Classify an image from its first bytes (at least the first 104 for a qcow2; give
/// more to have a backing file's name in the error). A qcow2 that names a backing file
/// or an external data file is refused: blobs must be self-contained.
pub fn check_disk_header(head: &[u8]) -> Result<DiskFormat, DiskProblem> {
    if head.len() < 4 || &head[..4] != QCOW2_MAGIC {
        return Ok(DiskFormat::Raw);
    }
    if head.len() < 72 {
        return Err(DiskProblem::Truncated);
    }
    let version = be_u32(head, 4);
    if version != 2 && version != 3 {
        return Err(DiskProblem::Version(version));
    }
    let backing_offset = be_u64(head, 8);
    let backing_size = be_u32(head, 16) as u64;
    if backing_offset != 0 || backing_size != 0 {
        let name = usize::try_from(backing_offset)
            .ok()
            .zip(usize::try_from(backing_size).ok())
            .and_then(|(o, n)| head.get(o..o.checked_add(n)?))
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .unwrap_or_else(|| format!("<{backing_size} bytes at offset {backing_offset}>"));
        return Err(DiskProblem::BackingFile { name });
    }
    if version == 3 {
        if head.len() < 104 {
            return Err(DiskProblem::Truncated);
        }
        let incompatible = be_u64(head, 72);
        if incompatible & (1 << 2) != 0 {
            return Err(DiskProblem::ExternalDataFile);
        }
    }
    Ok(DiskFormat::Qcow2)
}

/// Read the header of a stored image and classify it (see [`check_disk_header`]).
pub fn disk_format(path: &Path) -> Result<DiskFormat, BlobError> {
    let mut head = Vec::with_capacity(HEAD_CAP);
    File::open(path)
        .and_then(|f| f.take(HEAD_CAP as u64).read_to_end(&mut head))
        .map_err(BlobError::io("cannot read", path))?;
    check_disk_header(&head).map_err(|problem| BlobError::Disk {
        source_name: path.display().to_string(),
        problem,
    })
}

// ---- hashing -------------------------------------------------------------------------------

/// Lowercase hex SHA-256 of a file, read in large blocks (SHA-NI when the CPU has it).
pub fn hash_file(path: &Path) -> io::Result<String> {
    let mut f = File::open(path)?;
    advise_sequential(&f);
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 4 * BUF_SIZE];
    loop {
        let n = match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

fn advise_sequential(f: &File) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: plain syscall on a valid open descriptor; the result is advisory.
        unsafe {
            libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_SEQUENTIAL);
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = f;
}

// ---- temp files ------------------------------------------------------------------------

/// A blob being written: the temp file, the hash of every byte in it, and its head.
pub(crate) struct Part {
    pub(crate) path: PathBuf,
    file: File,
    hasher: Sha256,
    len: u64,
    head: Vec<u8>,
    flushed_to: u64,
}

/// Start kernel write-back every this many bytes so the final fsync is short.
const WRITEBACK_STEP: u64 = 32 << 20;

impl Part {
    /// Create (or truncate) `path`.
    pub(crate) fn create(path: &Path) -> io::Result<Part> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)?;
        Ok(Part {
            path: path.to_path_buf(),
            file,
            hasher: Sha256::new(),
            len: 0,
            head: Vec::new(),
            flushed_to: 0,
        })
    }

    /// Open `path` to continue it: its existing bytes are hashed first, so the hash covers
    /// the whole file. A missing file starts empty.
    pub(crate) fn resume(path: &Path) -> io::Result<Part> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)?;
        advise_sequential(&file);
        let mut p = Part {
            path: path.to_path_buf(),
            file,
            hasher: Sha256::new(),
            len: 0,
            head: Vec::new(),
            flushed_to: 0,
        };
        let mut buf = vec![0u8; BUF_SIZE];
        loop {
            let n = match p.file.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            p.account(&buf[..n]);
        }
        p.flushed_to = p.len;
        p.file.seek(SeekFrom::End(0))?;
        Ok(p)
    }

    fn account(&mut self, buf: &[u8]) {
        self.hasher.update(buf);
        if self.head.len() < HEAD_CAP {
            let take = (HEAD_CAP - self.head.len()).min(buf.len());
            self.head.extend_from_slice(&buf[..take]);
        }
        self.len += buf.len() as u64;
    }

    /// Bytes in the file.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// Drop everything (the server restarted from zero).
    pub(crate) fn reset(&mut self) -> io::Result<()> {
        self.file.set_len(0)?;
        self.file.seek(SeekFrom::Start(0))?;
        self.hasher = Sha256::new();
        self.len = 0;
        self.head.clear();
        self.flushed_to = 0;
        Ok(())
    }

    /// Hash and append `buf`.
    pub(crate) fn append(&mut self, buf: &[u8]) -> io::Result<()> {
        self.file.write_all(buf)?;
        self.account(buf);
        if self.len - self.flushed_to >= WRITEBACK_STEP {
            self.start_writeback();
        }
        Ok(())
    }

    fn start_writeback(&mut self) {
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsRawFd;
            // SAFETY: plain syscall on a valid descriptor with an in-file range; it only
            // starts asynchronous write-back and its failure is harmless (fsync follows).
            unsafe {
                libc::sync_file_range(
                    self.file.as_raw_fd(),
                    self.flushed_to as libc::off64_t,
                    (self.len - self.flushed_to) as libc::off64_t,
                    libc::SYNC_FILE_RANGE_WRITE,
                );
            }
        }
        self.flushed_to = self.len;
    }

    /// fsync the data.
    pub(crate) fn sync(&self) -> io::Result<()> {
        self.file.sync_all()
    }

    /// Hex digest of the bytes so far.
    pub(crate) fn digest(&self) -> String {
        hex::encode(self.hasher.clone().finalize())
    }

    /// The first bytes (up to [`HEAD_CAP`]).
    pub(crate) fn head(&self) -> &[u8] {
        &self.head
    }

    /// Make the file read-only and rename it to `dest`, then fsync `dest`'s folder.
    /// Call [`Part::sync`] first.
    pub(crate) fn publish(self, dest: &Path) -> io::Result<()> {
        self.file
            .set_permissions(fs::Permissions::from_mode(0o444))?;
        drop(self.file);
        fs::rename(&self.path, dest)?;
        fsutil::sync_dir(dest.parent().unwrap_or(Path::new(".")))
    }

    /// Delete the file.
    pub(crate) fn discard(self) {
        drop(self.file);
        let _ = fs::remove_file(&self.path);
    }
}

/// Run blocking work off the async runtime.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| io::Error::other(format!("worker thread failed: {e}")))
}

// ---- locks ---------------------------------------------------------------------------------

type Inflight = Mutex<HashMap<PathBuf, Weak<tokio::sync::Mutex<()>>>>;

/// One async mutex per blob path for this process (downloads of the same blob queue here
/// before they try the cross-process flock).
static INFLIGHT: LazyLock<Inflight> = LazyLock::new(|| Mutex::new(HashMap::new()));

/// Held while a blob is being produced: the in-process guard and the `flock`.
pub(crate) struct BlobLock {
    _file: File,
    _guard: tokio::sync::OwnedMutexGuard<()>,
}

fn inflight_mutex(key: &Path) -> Arc<tokio::sync::Mutex<()>> {
    let mut map = INFLIGHT.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(m) = map.get(key).and_then(Weak::upgrade) {
        return m;
    }
    if map.len() > 256 {
        map.retain(|_, w| w.strong_count() > 0);
    }
    let m = Arc::new(tokio::sync::Mutex::new(()));
    map.insert(key.to_path_buf(), Arc::downgrade(&m));
    m
}

/// Take the exclusive lock of `lock_path` without blocking a runtime thread: try, then
/// sleep and try again. `Ok(None)` from [`try_flock`] means "held by someone else".
pub(crate) async fn flock_async(lock_path: &Path) -> Result<File, BlobError> {
    let started = std::time::Instant::now();
    let mut told = false;
    loop {
        if let Some(f) = try_flock(lock_path)? {
            return Ok(f);
        }
        if !told && started.elapsed() > Duration::from_secs(2) {
            told = true;
            tracing::info!(lock = %lock_path.display(), "waiting for another clawfarm process producing this blob");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Open (creating) `lock_path` and try to take an exclusive `flock` on it.
pub(crate) fn try_flock(lock_path: &Path) -> Result<Option<File>, BlobError> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o644)
        .open(lock_path)
        .map_err(BlobError::io("cannot open lock file", lock_path))?;
    match rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(Some(f)),
        Err(rustix::io::Errno::WOULDBLOCK) => Ok(None),
        Err(e) => Err(BlobError::Io {
            action: "cannot lock",
            path: lock_path.to_path_buf(),
            source: e.into(),
        }),
    }
}

/// Take the exclusive lock of `lock_path`, blocking the calling thread.
pub(crate) fn flock_blocking(lock_path: &Path) -> Result<File, BlobError> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o644)
        .open(lock_path)
        .map_err(BlobError::io("cannot open lock file", lock_path))?;
    rustix::fs::flock(&f, rustix::fs::FlockOperation::LockExclusive).map_err(|e| {
        BlobError::Io {
            action: "cannot lock",
            path: lock_path.to_path_buf(),
            source: e.into(),
        }
    })?;
    Ok(f)
}

// ---- refs ----------------------------------------------------------------------------------

/// Where an image ref points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageSource {
    /// `http://` or `https://`.
    Http(String),
    /// `file:///ABS/PATH`.
    File(PathBuf),
    /// `clawbox:///NAME`: a top-level file of the bundle, stored by import.
    Clawbox(String),
    /// A catalog name such as `ubuntu:24.04`.
    Name(String),
}

/// Classify an image ref (no I/O).
pub fn parse_ref(reference: &str) -> Result<ImageSource, BlobError> {
    let unsupported = || BlobError::UnsupportedRef {
        reference: reference.to_string(),
    };
    if let Some(rest) = reference.strip_prefix(CLAWBOX_SCHEME) {
        let ok = !rest.is_empty()
            && !rest.contains('/')
            && rest != "."
            && rest != ".."
            && !rest.contains('\0');
        return if ok {
            Ok(ImageSource::Clawbox(rest.to_string()))
        } else {
            Err(unsupported())
        };
    }
    if reference.starts_with("http://") || reference.starts_with("https://") {
        let u = reqwest::Url::parse(reference).map_err(|_| unsupported())?;
        return Ok(ImageSource::Http(u.to_string()));
    }
    if reference.starts_with("file://") {
        let u = reqwest::Url::parse(reference).map_err(|_| unsupported())?;
        let p = u.to_file_path().map_err(|_| unsupported())?;
        return Ok(ImageSource::File(p));
    }
    if reference.contains("://") || reference.is_empty() || reference.contains(char::is_whitespace)
    {
        return Err(unsupported());
    }
    Ok(ImageSource::Name(reference.to_string()))
}

// ---- the store -----------------------------------------------------------------------------

/// Download behaviour.
#[derive(Debug, Clone)]
pub struct FetchOptions {
    /// Retries after a failure that made no progress (a failure that moved the `.part`
    /// forward does not use up a retry, up to [`FetchOptions::max_attempts`] in all).
    pub retries: u32,
    /// Upper bound on requests for one blob in one call.
    pub max_attempts: u32,
    /// Delay before the first retry; doubled each time, capped at 30 s.
    pub retry_delay: Duration,
    /// TCP/TLS connect timeout.
    pub connect_timeout: Duration,
    /// A read that stalls longer than this fails (and is retried).
    pub read_timeout: Duration,
}

impl Default for FetchOptions {
    fn default() -> Self {
        FetchOptions {
            retries: 3,
            max_attempts: 20,
            retry_delay: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(30),
            read_timeout: Duration::from_secs(60),
        }
    }
}

/// The blob store of one home. Cheap to create; share one per process when you can (it
/// keeps an HTTP connection pool).
#[derive(Debug)]
pub struct BlobStore {
    home: Home,
    opts: FetchOptions,
    client: OnceLock<reqwest::Client>,
}

/// What is being fetched (decides whether the disk header is checked).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BlobKind {
    /// A disk image: qcow2 headers are checked.
    Image,
    /// Anything else (a downloaded bundle).
    Opaque,
}

static PART_SEQ: AtomicU64 = AtomicU64::new(0);

impl BlobStore {
    /// A store with default [`FetchOptions`].
    pub fn new(home: &Home) -> Self {
        BlobStore::with_options(home, FetchOptions::default())
    }

    /// A store with explicit options.
    pub fn with_options(home: &Home, opts: FetchOptions) -> Self {
        BlobStore {
            home: home.clone(),
            opts,
            client: OnceLock::new(),
        }
    }

    /// The home this store lives in.
    pub fn home(&self) -> &Home {
        &self.home
    }

    /// `blobs/<sha256>` (whether or not it exists).
    pub fn path(&self, sha256: &str) -> PathBuf {
        self.home.blob(sha256)
    }

    /// True when the blob is in the store (a present blob was verified when written).
    pub fn has(&self, sha256: &str) -> bool {
        is_sha256_hex(sha256) && fs::metadata(self.path(sha256)).is_ok_and(|m| m.is_file())
    }

    /// `blobs/.tmp/`, where blobs are written before the rename.
    pub fn tmp_dir(&self) -> PathBuf {
        self.home.blobs_dir().join(".tmp")
    }

    /// `blobs/.locks/`.
    pub fn locks_dir(&self) -> PathBuf {
        self.home.blobs_dir().join(".locks")
    }

    /// `blobs/.tmp/<sha256>.part`: the resumable download of a blob.
    pub fn part_path(&self, sha256: &str) -> PathBuf {
        self.tmp_dir().join(format!("{sha256}.part"))
    }

    /// `blobs/.locks/<sha256>.lock`.
    pub fn lock_path(&self, sha256: &str) -> PathBuf {
        self.locks_dir().join(format!("{sha256}.lock"))
    }

    /// A fresh staging path for a blob of unknown digest (bundle import).
    pub(crate) fn staging_path(&self) -> PathBuf {
        let n = PART_SEQ.fetch_add(1, Ordering::Relaxed);
        self.tmp_dir()
            .join(format!("import-{}-{n}.part", std::process::id()))
    }

    /// Create `blobs/`, `blobs/.tmp/` and `blobs/.locks/`.
    pub fn ensure_dirs(&self) -> Result<(), BlobError> {
        for d in [self.tmp_dir(), self.locks_dir()] {
            fs::create_dir_all(&d).map_err(BlobError::io("cannot create", &d))?;
        }
        Ok(())
    }

    /// Re-hash a stored blob and compare with its name (an `fsck`).
    pub fn verify(&self, sha256: &str) -> Result<bool, BlobError> {
        let p = self.path(sha256);
        Ok(hash_file(&p).map_err(BlobError::io("cannot read", &p))? == sha256)
    }

    fn client(&self) -> Result<&reqwest::Client, BlobError> {
        if let Some(c) = self.client.get() {
            return Ok(c);
        }
        let c = reqwest::Client::builder()
            .connect_timeout(self.opts.connect_timeout)
            .read_timeout(self.opts.read_timeout)
            .user_agent(concat!("clawfarm/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(BlobError::Client)?;
        Ok(self.client.get_or_init(|| c))
    }

    /// Resolve `image.reference` to a concrete source (catalog names → URLs).
    pub fn resolve(&self, reference: &str) -> Result<ImageSource, BlobError> {
        match parse_ref(reference)? {
            ImageSource::Name(name) => {
                let cat = Catalog::load(&self.home).map_err(|source| BlobError::Catalog {
                    name: name.clone(),
                    source,
                })?;
                let url = cat.resolve(&name).ok_or_else(|| BlobError::UnknownName {
                    name: name.clone(),
                    catalog: self.home.root().join("catalog.json").display().to_string(),
                })?;
                match parse_ref(&url)? {
                    s @ (ImageSource::Http(_) | ImageSource::File(_)) => Ok(s),
                    _ => Err(BlobError::UnsupportedRef { reference: url }),
                }
            }
            other => Ok(other),
        }
    }

    /// Make sure the blob of `image` is in the store and return its path.
    ///
    /// A present blob is returned at once (no network). `clawbox:///` images are stored by
    /// bundle import: when absent the error is [`BlobError::BundleNotImported`] (pass the
    /// bundle digest to have it in the message). Everything else is fetched, verified and
    /// (for qcow2) checked for backing files.
    pub async fn ensure(
        &self,
        image: &Image,
        bundle_digest: Option<&str>,
        progress: &Progress,
    ) -> Result<PathBuf, BlobError> {
        let sha = image.sha256.as_str();
        if !is_sha256_hex(sha) {
            return Err(BlobError::BadDigest {
                sha256: sha.to_string(),
            });
        }
        if self.has(sha) {
            return Ok(self.path(sha));
        }
        let source = self.resolve(&image.reference)?;
        if let ImageSource::Clawbox(_) = source {
            return Err(BlobError::BundleNotImported {
                reference: image.reference.clone(),
                sha256: sha.to_string(),
                bundle: bundle_digest.unwrap_or("?").to_string(),
            });
        }
        let label = format!("{} {}", image.name, short(sha));
        self.fetch_source(&source, sha, &label, BlobKind::Image, progress)
            .await
    }

    /// Fetch `url` (`http(s)://` or `file://`) into the store as blob `sha256`, without any
    /// disk-image check (used for downloaded bundles). Returns the blob path.
    pub async fn fetch_url(
        &self,
        url: &str,
        sha256: &str,
        progress: &Progress,
    ) -> Result<PathBuf, BlobError> {
        if !is_sha256_hex(sha256) {
            return Err(BlobError::BadDigest {
                sha256: sha256.to_string(),
            });
        }
        if self.has(sha256) {
            return Ok(self.path(sha256));
        }
        let source = match parse_ref(url)? {
            s @ (ImageSource::Http(_) | ImageSource::File(_)) => s,
            _ => {
                return Err(BlobError::UnsupportedRef {
                    reference: url.to_string(),
                });
            }
        };
        let label = url.rsplit('/').next().unwrap_or(url).to_string();
        self.fetch_source(&source, sha256, &label, BlobKind::Opaque, progress)
            .await
    }

    /// Take the locks, re-check presence, then produce the blob.
    pub(crate) async fn fetch_source(
        &self,
        source: &ImageSource,
        sha: &str,
        label: &str,
        kind: BlobKind,
        progress: &Progress,
    ) -> Result<PathBuf, BlobError> {
        self.ensure_dirs()?;
        let dest = self.path(sha);
        let _lock = self.lock(sha).await?;
        if self.has(sha) {
            tracing::debug!(sha, "blob appeared while waiting for its lock");
            return Ok(dest);
        }
        match source {
            ImageSource::Http(url) => {
                crate::store::fetch::download_http(
                    self,
                    self.client()?,
                    url,
                    sha,
                    label,
                    kind,
                    progress,
                )
                .await?
            }
            ImageSource::File(path) => {
                crate::store::fetch::copy_file(self, path, sha, label, kind, progress).await?
            }
            ImageSource::Clawbox(_) | ImageSource::Name(_) => {
                return Err(BlobError::UnsupportedRef {
                    reference: format!("{source:?}"),
                });
            }
        }
        Ok(dest)
    }

    /// The in-process then cross-process lock of blob `sha`.
    pub(crate) async fn lock(&self, sha: &str) -> Result<BlobLock, BlobError> {
        let lock_path = self.lock_path(sha);
        let guard = inflight_mutex(&lock_path).lock_owned().await;
        let file = flock_async(&lock_path).await?;
        Ok(BlobLock {
            _file: file,
            _guard: guard,
        })
    }

    pub(crate) fn retry_policy(&self) -> &FetchOptions {
        &self.opts
    }
}

/// Verify a finished part against `sha` and the image rules, then publish it as blob
/// `dest`. On a mismatch or a refused image the part is deleted.
pub(crate) fn publish_verified(
    part: Part,
    dest: &Path,
    sha: &str,
    source_name: &str,
    kind: BlobKind,
) -> Result<(), BlobError> {
    let actual = part.digest();
    if actual != sha {
        let size = part.len();
        part.discard();
        return Err(BlobError::Mismatch {
            source_name: source_name.to_string(),
            expected: sha.to_string(),
            actual,
            size,
        });
    }
    if kind == BlobKind::Image
        && let Err(problem) = check_disk_header(part.head())
    {
        part.discard();
        return Err(BlobError::Disk {
            source_name: source_name.to_string(),
            problem,
        });
    }
    let part_path = part.path.clone();
    if let Err(e) = part.sync() {
        part.discard();
        return Err(BlobError::Io {
            action: "cannot sync",
            path: part_path,
            source: e,
        });
    }
    if let Err(e) = part.publish(dest) {
        let _ = fs::remove_file(&part_path);
        return Err(BlobError::Io {
            action: "cannot store blob",
            path: dest.to_path_buf(),
            source: e,
        });
    }
    Ok(())
}

/// First 12 hex digits, for labels.
pub fn short(sha: &str) -> &str {
    &sha[..sha.len().min(12)]
}

pub(crate) fn is_retryable(e: &BlobError) -> bool {
    e.retryable()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn qcow2_header(version: u32, backing: Option<&str>, incompatible: u64) -> Vec<u8> {
        let mut h = vec![0u8; 512];
        h[..4].copy_from_slice(QCOW2_MAGIC);
        h[4..8].copy_from_slice(&version.to_be_bytes());
        if let Some(b) = backing {
            h[8..16].copy_from_slice(&200u64.to_be_bytes());
            h[16..20].copy_from_slice(&(b.len() as u32).to_be_bytes());
            h[200..200 + b.len()].copy_from_slice(b.as_bytes());
        }
        h[72..80].copy_from_slice(&incompatible.to_be_bytes());
        h
    }

    #[test]
    fn disk_headers() {
        assert_eq!(check_disk_header(b"hello"), Ok(DiskFormat::Raw));
        assert_eq!(check_disk_header(&[]), Ok(DiskFormat::Raw));
        assert_eq!(
            check_disk_header(&qcow2_header(3, None, 0)),
            Ok(DiskFormat::Qcow2)
        );
        assert_eq!(
            check_disk_header(&qcow2_header(2, None, 0)),
            Ok(DiskFormat::Qcow2)
        );
        assert_eq!(
            check_disk_header(&qcow2_header(3, Some("/etc/shadow"), 0)),
            Err(DiskProblem::BackingFile {
                name: "/etc/shadow".into()
            })
        );
        assert_eq!(
            check_disk_header(&qcow2_header(3, None, 4)),
            Err(DiskProblem::ExternalDataFile)
        );
        assert_eq!(
            check_disk_header(&qcow2_header(9, None, 0)),
            Err(DiskProblem::Version(9))
        );
        assert_eq!(
            check_disk_header(b"QFI\xfb\0\0"),
            Err(DiskProblem::Truncated)
        );
    }

    #[test]
    fn refs() {
        assert_eq!(
            parse_ref("clawbox:///run.qcow2").unwrap(),
            ImageSource::Clawbox("run.qcow2".into())
        );
        assert!(parse_ref("clawbox:///a/b").is_err());
        assert!(parse_ref("clawbox:///..").is_err());
        assert_eq!(
            parse_ref("file:///tmp/x.img").unwrap(),
            ImageSource::File("/tmp/x.img".into())
        );
        assert!(matches!(
            parse_ref("https://h/x").unwrap(),
            ImageSource::Http(_)
        ));
        assert_eq!(
            parse_ref("ubuntu:24.04").unwrap(),
            ImageSource::Name("ubuntu:24.04".into())
        );
        assert!(parse_ref("ftp://h/x").is_err());
        assert!(parse_ref("").is_err());
    }

    #[test]
    fn part_resume_hashes_existing_bytes() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.part");
        let mut a = Part::create(&p).unwrap();
        a.append(b"hello ").unwrap();
        drop(a);
        let mut b = Part::resume(&p).unwrap();
        assert_eq!(b.len(), 6);
        b.append(b"world").unwrap();
        assert_eq!(b.digest(), crate::util::digest::sha256_hex(b"hello world"));
        assert_eq!(fs::read(&p).unwrap(), b"hello world");
        b.reset().unwrap();
        b.append(b"abc").unwrap();
        assert_eq!(b.digest(), crate::util::digest::sha256_hex(b"abc"));
        assert_eq!(fs::read(&p).unwrap(), b"abc");
    }
}
