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
use std::fs::{self, File};

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, OnceLock, Weak};
use std::time::Duration;

use crate::home::Home;
use crate::input::clawspec::Image;
use crate::input::image_ref::RefError;
use crate::store::catalog::Catalog;
use crate::store::fetch::{Target, copy_file, download_http};
use crate::store::part::{BlobError, BlobKind, FetchOptions, hash_file};
use crate::store::progress::Progress;
use crate::util::digest::is_sha256_hex;
use crate::util::lock::{POLL, try_lock_file};
use crate::util::text::short;

pub use crate::input::image_ref::{CLAWBOX_SCHEME, ImageSource, parse_ref};

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
/// sleep and try again.
async fn lock_async(lock_path: &Path) -> Result<File, BlobError> {
    let started = std::time::Instant::now();
    let mut told = false;
    loop {
        if let Some(f) =
            try_lock_file(lock_path, 0o644).map_err(BlobError::io("cannot lock", lock_path))?
        {
            return Ok(f);
        }
        if !told && started.elapsed() > Duration::from_secs(2) {
            told = true;
            tracing::info!(lock = %lock_path.display(), "waiting for another clawfarm process producing this blob");
        }
        tokio::time::sleep(POLL).await;
    }
}

// ---- the store -----------------------------------------------------------------------------

/// The blob store of one home. Cheap to create; share one per process when you can (it
/// keeps an HTTP connection pool).
#[derive(Debug)]
pub struct BlobStore {
    home: Home,
    opts: FetchOptions,
    client: OnceLock<reqwest::Client>,
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
                    _ => Err(RefError::new(
                        &url,
                        "a catalog entry must be an http(s):// or file:/// URL",
                    )
                    .into()),
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
                return Err(
                    RefError::new(url, "only http(s):// and file:/// URLs are fetched").into(),
                );
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
        let target = Target {
            part_path: self.part_path(sha),
            dest: dest.clone(),
            opts: self.opts.clone(),
        };
        match source {
            ImageSource::Http(url) => {
                download_http(&target, self.client()?, url, sha, label, kind, progress).await?
            }
            ImageSource::File(path) => copy_file(&target, path, sha, label, kind, progress).await?,
            ImageSource::Clawbox(name) | ImageSource::Name(name) => {
                return Err(
                    RefError::new(name, "only http(s):// and file:/// URLs are fetched").into(),
                );
            }
        }
        Ok(dest)
    }

    /// The in-process then cross-process lock of blob `sha`.
    pub(crate) async fn lock(&self, sha: &str) -> Result<BlobLock, BlobError> {
        let lock_path = self.lock_path(sha);
        let guard = inflight_mutex(&lock_path).lock_owned().await;
        let file = lock_async(&lock_path).await?;
        Ok(BlobLock {
            _file: file,
            _guard: guard,
        })
    }
}
