//! The manifest format (`apiVersion: clawfarm/v1`, `kind: Claw`): parse and validate YAML
//! into [`Claw`]s, no effects. Every problem is a [`Diagnostic`] with `FILE:LINE:COL`; all
//! files are checked in one run. See `rfc/002-manifest.md`.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_saphyr::granit_parser::{Event, Parser, ScalarStyle, Span};

mod schema;
mod validate;
mod yaml;

pub use schema::json_schema;
use validate::*;
pub use validate::{is_dns_label, parse_memory};
use yaml::*;

/// Where something is in a manifest file (1-based line and column; 0 when unknown).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SourceLoc {
    /// The manifest file.
    pub file: PathBuf,
    /// 1-based line.
    pub line: u64,
    /// 1-based column.
    pub col: u64,
}

impl fmt::Display for SourceLoc {
    /// `FILE:LINE:COL`, or just `FILE` when the line is unknown (0).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}", self.file.display())
        } else {
            write!(f, "{}:{}:{}", self.file.display(), self.line, self.col)
        }
    }
}

/// One problem found in the input, printed as `FILE:LINE:COL: message`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Diagnostic {
    /// Where.
    pub loc: SourceLoc,
    /// What (never contains a secret value).
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.loc, self.message)
    }
}

/// Desired run state of an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DesiredState {
    /// The VM should be running (default).
    #[default]
    Running,
    /// The VM should exist but be stopped.
    Stopped,
    /// The VM's running state should be saved and its QEMU ended; `running` later resumes
    /// it in seconds (rfc/011). A VM that is not running is booted once to be suspended.
    Suspended,
}

/// Where the bundle comes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClawboxRef {
    /// A local `.clawbox` file (absolute: resolved against the manifest's folder).
    Path(PathBuf),
    /// A remote bundle, pinned by digest.
    Url {
        /// `http(s)://` or `file://` URL.
        url: String,
        /// Lowercase 64-hex SHA-256 of the bundle bytes.
        sha256: String,
    },
}

/// A host port forward (always bound to 127.0.0.1).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Port {
    /// Host port on 127.0.0.1.
    pub host: u16,
    /// Guest port.
    pub guest: u16,
    /// Optional name; `gateway` marks the port whose answer is part of readiness.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// A named persistent volume shared into the guest.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Volume {
    /// Volume name (DNS-label style), unique within the manifest.
    pub name: String,
    /// Absolute mount point in the guest.
    pub guest_path: String,
}

/// How a param gets its value.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ParamSource {
    /// A literal value in the manifest (refused for secret params).
    Literal(String),
    /// `{env: NAME}`: read from the applier's environment.
    Env(String),
    /// `{file: PATH}`: read from a file (absolute: resolved against the manifest's folder);
    /// one trailing newline is stripped.
    File(PathBuf),
    /// A value given out of band (`clawfarm run --param`/`--param-file`); never produced by
    /// the YAML parser, so a manifest in git can still not carry a secret literal.
    Given(crate::util::secret::Secret),
}

/// One validated manifest document (`kind: Claw`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claw {
    /// Where the document starts.
    pub loc: SourceLoc,
    /// `metadata.name` (DNS label, unique across the applied set).
    pub name: String,
    /// `spec.clawbox`.
    pub clawbox: ClawboxRef,
    /// Location of `spec.clawbox` (for errors found later, e.g. a bundle that will not load).
    pub clawbox_loc: SourceLoc,
    /// `spec.state`.
    pub state: DesiredState,
    /// `spec.replicas` (1 = a single instance named `name`; N > 1 = `name-0`..`name-(N-1)`).
    pub replicas: u32,
    /// `spec.cpus`.
    pub cpus: u32,
    /// `spec.memory` in MiB.
    pub memory_mib: u64,
    /// `spec.ports`.
    pub ports: Vec<Port>,
    /// `spec.params`, by key.
    pub params: BTreeMap<String, ParamSource>,
    /// Location of each `spec.params` entry (for errors found against the clawspec).
    pub param_locs: BTreeMap<String, SourceLoc>,
    /// `spec.volumes`.
    pub volumes: Vec<Volume>,
    /// `spec.network` (default: no egress).
    #[serde(default)]
    pub network: crate::input::network::Network,
}

