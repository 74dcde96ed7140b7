//! A [`Lease`]: one use of a key by one upstream attempt.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::time::Instant;

use super::entry::KeyEntry;
use super::{KeyId, KeyPool};
use crate::secret::ApiKey;

/// One use of a key by one upstream attempt: counts it in flight until dropped.
pub(crate) struct Lease {
    pub(super) pool: Arc<KeyPool>,
    pub(super) entry: Arc<KeyEntry>,
    pub(super) probe: bool,
    pub(super) reported: bool,
}

impl Lease {
    pub(crate) fn key(&self) -> &ApiKey {
        &self.entry.key
    }

    pub(crate) fn id(&self) -> &KeyId {
        &self.entry.id
    }
}

impl fmt::Debug for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lease")
            .field("key", &self.entry.id)
            .field("probe", &self.probe)
            .finish()
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.entry.in_flight.fetch_sub(1, Ordering::Relaxed);
        if self.probe && !self.reported {
            // The probe was abandoned (client gone): let the next request probe instead.
            let mut h = self.entry.health();
            h.probing = false;
            self.entry.update_clean(&h);
            drop(h);
            self.pool.schedule_probe(Instant::now());
        }
    }
}
