//! Redis plumbing the Redis stores share (feature `redis`): one way to connect, one way to
//! bound a call.

use std::time::Duration;

use crate::Error;

/// Connects to `url` (`redis://host:port/db`), failing within a few seconds when Redis is
/// unreachable (2 s to connect, 2 s per response, one retry); the manager re-establishes the
/// connection afterwards.
#[cfg(any(
    feature = "key-rotation",
    feature = "persist",
    feature = "affinity",
    feature = "openai",
    feature = "accounts"
))]
pub(crate) async fn connect(url: &str) -> Result<redis::aio::ConnectionManager, Error> {
    let client = redis::Client::open(url).map_err(Error::redis)?;
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(2)))
        .set_number_of_retries(1);
    redis::aio::ConnectionManager::new_with_config(client, config)
        .await
        .map_err(Error::redis)
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
