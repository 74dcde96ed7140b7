//! Secrets: the masked [`ApiKey`] newtype, masking, and scrubbing text that may echo a key.
//!
//! Upstream keys never leave the process unmasked. Everything that shows a key (logs, admin
//! snapshots, errors) goes through [`mask`], which keeps the first 4 and last 4 characters:
//! `AIza…9xQk`. Text that may echo a key (an upstream error body, a transport error that
//! carries a URL) goes through [`scrub`] before it is logged or relayed.
//!
//! # Example
//! ```
//! use tower_gemini::secret::{ApiKey, mask, scrub};
//!
//! let key = ApiKey::new("AIzaSyA-1234567890abcdefghijklmnopq9xQk");
//! assert_eq!(format!("{key}"), "AIza…9xQk");
//! assert_eq!(format!("{key:?}"), "ApiKey(AIza…9xQk)");
//! assert_eq!(mask("short"), "…");
//! assert!(!scrub("bad key api_key:AIzaSyA-1234567890abcdefghijklmnopq9xQk").contains("1234567890"));
//! ```

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

/// An upstream API key. `Debug` and `Display` print it masked; [`ApiKey::expose`] gives the
/// secret to the one place that sends it upstream.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ApiKey(Arc<str>);

impl ApiKey {
    /// Wraps a key (surrounding whitespace trimmed).
    pub fn new(key: impl AsRef<str>) -> Self {
        Self(Arc::from(key.as_ref().trim()))
    }

    /// The secret itself. Send it upstream; never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The masked form, e.g. `AIza…9xQk`.
    pub fn masked(&self) -> String {
        mask(&self.0)
    }

    /// A short stable fingerprint for logs and metric labels (not reversible, not the key).
    pub fn fingerprint(&self) -> String {
        // FNV-1a: stable across runs and processes, unlike std's randomly keyed hasher.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in self.0.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        format!("{:08x}", (h >> 32) as u32 ^ h as u32)
    }
}

impl From<&str> for ApiKey {
    fn from(key: &str) -> Self {
        ApiKey::new(key)
    }
}

impl From<String> for ApiKey {
    fn from(key: String) -> Self {
        ApiKey::new(key)
    }
}

impl From<&String> for ApiKey {
    fn from(key: &String) -> Self {
        ApiKey::new(key)
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiKey({})", self.masked())
    }
}

impl fmt::Display for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
}

/// The client's own upstream key, for one request (own-key mode).
///
/// [`BearerAuthLayer::client_key_passthrough`](crate::auth::BearerAuthLayer::client_key_passthrough)
/// puts it into the request extensions when a client sends its own Gemini key instead of a
/// gateway token. The upstream layers (key rotation, or the gateway's single upstream key) then
/// send exactly this key upstream for that request, never draw one from the pool, and never
/// keep it. `Debug` is masked.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientKey(ApiKey);

impl ClientKey {
    /// Wraps the key a client sent.
    pub fn new(key: impl AsRef<str>) -> Self {
        Self(ApiKey::new(key))
    }

    /// The key, to send upstream.
    pub fn key(&self) -> &ApiKey {
        &self.0
    }
}

impl fmt::Debug for ClientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClientKey({})", self.0.masked())
    }
}

/// Masks a secret as its first 4 + `…` + last 4 characters. Secrets of 12 characters or
/// fewer are shown as `…` alone, since 8 shown characters would give most of them away.
pub fn mask(secret: &str) -> String {
    let chars: Vec<char> = secret.chars().collect();
    if chars.len() <= 12 {
        return "…".to_owned();
    }
    let head: String = chars[..4].iter().collect();
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("{head}…{tail}")
}

