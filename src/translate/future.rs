//! The response future both fronts return: the inner future unchanged for routes a front
//! does not own, its translation otherwise.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_core::TryFuture;
use http::Response;
use pin_project_lite::pin_project;

use crate::body::{Body, BoxError};

pin_project! {
    /// The response future of a translating front (`OpenAiToGemini`, `AnthropicToGemini`):
    /// the inner future unchanged for routes the front does not own, a translation otherwise.
    pub struct ResponseFuture<F>
    where
        F: TryFuture,
    {
        #[pin]
        kind: Kind<F>,
    }
}

type Translation<E> = Pin<Box<dyn Future<Output = Result<Response<Body>, E>> + Send>>;

pin_project! {
    #[project = KindProj]
    enum Kind<F>
    where
        F: TryFuture,
    {
        Passthrough { #[pin] future: F },
        Translate { future: Translation<F::Error> },
    }
}

impl<F: TryFuture> ResponseFuture<F> {
    /// The inner service's own answer.
    pub(crate) fn passthrough(future: F) -> Self {
        Self {
            kind: Kind::Passthrough { future },
        }
    }

    /// A translated answer.
    pub(crate) fn translate(future: Translation<F::Error>) -> Self {
        Self {
            kind: Kind::Translate { future },
        }
    }
}

impl<F: TryFuture> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ResponseFuture")
    }
}

impl<F, ResBody, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
    ResBody: http_body::Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Output = Result<Response<Body>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Passthrough { future } => future.poll(cx).map_ok(|r| r.map(Body::new)),
            KindProj::Translate { future } => future.as_mut().poll(cx),
        }
    }
}
