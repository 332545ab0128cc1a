//! Uploading one descriptor to every responsible HSDir through the Tor seam (rend-spec-v3
//! §2.2.5): concurrently, each HSDir with its own retries and backoff. An HSDir that refused the
//! revision is not asked again: it holds a descriptor at least as new, and asking again cannot
//! change that.

use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;

use crate::tor::{HsDirError, HsDirId, TorNetwork};

/// Attempts per HSDir, and the backoff before the first retry (doubling).
const UPLOAD_ATTEMPTS: u32 = 3;
const UPLOAD_FIRST_BACKOFF: Duration = Duration::from_secs(1);

/// What one HSDir said to an upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HsDirUpload {
    pub hsdir: HsDirId,
    /// `Ok` when the HSDir accepted it; otherwise why not, after all retries.
    pub outcome: Result<(), HsDirError>,
}

/// Upload `descriptor` to each of `hsdirs`, concurrently; one result per HSDir.
pub async fn upload_to_all<T: TorNetwork>(
    tor: &T,
    hsdirs: &[HsDirId],
    descriptor: Arc<str>,
) -> Vec<HsDirUpload> {
    join_all(hsdirs.iter().map(|hsdir| {
        let descriptor = descriptor.clone();
        async move {
            HsDirUpload {
                hsdir: hsdir.clone(),
                outcome: upload_with_retries(tor, hsdir, descriptor).await,
            }
        }
    }))
    .await
}

async fn upload_with_retries<T: TorNetwork>(
    tor: &T,
    hsdir: &HsDirId,
    descriptor: Arc<str>,
) -> Result<(), HsDirError> {
    let mut backoff = UPLOAD_FIRST_BACKOFF;
    let mut attempt = 1;
    loop {
        match tor.upload_descriptor(hsdir, descriptor.clone()).await {
            Ok(()) => return Ok(()),
            Err(err @ HsDirError::RevisionRefused) => return Err(err),
            Err(err) if attempt >= UPLOAD_ATTEMPTS => return Err(err),
            Err(err) => {
                tracing::debug!(%hsdir, attempt, "upload failed, retrying: {err}");
                tokio::time::sleep(backoff).await;
                backoff *= 2;
                attempt += 1;
            }
        }
    }
}
