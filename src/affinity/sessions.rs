//! [`UploadSessionsLayer`]: the bytes of a resumable upload arrive, as Google's SDKs send
//! them, without the API key; the gateway's session id is their credential.

use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower::{Layer, Service};

use super::store::AffinityStore;
use crate::body::BoxFuture;
use crate::facts::{Identity, PreAuthorized};

/// Stacked in front of authentication: a request to `/upload/...?upload_id=<id>` with no
/// client credential, whose id names a live upload session this gateway handed out, is let in
/// as the client that opened the session ([`PreAuthorized`]). Google's upload URLs work the
/// same way: the session id is the capability, and the SDKs send no key with the bytes. Any
/// other request passes untouched (and authentication refuses it when it has no credential).
/// [`Gateway`](crate::gateway::Gateway) stacks it when given an [`AffinityLayer`](super::AffinityLayer).
#[derive(Clone, Debug)]
pub struct UploadSessionsLayer {
    store: Arc<dyn AffinityStore>,
}

impl UploadSessionsLayer {
    /// Sessions looked up in `store` (the [`AffinityLayer`](super::AffinityLayer)'s).
    pub fn new(store: Arc<dyn AffinityStore>) -> Self {
        Self { store }
    }
}

impl<S> Layer<S> for UploadSessionsLayer {
    type Service = UploadSessions<S>;

    fn layer(&self, inner: S) -> Self::Service {
        UploadSessions {
            inner,
            store: self.store.clone(),
        }
    }
}

/// The service made by [`UploadSessionsLayer`].
#[derive(Clone, Debug)]
pub struct UploadSessions<S> {
    inner: S,
    store: Arc<dyn AffinityStore>,
}

impl<S> UploadSessions<S> {
    crate::define_inner_service_accessors!();
}

impl<S, B, ResB> Service<Request<B>> for UploadSessions<S>
where
    S: Service<Request<B>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Response<ResB>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Response<ResB>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let session = req
            .uri()
            .path()
            .starts_with("/upload/")
            .then(|| req.uri().query())
            .flatten()
            .and_then(|q| crate::credential::query_param(q, "upload_id"))
            .filter(|_| crate::credential::credential(&req).is_none());
        let Some(id) = session else {
            let fut = inner.call(req);
            return BoxFuture(Box::pin(fut));
        };
        let store = self.store.clone();
        BoxFuture(Box::pin(async move {
            if let Some(e) = store.get(&format!("uploads/{id}")).await {
                req.extensions_mut().insert(PreAuthorized(Identity::new(
                    e.owner.as_str(),
                    e.owner.as_str(),
                    false,
                )));
            }
            inner.call(req).await
        }))
    }
}
