//! A key's stable id, safe to log and show.

use std::borrow::Borrow;
use std::fmt;
use std::sync::Arc;

/// A key's stable id: its [fingerprint](crate::secret::ApiKey::fingerprint) (a suffix is
/// added in the unlikely case two keys share one). Safe to log, show and use in URLs.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(Arc<str>);

impl KeyId {
    /// Wraps an id string (for instance one read back from a store or an admin request).
    pub fn new(id: impl AsRef<str>) -> Self {
        Self(Arc::from(id.as_ref()))
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<&KeyId> for Arc<str> {
    /// The id's shared string, without copying it.
    fn from(id: &KeyId) -> Self {
        id.0.clone()
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({})", self.0)
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Borrow<str> for KeyId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for KeyId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}