impl Claw {
    /// Instance names this document expands to (`replicas`).
    pub fn instance_names(&self) -> Vec<String> {
        if self.replicas <= 1 {
            vec![self.name.clone()]
        } else {
            (0..self.replicas)
                .map(|i| format!("{}-{}", self.name, i))
                .collect()
        }
    }
}

/// Default `spec.cpus`.
pub const DEFAULT_CPUS: u32 = 1;
/// Default `spec.memory` in MiB.
pub const DEFAULT_MEMORY_MIB: u64 = 1024;

/// The only `apiVersion` this build reads.
pub const API_VERSION: &str = "clawfarm/v1";
/// The only `kind` this build reads.
pub const KIND: &str = "Claw";
/// Longest `metadata.name` (room is left for `-<replica>-<suffix>` in CLAWIDs).
pub const MAX_NAME_LEN: usize = 40;
/// Longest port or volume name.
pub const MAX_LABEL_LEN: usize = 63;
/// Range of `spec.replicas`.
pub const REPLICAS_RANGE: std::ops::RangeInclusive<u32> = 1..=64;
/// Range of `spec.cpus`.
pub const CPUS_RANGE: std::ops::RangeInclusive<u32> = 1..=64;
/// Range of `spec.memory` in MiB (128 MiB to 256 GiB).
pub const MEMORY_MIB_RANGE: std::ops::RangeInclusive<u64> = 128..=262_144;
/// Lowest host port a manifest may forward (privileged ports are refused).
pub const MIN_HOST_PORT: u16 = 1024;
/// File extensions [`load`] reads from folders.
pub const EXTENSIONS: &[&str] = &["yaml", "yml", "json"];

const TOP_FIELDS: &[&str] = &["apiVersion", "kind", "metadata", "spec"];
const METADATA_FIELDS: &[&str] = &["name"];
const SPEC_FIELDS: &[&str] = &[
    "clawbox", "state", "replicas", "cpus", "memory", "ports", "params", "volumes", "network",
];
const NETWORK_FIELDS: &[&str] = &["egress", "allow"];
const CLAWBOX_FIELDS: &[&str] = &["url", "sha256"];
const PORT_FIELDS: &[&str] = &["host", "guest", "name"];
const VOLUME_FIELDS: &[&str] = &["name", "guestPath"];
const PARAM_REF_FIELDS: &[&str] = &["env", "file"];

/// Everything [`load`] found.
#[derive(Debug, Clone, Default)]
pub struct LoadResult {
    /// Valid documents of files without any error, in file order then document order.
    pub claws: Vec<Claw>,
    /// Every problem of every file, sorted by location.
    pub diagnostics: Vec<Diagnostic>,
    /// Every manifest file considered (sorted, deduplicated).
    pub files: Vec<PathBuf>,
    /// Files (or given paths) with at least one problem. None of their documents are in
    /// `claws`: the engine must keep whatever they used to describe as it is.
    pub bad_files: BTreeSet<PathBuf>,
}

impl LoadResult {
    /// Whether any problem was found.
    pub fn has_errors(&self) -> bool {
        !self.diagnostics.is_empty()
    }
}

// ---------------------------------------------------------------------------------------
// Checks across documents and files.

fn instance_names_of(name: &str, replicas: u32) -> Vec<String> {
    if replicas <= 1 {
        vec![name.to_owned()]
    } else {
        (0..replicas).map(|i| format!("{name}-{i}")).collect()
    }
}

