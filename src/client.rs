//! The upstream HTTP client: hyper-util's pooled client with rustls, as a tower service.
//!
//! [`UpstreamClient`] is the leaf of a gateway stack. It sends each request to
//! `{base_url}{path}?{query}` over a pooled connection (HTTP/2 by ALPN when the upstream offers
//! it, HTTP/1.1 otherwise, keep-alive), asks for an uncompressed body (the layers above read
//! streams event by event), and bounds two waits with one timeout: the wait for response
//! headers and the silence between body chunks. A healthy stream may last as long as it likes.
//! (Why not tower-http's `TimeoutLayer`: it bounds the whole response, a long healthy stream
//! included, and answers an empty 408; here a timeout is an error the gateway answers as 504 in
//! the route's dialect.)
//!
//! Errors are [`tower_gemini::Error`](crate::Error)s: `is_timeout()` or `is_upstream()`, with
//! no URL or query string in their `Display`.
//!
//! # TLS and HTTP/2
//! rustls (ring) trusts the built-in webpki (Mozilla) roots, never the OS store; a private CA
//! or an egress proxy that re-signs TLS is trusted with
//! [`add_root_certificate`](UpstreamClientBuilder::add_root_certificate) or
//! [`add_root_certificates_pem`](UpstreamClientBuilder::add_root_certificates_pem), beside
//! them. Over HTTP/2 (`tests/http2.rs` runs each case against FakeGemini over TLS):
//! - requests multiplex on one pooled connection; beyond the server's
//!   `SETTINGS_MAX_CONCURRENT_STREAMS` they queue in the client rather than fail. A burst on a
//!   cold pool opens a connection per request (the protocol is known only after ALPN), later
//!   requests share one;
//! - after a GOAWAY, requests in flight finish on the old connection and new ones open a new
//!   one;
//! - a stream the server resets (RST_STREAM) fails that request only, as an `is_upstream()`
//!   error: `KeyRotation` retries it on another key (a transport error), `StreamResume`
//!   resumes a stream reset midway; other streams on the connection go on;
//! - dropping a response body resets its stream (RST_STREAM `CANCEL`): the upstream stops
//!   generating, and the connection stays in the pool.
//!
//! # Example
//! ```
//! use std::time::Duration;
//! use tower_gemini::client::UpstreamClient;
//!
//! let client = UpstreamClient::builder()
//!     .base_url("https://generativelanguage.googleapis.com")
//!     .timeout(Duration::from_secs(300))
//!     .build()
//!     .unwrap();
//! assert_eq!(client.base_url(), "https://generativelanguage.googleapis.com");
//! assert!(UpstreamClient::builder().base_url("not a url").build().is_err());
//! ```

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::{self, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tower::Service;

use crate::body::{Body, BoxFuture, IdleTimeout};
use crate::error::Error;

/// Builds an [`UpstreamClient`].
#[derive(Clone, Debug)]
pub struct UpstreamClientBuilder {
    base_url: String,
    timeout: Option<Duration>,
    pool_idle_timeout: Duration,
    pool_max_idle_per_host: usize,
    connect_timeout: Duration,
    extra_roots: Vec<Vec<u8>>,
    extra_roots_pem: Vec<Vec<u8>>,
}

impl Default for UpstreamClientBuilder {
    fn default() -> Self {
        Self {
            base_url: "https://generativelanguage.googleapis.com".to_owned(),
            timeout: Some(Duration::from_secs(300)),
            pool_idle_timeout: Duration::from_secs(90),
            pool_max_idle_per_host: 64,
            connect_timeout: Duration::from_secs(10),
            extra_roots: Vec::new(),
            extra_roots_pem: Vec::new(),
        }
    }
}

impl UpstreamClientBuilder {
    /// The upstream base URL, scheme and authority with an optional path prefix (default
    /// `https://generativelanguage.googleapis.com`). `http://` works for local fakes.
    pub fn base_url(mut self, url: impl Into<String>) -> Self {
        self.base_url = url.into();
        self
    }

    /// Bounds the wait for response headers and the silence between body chunks (default 300 s;
    /// `None` waits forever).
    pub fn timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.timeout = timeout.into();
        self
    }

    /// How long an idle pooled connection is kept (default 90 s).
    pub fn pool_idle_timeout(mut self, idle: Duration) -> Self {
        self.pool_idle_timeout = idle;
        self
    }

    /// Idle connections kept per host (default 64).
    pub fn pool_max_idle_per_host(mut self, n: usize) -> Self {
        self.pool_max_idle_per_host = n;
        self
    }

    /// Bounds TCP connect (default 10 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Trusts one more root certificate (DER) beside the built-in webpki (Mozilla) roots: a
    /// private CA, an egress proxy that re-signs traffic, or a test server. May be called more
    /// than once; the built-in roots always stay trusted.
    pub fn add_root_certificate(mut self, der: impl Into<Vec<u8>>) -> Self {
        self.extra_roots.push(der.into());
        self
    }

    /// Trusts the certificates of a PEM bundle (`-----BEGIN CERTIFICATE-----` blocks, as a CA
    /// file holds them) beside the built-in roots, like
    /// [`add_root_certificate`](Self::add_root_certificate). `build` fails when the bundle
    /// holds no certificate.
    pub fn add_root_certificates_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.extra_roots_pem.push(pem.into());
        self
    }

    /// Builds the client. Fails on a base URL that is not `http(s)://host[:port][/prefix]`, or
    /// on an extra root certificate that is not a valid certificate.
    ///
    /// The connection speaks HTTP/2 when the upstream offers it by ALPN (Google does), else
    /// HTTP/1.1.
    pub fn build(self) -> Result<UpstreamClient, Error> {
        let uri: Uri = self
            .base_url
            .trim()
            .parse()
            .map_err(|_| Error::config("UPSTREAM_URL is not a valid URL"))?;
        let scheme = uri
            .scheme()
            .filter(|s| *s == &Scheme::HTTP || *s == &Scheme::HTTPS)
            .cloned()
            .ok_or_else(|| Error::config("UPSTREAM_URL must start with http:// or https://"))?;
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| Error::config("UPSTREAM_URL has no host"))?;
        if uri.query().is_some() {
            return Err(Error::config("UPSTREAM_URL must not have a query string"));
        }
        let prefix = uri.path().trim_end_matches('/').to_owned();

        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(self.connect_timeout));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls_config(&self.extra_roots, &self.extra_roots_pem)?)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(self.pool_idle_timeout)
            .pool_max_idle_per_host(self.pool_max_idle_per_host)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(https);
        Ok(UpstreamClient {
            client,
            scheme,
            authority,
            prefix: prefix.into(),
            base_url: self.base_url.trim().trim_end_matches('/').into(),
            timeout: self.timeout,
        })
    }
}