/// Masks anything in `text` that looks like a Google API key and the value of any `key=` query
/// parameter. Google issues two shapes: standard keys (`AIza` + 35 characters) and, since 2026,
/// auth keys (`AQ.` + a long base64url string). Returns the text unchanged (borrowed) when clean.
pub fn scrub(text: &str) -> Cow<'_, str> {
    if !text.contains("AIza") && !text.contains("AQ.") && !text.contains("key=") {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    loop {
        // The earliest of the three patterns; `skip` is the part kept in clear (`key=`).
        let found = [("AIza", 0), ("AQ.", 0), ("key=", 4)]
            .into_iter()
            .filter_map(|(pattern, skip)| rest.find(pattern).map(|at| (at, pattern, skip)))
            .min_by_key(|(at, _, _)| *at);
        let Some((at, pattern, skip)) = found else {
            break;
        };
        out.push_str(&rest[..at + skip]);
        let tail = &rest[at + skip..];
        let len = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.'))
            .unwrap_or(tail.len());
        let token = &tail[..len];
        if skip == 0 && len < 20 {
            // "AIza" or "AQ." inside ordinary text, not a key.
            out.push_str(pattern);
            rest = &tail[pattern.len().min(tail.len())..];
            continue;
        }
        out.push_str(&mask(token));
        rest = &tail[len..];
    }
    out.push_str(rest);
    Cow::Owned(out)
}

/// Replaces every occurrence of each of `secrets` in `text` by its masked form.
///
/// Use it on upstream bodies that may echo a key in a form [`scrub`] does not recognise.
pub(crate) fn scrub_known<'a, S: AsRef<str>>(text: &'a str, secrets: &[S]) -> Cow<'a, str> {
    let mut out = scrub(text);
    for s in secrets {
        let s = s.as_ref();
        if !s.is_empty() && out.contains(s) {
            out = Cow::Owned(out.replace(s, &mask(s)));
        }
    }
    out
}

/// A shared, changeable set of secrets to scrub from text (the upstream keys and client tokens
/// a gateway holds). Clones share the set.
#[derive(Clone, Default)]
pub struct SecretSet {
    inner: Arc<std::sync::RwLock<Vec<Arc<str>>>>,
}

impl SecretSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a secret (ignored when empty or already present).
    pub fn insert(&self, secret: &str) {
        let secret = secret.trim();
        if secret.is_empty() {
            return;
        }
        let mut v = self.inner.write().unwrap_or_else(|e| e.into_inner());
        if !v.iter().any(|s| &**s == secret) {
            v.push(Arc::from(secret));
        }
    }

    /// Removes a secret.
    pub fn remove(&self, secret: &str) {
        let mut v = self.inner.write().unwrap_or_else(|e| e.into_inner());
        v.retain(|s| &**s != secret);
    }

    /// The secrets held now.
    #[cfg_attr(
        not(all(feature = "request-id", feature = "bearer-auth")),
        allow(dead_code)
    )]
    pub(crate) fn snapshot(&self) -> Vec<Arc<str>> {
        self.inner.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Masks every known secret, and anything [`scrub`] recognises, in `text`.
    pub fn scrub<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let v = self.inner.read().unwrap_or_else(|e| e.into_inner());
        scrub_known(text, &v)
    }
}

impl fmt::Debug for SecretSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.inner.read().map_or(0, |v| v.len());
        f.debug_struct("SecretSet").field("len", &n).finish()
    }
}

// === TokenDigest ===

/// The SHA-256 digest of a client token: what a [`MemoryTokenStore`](crate::auth::MemoryTokenStore) (and a database behind
/// it) keeps instead of the token. Client tokens are random (see `auth::mint_token`), so a fast hash
/// is enough; there is no password to stretch.
///
/// ```
/// use tower_gemini::auth::TokenDigest;
/// let d = TokenDigest::of("sk-client-token-1");
/// assert_eq!(TokenDigest::from_hex(&d.to_hex()), Some(d));
/// assert!(!d.to_hex().contains("client"));
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
#[cfg(any(feature = "bearer-auth", feature = "persist"))]
#[cfg_attr(docsrs, doc(cfg(any(feature = "bearer-auth", feature = "persist"))))]
pub struct TokenDigest([u8; 32]);

#[cfg(any(feature = "bearer-auth", feature = "persist"))]
impl TokenDigest {
    /// The digest of `token`.
    pub fn of(token: &str) -> Self {
        use sha2::Digest;
        Self(sha2::Sha256::digest(token.as_bytes()).into())
    }

