//! KeyRotation around a client: call Gemini directly from a Rust program, no proxy in between,
//! with a pool of keys that steps around tired and broken ones.
//!
//! ```text
//! GEMINI_API_KEYS=key1,key2 cargo run --example client -- "Why is the sky blue?"
//! ```
//!
//! Without `GEMINI_API_KEYS` it runs against the built-in FakeGemini, with one of its three keys
//! out of quota and one invalid, and shows the pool stepping around them.
//!
//! The adapter [`Reqwest`] turns reqwest into a tower `Service<http::Request<Body>>`: any
//! tower-gemini client-side layer stacks on it.

#![allow(unreachable_pub)]

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_gemini::key_rotation::{KeyPool, KeyRotationLayer};
use tower_gemini::testing::{FakeGemini, KeyBehavior};
use tower_gemini::{Body, BoxError};

/// A reqwest client as a tower service: relative request URIs are resolved against `base`.
#[derive(Clone, Debug)]
pub struct Reqwest {
    client: reqwest::Client,
    base: Arc<str>,
}

impl Reqwest {
    /// A client for `base` (e.g. `https://generativelanguage.googleapis.com`).
    pub fn new(base: &str) -> Result<Self, BoxError> {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .build()?;
        Ok(Self {
            client,
            base: base.trim_end_matches('/').into(),
        })
    }
}

impl Service<Request<Body>> for Reqwest {
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let client = self.client.clone();
        let base = self.base.clone();
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
            let url = format!("{base}{path}");
            // Request bodies are small JSON documents; KeyRotation has buffered them already.
            let bytes = tower_gemini::body::collect_limited(body, 64 << 20).await?;
            let mut builder = client.request(parts.method, url).body(bytes);
            for (name, value) in &parts.headers {
                builder = builder.header(name, value);
            }
            let res = builder.send().await?;
            // reqwest's response converts to an `http::Response` with a streaming body.
            let res: Response<reqwest::Body> = res.into();
            Ok(res.map(Body::new))
        })
    }
}

/// Sends one prompt through a key pool and returns the answer's text.
pub async fn ask(pool: Arc<KeyPool>, base: &str, prompt: &str) -> Result<String, BoxError> {
    let svc = ServiceBuilder::new()
        .layer(KeyRotationLayer::new(pool))
        .service(Reqwest::new(base)?);
    let body = serde_json::json!({"contents": [{"role": "user", "parts": [{"text": prompt}]}]});
    let req = Request::post("/v1beta/models/gemini-2.5-flash:generateContent")
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))?;
    let res = svc.oneshot(req).await?;
    let status = res.status();
    let bytes = tower_gemini::body::collect_limited(res.into_body(), 16 << 20).await?;
    let v: serde_json::Value = serde_json::from_slice(&bytes)?;
    if !status.is_success() {
        return Err(format!("{status}: {}", v["error"]["message"]).into());
    }
    let parts = v["candidates"][0]["content"]["parts"].as_array().cloned();
    Ok(parts
        .unwrap_or_default()
        .iter()
        .filter(|p| p["thought"] != true)
        .filter_map(|p| p["text"].as_str())
        .collect())
}

/// The demo: FakeGemini with one good key, one out of quota and one invalid.
pub async fn demo(prompt: &str) -> Result<(String, Arc<KeyPool>, FakeGemini), BoxError> {
    let good = "AIzaSyDemo-good-key-000000000000000001";
    let tired = "AIzaSyDemo-tired-key-00000000000000002";
    let broken = "AIzaSyDemo-broken-key-0000000000000003";
    let fake = FakeGemini::start([good, tired]).await?;
    fake.set_key(tired, KeyBehavior::exhausted(Duration::from_secs(60)));
    let pool = KeyPool::builder()
        .keys([tired, broken, good])
        .max_failures(1)
        .build()?;
    let answer = ask(pool.clone(), &fake.url(), prompt).await?;
    Ok((answer, pool, fake))
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let prompt = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "Say hello in one sentence.".into());
    let keys: Vec<String> = std::env::var("GEMINI_API_KEYS")
        .unwrap_or_default()
        .split(',')
        .map(|k| k.trim().to_owned())
        .filter(|k| !k.is_empty())
        .collect();
    let pool = if keys.is_empty() {
        eprintln!("GEMINI_API_KEYS is not set: demo against the built-in FakeGemini");
        let (answer, pool, _fake) = demo(&prompt).await?;
        println!("{answer}");
        pool
    } else {
        let base = std::env::var("UPSTREAM_URL")
            .unwrap_or_else(|_| "https://generativelanguage.googleapis.com".into());
        let pool = KeyPool::new(keys)?;
        println!("{}", ask(pool.clone(), &base, &prompt).await?);
        pool
    };
    for key in pool.snapshot() {
        eprintln!(
            "{}  {:?}  requests={}  last_error={:?}",
            key.masked, key.state, key.total_requests, key.last_error
        );
    }
    Ok(())
}
