//! TEMP-STUB: replaced by the blobs branch.

use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use crate::clawspec::ClawSpec;
use crate::desired::{BundleDesired, BundleKind};
use crate::home::Home;

/// Identify a bundle (stub).
pub fn inspect(home: &Home, path: &Path) -> anyhow::Result<BundleDesired> {
    let data = std::fs::read(path)?;
    let digest = crate::digest::sha256_hex(&data);
    let first = data.iter().find(|b| !b.is_ascii_whitespace()).copied();
    let (kind, spec) = if first == Some(b'{') {
        (BundleKind::Json, serde_json::from_slice::<ClawSpec>(&data)?)
    } else {
        let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(&data[..]));
        let mut spec = None;
        for e in ar.entries()? {
            let mut e = e?;
            if e.path()?.as_os_str() == "clawspec.json" {
                let mut s = Vec::new();
                e.read_to_end(&mut s)?;
                spec = Some(serde_json::from_slice::<ClawSpec>(&s)?);
                break;
            }
        }
        (
            BundleKind::TarGz,
            spec.ok_or_else(|| anyhow::anyhow!("no clawspec.json"))?,
        )
    };
    let imported = home.bundle_dir(&digest).join("clawspec.json").exists();
    Ok(BundleDesired {
        digest,
        source: path.to_owned(),
        kind,
        clawspec: Arc::new(spec),
        imported,
    })
}
