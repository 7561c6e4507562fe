//! Producing blobs from sources: resumable HTTP downloads and `file://` copies.
//!
//! Both hash in the same pass as they write `blobs/.tmp/<sha256>.part`, and both end in
//! `blob::publish_verified` (verify, check the disk header, fsync, `0444`, rename).
//! Callers hold the blob's lock (see `BlobStore::fetch_source`).

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::header::{CONTENT_RANGE, RANGE};

use crate::store::part::{
    BUF_SIZE, BlobError, BlobKind, FetchOptions, Part, blocking, is_retryable, publish_verified,
};
use crate::store::progress::{Progress, Tracker};

/// Where one fetch writes: the resumable `.part` file, the blob it becomes, and the retry
/// policy. The store makes one per blob (see `BlobStore::fetch_source`).
#[derive(Debug, Clone)]
pub struct Target {
    /// `blobs/.tmp/<sha256>.part`.
    pub part_path: PathBuf,
    /// `blobs/<sha256>`.
    pub dest: PathBuf,
    /// Retries and timeouts.
    pub opts: FetchOptions,
}

/// Run `f` on the part in a blocking thread, keeping the part in `slot`.
async fn with_part<T: Send + 'static>(
    slot: &mut Option<Part>,
    f: impl FnOnce(&mut Part) -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    let mut p = slot
        .take()
        .ok_or_else(|| io::Error::other("download state lost after an earlier failure"))?;
    let (p, r) = blocking(move || {
        let r = f(&mut p);
        (p, r)
    })
    .await?;
    *slot = Some(p);
    r
}

fn part_len(slot: &Option<Part>) -> u64 {
    slot.as_ref().map_or(0, Part::len)
}

/// `Content-Range: bytes FIRST-LAST/TOTAL` (TOTAL may be `*`) → (first, total).
fn parse_content_range(v: &str) -> Option<(u64, Option<u64>)> {
    let rest = v.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    let (first, _last) = range.split_once('-')?;
    Some((first.trim().parse().ok()?, total))
}

/// `Content-Range: bytes */TOTAL` of a 416 answer → TOTAL.
fn parse_unsatisfied_range(v: &str) -> Option<u64> {
    v.trim().strip_prefix("bytes */")?.trim().parse().ok()
}

