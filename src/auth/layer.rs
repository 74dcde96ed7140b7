//! [`BearerAuthLayer`]: the token store and the own-key switch, applied to a service.

use std::fmt;
use std::sync::Arc;

use tower::Layer;

use super::{BearerAuth, TokenStore};

/// Applies [`BearerAuth`]: authenticate clients against a [`TokenStore`].
#[derive(Clone)]
pub struct BearerAuthLayer {
    store: Arc<dyn TokenStore>,
    passthrough: bool,
}

impl BearerAuthLayer {
    /// Authenticates against `store`.
    pub fn new(store: impl TokenStore) -> Self {
        Self {
            store: Arc::new(store),
            passthrough: false,
        }
    }

    /// Authenticates against a shared store (so an admin API can change it at run time).
    pub fn from_arc(store: Arc<dyn TokenStore>) -> Self {
        Self {
            store,
            passthrough: false,
        }
    }

    /// Own-key mode (default off): a credential the store does not know is taken to be the
    /// client's own Gemini key. The request goes on with that key as a [`ClientKey`] extension
    /// (the upstream layers send it upstream for this request only) and an [`Identity`] whose id
    /// is [`client_key_id`], a hash of the key, so limits and stats tell clients apart without
    /// holding their keys. Tokens the store knows still authenticate as before (and use the
    /// gateway's own keys); a request with no credential at all is still 401.
    ///
    /// [`ClientKey`]: crate::secret::ClientKey
    /// [`Identity`]: super::Identity
    /// [`client_key_id`]: super::client_key_id
    pub fn client_key_passthrough(mut self, on: bool) -> Self {
        self.passthrough = on;
        self
    }
}

impl fmt::Debug for BearerAuthLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BearerAuthLayer")
            .field("client_key_passthrough", &self.passthrough)
            .finish_non_exhaustive()
    }
}

impl<S> Layer<S> for BearerAuthLayer {
    type Service = BearerAuth<S>;

    fn layer(&self, inner: S) -> Self::Service {
        BearerAuth {
            inner,
            store: self.store.clone(),
            passthrough: self.passthrough,
        }
    }
}
