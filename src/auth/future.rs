//! The response future of `BearerAuth`: the inner service's answer, or the refusal.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::Response;
use pin_project_lite::pin_project;

use crate::body::{Body, BoxError};

pin_project! {
    /// Response future of [`BearerAuth`].
    ///
    /// [`BearerAuth`]: super::BearerAuth
    pub struct ResponseFuture<F> {
        #[pin]
        pub(super) kind: Kind<F>,
    }
}

pin_project! {
    #[project = KindProj]
    pub(super) enum Kind<F> {
        Inner { #[pin] fut: F },
        Reject { res: Option<Response<Body>> },
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Output = Result<Response<Body>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Inner { fut } => fut.poll(cx).map_ok(|res| res.map(Body::new)),
            KindProj::Reject { res } => match res.take() {
                Some(res) => Poll::Ready(Ok(res)),
                None => Poll::Pending,
            },
        }
    }
}
