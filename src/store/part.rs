//! One blob file on its way into the store: the errors of the store, the checks of a disk
//! image's header, the temp `.part` file a blob is written to while it is hashed, and its
//! verified publication under `blobs/<sha256>`. Below both the store (`blob`) and
//! the fetchers (`fetch`), which is what keeps those two free of a cycle.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::store::catalog::CatalogError;
use crate::util::fsutil;

/// I/O buffer size for hashing and copying.
pub(crate) const BUF_SIZE: usize = 1 << 20;

/// How many leading bytes of a blob are kept to check its disk-image header.
pub(crate) const HEAD_CAP: usize = 64 << 10;

/// Largest image a download or a `file://` copy may bring into the store: 32 GiB, or
/// `CLAWFARM_MAX_IMAGE_BYTES`. A server that never stops sending, or `file:///dev/zero`,
/// ends with an error instead of a full disk.
pub fn max_image_bytes() -> u64 {
    std::env::var("CLAWFARM_MAX_IMAGE_BYTES")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(32 << 30)
}

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
    #[error(transparent)]
    UnsupportedRef(#[from] crate::input::image_ref::RefError),
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
    /// The image is larger than the limit (or not a regular file); nothing was kept.
    #[error("{source_name}: {reason}; nothing was stored")]
    TooLarge {
        /// URL or path.
        source_name: String,
        /// What is wrong (the size and the limit, or the file type).
        reason: String,
    },
    /// The bytes do not hash to the expected digest. Nothing was kept.
    #[error(
        "{source_name}: SHA-256 mismatch: expected {expected}, got {}; nothing was stored",
        got_text(.actual.as_deref(), *.size)
    )]
    Mismatch {
        /// URL or file the bytes came from.
        source_name: String,
        /// Expected digest.
        expected: String,
        /// Digest of what arrived; `None` for a local file, whose digest is not shown (a
        /// manifest must not turn clawfarm into a reader of host files' digests).
        actual: Option<String>,
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

/// The fields of a qcow2 header that say where an image's data lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Qcow2Header {
    /// Format version (2 or 3 are known).
    pub version: u32,
    /// Offset and length of the backing file name (`None`: no backing file).
    pub backing: Option<(u64, u32)>,
    /// Incompatible feature bits (version 3; bit 2 = external data file).
    pub incompatible: u64,
}

/// Parse the qcow2 header at the start of `head`: `Ok(None)` when it is not a qcow2 at all.
/// The one reader of qcow2 headers (the store's checks and the driver's overlays use it).
pub fn parse_qcow2_header(head: &[u8]) -> Result<Option<Qcow2Header>, DiskProblem> {
    if head.len() < 4 || &head[..4] != QCOW2_MAGIC {
        return Ok(None);
    }
    if head.len() < 72 {
        return Err(DiskProblem::Truncated);
    }
    let version = be_u32(head, 4);
    let backing_offset = be_u64(head, 8);
    let backing_size = be_u32(head, 16);
    let incompatible = if version >= 3 {
        if head.len() < 104 {
            return Err(DiskProblem::Truncated);
        }
        be_u64(head, 72)
    } else {
        0
    };
    Ok(Some(Qcow2Header {
        version,
        backing: (backing_offset != 0 || backing_size != 0)
            .then_some((backing_offset, backing_size)),
        incompatible,
    }))
}

/// The backing file name a qcow2 file names (`None`: it has none). For reading overlays.
pub fn qcow2_backing(path: &Path) -> io::Result<Option<String>> {
    let mut f = File::open(path)?;
    let mut head = Vec::with_capacity(HEAD_CAP);
    (&mut f).take(HEAD_CAP as u64).read_to_end(&mut head)?;
    let h = parse_qcow2_header(&head)
        .map_err(|p| io::Error::new(io::ErrorKind::InvalidData, p.to_string()))?
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "not a qcow2 file"))?;
    let Some((off, len)) = h.backing else {
        return Ok(None);
    };
    if len > 4096 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "qcow2 backing file name is too long",
        ));
    }
    let mut name = vec![0u8; len as usize];
    f.seek(SeekFrom::Start(off))?;
    f.read_exact(&mut name)?;
    Ok(Some(String::from_utf8_lossy(&name).into_owned()))
}

/// Classify an image from its first bytes (at least the first 104 for a qcow2; give
/// more to have a backing file's name in the error). A qcow2 that names a backing file
/// or an external data file is refused: blobs must be self-contained.
pub fn check_disk_header(head: &[u8]) -> Result<DiskFormat, DiskProblem> {
    let Some(h) = parse_qcow2_header(head)? else {
        return Ok(DiskFormat::Raw);
    };
    if h.version != 2 && h.version != 3 {
        return Err(DiskProblem::Version(h.version));
    }
    if let Some((backing_offset, backing_size)) = h.backing {
        let name = usize::try_from(backing_offset)
            .ok()
            .zip(usize::try_from(backing_size).ok())
            .and_then(|(o, n)| head.get(o..o.checked_add(n)?))
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .unwrap_or_else(|| format!("<{backing_size} bytes at offset {backing_offset}>"));
        return Err(DiskProblem::BackingFile { name });
    }
    if h.incompatible & (1 << 2) != 0 {
        return Err(DiskProblem::ExternalDataFile);
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

/// The "got …" part of a mismatch message.
fn got_text(actual: Option<&str>, size: u64) -> String {
    match actual {
        Some(d) => format!("{d} ({size} bytes)"),
        None => "another digest (not shown for a local file)".to_string(),
    }
}

/// What is being fetched (decides whether the disk header is checked).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BlobKind {
    /// A disk image: qcow2 headers are checked.
    Image,
    /// Anything else (a downloaded bundle).
    Opaque,
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
        // A local file's digest is not shown: a manifest naming `file:///etc/shadow` would
        // otherwise make `validate` print the digest of any host file.
        let shown = (!source_name.starts_with("file://")).then_some(actual);
        return Err(BlobError::Mismatch {
            source_name: source_name.to_string(),
            expected: sha.to_string(),
            actual: shown,
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
