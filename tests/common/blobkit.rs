//! Shared helpers for the blob and bundle tests (included with `#[path]`, next to the
//! engine tests' `common/mod.rs`).
#![allow(dead_code)]

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use clawfarm::home::Home;

/// Lowercase hex SHA-256.
pub fn sha(data: &[u8]) -> String {
    clawfarm::util::digest::sha256_hex(data)
}

/// Deterministic, semi-compressible bytes.
pub fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut v = Vec::with_capacity(len);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let b = x.to_le_bytes();
        // Half random, half repetitive.
        v.extend_from_slice(&b[..4]);
        v.extend_from_slice(b"abcd");
    }
    v.truncate(len);
    v
}

/// A minimal qcow2 v3 header (no backing file unless given), padded with `pad` bytes.
pub fn qcow2(backing: Option<&str>, external_data: bool, pad: usize) -> Vec<u8> {
    let mut h = vec![0u8; 512];
    h[..4].copy_from_slice(b"QFI\xfb");
    h[4..8].copy_from_slice(&3u32.to_be_bytes());
    h[20..24].copy_from_slice(&16u32.to_be_bytes());
    if let Some(b) = backing {
        h[8..16].copy_from_slice(&112u64.to_be_bytes());
        h[16..20].copy_from_slice(&(b.len() as u32).to_be_bytes());
        h[112..112 + b.len()].copy_from_slice(b.as_bytes());
    }
    if external_data {
        h[72..80].copy_from_slice(&4u64.to_be_bytes());
    }
    h[100..104].copy_from_slice(&104u32.to_be_bytes());
    h.extend(data(pad, 7));
    h
}

/// A clawspec JSON with a `base` image and optionally a `run` image.
pub fn clawspec(name: &str, base: (&str, &str), run: Option<(&str, &str)>) -> String {
    let mut images = vec![serde_json::json!({"name": "base", "ref": base.0, "sha256": base.1})];
    if let Some((r, s)) = run {
        images.push(serde_json::json!({"name": "run", "ref": r, "sha256": s}));
    }
    serde_json::json!({
        "schema_version": 3,
        "name": name,
        "image": images,
        "bootstrap": {
            "id": "openclaw",
            "install_script": "echo install",
            "start_script": "echo start",
            "params": {"required": []}
        }
    })
    .to_string()
}

/// A base image sha that is never fetched in bundle tests.
pub const BASE_SHA: &str = "1111111111111111111111111111111111111111111111111111111111111111";

/// Build a tar.gz with the real `tar` and `gzip` programs from `dir`, entries in the
/// given order (paths relative to `dir`). Returns `out`.
pub fn tar_gz_cli(dir: &Path, entries: &[&str], out: &Path) -> PathBuf {
    let tar = out.with_extension("tar");
    let st = Command::new("tar")
        .arg("-cf")
        .arg(&tar)
        .arg("-C")
        .arg(dir)
        .args(entries)
        .status()
        .expect("run tar");
    assert!(st.success(), "tar failed");
    let st = Command::new("gzip")
        .arg("-n")
        .arg("-f")
        .arg(&tar)
        .status()
        .expect("run gzip");
    assert!(st.success(), "gzip failed");
    let gz = PathBuf::from(format!("{}.gz", tar.display()));
    fs::rename(&gz, out).unwrap();
    out.to_path_buf()
}

/// One raw tar entry for [`raw_tar_gz`]: arbitrary path bytes, any type.
pub struct Raw<'a> {
    /// Path bytes as stored in the header (no validation).
    pub path: &'a [u8],
    /// Entry type byte (`b'0'` file, `b'5'` dir, `b'2'` symlink, `b'1'` hard link, …).
    pub kind: u8,
    /// Content.
    pub data: &'a [u8],
    /// Mode bits.
    pub mode: u32,
    /// Link target (links only).
    pub link: &'a [u8],
}

impl<'a> Raw<'a> {
    /// A regular file.
    pub fn file(path: &'a str, data: &'a [u8]) -> Self {
        Raw {
            path: path.as_bytes(),
            kind: b'0',
            data,
            mode: 0o644,
            link: b"",
        }
    }
    /// A folder.
    pub fn dir(path: &'a str) -> Self {
        Raw {
            path: path.as_bytes(),
            kind: b'5',
            data: b"",
            mode: 0o755,
            link: b"",
        }
    }
}

/// Build a tar.gz with the `tar` crate's low-level header API, bypassing its path checks.
pub fn raw_tar_gz(entries: &[Raw<'_>], out: &Path) -> PathBuf {
    let mut tar = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        {
            let old = h.as_old_mut();
            old.name = [0; 100];
            old.name[..e.path.len()].copy_from_slice(e.path);
            old.linkname = [0; 100];
            old.linkname[..e.link.len()].copy_from_slice(e.link);
        }
        h.set_entry_type(tar::EntryType::new(e.kind));
        h.set_size(e.data.len() as u64);
        h.set_mode(e.mode);
        h.set_mtime(1_700_000_000);
        if e.kind == b'S' {
            // A well-formed (empty) sparse map, so the refusal is ours, not a parse error.
            h.as_gnu_mut().unwrap().set_real_size(e.data.len() as u64);
        }
        h.set_cksum();
        tar.append(&h, e.data).unwrap();
    }
    let bytes = tar.into_inner().unwrap();
    fs::write(out, gz(&bytes)).unwrap();
    out.to_path_buf()
}

/// gzip `bytes` with flate2.
pub fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// A fresh home in a temp dir.
pub fn home() -> (tempfile::TempDir, Home) {
    let d = tempfile::tempdir().unwrap();
    let h = Home::new(d.path().join("home"));
    h.ensure().unwrap();
    (d, h)
}

/// File mode bits.
pub fn mode(p: &Path) -> u32 {
    fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

/// Names in a folder (empty when missing).
pub fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// No bundle folder, no temp folder, no staged or stored blob, no part file.
pub fn assert_nothing_left(home: &Home) {
    let bundles: Vec<String> = names(&home.bundles_dir())
        .into_iter()
        .filter(|n| n != "stat-cache.json" && n != ".locks" && n != ".specs")
        .collect();
    assert!(bundles.is_empty(), "bundles/ has leftovers: {bundles:?}");
    let blobs: Vec<String> = names(&home.blobs_dir())
        .into_iter()
        .filter(|n| n != ".tmp" && n != ".locks")
        .collect();
    assert!(blobs.is_empty(), "blobs/ has leftovers: {blobs:?}");
    let tmp = names(&home.blobs_dir().join(".tmp"));
    assert!(tmp.is_empty(), "blobs/.tmp has leftovers: {tmp:?}");
}

/// A pid that is certainly not running (a child that has exited and been reaped).
pub fn dead_pid() -> u32 {
    let mut c = Command::new("true").spawn().unwrap();
    let pid = c.id();
    c.wait().unwrap();
    pid
}
