//! [`BearerAuth`]: authenticates a request, or answers 401 without calling the inner service.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower::{Layer, Service};

use super::future::{Kind, ResponseFuture};
use super::{BearerAuthLayer, Identity, TokenStore, client_key_id, credential};
use crate::body::{Body, BoxError};
use crate::credential::strip as strip_credentials;
use crate::error::{ApiError, Dialect};
use crate::secret::ClientKey;

/// The 401's message for a request without any client credential.
pub(crate) const MISSING_TOKEN: &str = "missing client token: send `Authorization: Bearer <token>`, \
     `x-goog-api-key: <token>`, `x-api-key: <token>` or `?key=<token>`";

/// The 401's message for a credential that is no client's.
pub(crate) const INVALID_TOKEN: &str = "invalid client token";

/// Who presents `token`: a client of `store`, or in own-key mode (`passthrough`) the holder of
/// that Gemini key (identified by [`client_key_id`], with the key to send upstream for it); the
/// 401 to answer for an unknown or expired token. The one decision for every route that
/// authenticates (the REST routes' [`BearerAuth`] and the Live API's handshake).
pub(crate) fn identify(
    store: &dyn TokenStore,
    token: &str,
    passthrough: bool,
) -> Result<(Identity, Option<ClientKey>), ApiError> {
    match store.authenticate(token) {
        Some(identity) => match identity.account().and_then(|a| a.expires_at) {
            Some(at) if crate::rfc3339::now() >= at => Err(ApiError::unauthorized(format!(
                "this client token expired at {}",
                crate::facts::Account::format_time(at)
            ))),
            _ => Ok((identity, None)),
        },
        None if passthrough => {
            let id = client_key_id(token);
            Ok((
                Identity::new(id.as_str(), id.as_str(), false),
                Some(ClientKey::new(token)),
            ))
        }
        None => Err(ApiError::unauthorized(INVALID_TOKEN)),
    }
}

/// Authenticates clients by token; see the [module docs](super).
#[derive(Clone)]
pub struct BearerAuth<S> {
    pub(super) inner: S,
    pub(super) store: Arc<dyn TokenStore>,
    pub(super) passthrough: bool,
}

impl<S> BearerAuth<S> {
    /// Wraps `inner`, authenticating against `store`.
    pub fn new(inner: S, store: impl TokenStore) -> Self {
        BearerAuthLayer::new(store).layer(inner)
    }

    /// A [`BearerAuthLayer`] for `store`.
    pub fn layer(store: impl TokenStore) -> BearerAuthLayer {
        BearerAuthLayer::new(store)
    }

    crate::define_inner_service_accessors!();
}

impl<S: fmt::Debug> fmt::Debug for BearerAuth<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BearerAuth")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for BearerAuth<S>
where
    S: Service<Request<Body>, Response = Response<ResBody>>,
    ReqBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    ReqBody::Error: Into<BoxError>,
    ResBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let dialect = Dialect::of(&req);
        let mut own_key = None;
        let pre = req
            .extensions()
            .get::<crate::facts::PreAuthorized>()
            .map(|p| p.0.clone());
        let identity = match (credential(&req), pre) {
            (None, Some(identity)) => Ok(identity),
            (None, None) => Err(ApiError::unauthorized(MISSING_TOKEN)),
            (Some((token, _)), _) => match identify(&*self.store, &token, self.passthrough) {
                Ok((identity, own)) => {
                    own_key = own;
                    Ok(identity)
                }
                Err(refused) => Err(refused),
            },
        };
        match identity {
            Ok(identity) => {
                let mut req = req.map(Body::new);
                // The credential's header is part of how the dialect is told; keep the answer.
                req.extensions_mut().insert(dialect);
                strip_credentials(&mut req);
                if let Some(key) = own_key {
                    req.extensions_mut().insert(key);
                }
                tracing::Span::current().record("client", identity.id());
                if let Some(report) = crate::facts::Report::of(&req) {
                    report.record_client(&identity);
                }
                req.extensions_mut().insert(identity);
                ResponseFuture {
                    kind: Kind::Inner {
                        fut: self.inner.call(req),
                    },
                }
            }
            Err(err) => {
                tracing::debug!(reason = err.message(), "client refused");
                ResponseFuture {
                    kind: Kind::Reject {
                        res: Some(err.into_response(dialect)),
                    },
                }
            }
        }
    }
}