/// One request: continue the part when the server honours `Range`, restart it when not.
async fn attempt(
    client: &reqwest::Client,
    url: &str,
    slot: &mut Option<Part>,
    part_path: &Path,
    tracker: &mut Tracker,
) -> Result<(), BlobError> {
    let io_err = |source| BlobError::Io {
        action: "cannot write",
        path: part_path.to_path_buf(),
        source,
    };
    // The URL is in our message; keep it out of the source's.
    let http_err = |source: reqwest::Error| BlobError::Http {
        url: url.to_string(),
        source: source.without_url(),
    };
    // At most two requests: a ranged one, then (if its answer is unusable) a plain one.
    let mut resp = None;
    for _ in 0..2 {
        let start = part_len(slot);
        let mut req = client.get(url);
        if start > 0 {
            req = req.header(RANGE, format!("bytes={start}-"));
        }
        let r = req.send().await.map_err(http_err)?;
        let content_range = r
            .headers()
            .get(CONTENT_RANGE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        match r.status().as_u16() {
            200 => {
                if start > 0 {
                    tracing::info!(url, start, "server ignored Range; restarting from zero");
                    with_part(slot, Part::reset).await.map_err(io_err)?;
                    tracker.set_position(0);
                }
                tracker.set_total(r.content_length());
                resp = Some(r);
                break;
            }
            206 => match content_range.as_deref().and_then(parse_content_range) {
                Some((first, total)) if start > 0 && first == start => {
                    tracker.set_total(total.or(r.content_length().map(|l| start + l)));
                    resp = Some(r);
                    break;
                }
                _ if start == 0 => {
                    return Err(BlobError::Protocol {
                        url: url.to_string(),
                        detail: format!(
                            "unrequested partial response (Content-Range {:?})",
                            content_range.unwrap_or_default()
                        ),
                    });
                }
                _ => {
                    tracing::info!(
                        url,
                        start,
                        ?content_range,
                        "unusable ranged answer; restarting from zero"
                    );
                    drop(r);
                    with_part(slot, Part::reset).await.map_err(io_err)?;
                    tracker.set_position(0);
                }
            },
            416 if start > 0 => {
                drop(r);
                if content_range.as_deref().and_then(parse_unsatisfied_range) == Some(start) {
                    // The part already holds the whole file (killed before the rename).
                    return Ok(());
                }
                with_part(slot, Part::reset).await.map_err(io_err)?;
                tracker.set_position(0);
            }
            status => {
                return Err(BlobError::Status {
                    url: url.to_string(),
                    status,
                });
            }
        }
    }
    let Some(mut resp) = resp else {
        return Err(BlobError::Protocol {
            url: url.to_string(),
            detail: "no usable answer to a restart request".into(),
        });
    };
    let expected_end = resp.content_length().map(|l| part_len(slot) + l);
    let limit = super::part::max_image_bytes();
    let too_large = |size: u64| BlobError::TooLarge {
        source_name: url.to_string(),
        reason: format!("{size} bytes or more, over the {limit}-byte image limit"),
    };
    if let Some(end) = expected_end
        && end > limit
    {
        if let Some(p) = slot.take() {
            p.discard();
        }
        return Err(too_large(end));
    }

    let mut buf: Vec<u8> = Vec::with_capacity(BUF_SIZE);
    let result = loop {
        match resp.chunk().await {
            Ok(Some(bytes)) => {
                let have = part_len(slot) + (buf.len() + bytes.len()) as u64;
                if have > limit {
                    if let Some(p) = slot.take() {
                        p.discard();
                    }
                    return Err(too_large(have));
                }
                buf.extend_from_slice(&bytes);
                tracker.advance(bytes.len() as u64);
                if buf.len() >= BUF_SIZE {
                    flush(slot, &mut buf).await.map_err(io_err)?;
                }
            }
            Ok(None) => break Ok(()),
            Err(e) => break Err(http_err(e)),
        }
    };
    // Keep what arrived before a failure: it is the progress the next attempt resumes.
    flush(slot, &mut buf).await.map_err(io_err)?;
    result?;
    let got = part_len(slot);
    if let Some(expected) = expected_end
        && got != expected
    {
        return Err(BlobError::ShortBody {
            url: url.to_string(),
            got,
            expected,
        });
    }
    Ok(())
}

async fn flush(slot: &mut Option<Part>, buf: &mut Vec<u8>) -> io::Result<()> {
    if buf.is_empty() {
        return Ok(());
    }
    let data = std::mem::take(buf);
    let mut data = with_part(slot, move |p| p.append(&data).map(|()| data)).await?;
    data.clear();
    *buf = data;
    Ok(())
}

/// Download `url` into blob `sha` (the caller holds the blob lock and checked absence).
pub(crate) async fn download_http(
    target: &Target,
    client: &reqwest::Client,
    url: &str,
    sha: &str,
    label: &str,
    kind: BlobKind,
    progress: &Progress,
) -> Result<(), BlobError> {
    let opts = target.opts.clone();
    let part_path = target.part_path.clone();
    let dest = target.dest.clone();
    let pp = part_path.clone();
    let part = blocking(move || Part::resume(&pp))
        .await
        .and_then(|r| r)
        .map_err(BlobError::io("cannot resume", &part_path))?;
    let mut resumed = part.len() > 0;
    if resumed {
        tracing::info!(url, bytes = part.len(), "resuming download from .part");
    }
    let mut tracker = progress.start(label, None);
    tracker.set_position(part.len());
    let mut slot = Some(part);
    let mut attempts = 0u32;
    let mut failures = 0u32;
    let mut delay = opts.retry_delay;

    loop {
        // Fill the part.
        loop {
            attempts += 1;
            let before = part_len(&slot);
            match attempt(client, url, &mut slot, &part_path, &mut tracker).await {
                Ok(()) => break,
                Err(e) => {
                    let progressed = part_len(&slot) > before;
                    if !progressed {
                        failures += 1;
                    } else {
                        delay = opts.retry_delay;
                    }
                    if !is_retryable(&e) || attempts >= opts.max_attempts || failures > opts.retries
                    {
                        return Err(e);
                    }
                    tracing::warn!(
                        url,
                        attempts,
                        bytes = part_len(&slot),
                        "download interrupted; retrying"
                    );
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(30));
                }
            }
        }
        // Verify and publish.
        let part = slot.take().ok_or_else(|| BlobError::Io {
            action: "cannot finish",
            path: part_path.clone(),
            source: io::Error::other("download state lost"),
        })?;
        let (d, s, u) = (dest.clone(), sha.to_string(), url.to_string());
        let res = blocking(move || publish_verified(part, &d, &s, &u, kind))
            .await
            .map_err(BlobError::io("cannot finish", &part_path))?;
        match res {
            Ok(()) => {
                tracker.finish(true);
                return Ok(());
            }
            // A resumed part may have come from an older file at the URL: the mismatching
            // part is gone now; try once more from zero before giving up.
            Err(BlobError::Mismatch { .. }) if resumed => {
                resumed = false;
                tracing::warn!(
                    url,
                    "resumed download does not verify; restarting from zero"
                );
                let pp = part_path.clone();
                slot = Some(
                    blocking(move || Part::create(&pp))
                        .await
                        .and_then(|r| r)
                        .map_err(BlobError::io("cannot create", &part_path))?,
                );
                tracker.set_position(0);
            }
            Err(e) => return Err(e),
        }
    }
}