/// Duplicate names and colliding instance names across `declared` (in order). Returns the
/// problems, each at the later declaration, and the files involved (both sides).
fn check_names(declared: &[&Declared]) -> (Vec<Diagnostic>, BTreeSet<PathBuf>) {
    let mut diags = Vec::new();
    let mut files = BTreeSet::new();
    let mut report = |decl: &Declared, earlier: &Declared, message: String| {
        diags.push(Diagnostic {
            loc: decl.name_loc.clone(),
            message,
        });
        files.insert(decl.name_loc.file.clone());
        files.insert(earlier.name_loc.file.clone());
    };
    // 1. metadata.name is unique.
    let mut first_of: HashMap<&str, usize> = HashMap::with_capacity(declared.len());
    let mut is_duplicate = vec![false; declared.len()];
    for (d, decl) in declared.iter().enumerate() {
        if let Some(&e) = first_of.get(decl.name.as_str()) {
            is_duplicate[d] = true;
            report(
                decl,
                declared[e],
                format!(
                    "duplicate name \"{}\" (also defined at {})",
                    decl.name, declared[e].name_loc
                ),
            );
        } else {
            first_of.insert(&decl.name, d);
        }
    }
    // 2. The instance names they expand to are unique too (`a` with replicas 2 makes
    //    `a-0`, `a-1`, which another manifest must not be called).
    let mut owner: HashMap<String, usize> = HashMap::with_capacity(declared.len());
    for (d, decl) in declared.iter().enumerate() {
        if is_duplicate[d] {
            continue;
        }
        let mut reported: HashSet<usize> = HashSet::new();
        for inst in instance_names_of(&decl.name, decl.replicas) {
            let Some(&e) = owner.get(&inst) else {
                owner.insert(inst, d);
                continue;
            };
            if !reported.insert(e) {
                continue;
            }
            let earlier = declared[e];
            let describe = |x: &Declared| {
                if x.replicas > 1 {
                    format!(
                        "instance \"{inst}\" of \"{}\" (replicas: {})",
                        x.name, x.replicas
                    )
                } else {
                    format!("\"{inst}\"")
                }
            };
            let message = format!(
                "instance name collision: {} is the same as {} defined at {}",
                describe(decl),
                describe(earlier),
                earlier.name_loc
            );
            report(decl, earlier, message);
        }
    }
    (diags, files)
}

/// Parse and validate the content of one manifest file.
///
/// `file` is used in locations and to resolve relative paths (against its folder, made
/// absolute with the current directory if needed). Returns the documents (empty ones
/// skipped), or every problem of the file, including duplicate names within it. A file
/// with any problem returns none of its documents.
pub fn parse_str(file: &Path, text: &str) -> Result<Vec<Claw>, Vec<Diagnostic>> {
    let parsed = parse_file(file, text);
    let mut diags = parsed.diagnostics;
    let declared: Vec<&Declared> = parsed.declared.iter().collect();
    diags.extend(check_names(&declared).0);
    if diags.is_empty() {
        Ok(parsed.claws)
    } else {
        diags.sort();
        Err(diags)
    }
}

/// Load every manifest under `paths`: each a file (read whatever its extension) or a folder
/// (read recursively: `.yaml`, `.yml` and `.json` files, skipping hidden entries such as
/// `.git` and editor leftovers such as `*~`, `#*#`, `*.swp`), in sorted order.
///
/// All problems of all files are reported. A file with any problem (including a name it
/// shares with another file, in which case both files are bad) contributes no [`Claw`] and
/// is listed in [`LoadResult::bad_files`]; a path that cannot be read is listed there too.
/// Files are parsed on up to 4 threads when there are many.
pub fn load(paths: &[PathBuf]) -> LoadResult {
    load_cached(paths, None)
}

/// Parsed manifest files kept between loads (one per `watch`), so that a pass re-parses only
/// the files that changed. An entry is reused while the file's identity (device, inode,
/// size, modification and change times) is the same; a file that no longer exists under
/// the loaded paths leaves the cache at the next load.
///
/// File times have a coarse clock (a few ms), so two writes of the same size in one tick
/// look alike. As git does with its "racy" entries, a file changed less than
/// [`Cache::SETTLE`] ago is parsed every time and kept only once it has settled.
#[derive(Debug)]
pub struct Cache {
    entries: std::sync::Mutex<HashMap<PathBuf, (FileId, FileParse)>>,
    settle: std::time::Duration,
}

impl Default for Cache {
    fn default() -> Self {
        Cache::with_settle(Cache::SETTLE)
    }
}

/// The identity of a file's content as far as `stat` tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileId {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl FileId {
    /// The identity of `file`, and whether it changed within `settle` of now.
    fn of(file: &Path, settle: std::time::Duration) -> Option<(FileId, bool)> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(file).ok()?;
        let changed = std::time::UNIX_EPOCH
            + std::time::Duration::new(m.ctime().max(0) as u64, m.ctime_nsec().max(0) as u32);
        let recent = std::time::SystemTime::now()
            .duration_since(changed)
            .map_or(true, |age| age < settle);
        Some((
            FileId {
                dev: m.dev(),
                ino: m.ino(),
                size: m.size(),
                mtime: (m.mtime(), m.mtime_nsec()),
                ctime: (m.ctime(), m.ctime_nsec()),
            },
            recent,
        ))
    }
}

