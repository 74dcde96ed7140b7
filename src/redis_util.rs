//! Redis plumbing the Redis stores share (feature `redis`): where Redis is ([`RedisConfig`]:
//! one node, TLS, or a Cluster), one connection type for every store ([`RedisConnection`]), the
//! hash tag that keeps a store's keys in one Cluster slot, and one way to bound a call.

use std::fmt;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, TlsCertificates, Value};

use crate::Error;

/// How long a connection attempt may take (the stores' `connect` fails after two).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one answer may take on a store's ordinary connection.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest a Cluster `connect` waits for the seed nodes and the slot map.
const CLUSTER_CONNECT_BUDGET: Duration = Duration::from_secs(5);

/// Where Redis is and how to reach it: one node, or the seed nodes of a Redis Cluster, with an
/// optional private CA for `rediss://`.
///
/// The URL rule ([`RedisConfig::from_url`]):
///
/// - one URL is one node: `redis://host:6379/0`, with a password
///   `redis://:password@host:6379` (or `redis://user:password@host:6379` with ACLs), over TLS
///   `rediss://host:6380`;
/// - several URLs separated by commas are the seed nodes of a **Redis Cluster**:
///   `redis://10.0.0.1:6379,redis://10.0.0.2:6379` (all with the same password and scheme);
/// - a single seed node is marked as a Cluster with the query `cluster=true`:
///   `rediss://:password@cluster.example:6379/?cluster=true`.
///
/// `rediss://` trusts Mozilla's root certificates; a private CA is added with
/// [`RedisConfig::with_root_certificates`].
///
/// ```no_run
/// # async fn run() -> Result<(), tower_gemini::Error> {
/// use tower_gemini::RedisConfig;
/// use tower_gemini::key_rotation::KeyStateRedisStore;
///
/// let ca = std::fs::read("/etc/redis/ca.pem")
///     .map_err(|e| tower_gemini::Error::config(format!("the Redis CA file: {e}")))?;
/// let redis = RedisConfig::from_url("rediss://:secret@10.0.0.1:6380,rediss://:secret@10.0.0.2:6380")?
///     .with_root_certificates(ca)?;
/// assert!(redis.is_cluster());
/// let store = KeyStateRedisStore::from_connection(redis.connect().await?);
/// # let _ = store; Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisConfig {
    nodes: Vec<String>,
    cluster: bool,
    root_certs: Option<Vec<u8>>,
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // No URL: it may hold a password.
        f.debug_struct("RedisConfig")
            .field("nodes", &self.nodes.len())
            .field("cluster", &self.cluster)
            .field("tls", &self.is_tls())
            .field("private_ca", &self.root_certs.is_some())
            .finish()
    }
}

/// The error for a URL that does not parse; it never echoes the URL (it may hold a password).
fn bad_url() -> Error {
    Error::config(
        "the Redis URL is not valid: expected redis://, rediss:// or unix:// URLs, \
         several separated by commas for a Cluster",
    )
}

/// Splits `cluster=true|false` off a URL's query; the rest goes to the redis crate.
fn take_cluster_flag(url: &str) -> Result<(String, Option<bool>), Error> {
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_owned(), None));
    };
    let mut flag = None;
    let mut rest = Vec::new();
    for pair in query.split('&') {
        match pair.split_once('=') {
            Some(("cluster", "true")) => flag = Some(true),
            Some(("cluster", "false")) => flag = Some(false),
            Some(("cluster", _)) => {
                return Err(Error::config(
                    "the Redis URL's `cluster` query must be `true` or `false`",
                ));
            }
            _ => rest.push(pair),
        }
    }
    let url = if rest.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", rest.join("&"))
    };
    Ok((url, flag))
}

