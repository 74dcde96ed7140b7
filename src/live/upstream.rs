//! The upstream side of a session: where it is, and the WebSocket handshake with a pool key.

use std::sync::Arc;
use std::time::Duration;

use http::uri::Scheme;
use http::{HeaderValue, StatusCode, Uri};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::error::Error;
use crate::secret::{ApiKey, scrub_known};

/// A byte stream the upstream WebSocket runs on: plain TCP (`ws://`) or TLS (`wss://`).
pub(super) trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// The upstream's WebSocket.
pub(super) type UpstreamSocket = WebSocketStream<Box<dyn Io>>;

/// Where sessions go: `ws://` for an `http://` upstream, `wss://` (rustls, ring, webpki roots)
/// for an `https://` one.
pub(super) struct Upstream {
    host: String,
    port: u16,
    /// `host[:port]` as written in the URL, for the `Host` header.
    authority: String,
    /// The URL's path prefix, without a trailing `/`.
    prefix: String,
    tls: Option<tokio_rustls::TlsConnector>,
    connect_timeout: Duration,
}

/// Why the upstream handshake failed.
pub(super) enum ConnectError {
    /// The upstream answered the handshake with an HTTP status instead of `101`.
    Refused { status: StatusCode, body: Vec<u8> },
    /// No answer: DNS, TCP, TLS or a broken handshake (the text holds no key).
    Transport(String),
}

impl Upstream {
    /// Parses `http(s)://host[:port][/prefix]`.
    pub(super) fn new(
        base_url: &str,
        connect_timeout: Duration,
        roots: rustls::RootCertStore,
    ) -> Result<Upstream, Error> {
        let uri: Uri = base_url
            .trim()
            .parse()
            .map_err(|_| Error::config("the Live upstream URL is not a valid URL"))?;
        let tls = match uri.scheme() {
            Some(s) if *s == Scheme::HTTPS => true,
            Some(s) if *s == Scheme::HTTP => false,
            _ => {
                return Err(Error::config(
                    "the Live upstream URL must start with http:// or https://",
                ));
            }
        };
        let authority = uri
            .authority()
            .ok_or_else(|| Error::config("the Live upstream URL has no host"))?;
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = authority.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let tls = if tls {
            let mut config = crate::tls::client_config(roots)?;
            // A WebSocket handshake is an HTTP/1.1 request.
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            Some(tokio_rustls::TlsConnector::from(Arc::new(config)))
        } else {
            None
        };
        Ok(Upstream {
            host,
            port,
            authority: authority.as_str().to_owned(),
            prefix: uri.path().trim_end_matches('/').to_owned(),
            tls,
            connect_timeout,
        })
    }

    /// The session's URL with the key masked, for logs.
    pub(super) fn masked_url(&self, path: &str, key: &ApiKey) -> String {
        self.url(path, &key.masked())
    }

    fn url(&self, path: &str, key: &str) -> String {
        let scheme = if self.tls.is_some() { "wss" } else { "ws" };
        format!(
            "{scheme}://{}{}{path}?key={}",
            self.authority,
            self.prefix,
            query_escape(key)
        )
    }

    /// Opens the upstream WebSocket at `path` with `key` as `?key=` (the only credential sent).
    pub(super) async fn connect(
        &self,
        path: &str,
        key: &ApiKey,
        request_id: Option<&str>,
        config: WebSocketConfig,
    ) -> Result<UpstreamSocket, ConnectError> {
        let hide =
            |e: &dyn std::fmt::Display| scrub_known(&e.to_string(), &[key.expose()]).into_owned();
        let mut request = self
            .url(path, key.expose())
            .into_client_request()
            .map_err(|e| ConnectError::Transport(hide(&e)))?;
        if let Some(id) = request_id.and_then(|id| HeaderValue::from_str(id).ok()) {
            request.headers_mut().insert("x-request-id", id);
        }
        let tcp = tokio::time::timeout(
            self.connect_timeout,
            TcpStream::connect((self.host.as_str(), self.port)),
        )
        .await
        .map_err(|_| ConnectError::Transport("connect timed out".to_owned()))?
        .map_err(|e| ConnectError::Transport(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        let io: Box<dyn Io> = match &self.tls {
            None => Box::new(tcp),
            Some(tls) => {
                let name = rustls::pki_types::ServerName::try_from(self.host.clone())
                    .map_err(|_| ConnectError::Transport("invalid TLS server name".to_owned()))?;
                let stream = tokio::time::timeout(self.connect_timeout, tls.connect(name, tcp))
                    .await
                    .map_err(|_| ConnectError::Transport("TLS handshake timed out".to_owned()))?
                    .map_err(|e| ConnectError::Transport(e.to_string()))?;
                Box::new(stream)
            }
        };
        let handshake = tokio_tungstenite::client_async_with_config(request, io, Some(config));
        match tokio::time::timeout(self.connect_timeout, handshake).await {
            Err(_) => Err(ConnectError::Transport(
                "WebSocket handshake timed out".to_owned(),
            )),
            Ok(Ok((socket, _response))) => Ok(socket),
            Ok(Err(tokio_tungstenite::tungstenite::Error::Http(res))) => {
                Err(ConnectError::Refused {
                    status: res.status(),
                    body: res.body().clone().unwrap_or_default(),
                })
            }
            Ok(Err(e)) => Err(ConnectError::Transport(hide(&e))),
        }
    }
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("authority", &self.authority)
            .field("prefix", &self.prefix)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn roots() -> rustls::RootCertStore {
        crate::tls::root_store(&[], &[]).unwrap()
    }

    #[test]
    fn the_scheme_follows_the_upstream_and_the_key_is_masked_in_logs() {
        let key = ApiKey::new("AIzaSyUpstream-key-000000000000000001");
        let path = "/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent";
        let tls = Upstream::new(
            "https://example.com/prefix/",
            Duration::from_secs(1),
            roots(),
        )
        .unwrap();
        assert_eq!(
            tls.url(path, key.expose()),
            format!("wss://example.com/prefix{path}?key={}", key.expose())
        );
        let plain = Upstream::new("http://127.0.0.1:9", Duration::from_secs(1), roots()).unwrap();
        let masked = plain.masked_url(path, &key);
        assert!(masked.starts_with("ws://127.0.0.1:9/ws/"));
        assert!(!masked.contains(key.expose()));
        assert!(Upstream::new("ftp://x", Duration::from_secs(1), roots()).is_err());
    }

    #[test]
    fn keys_are_escaped_in_the_query() {
        assert_eq!(query_escape("AQ.Ab-c_d~"), "AQ.Ab-c_d~");
        assert_eq!(query_escape("a+b/c=&"), "a%2Bb%2Fc%3D%26");
    }
}