impl Cache {
    /// How long after its last change a file is parsed again at every load.
    pub const SETTLE: std::time::Duration = std::time::Duration::from_secs(2);

    /// A cache that trusts a file's identity once it has not changed for `settle`.
    pub fn with_settle(settle: std::time::Duration) -> Cache {
        Cache {
            entries: Default::default(),
            settle,
        }
    }

    /// The number of files whose parse is kept.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether nothing is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, (FileId, FileParse)>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Parse `file`, or reuse its parse if the file is unchanged. The identity is read
    /// before the content, so a change racing the read is seen at the next load.
    fn parse(&self, file: &Path) -> FileParse {
        let Some((id, recent)) = FileId::of(file, self.settle) else {
            return read_and_parse(file);
        };
        if !recent
            && let Some((known, parse)) = self.lock().get(file)
            && *known == id
        {
            return parse.clone();
        }
        let parse = read_and_parse(file);
        if recent {
            self.lock().remove(file);
        } else {
            self.lock().insert(file.to_path_buf(), (id, parse.clone()));
        }
        parse
    }
}

/// [`load`], reusing the parses kept in `cache` for files that did not change.
pub fn load_cached(paths: &[PathBuf], cache: Option<&Cache>) -> LoadResult {
    let mut result = LoadResult::default();
    let mut files: Vec<PathBuf> = Vec::new();
    for p in paths {
        collect(p, &mut files, &mut result);
    }
    files.sort();
    dedup_by_identity(&mut files);

    let parsed = match cache {
        None => parse_files(&files),
        Some(cache) => {
            let parsed = crate::util::par::par_map(&files, |f| cache.parse(f));
            let current: HashSet<&PathBuf> = files.iter().collect();
            cache.lock().retain(|f, _| current.contains(f));
            parsed
        }
    };
    let declared: Vec<&Declared> = parsed.iter().flat_map(|p| &p.declared).collect();
    let (name_diags, name_files) = check_names(&declared);
    result.bad_files.extend(name_files);
    for (file, p) in files.iter().zip(&parsed) {
        if !p.diagnostics.is_empty() {
            result.bad_files.insert(file.clone());
        }
    }
    for (file, p) in files.iter().zip(parsed) {
        result.diagnostics.extend(p.diagnostics);
        if !result.bad_files.contains(file) {
            result.claws.extend(p.claws);
        }
    }
    result.diagnostics.extend(name_diags);
    result.diagnostics.sort();
    result.files = files;
    result
}

/// Keep one path per file: two spellings of one file, or a symlink beside the file it
/// points to, are one manifest, not a duplicate name. The real file's own path is kept
/// over a link to it; otherwise the first in sorted order.
fn dedup_by_identity(files: &mut Vec<PathBuf>) {
    let spelled =
        |f: &PathBuf| std::path::absolute(f).map_or_else(|_| f.clone(), |a| normalize(&a));
    let mut chosen: HashMap<PathBuf, usize> = HashMap::new();
    for (i, f) in files.iter().enumerate() {
        let key = file_key(f);
        match chosen.get(&key) {
            None => {
                chosen.insert(key, i);
            }
            Some(&j) if spelled(&files[j]) != key && spelled(f) == key => {
                chosen.insert(key, i);
            }
            Some(_) => {}
        }
    }
    let keep: HashSet<usize> = chosen.into_values().collect();
    let mut i = 0;
    files.retain(|_| {
        i += 1;
        keep.contains(&(i - 1))
    });
}

fn path_problem(result: &mut LoadResult, path: &Path, message: String) {
    result.diagnostics.push(Diagnostic {
        loc: SourceLoc {
            file: path.to_path_buf(),
            line: 0,
            col: 0,
        },
        message,
    });
    result.bad_files.insert(path.to_path_buf());
}

fn collect(path: &Path, files: &mut Vec<PathBuf>, result: &mut LoadResult) {
    match std::fs::metadata(path) {
        Err(e) => path_problem(result, path, format!("cannot read: {e}")),
        Ok(m) if m.is_dir() => {
            let mut visited = HashSet::new();
            walk(path, files, result, &mut visited);
        }
        Ok(m) if !m.is_file() => path_problem(result, path, NOT_REGULAR.into()),
        Ok(_) => files.push(path.to_path_buf()),
    }
}