impl RedisConfig {
    /// Parses a Redis URL, or several separated by commas (the seed nodes of a Cluster); see
    /// the type's documentation for the rule. Nothing is connected yet. The error never
    /// repeats the URL, which may hold a password.
    pub fn from_url(url: &str) -> Result<Self, Error> {
        let mut nodes = Vec::new();
        let mut flagged = false;
        for part in url.split(',').map(str::trim) {
            if part.is_empty() {
                return Err(bad_url());
            }
            let (node, flag) = take_cluster_flag(part)?;
            flagged |= flag == Some(true);
            redis::IntoConnectionInfo::into_connection_info(node.as_str())
                .map_err(|_| bad_url())?;
            nodes.push(node);
        }
        if nodes.is_empty() {
            return Err(bad_url());
        }
        let cluster = flagged || nodes.len() > 1;
        if cluster {
            // Fail here, not on first use, for what a Cluster cannot take.
            ClusterClient::new(nodes.iter().map(String::as_str)).map_err(|_| {
                Error::config(
                    "the Redis Cluster seed URLs must be redis:// or rediss:// (no unix://) \
                     and share one scheme, user and password",
                )
            })?;
        }
        Ok(Self {
            nodes,
            cluster,
            root_certs: None,
        })
    }

    /// Trusts the CA certificates in `pem` (PEM, one or more) for `rediss://`, in place of
    /// Mozilla's roots: for a Redis whose certificate a private CA signed.
    pub fn with_root_certificates(mut self, pem: impl Into<Vec<u8>>) -> Result<Self, Error> {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        let pem = pem.into();
        if !self.is_tls() {
            return Err(Error::config(
                "a CA certificate for Redis needs a rediss:// URL",
            ));
        }
        let certs = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| Error::config("the Redis CA file is not valid PEM"))?;
        if certs.is_empty() {
            return Err(Error::config("the Redis CA file holds no PEM certificate"));
        }
        self.root_certs = Some(pem);
        Ok(self)
    }

    /// Whether this is a Redis Cluster (several seed URLs, or `cluster=true`).
    pub fn is_cluster(&self) -> bool {
        self.cluster
    }

    /// Whether the connection uses TLS (`rediss://`).
    pub fn is_tls(&self) -> bool {
        self.nodes.iter().all(|n| n.starts_with("rediss://"))
    }

    fn certificates(&self) -> Option<TlsCertificates> {
        self.root_certs.clone().map(|pem| TlsCertificates {
            client_tls: None,
            root_cert: Some(pem),
        })
    }

    fn single_client(&self) -> Result<redis::Client, Error> {
        let url = self.nodes.first().ok_or_else(bad_url)?;
        match self.certificates() {
            Some(certs) => redis::Client::build_with_tls(url.as_str(), certs),
            None => redis::Client::open(url.as_str()),
        }
        .map_err(|_| bad_url())
    }

    /// A Cluster client whose every attempt waits at most `response` for an answer; one retry
    /// (a `MOVED` after a failover), soon, and all of it within `response` overall.
    fn cluster_client(&self, response: Duration) -> Result<ClusterClient, Error> {
        let mut builder = ClusterClient::builder(self.nodes.iter().map(String::as_str))
            .connection_timeout(CONNECT_TIMEOUT)
            .response_timeout(response)
            .overall_response_timeout(Some(response))
            .retries(1)
            .min_retry_wait(1)
            .max_retry_wait(100);
        if let Some(certs) = self.certificates() {
            builder = builder.certs(certs);
        }
        builder.build().map_err(|_| bad_url())
    }

    fn cluster_config(response: Duration) -> ClusterConfig {
        ClusterConfig::new()
            .set_connection_timeout(CONNECT_TIMEOUT)
            .set_response_timeout(response)
    }

    /// Connects, failing within a few seconds when Redis is unreachable (2 s to connect, 2 s
    /// per answer, one retry); the connection is re-established automatically afterwards. On
    /// a Cluster it learns the slot map from the seed nodes and follows it as it changes.
    pub async fn connect(&self) -> Result<RedisConnection, Error> {
        if self.cluster {
            let client = self.cluster_client(RESPONSE_TIMEOUT)?;
            let connect =
                client.get_async_connection_with_config(Self::cluster_config(RESPONSE_TIMEOUT));
            let conn = tokio::time::timeout(CLUSTER_CONNECT_BUDGET, connect)
                .await
                .map_err(|_| Error::redis(Error::timeout()))?
                .map_err(Error::redis)?;
            return Ok(RedisConnection(Conn::Cluster(conn)));
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_number_of_retries(1);
        let conn = ConnectionManager::new_with_config(self.single_client()?, config)
            .await
            .map_err(Error::redis)?;
        Ok(RedisConnection(Conn::Single(conn)))
    }

    /// A connection made in the background (inside the Tokio runtime) for a caller that bounds
    /// every call itself: each answer waits at most `response`, and a Cluster request with
    /// its retry finishes (or fails) within `response` too, so nothing keeps working for a
    /// caller that gave up.
    #[cfg(feature = "rate-limit")]
    pub(crate) fn connect_lazy(&self, response: Duration) -> Result<RedisConnection, Error> {
        if self.cluster {
            let client = self.cluster_client(response)?;
            let conn =
                client.get_pending_async_connection_with_config(Self::cluster_config(response));
            return Ok(RedisConnection(Conn::Cluster(conn)));
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(response))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(2));
        let conn = ConnectionManager::new_lazy_with_config(self.single_client()?, config)
            .map_err(Error::redis)?;
        Ok(RedisConnection(Conn::Single(conn)))
    }
}