/// rustls with the webpki roots plus the extra ones, DER or PEM bundles.
fn tls_config(extra: &[Vec<u8>], extra_pem: &[Vec<u8>]) -> Result<rustls::ClientConfig, Error> {
    crate::tls::client_config(crate::tls::root_store(extra, extra_pem)?)
}

/// A pooled HTTP/1.1 + HTTP/2 client (rustls) that sends every request to one upstream.
#[derive(Clone)]
pub struct UpstreamClient {
    client: Client<HttpsConnector<HttpConnector>, Body>,
    scheme: Scheme,
    authority: Authority,
    // `Arc<str>`: the client is cloned into every request's future; a clone must not allocate.
    prefix: Arc<str>,
    base_url: Arc<str>,
    timeout: Option<Duration>,
}

impl UpstreamClient {
    /// A builder with the defaults.
    pub fn builder() -> UpstreamClientBuilder {
        UpstreamClientBuilder::default()
    }

    /// A client for `base_url` with the default timeouts.
    pub fn new(base_url: impl Into<String>) -> Result<Self, Error> {
        Self::builder().base_url(base_url).build()
    }

    /// The base URL requests go to.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    fn upstream_uri(&self, uri: &Uri) -> Result<Uri, Error> {
        let pq = uri.path_and_query().map_or("/", PathAndQuery::as_str);
        let pq = if self.prefix.is_empty() {
            PathAndQuery::try_from(pq)
        } else {
            PathAndQuery::try_from(format!("{}{pq}", self.prefix))
        }
        .map_err(|_| Error::config("invalid request path"))?;
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(pq)
            .build()
            .map_err(|_| Error::config("invalid upstream URI"))
    }
}