const NOT_REGULAR: &str =
    "not a regular file (a FIFO, socket or device is never read as a manifest)";

/// Largest manifest file read (a manifest is a few hundred bytes; this bounds memory and
/// error output for a hostile file).
pub const MAX_MANIFEST_BYTES: u64 = 1 << 20;

/// Folders under these roots are never walked (a symlink into `/proc` would make a walk
/// endless).
const PSEUDO_FS_ROOTS: [&str; 3] = ["/proc", "/sys", "/dev"];

/// Whether a folder entry is skipped: hidden, editor leftovers.
fn skipped_name(name: &str) -> bool {
    name.starts_with('.')
        || name.ends_with('~')
        || name.starts_with('#')
        || name.ends_with(".swp")
        || name.ends_with(".swo")
}

fn walk(
    dir: &Path,
    files: &mut Vec<PathBuf>,
    result: &mut LoadResult,
    visited: &mut HashSet<PathBuf>,
) {
    // Symlinked folders are followed once (a loop is not walked twice).
    if let Ok(real) = std::fs::canonicalize(dir) {
        if PSEUDO_FS_ROOTS.iter().any(|r| real.starts_with(r)) {
            return path_problem(
                result,
                dir,
                format!("skipped: leads into {}", real.display()),
            );
        }
        if !visited.insert(real) {
            return;
        }
    }
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => return path_problem(result, dir, format!("cannot read folder: {e}")),
    };
    // (path, is a folder); the file type comes from the folder listing, so only symlinks
    // cost a `stat`.
    let mut names: Vec<(PathBuf, bool)> = Vec::new();
    for entry in entries {
        let entry = match entry {
            Ok(entry) => entry,
            Err(e) => {
                path_problem(result, dir, format!("cannot read folder: {e}"));
                continue;
            }
        };
        let name = entry.file_name();
        if name.to_str().is_some_and(skipped_name) {
            continue;
        }
        let p = entry.path();
        let is_manifest = || {
            let ext = p.extension().and_then(|e| e.to_str()).unwrap_or("");
            EXTENSIONS.contains(&ext)
        };
        let is_dir = match entry.file_type() {
            Ok(t) if t.is_symlink() => match std::fs::metadata(&p) {
                Ok(m) if !m.is_dir() && !m.is_file() => {
                    if is_manifest() {
                        path_problem(result, &p, NOT_REGULAR.into());
                    }
                    continue;
                }
                Ok(m) => m.is_dir(),
                // A dangling symlink: only a problem if it looks like a manifest.
                Err(e) => {
                    if is_manifest() {
                        path_problem(result, &p, format!("cannot read: {e}"));
                    }
                    continue;
                }
            },
            Ok(t) if !t.is_dir() && !t.is_file() => {
                if is_manifest() {
                    path_problem(result, &p, NOT_REGULAR.into());
                }
                continue;
            }
            Ok(t) => t.is_dir(),
            Err(e) => {
                if is_manifest() {
                    path_problem(result, &p, format!("cannot read: {e}"));
                }
                continue;
            }
        };
        if is_dir || is_manifest() {
            names.push((p, is_dir));
        }
    }
    names.sort();
    for (p, is_dir) in names {
        if is_dir {
            walk(&p, files, result, visited);
        } else {
            files.push(p);
        }
    }
}

fn read_and_parse(file: &Path) -> FileParse {
    let problem = |line: u64, col: u64, message: String| FileParse {
        diagnostics: vec![Diagnostic {
            loc: SourceLoc {
                file: file.to_path_buf(),
                line,
                col,
            },
            message,
        }],
        ..FileParse::default()
    };
    let bytes = match read_bounded(file, MAX_MANIFEST_BYTES) {
        Ok(Some(b)) => b,
        Ok(None) => {
            return problem(
                0,
                0,
                format!(
                    "larger than {} bytes; a manifest file is refused above that size",
                    MAX_MANIFEST_BYTES
                ),
            );
        }
        Err(e) => return problem(0, 0, format!("cannot read: {e}")),
    };
    match std::str::from_utf8(&bytes) {
        Ok(text) => parse_file(file, text),
        Err(e) => {
            let good = &bytes[..e.valid_up_to()];
            let line = 1 + good.iter().filter(|b| **b == b'\n').count() as u64;
            let line_start = good.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
            let col = 1 + String::from_utf8_lossy(&good[line_start..]).chars().count() as u64;
            problem(line, col, "file is not valid UTF-8".into())
        }
    }
}