/// A connection every Redis store takes: one node (a [`ConnectionManager`], `redis://` or
/// `rediss://`) or a Redis Cluster (a [`ClusterConnection`] that routes each command to the
/// node owning its slot). Cheap to clone: clones share the connection.
///
/// Made by [`RedisConfig::connect`], or from a connection of your own with `From`. It is a
/// [`redis::aio::ConnectionLike`], so commands, pipelines and scripts run on it as on either.
#[derive(Clone)]
pub struct RedisConnection(Conn);

#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl RedisConnection {
    /// Whether this is a Redis Cluster connection (store keys then carry a hash tag).
    pub fn is_cluster(&self) -> bool {
        matches!(self.0, Conn::Cluster(_))
    }
}

impl From<ConnectionManager> for RedisConnection {
    fn from(conn: ConnectionManager) -> Self {
        Self(Conn::Single(conn))
    }
}

impl From<ClusterConnection> for RedisConnection {
    fn from(conn: ClusterConnection) -> Self {
        Self(Conn::Cluster(conn))
    }
}

impl fmt::Debug for RedisConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConnection")
            .field("cluster", &self.is_cluster())
            .finish_non_exhaustive()
    }
}

impl ConnectionLike for RedisConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match &mut self.0 {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match &mut self.0 {
            Conn::Single(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match &self.0 {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// Whether `key` has a Redis Cluster hash tag: a `{` followed, not at once, by a `}`.
#[cfg(any(
    feature = "key-rotation",
    feature = "persist",
    feature = "rate-limit",
    feature = "affinity",
    feature = "accounts"
))]
fn has_hash_tag(key: &str) -> bool {
    key.find('{')
        .and_then(|open| key[open + 1..].find('}'))
        .is_some_and(|len| len > 0)
}

/// The prefix a store writes under. On one node, `prefix` as given (the names earlier
/// versions wrote, so an upgrade keeps its data). On a Cluster, `prefix` wrapped in a hash
/// tag (`{prefix}`) unless it has one already, so every key of the store hashes to one slot
/// and its multi-key scripts, pipelines and transactions are legal there.
#[cfg(any(
    feature = "key-rotation",
    feature = "persist",
    feature = "rate-limit",
    feature = "affinity",
    feature = "accounts"
))]
pub(crate) fn store_prefix(cluster: bool, prefix: &str) -> std::sync::Arc<str> {
    if cluster && !has_hash_tag(prefix) {
        std::sync::Arc::from(format!("{{{prefix}}}"))
    } else {
        std::sync::Arc::from(prefix)
    }
}

