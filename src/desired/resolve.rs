//! The real [`BundleResolver`]: local bundles are inspected in place (digest cached by
//! file identity); URL bundles are downloaded into the blob store first.

use async_trait::async_trait;

use crate::desired::{BundleDesired, BundleResolver};
use crate::home::Home;
use crate::input::manifest::ClawboxRef;

/// Resolves `spec.clawbox` through [`crate::store::bundle`].
#[derive(Debug, Default, Clone, Copy)]
pub struct StoreResolver;

#[async_trait]
impl BundleResolver for StoreResolver {
    async fn resolve(&self, home: &Home, r: &ClawboxRef) -> anyhow::Result<BundleDesired> {
        match r {
            ClawboxRef::Path(p) => {
                let home = home.clone();
                let p = p.clone();
                Ok(
                    tokio::task::spawn_blocking(move || crate::store::bundle::inspect(&home, &p))
                        .await??,
                )
            }
            ClawboxRef::Url { url, sha256 } => {
                // Remote bundles are downloaded (verified, resumable) into the blob store
                // before planning, then identified like a local file.
                let blob = crate::store::bundle::fetch_url_bundle(
                    home,
                    url,
                    sha256,
                    &crate::store::progress::Progress::stderr(),
                )
                .await?;
                let home = home.clone();
                Ok(
                    tokio::task::spawn_blocking(move || {
                        crate::store::bundle::inspect(&home, &blob)
                    })
                    .await??,
                )
            }
        }
    }
}
