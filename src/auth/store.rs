//! Who a client is ([`Identity`]), the [`TokenStore`] plug point, and the in-memory store
//! that keeps token digests.

use std::fmt;
use std::sync::{Arc, RwLock};

use crate::facts::{Account, Identity};
use crate::secret::TokenDigest;

/// Looks up client tokens: the plug point for token databases.
pub trait TokenStore: Send + Sync + 'static {
    /// The identity a token belongs to, or `None`. Implementations compare in constant time.
    fn authenticate(&self, token: &str) -> Option<Identity>;
}

impl<T: TokenStore + ?Sized> TokenStore for Arc<T> {
    fn authenticate(&self, token: &str) -> Option<Identity> {
        (**self).authenticate(token)
    }
}

/// One entry of a [`MemoryTokenStore`] listing (never the token).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenInfo {
    /// The token's id ([`TokenDigest::id`] for tokens inserted by the token itself).
    pub id: String,
    /// The client's name.
    pub name: String,
    /// Whether the token is an admin token.
    pub admin: bool,
    /// The token's SHA-256 digest (what is stored instead of the token).
    pub digest: TokenDigest,
    /// What the token may do beyond the global settings, if anything.
    pub account: Option<Arc<Account>>,
}

struct Entry {
    digest: TokenDigest,
    identity: Identity,
}

impl Entry {
    fn info(&self) -> TokenInfo {
        TokenInfo {
            id: self.identity.id().to_owned(),
            name: self.identity.name().to_owned(),
            admin: self.identity.is_admin(),
            digest: self.digest,
            account: self.identity.account_arc(),
        }
    }
}

/// An in-memory token set that can change at run time (tokens added and revoked take effect
/// on the next request). It keeps [`TokenDigest`]s, never the tokens themselves.
#[derive(Default)]
pub struct MemoryTokenStore {
    entries: RwLock<Vec<Entry>>,
}

impl MemoryTokenStore {
    /// An empty store: every request is refused until a token is added.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a client token (builder form).
    pub fn with_token(self, token: impl AsRef<str>, name: impl Into<Arc<str>>) -> Self {
        self.insert(token.as_ref(), name, false);
        self
    }

    /// Adds an admin token (builder form).
    pub fn with_admin_token(self, token: impl AsRef<str>) -> Self {
        self.insert(token.as_ref(), "admin", true);
        self
    }

    /// Adds (or replaces) a token. Returns its id, [`TokenDigest::id`]: `tok_` and 12 hex
    /// digits, plain ASCII that never shows part of the token.
    pub fn insert(&self, token: &str, name: impl Into<Arc<str>>, admin: bool) -> String {
        let digest = TokenDigest::of(token);
        let id = digest.id();
        self.insert_digest(digest, id.as_str(), name, admin);
        id
    }

    /// Adds (or replaces) a token known only by its digest and id, as a database restores it.
    pub fn insert_digest(
        &self,
        digest: TokenDigest,
        id: impl Into<Arc<str>>,
        name: impl Into<Arc<str>>,
        admin: bool,
    ) {
        self.insert_account(digest, id, name, admin, None);
    }

    /// Adds (or replaces) a token known by its digest, with what it may do beyond the global
    /// settings (`None` or an empty [`Account`]: nothing of its own).
    pub fn insert_account(
        &self,
        digest: TokenDigest,
        id: impl Into<Arc<str>>,
        name: impl Into<Arc<str>>,
        admin: bool,
        account: Option<Arc<Account>>,
    ) {
        let entry = Entry {
            digest,
            identity: Identity::new(name, id, admin)
                .with_subject(subject_of(&digest))
                .with_account(account),
        };
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        entries.retain(|e| !e.digest.ct_eq(&digest));
        entries.push(entry);
    }

    /// Revokes a token given as the token itself or its id. Returns whether one was removed.
    pub fn revoke(&self, token_or_id: &str) -> bool {
        !self.remove(token_or_id).is_empty()
    }

    /// Revokes a token given as the token itself or its id, and returns what was removed.
    pub fn remove(&self, token_or_id: &str) -> Vec<TokenInfo> {
        let digest = TokenDigest::of(token_or_id);
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        let (removed, kept) = std::mem::take(&mut *entries)
            .into_iter()
            .partition(|e| e.digest.ct_eq(&digest) || e.identity.id() == token_or_id);
        *entries = kept;
        removed.iter().map(Entry::info).collect()
    }

    /// Revokes the token with this digest (as a shared store names a token revoked elsewhere).
    /// Returns whether one was removed.
    pub fn remove_digest(&self, digest: &TokenDigest) -> bool {
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        let before = entries.len();
        entries.retain(|e| !e.digest.ct_eq(digest));
        entries.len() != before
    }

    /// The tokens, masked.
    pub fn list(&self) -> Vec<TokenInfo> {
        let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
        entries.iter().map(Entry::info).collect()
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.entries.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether there is no token.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl fmt::Debug for MemoryTokenStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryTokenStore")
            .field("tokens", &self.list())
            .finish()
    }
}

impl TokenStore for MemoryTokenStore {
    fn authenticate(&self, token: &str) -> Option<Identity> {
        let digest = TokenDigest::of(token);
        let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
        // Compare against every entry, so timing says nothing about which one matched.
        let mut found = None;
        for e in entries.iter() {
            if e.digest.ct_eq(&digest) {
                found = Some(e.identity.clone());
            }
        }
        found
    }
}

/// Mints a new random token: `prefix` followed by 64 hex characters (244 random bits).
///
/// ```
/// let t = tower_gemini::auth::mint_token("sk-");
/// assert!(t.starts_with("sk-") && t.len() == 67);
/// assert_ne!(t, tower_gemini::auth::mint_token("sk-"));
/// ```
pub fn mint_token(prefix: &str) -> String {
    let a = uuid::Uuid::new_v4().simple().to_string();
    let b = uuid::Uuid::new_v4().simple().to_string();
    format!("{prefix}{a}{b}")
}

/// The subject of a token known by `digest`: `sub-` and 32 hex digits of a hash of the digest
/// (stable for the token, and no help in finding it).
fn subject_of(digest: &TokenDigest) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(b"tower-gemini subject\0");
    h.update(digest.as_bytes());
    let out = h.finalize();
    let mut s = String::with_capacity(36);
    s.push_str("sub-");
    for b in &out[..16] {
        use std::fmt::Write as _;
        let _ = write!(s, "{b:02x}");
    }
    s
}
