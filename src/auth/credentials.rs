//! The client id of own-key mode: a digest of the client's own key, never the key.

// Where a credential can be and how it is stripped live in `crate::credential`, one copy for
// every layer; `auth` re-exports them under their old names.

/// The client id of a request made with the client's own key (own-key mode): `ownkey-`
/// followed by 16 hex characters of the key's SHA-256. Stable across processes and restarts
/// (rate limits shared through Redis key on it), not reversible, and never the key itself.
///
/// ```
/// let id = tower_gemini::auth::client_key_id("AIzaSyA-1234567890abcdefghijklmnopq9xQk");
/// assert!(id.starts_with("ownkey-") && id.len() == 23);
/// assert!(!id.contains("9xQk"));
/// ```
pub fn client_key_id(key: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(key.trim().as_bytes());
    let mut id = String::with_capacity(23);
    id.push_str("ownkey-");
    for b in &digest[..8] {
        use std::fmt::Write as _;
        let _ = write!(id, "{b:02x}");
    }
    id
}