    /// The token's id: `tok_` and 12 hex digits of a hash of the digest. Plain ASCII that
    /// needs no escaping in a URL path, stable for the token, unique in practice, and no help
    /// in finding the token (unlike a masked token, which shows 8 of its characters and
    /// which two tokens can share).
    ///
    /// ```
    /// use tower_gemini::auth::TokenDigest;
    /// let id = TokenDigest::of("sk-client-token-1").id();
    /// assert!(id.starts_with("tok_") && id.len() == 16 && id.is_ascii());
    /// ```
    pub fn id(&self) -> String {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        h.update(b"tower-gemini token id\0");
        h.update(self.0);
        let out = h.finalize();
        let mut s = String::with_capacity(16);
        s.push_str("tok_");
        for b in &out[..6] {
            use std::fmt::Write as _;
            let _ = write!(s, "{b:02x}");
        }
        s
    }

    /// The digest as 64 lowercase hex characters.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Parses 64 hex characters.
    pub fn from_hex(hex_digest: &str) -> Option<Self> {
        let bytes = hex_digest.as_bytes();
        if bytes.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, pair) in bytes.chunks(2).enumerate() {
            out[i] = crate::credential::hex(pair[0])? << 4 | crate::credential::hex(pair[1])?;
        }
        Some(Self(out))
    }

    /// The raw digest.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Constant-time equality.
    #[cfg(feature = "bearer-auth")]
    pub(crate) fn ct_eq(&self, other: &TokenDigest) -> bool {
        use subtle::ConstantTimeEq;
        bool::from(self.0.ct_eq(&other.0))
    }
}

#[cfg(any(feature = "bearer-auth", feature = "persist"))]
impl fmt::Debug for TokenDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenDigest({}…)", &self.to_hex()[..12])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "AIzaSyD-abcdefghijklmnopqrstuvwxyz01234";

    #[test]
    fn masks_first_and_last_four() {
        assert_eq!(mask(KEY), "AIza…1234");
        assert_eq!(mask("123456789012"), "…");
    }

    #[test]
    fn scrubs_google_keys_and_query_keys() {
        let text = format!(
            "API key not valid. api_key:{KEY} url=/v1beta/x?alt=sse&key=tok_secret_value_1"
        );
        let clean = scrub(&text);
        assert!(!clean.contains("abcdefghijkl"), "{clean}");
        assert!(!clean.contains("secret_value"), "{clean}");
        assert!(clean.contains("AIza…1234"));
        assert!(clean.contains("alt=sse"));
    }

    #[test]
    fn leaves_clean_text_alone() {
        assert!(matches!(scrub("all good"), Cow::Borrowed(_)));
        assert_eq!(scrub("AIza is a prefix"), "AIza is a prefix");
    }

    #[test]
    fn scrubs_known_secrets_in_any_form() {
        let clean = scrub_known(
            "token my-own-client-token-42 leaked",
            &["my-own-client-token-42"],
        );
        assert_eq!(clean, "token my-o…n-42 leaked");
    }

    #[test]
    fn secret_set_scrubs_what_it_holds() {
        let set = SecretSet::new();
        set.insert("plain-upstream-key-77");
        let clone = set.clone();
        assert_eq!(clone.scrub("x plain-upstream-key-77 y"), "x plai…y-77 y");
        set.remove("plain-upstream-key-77");
        assert_eq!(
            clone.scrub("x plain-upstream-key-77 y"),
            "x plain-upstream-key-77 y"
        );
    }

    #[test]
    fn fingerprint_is_stable_and_not_the_key() {
        let k = ApiKey::new(KEY);
        assert_eq!(k.fingerprint(), ApiKey::new(KEY).fingerprint());
        assert!(!KEY.contains(&k.fingerprint()));
    }

    #[test]
    fn auth_keys_are_scrubbed_by_shape_too() {
        const AUTH: &str = "AQ.Ab8RN6LgKq0xZ-abcdefghijklmnopqrstuvwxyz_0123456789";
        let text = format!("API key not valid: {AUTH} (x). Also AQ. and AQ.short stay; AIza too.");
        let clean = scrub(&text);
        assert!(!clean.contains("Ab8RN6LgKq0x"), "{clean}");
        assert!(clean.contains(&mask(AUTH)), "{clean}");
        assert!(
            clean.contains("Also AQ. and AQ.short stay; AIza too."),
            "{clean}"
        );
        assert_eq!(format!("{}", ApiKey::new(AUTH)), "AQ.A…6789");
    }
}