/// The identity of a manifest file as records remember it: its canonical path when it
/// exists, else its absolute, lexically normalized path. Two spellings of one file
/// (relative, through `..` or a symlinked folder) give the same key.
pub fn file_key(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| {
        std::path::absolute(path).map_or_else(|_| path.to_path_buf(), |a| normalize(&a))
    })
}

/// Read a regular file of at most `limit` bytes (`None` when it is larger). The file is
/// opened without blocking, so a FIFO swapped in after the walk never hangs the reader.
pub fn read_bounded(path: &Path, limit: u64) -> std::io::Result<Option<Vec<u8>>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    if !f.metadata()?.is_file() {
        return Err(std::io::Error::other(NOT_REGULAR));
    }
    let mut out = Vec::new();
    f.take(limit + 1).read_to_end(&mut out)?;
    Ok((out.len() as u64 <= limit).then_some(out))
}

fn parse_files(files: &[PathBuf]) -> Vec<FileParse> {
    crate::util::par::par_map(files, |f| read_and_parse(f))
}

/// Every `metadata.name` value found in `text`, even when the file does not validate
/// (bad YAML, unknown fields, wrong types): the union of the names of the documents that
/// parse as YAML and of a line scan for `name:` under `metadata:`. Meant for protecting the
/// instances of a broken file; it errs on the side of finding too many names.
pub fn names_in_file_best_effort(text: &str) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    let mut add = |n: &str| {
        let n = n.trim();
        if !n.is_empty() && !names.iter().any(|x| x == n) {
            names.push(n.to_owned());
        }
    };
    let docs = parse_yaml(text);
    for doc in &docs.docs {
        if let Kind::Map(entries) = &doc.kind {
            for (k, v) in entries {
                if k.scalar() == Some("metadata")
                    && let Kind::Map(meta) = &v.kind
                {
                    for (mk, mv) in meta {
                        if mk.scalar() == Some("name")
                            && let Some(n) = mv.scalar()
                        {
                            add(n);
                        }
                    }
                }
            }
        }
    }
    for n in scan_names(text) {
        add(&n);
    }
    names
}

/// Line scan for `metadata:` blocks (block or flow style) and their `name:`.
fn scan_names(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    // (indent of `metadata:`, indent of its children once seen)
    let mut metadata: Option<(usize, Option<usize>)> = None;
    for raw in text.lines() {
        let line = strip_comment(raw);
        let trimmed = line.trim();
        if trimmed.is_empty() {
            continue;
        }
        if trimmed == "---" || trimmed == "..." {
            metadata = None;
            continue;
        }
        let indent = line.len() - line.trim_start().len();
        if let Some((mi, child)) = metadata {
            if indent > mi {
                let child = child.unwrap_or(indent);
                metadata = Some((mi, Some(child)));
                if indent == child
                    && let Some(v) = trimmed.strip_prefix("name:")
                {
                    out.push(unquote(v));
                    metadata = None;
                }
                continue;
            }
            metadata = None;
        }
        let key_line = trimmed.trim_start_matches("- ");
        if let Some(rest) = key_line.strip_prefix("metadata:") {
            let rest = rest.trim();
            if rest.is_empty() {
                metadata = Some((indent, None));
            } else if let Some(i) = rest.find("name:") {
                let v = &rest[i + 5..];
                let end = v.find([',', '}']).unwrap_or(v.len());
                out.push(unquote(&v[..end]));
            }
        }
    }
    out
}

fn strip_comment(line: &str) -> &str {
    if line.trim_start().starts_with('#') {
        return "";
    }
    match line.find(" #") {
        Some(i) => &line[..i],
        None => line,
    }
}

fn unquote(v: &str) -> String {
    let v = v.trim();
    let v = v
        .strip_prefix('"')
        .and_then(|x| x.strip_suffix('"'))
        .or_else(|| v.strip_prefix('\'').and_then(|x| x.strip_suffix('\'')))
        .unwrap_or(v);
    v.trim().to_owned()
}