/// Awaits one Redis call for at most `timeout`: running out is a Redis error around
/// [`Error::timeout`], a failed call a Redis error around its cause.
#[cfg(any(feature = "rate-limit", feature = "affinity", feature = "openai"))]
pub(crate) async fn within<T>(
    timeout: Duration,
    call: impl Future<Output = redis::RedisResult<T>>,
) -> Result<T, Error> {
    tokio::time::timeout(timeout, call)
        .await
        .map_err(|_| Error::redis(Error::timeout()))?
        .map_err(Error::redis)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_url_is_one_node_and_a_list_is_a_cluster() {
        let one = RedisConfig::from_url("redis://:pw@127.0.0.1:6379/2").unwrap();
        assert!(!one.is_cluster() && !one.is_tls());
        let list = RedisConfig::from_url("redis://a:7000, redis://b:7001").unwrap();
        assert!(list.is_cluster());
        assert_eq!(list.nodes, ["redis://a:7000", "redis://b:7001"]);
        let seed =
            RedisConfig::from_url("rediss://:pw@c:7000/?cluster=true&protocol=resp3").unwrap();
        assert!(seed.is_cluster() && seed.is_tls());
        assert_eq!(seed.nodes, ["rediss://:pw@c:7000/?protocol=resp3"]);
        let off = RedisConfig::from_url("redis://c:7000/?cluster=false").unwrap();
        assert!(!off.is_cluster());
        assert_eq!(off.nodes, ["redis://c:7000/"]);
    }

    #[test]
    fn bad_urls_are_config_errors_that_never_echo_the_url() {
        for url in [
            "",
            "redis://a:1,,redis://b:2",
            "http://:hunter2@x:1",
            "redis://x:1/?cluster=maybe",
            "rediss://:hunter2@a:1,redis://:hunter2@b:2",
            "redis://:hunter2@a:1,redis://:other@b:2",
            "unix:///tmp/r.sock?cluster=true",
        ] {
            let e = RedisConfig::from_url(url).unwrap_err();
            assert!(!e.to_string().contains("hunter2"), "{url}: {e}");
            assert!(
                !e.is_redis(),
                "{url}: a configuration error, not a Redis one"
            );
        }
    }

    #[test]
    fn a_private_ca_needs_tls_and_pem() {
        let plain = RedisConfig::from_url("redis://a:1").unwrap();
        assert!(plain.with_root_certificates(b"x".to_vec()).is_err());
        let tls = RedisConfig::from_url("rediss://a:1").unwrap();
        assert!(
            tls.clone()
                .with_root_certificates(b"not pem".to_vec())
                .is_err()
        );
        let cert = rcgen::generate_simple_self_signed(vec!["a".to_owned()]).unwrap();
        let ok = tls.with_root_certificates(cert.cert.pem()).unwrap();
        assert!(format!("{ok:?}").contains("private_ca: true"));
    }

    #[test]
    #[cfg(any(
        feature = "key-rotation",
        feature = "persist",
        feature = "rate-limit",
        feature = "affinity"
    ))]
    fn cluster_prefixes_get_one_hash_tag() {
        assert_eq!(
            &*store_prefix(false, "tower-gemini:admin"),
            "tower-gemini:admin"
        );
        assert_eq!(
            &*store_prefix(true, "tower-gemini:admin"),
            "{tower-gemini:admin}"
        );
        assert_eq!(&*store_prefix(true, "{gw}:admin"), "{gw}:admin");
        assert_eq!(&*store_prefix(true, "a{}b"), "{a{}b}");
        assert_eq!(&*store_prefix(true, "a{b"), "{a{b}");
        assert!(!has_hash_tag("a}{"));
        assert!(has_hash_tag("x{y}z"));
    }
}