impl fmt::Debug for UpstreamClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamClient")
            .field("base_url", &self.base_url)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// Hop-by-hop headers (RFC 9110 §7.6.1) that must not be forwarded.
static HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

fn strip_hop_by_hop(headers: &mut http::HeaderMap) {
    for h in &HOP_BY_HOP {
        headers.remove(h);
    }
}

impl Service<Request<Body>> for UpstreamClient {
    type Response = Response<Body>;
    type Error = Error;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        let uri = match self.upstream_uri(req.uri()) {
            Ok(uri) => uri,
            Err(e) => return BoxFuture(Box::pin(async move { Err(e) })),
        };
        *req.uri_mut() = uri;
        *req.version_mut() = http::Version::HTTP_11;
        let headers = req.headers_mut();
        strip_hop_by_hop(headers);
        headers.remove(header::HOST);
        // The body may have been rewritten by a layer; hyper sets the length from the body.
        headers.remove(header::CONTENT_LENGTH);
        // Layers above read streams event by event: ask for an uncompressed body.
        headers.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("identity"),
        );

        let fut = self.client.request(req);
        let timeout = self.timeout;
        BoxFuture(Box::pin(async move {
            let res = match timeout {
                Some(t) => tokio::time::timeout(t, fut).await.map_err(|_| Error::timeout())?,
                None => fut.await,
            }
            .map_err(|e| {
                tracing::warn!(error = %crate::secret::scrub(&e.to_string()), "upstream request failed");
                Error::upstream(e)
            })?;
            let (mut parts, body) = res.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            let body = match timeout {
                Some(t) => Body::new(IdleTimeout::new(body, t)),
                None => Body::new(body),
            };
            Ok(Response::from_parts(parts, body))
        }))
    }
}

/// Response future of [`UpstreamClient`] (the crate's one boxed future type).
pub type ResponseFuture = crate::body::BoxFuture<Result<Response<Body>, Error>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joins_base_prefix_and_path() {
        let c = UpstreamClient::new("http://127.0.0.1:9/base/").unwrap();
        let uri = c
            .upstream_uri(&"/v1beta/models?pageSize=2".parse().unwrap())
            .unwrap();
        assert_eq!(
            uri.to_string(),
            "http://127.0.0.1:9/base/v1beta/models?pageSize=2"
        );
    }

    #[test]
    fn refuses_bad_base_urls() {
        for bad in ["ftp://x", "localhost:8080", "http://x/?a=1", ""] {
            assert!(UpstreamClient::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn extra_roots_must_be_certificates() {
        let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()])
            .unwrap()
            .cert;
        let ok = UpstreamClient::builder()
            .add_root_certificate(cert.der().to_vec())
            .add_root_certificates_pem(cert.pem())
            .build();
        assert!(ok.is_ok());
        for junk in [&b""[..], b"not pem", b"-----BEGIN CERTIFICATE-----\nAAAA\n"] {
            let built = UpstreamClient::builder()
                .add_root_certificates_pem(junk)
                .build();
            assert!(built.is_err(), "{}", String::from_utf8_lossy(junk));
        }
        let built = UpstreamClient::builder()
            .add_root_certificate(b"not DER".to_vec())
            .build();
        assert!(built.is_err());
    }

    #[tokio::test]
    async fn connection_refused_is_an_upstream_error_without_the_url() {
        use tower::ServiceExt;
        // Port 9 (discard) is closed on loopback here.
        let c = UpstreamClient::new("http://127.0.0.1:9").unwrap();
        let req = Request::builder()
            .uri("/v1beta/models?key=secret-secret-secret")
            .body(Body::empty())
            .unwrap();
        let err = c.oneshot(req).await.unwrap_err();
        assert!(err.is_upstream());
        assert!(!err.to_string().contains("secret"));
    }
}
