//! The tar.gz pipeline of an import: one thread reads and inflates, another unpacks, with
//! every entry checked (paths, links, devices, sizes, gzip bombs) before it is written.

#[allow(unused_imports)]
use super::*;

// ---- the tar.gz pipeline -------------------------------------------------------------------

/// The inflating side's view of the compressed bytes (a `BufRead` over channel blocks).
pub(super) struct RawReader {
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
pub(super) fn read_side(
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
pub(super) const CHUNK: usize = 1 << 20;
/// Blocks in flight between the two threads.
pub(super) const DEPTH: usize = 4;

/// The untar side's view of the decompressed stream.
pub(super) struct ChannelReader {
    rx: Receiver<Vec<u8>>,
    recycle: SyncSender<Vec<u8>>,
    cur: Vec<u8>,
    pos: usize,
    guard: Rc<StreamGuard>,
}

/// Limits on what the `tar` crate may read, shared between the reader it owns and the
/// untar loop that sees the entries.
pub(super) struct StreamGuard {
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
pub(super) const HEADER_SLACK: u64 = 1 << 20;

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
pub(super) fn inflate_side(
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
pub(super) enum Place {
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
pub(super) fn normalize(path: &Path) -> Result<Vec<String>, Refusal> {
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

pub(super) fn place(parts: &[String]) -> Place {
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
pub(super) struct Staged {
    pub(super) entry: String,
    pub(super) sha: String,
    pub(super) head: Vec<u8>,
    pub(super) part: Option<Part>,
}

/// Everything an import creates before it commits; removed on drop unless committed.
pub(super) struct Scratch {
    pub(super) tmp_dir: Option<PathBuf>,
    pub(super) staged: Vec<Staged>,
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
pub(super) enum Mode<'a> {
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
pub(super) struct TarOut {
    pub(super) clawspec: Option<(Vec<u8>, ClawSpec)>,
    pub(super) has_payload: bool,
}

pub(super) struct Untar<'a> {
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
                limit: self.guard.limit,
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

pub(super) enum CopyError {
    Read(io::Error),
    Write(io::Error),
}

/// Run the pipeline over a tar.gz bundle: read + hash (the digest) → gunzip → untar
/// (+ hash and write images and payload), three threads joined by bounded channels of
/// 1 MiB blocks. Returns the file digest and what the untar stage found. In scan mode it
/// stops untarring at `clawspec.json` (the digest still covers the whole file).
pub(super) fn run_pipeline(
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
    let expansion_limit = opts.expansion_limit(file.metadata().map_or(0, |m| m.len()));
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
            limit: expansion_limit,
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