/// Copy a local file into blob `sha`, hashing in the same pass.
pub(crate) async fn copy_file(
    target: &Target,
    src: &Path,
    sha: &str,
    label: &str,
    kind: BlobKind,
    progress: &Progress,
) -> Result<(), BlobError> {
    let part_path = target.part_path.clone();
    let err_path = part_path.clone();
    let dest = target.dest.clone();
    let src: PathBuf = src.to_path_buf();
    let sha = sha.to_string();
    let mut tracker = progress.start(label, None);
    blocking(move || {
        let limit = super::part::max_image_bytes();
        let name = format!("file://{}", src.display());
        let mut f = File::open(&src).map_err(BlobError::io("cannot open", &src))?;
        let m = f.metadata().map_err(BlobError::io("cannot stat", &src))?;
        if !m.is_file() {
            return Err(BlobError::TooLarge {
                source_name: name,
                reason: "not a regular file (a device or FIFO is never read as an image)".into(),
            });
        }
        tracker.set_total(Some(m.len()));
        let mut copied: u64 = 0;
        let mut part =
            Part::create(&part_path).map_err(BlobError::io("cannot create", &part_path))?;
        let mut buf = vec![0u8; BUF_SIZE];
        loop {
            let n = match f.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    part.discard();
                    return Err(BlobError::Io {
                        action: "cannot read",
                        path: src,
                        source: e,
                    });
                }
            };
            copied += n as u64;
            if copied > limit {
                part.discard();
                return Err(BlobError::TooLarge {
                    source_name: name,
                    reason: format!("over the {limit}-byte image limit"),
                });
            }
            if let Err(e) = part.append(&buf[..n]) {
                part.discard();
                return Err(BlobError::Io {
                    action: "cannot write",
                    path: part_path,
                    source: e,
                });
            }
            tracker.advance(n as u64);
        }
        let r = publish_verified(part, &dest, &sha, &name, kind);
        tracker.finish(r.is_ok());
        r
    })
    .await
    .map_err(BlobError::io("cannot copy into", &err_path))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range() {
        assert_eq!(
            parse_content_range("bytes 100-999/1000"),
            Some((100, Some(1000)))
        );
        assert_eq!(parse_content_range("bytes 5-9/*"), Some((5, None)));
        assert_eq!(parse_content_range("items 5-9/*"), None);
        assert_eq!(parse_unsatisfied_range("bytes */1000"), Some(1000));
    }
}
