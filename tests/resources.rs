//! Resources live in the project of the key that created them: files (resumable and multipart
//! uploads), cached contents and batches made through full_proxy with three pool keys are used,
//! listed and deleted on their own key, by their own client only; no key is ever disabled for
//! a 403 about a resource; upload bytes stream through without being buffered.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::HashSet;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use serde_json::{Value, json};
use support::{Proxy, http_client, send, status_and_text};
use tower_gemini::Body;
use tower_gemini::secret::ApiKey;
use tower_gemini::testing::FakeGemini;

const KEYS: [&str; 3] = [
    "AIzaSyA-affinity-key-one-000000000000001",
    "AIzaSyA-affinity-key-two-000000000000002",
    "AIzaSyA-affinity-key-three-0000000000003",
];
const CLIENT: &str = "test-client-token-1";
const OTHER: &str = "test-client-token-2";
const ADMIN: &str = "test-admin-token-1";
const MODEL: &str = "gemini-2.5-flash";

async fn setup() -> (FakeGemini, Proxy) {
    let fake = FakeGemini::start(KEYS).await.unwrap();
    let keys = KEYS.join(",");
    let url = fake.url();
    let proxy = Proxy::start(&[
        ("GEMINI_API_KEYS", keys.as_str()),
        ("UPSTREAM_URL", url.as_str()),
        ("ALLOWED_TOKENS", "test-client-token-1,test-client-token-2"),
        ("ADMIN_TOKEN", ADMIN),
        ("MAX_FAILURES", "2"),
    ])
    .await;
    (fake, proxy)
}

fn assert_no_secret(text: &str, fake: &FakeGemini) {
    for k in KEYS {
        assert!(!text.contains(k), "a key leaked: {text}");
    }
    assert!(
        !text.contains(&fake.addr().to_string()),
        "upstream leaked: {text}"
    );
}

async fn call(
    proxy: &Proxy,
    method: &str,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("x-goog-api-key", token)
        .header("content-type", "application/json")
        .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
        .unwrap();
    let (status, text) = status_and_text(send(proxy, req).await).await;
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Starts a resumable upload as the google-genai SDK does; the session URL the client gets.
async fn start_upload(proxy: &Proxy, fake: &FakeGemini, token: &str, size: u64) -> String {
    let req = Request::post("/upload/v1beta/files")
        .header("x-goog-api-key", token)
        .header("x-goog-upload-protocol", "resumable")
        .header("x-goog-upload-command", "start")
        .header("x-goog-upload-header-content-length", size.to_string())
        .header("x-goog-upload-header-content-type", "text/plain")
        .header("content-type", "application/json")
        .body(Body::from(r#"{"file": {"display_name": "notes"}}"#))
        .unwrap();
    let res = send(proxy, req).await;
    assert_eq!(res.status(), StatusCode::OK);
    let url = res.headers()["x-goog-upload-url"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(url.starts_with(&proxy.url()), "{url}");
    assert_no_secret(&url, fake);
    url
}

fn path_of(url: &str) -> String {
    let uri: http::Uri = url.parse().unwrap();
    uri.path_and_query().unwrap().to_string()
}

/// A resumable upload of `bytes`; the new file's JSON.
async fn upload(proxy: &Proxy, fake: &FakeGemini, token: &str, bytes: &'static [u8]) -> Value {
    let url = start_upload(proxy, fake, token, bytes.len() as u64).await;
    // As the google-genai SDK does: no key with the bytes, the session id is the credential.
    let req = Request::post(path_of(&url))
        .header("x-goog-upload-command", "upload, finalize")
        .header("x-goog-upload-offset", "0")
        .body(Body::from(Bytes::from_static(bytes)))
        .unwrap();
    let res = send(proxy, req).await;
    assert_eq!(res.headers()["x-goog-upload-status"], "final");
    let (status, text) = status_and_text(res).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    v["file"].clone()
}

async fn multipart(proxy: &Proxy, token: &str, content: &str) -> Value {
    let body = format!(
        "--b0\r\ncontent-type: application/json\r\n\r\n{{\"file\":{{\"display_name\":\"m\"}}}}\r\n--b0\r\ncontent-type: text/plain\r\n\r\n{content}\r\n--b0--\r\n"
    );
    let req = Request::post("/upload/v1beta/files")
        .header("x-goog-api-key", token)
        .header("x-goog-upload-protocol", "multipart")
        .header("content-type", "multipart/related; boundary=b0")
        .body(Body::from(body))
        .unwrap();
    let (status, text) = status_and_text(send(proxy, req).await).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    serde_json::from_str::<Value>(&text).unwrap()["file"].clone()
}

fn generate_with_file(uri: &str, prompt: &str) -> Value {
    json!({"contents": [{"role": "user", "parts": [
        {"fileData": {"fileUri": uri, "mimeType": "text/plain"}},
        {"text": prompt}
    ]}]})
}

fn owner_of(fake: &FakeGemini, name: &str) -> &'static str {
    let key = fake.resource_owner(name).expect("the fake holds it");
    KEYS.into_iter().find(|k| *k == key).unwrap()
}

fn assert_no_key_disabled(proxy: &Proxy) {
    assert_eq!(proxy.pool.usable_count(), 3);
    for k in proxy.pool.snapshot() {
        assert_eq!(k.consecutive_failures, 0, "{k:?}");
    }
}

#[tokio::test]
async fn an_uploaded_file_serves_twenty_generates_on_its_own_key() {
    let (fake, proxy) = setup().await;
    let file = upload(&proxy, &fake, CLIENT, b"the notes of the meeting").await;
    let name = file["name"].as_str().unwrap().to_owned();
    let uri = file["uri"].as_str().unwrap().to_owned();
    let owner = owner_of(&fake, &name);
    fake.clear_received();
    for i in 0..20 {
        let path = format!("/v1beta/models/{MODEL}:generateContent");
        let (status, v) = call(
            &proxy,
            "POST",
            &path,
            CLIENT,
            Some(generate_with_file(&uri, &format!("q{i}"))),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "call {i}: {v}");
    }
    // countTokens and a stream name it too.
    let (status, _) = call(
        &proxy,
        "POST",
        &format!("/v1beta/models/{MODEL}:countTokens"),
        CLIENT,
        Some(generate_with_file(&uri, "x")),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = call(
        &proxy,
        "POST",
        &format!("/v1beta/models/{MODEL}:streamGenerateContent?alt=sse"),
        CLIENT,
        Some(generate_with_file(&uri, "x")),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    for r in fake.received() {
        assert_eq!(
            r.api_key().as_deref(),
            Some(owner),
            "{} went to another key",
            r.path
        );
    }
    assert_eq!(fake.received().len(), 22, "no retry on other keys");
    assert_no_key_disabled(&proxy);
    // The file itself: get, then delete, on its key.
    let (status, v) = call(&proxy, "GET", &format!("/v1beta/{name}"), CLIENT, None).await;
    assert_eq!(
        (status, v["name"].as_str()),
        (StatusCode::OK, Some(name.as_str()))
    );
    let (status, _) = call(&proxy, "DELETE", &format!("/v1beta/{name}"), CLIENT, None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(fake.resource_owner(&name).is_none());
    let (status, _) = call(&proxy, "GET", &format!("/v1beta/{name}"), CLIENT, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_multipart_upload_is_pinned_too() {
    let (_fake, proxy) = setup().await;
    for i in 0..3 {
        let file = multipart(&proxy, CLIENT, &format!("part {i}")).await;
        let name = file["name"].as_str().unwrap();
        let uri = file["uri"].as_str().unwrap();
        let (status, _) = call(&proxy, "GET", &format!("/v1beta/{name}"), CLIENT, None).await;
        assert_eq!(status, StatusCode::OK);
        let path = format!("/v1beta/models/{MODEL}:generateContent");
        let (status, v) = call(
            &proxy,
            "POST",
            &path,
            CLIENT,
            Some(generate_with_file(uri, "hi")),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{v}");
    }
    assert_no_key_disabled(&proxy);
}

#[tokio::test]
async fn a_cached_content_is_used_by_later_calls() {
    let (fake, proxy) = setup().await;
    let file = upload(&proxy, &fake, CLIENT, b"a long document").await;
    let uri = file["uri"].as_str().unwrap();
    // The cache holds the file: it is made on the file's key.
    let body = json!({"model": format!("models/{MODEL}"), "ttl": "600s",
        "contents": [{"role": "user", "parts": [{"fileData": {"fileUri": uri, "mimeType": "text/plain"}}]}]});
    let (status, cache) = call(&proxy, "POST", "/v1beta/cachedContents", CLIENT, Some(body)).await;
    assert_eq!(status, StatusCode::OK, "{cache}");
    let cache_name = cache["name"].as_str().unwrap().to_owned();
    assert_eq!(
        owner_of(&fake, &cache_name),
        owner_of(&fake, file["name"].as_str().unwrap())
    );
    for i in 0..6 {
        let body = json!({"cachedContent": cache_name, "contents": [{"role": "user", "parts": [{"text": format!("q{i}")}]}]});
        let (status, v) = call(
            &proxy,
            "POST",
            &format!("/v1beta/models/{MODEL}:generateContent"),
            CLIENT,
            Some(body),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{v}");
    }
    let (status, _) = call(
        &proxy,
        "PATCH",
        &format!("/v1beta/{cache_name}"),
        CLIENT,
        Some(json!({"ttl": "1200s"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, list) = call(&proxy, "GET", "/v1beta/cachedContents", CLIENT, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["cachedContents"][0]["name"], cache_name.as_str());
    let (status, _) = call(
        &proxy,
        "DELETE",
        &format!("/v1beta/{cache_name}"),
        CLIENT,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_no_key_disabled(&proxy);
}

#[tokio::test]
async fn a_batch_is_created_polled_and_its_result_fetched() {
    let (fake, proxy) = setup().await;
    let body = json!({"batch": {"display_name": "b1", "input_config": {"requests": {"requests": [
        {"request": {"contents": [{"parts": [{"text": "hello batch"}]}]}, "metadata": {"key": "r1"}}
    ]}}}});
    let path = format!("/v1beta/models/{MODEL}:batchGenerateContent");
    let (status, op) = call(&proxy, "POST", &path, CLIENT, Some(body.clone())).await;
    assert_eq!(status, StatusCode::OK, "{op}");
    let name = op["name"].as_str().unwrap().to_owned();
    let owner = owner_of(&fake, &name);
    let mut done = Value::Null;
    for _ in 0..5 {
        let (status, v) = call(&proxy, "GET", &format!("/v1beta/{name}"), CLIENT, None).await;
        assert_eq!(status, StatusCode::OK, "{v}");
        if v["done"] == true {
            done = v;
            break;
        }
    }
    let text = &done["response"]["inlinedResponses"]["inlinedResponses"][0]["response"]["candidates"]
        [0]["content"]["parts"][0]["text"];
    assert_eq!(
        text.as_str(),
        Some(FakeGemini::passage("hello batch").as_str())
    );
    // Another batch, cancelled; both are listed.
    let (_, op2) = call(&proxy, "POST", &path, CLIENT, Some(body)).await;
    let name2 = op2["name"].as_str().unwrap();
    let (status, _) = call(
        &proxy,
        "POST",
        &format!("/v1beta/{name2}:cancel"),
        CLIENT,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (_, list) = call(&proxy, "GET", "/v1beta/batches", CLIENT, None).await;
    assert_eq!(list["operations"].as_array().unwrap().len(), 2, "{list}");
    for r in fake.received().iter().filter(|r| r.path.contains(&name)) {
        assert_eq!(r.api_key().as_deref(), Some(owner), "polled on another key");
    }
    assert_no_key_disabled(&proxy);
}

#[tokio::test]
async fn another_client_cannot_see_or_delete_a_file_the_admin_can() {
    let (fake, proxy) = setup().await;
    let file = upload(&proxy, &fake, CLIENT, b"private").await;
    let name = file["name"].as_str().unwrap();
    let uri = file["uri"].as_str().unwrap();
    let (status, v) = call(&proxy, "GET", &format!("/v1beta/{name}"), OTHER, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{v}");
    let (status, _) = call(&proxy, "DELETE", &format!("/v1beta/{name}"), OTHER, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let path = format!("/v1beta/models/{MODEL}:generateContent");
    let (status, _) = call(
        &proxy,
        "POST",
        &path,
        OTHER,
        Some(generate_with_file(uri, "x")),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, list) = call(&proxy, "GET", "/v1beta/files", OTHER, None).await;
    assert_eq!(list["files"], json!([]));
    assert!(fake.resource_owner(name).is_some(), "still there");
    let (status, _) = call(&proxy, "GET", &format!("/v1beta/{name}"), ADMIN, None).await;
    assert_eq!(status, StatusCode::OK);
    let (_, list) = call(&proxy, "GET", "/v1beta/files", ADMIN, None).await;
    assert_eq!(list["files"].as_array().unwrap().len(), 1);
    // The other client's upload session cannot be used either.
    let url = start_upload(&proxy, &fake, CLIENT, 3).await;
    let req = Request::post(path_of(&url))
        .header("x-goog-api-key", OTHER)
        .header("x-goog-upload-command", "upload, finalize")
        .header("x-goog-upload-offset", "0")
        .body(Body::from("abc"))
        .unwrap();
    assert_eq!(send(&proxy, req).await.status(), StatusCode::NOT_FOUND);
    // Without a credential, only a live session id of this gateway gets in.
    let req = Request::post("/upload/v1beta/files?upload_id=not-ours&upload_protocol=resumable")
        .header("x-goog-upload-command", "upload, finalize")
        .body(Body::from("abc"))
        .unwrap();
    assert_eq!(send(&proxy, req).await.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn the_files_list_spans_every_key_with_working_page_tokens() {
    let (fake, proxy) = setup().await;
    let mut made = HashSet::new();
    for i in 0..5 {
        made.insert(
            multipart(&proxy, CLIENT, &format!("f{i}")).await["name"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    let owners: HashSet<_> = made.iter().map(|n| owner_of(&fake, n)).collect();
    assert_eq!(
        owners.len(),
        3,
        "round robin spread the files over the keys"
    );
    let mut seen = HashSet::new();
    let mut token: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &token {
            Some(t) => format!("/v1beta/files?pageSize=2&pageToken={t}"),
            None => "/v1beta/files?pageSize=2".to_owned(),
        };
        let (status, v) = call(&proxy, "GET", &path, CLIENT, None).await;
        assert_eq!(status, StatusCode::OK, "{v}");
        for f in v["files"].as_array().unwrap() {
            assert!(
                seen.insert(f["name"].as_str().unwrap().to_owned()),
                "no repeats"
            );
        }
        pages += 1;
        match v["nextPageToken"].as_str() {
            Some(t) => token = Some(t.to_owned()),
            None => break,
        }
    }
    assert_eq!((pages, seen), (3, made));
    let (status, _) = call(&proxy, "GET", "/v1beta/files?pageToken=bogus", CLIENT, None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn resources_of_two_keys_in_one_request_are_a_400_that_says_why() {
    let (fake, proxy) = setup().await;
    let a = multipart(&proxy, CLIENT, "a").await;
    let b = multipart(&proxy, CLIENT, "b").await;
    let (a, b) = (a["uri"].as_str().unwrap(), b["uri"].as_str().unwrap());
    let body = json!({"contents": [{"role": "user", "parts": [
        {"fileData": {"fileUri": a}}, {"fileData": {"fileUri": b}}, {"text": "compare"}]}]});
    let (status, v) = call(
        &proxy,
        "POST",
        &format!("/v1beta/models/{MODEL}:generateContent"),
        CLIENT,
        Some(body),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("different upstream projects"),
        "{v}"
    );
    assert_no_secret(&v.to_string(), &fake);
}

#[tokio::test]
async fn a_403_about_a_foreign_file_never_disables_a_key() {
    let (fake, proxy) = setup().await;
    // A file the gateway never saw (made on the upstream directly): no pin, so each call lands
    // on whichever key comes next, and the others answer 403 about the file.
    let direct = UpstreamFile::make(&fake, KEYS[0]).await;
    let path = format!("/v1beta/models/{MODEL}:generateContent");
    let mut denied = 0;
    for _ in 0..9 {
        let (status, v) = call(
            &proxy,
            "POST",
            &path,
            ADMIN,
            Some(generate_with_file(&direct, "x")),
        )
        .await;
        if status == StatusCode::FORBIDDEN {
            denied += 1;
            assert_eq!(v["error"]["status"], "PERMISSION_DENIED");
        } else {
            assert_eq!(status, StatusCode::OK, "{v}");
        }
    }
    assert!(denied >= 3, "{denied}");
    assert_no_key_disabled(&proxy);
}

#[tokio::test]
async fn a_file_whose_key_was_removed_gets_an_error_naming_it() {
    let (fake, proxy) = setup().await;
    let file = upload(&proxy, &fake, CLIENT, b"orphan").await;
    let name = file["name"].as_str().unwrap();
    let owner = owner_of(&fake, name);
    assert!(proxy.pool.remove_key(&ApiKey::new(owner).fingerprint()));
    let path = format!("/v1beta/models/{MODEL}:generateContent");
    let (status, v) = call(
        &proxy,
        "POST",
        &path,
        CLIENT,
        Some(generate_with_file(file["uri"].as_str().unwrap(), "x")),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains(name),
        "{v}"
    );
    assert_no_secret(&v.to_string(), &fake);
}

/// A file uploaded to the fake directly with one key (not through the gateway).
struct UpstreamFile;

impl UpstreamFile {
    async fn make(fake: &FakeGemini, key: &str) -> String {
        let client = tower_gemini::client::UpstreamClient::new(fake.url()).unwrap();
        let req = Request::post("/upload/v1beta/files")
            .header("x-goog-api-key", key)
            .header("x-goog-upload-protocol", "multipart")
            .body(Body::from("--b\r\n\r\n{}\r\n--b--"))
            .unwrap();
        let res = tower::ServiceExt::oneshot(client, req).await.unwrap();
        let (_, text) = status_and_text(res).await;
        let v: Value = serde_json::from_str(&text).unwrap();
        v["file"]["uri"].as_str().unwrap().to_owned()
    }
}

// === A big upload streams ===

/// A request body fed by a channel: the test decides when each chunk exists.
struct Fed(tokio::sync::mpsc::Receiver<Bytes>);

impl http_body::Body for Fed {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|c| c.map(|b| Ok(http_body::Frame::data(b))))
    }
}

#[tokio::test]
async fn a_100_mib_upload_streams_through_without_being_buffered() {
    const MIB: usize = 1024 * 1024;
    const TOTAL: usize = 100 * MIB;
    let (fake, proxy) = setup().await;
    let url = start_upload(&proxy, &fake, CLIENT, TOTAL as u64).await;
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    let req = Request::post(format!("{}{}", proxy.url(), path_of(&url)))
        .header("x-goog-api-key", CLIENT)
        .header("x-goog-upload-command", "upload, finalize")
        .header("x-goog-upload-offset", "0")
        .header("content-length", TOTAL.to_string())
        .body(Body::new(Fed(rx)))
        .unwrap();
    let sent = tokio::spawn(http_client().request(req));
    let chunk = Bytes::from(vec![b'x'; MIB]);
    // Half of the bytes go out; the upstream must see most of them before the rest exists.
    for _ in 0..TOTAL / MIB / 2 {
        tx.send(chunk.clone()).await.unwrap();
    }
    let mut waited = 0;
    while fake.upload_bytes_received() < (40 * MIB) as u64 {
        tokio::time::sleep(Duration::from_millis(10)).await;
        waited += 1;
        assert!(
            waited < 6000,
            "the upstream got {} bytes: the gateway holds the upload",
            fake.upload_bytes_received()
        );
    }
    for _ in 0..TOTAL / MIB / 2 {
        tx.send(chunk.clone()).await.unwrap();
    }
    drop(tx);
    let res = sent.await.unwrap().unwrap();
    let (status, text) = status_and_text(res.map(Body::new)).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["file"]["sizeBytes"], TOTAL.to_string());
    assert_eq!(fake.upload_bytes_received(), TOTAL as u64);
}

#[tokio::test]
async fn an_upload_past_max_upload_bytes_is_a_413() {
    let fake = FakeGemini::start(KEYS).await.unwrap();
    let url = fake.url();
    let proxy = Proxy::start(&[
        ("GEMINI_API_KEYS", KEYS[0]),
        ("UPSTREAM_URL", url.as_str()),
        ("MAX_UPLOAD_BYTES", "100"),
    ])
    .await;
    let session = start_upload(&proxy, &fake, CLIENT, 101).await;
    let req = Request::post(path_of(&session))
        .header("x-goog-api-key", CLIENT)
        .header("x-goog-upload-command", "upload, finalize")
        .header("content-length", "101")
        .body(Body::from(vec![b'x'; 101]))
        .unwrap();
    assert_eq!(
        send(&proxy, req).await.status(),
        StatusCode::PAYLOAD_TOO_LARGE
    );
    assert_eq!(fake.upload_bytes_received(), 0);
}

#[tokio::test]
async fn two_instances_on_one_redis_share_the_pins() {
    let Some(redis) = support::redis_url().await else {
        return;
    };
    let fake = FakeGemini::start(KEYS).await.unwrap();
    let keys = KEYS.join(",");
    let url = fake.url();
    let prefix = format!("aff-test-{}", std::process::id());
    let vars = [
        ("GEMINI_API_KEYS", keys.as_str()),
        ("UPSTREAM_URL", url.as_str()),
        ("REDIS_URL", redis.as_str()),
        ("REDIS_KEY_PREFIX", prefix.as_str()),
    ];
    let a = Proxy::start(&vars).await;
    let b = Proxy::start(&vars).await;
    let file = upload(&a, &fake, CLIENT, b"shared").await;
    let name = file["name"].as_str().unwrap();
    let owner = owner_of(&fake, name);
    fake.clear_received();
    let path = format!("/v1beta/models/{MODEL}:generateContent");
    for _ in 0..6 {
        let (status, v) = call(
            &b,
            "POST",
            &path,
            CLIENT,
            Some(generate_with_file(file["uri"].as_str().unwrap(), "x")),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{v}");
    }
    for r in fake.received() {
        assert_eq!(r.api_key().as_deref(), Some(owner));
    }
    let (_, list) = call(&b, "GET", "/v1beta/files", CLIENT, None).await;
    assert_eq!(list["files"][0]["name"], name);
    let (status, _) = call(&b, "DELETE", &format!("/v1beta/{name}"), CLIENT, None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = call(&a, "GET", &format!("/v1beta/{name}"), CLIENT, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn in_own_key_mode_nothing_is_remembered() {
    let fake = FakeGemini::start(KEYS).await.unwrap();
    let url = fake.url();
    let proxy = Proxy::start_exact(&[
        ("UPSTREAM_URL", url.as_str()),
        ("CLIENT_KEY_PASSTHROUGH", "true"),
        ("ADMIN_TOKEN", ADMIN),
    ])
    .await;
    let own = KEYS[1];
    let file = multipart(&proxy, own, "mine").await;
    let name = file["name"].as_str().unwrap();
    assert_eq!(owner_of(&fake, name), own);
    // The list is the upstream's own (the client's project), not the gateway's pins.
    fake.clear_received();
    let (status, list) = call(&proxy, "GET", "/v1beta/files", own, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["files"][0]["name"], name);
    assert_eq!(fake.received().len(), 1, "answered upstream");
    let path = format!("/v1beta/models/{MODEL}:generateContent");
    let (status, _) = call(
        &proxy,
        "POST",
        &path,
        own,
        Some(generate_with_file(file["uri"].as_str().unwrap(), "x")),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    // Another own key is another project: Google's 403, relayed.
    let (status, _) = call(&proxy, "GET", &format!("/v1beta/{name}"), KEYS[2], None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn an_interaction_and_its_follow_ups_succeed_twenty_times_in_a_row() {
    let (fake, proxy) = setup().await;
    let (status, first) = call(
        &proxy,
        "POST",
        "/v1beta/interactions",
        CLIENT,
        Some(json!({"model": MODEL, "input": "Tell me about rivers."})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{first}");
    let mut previous = first["id"].as_str().unwrap().to_owned();
    let owner = owner_of(&fake, &format!("interactions/{previous}"));
    // Each turn names the one before it: it must reach the key whose project stored it, while
    // round robin would send every other turn elsewhere.
    for i in 0..20 {
        let (status, next) = call(
            &proxy,
            "POST",
            "/v1beta/interactions",
            CLIENT,
            Some(json!({"model": MODEL, "input": format!("And then? ({i})"),
                        "previous_interaction_id": previous})),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "turn {i}: {next}");
        previous = next["id"].as_str().unwrap().to_owned();
        assert_eq!(owner_of(&fake, &format!("interactions/{previous}")), owner);
    }
    // Get and cancel reach it too; another client cannot see it.
    let path = format!("/v1beta/interactions/{previous}");
    let (status, got) = call(&proxy, "GET", &path, CLIENT, None).await;
    assert_eq!(status, StatusCode::OK, "{got}");
    assert_eq!(got["id"], previous.as_str());
    let (status, _) = call(&proxy, "GET", &path, OTHER, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, cancelled) = call(&proxy, "POST", &format!("{path}:cancel"), CLIENT, None).await;
    assert_eq!(status, StatusCode::OK, "{cancelled}");
    let (status, _) = call(&proxy, "DELETE", &path, CLIENT, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_no_key_disabled(&proxy);
}

/// The events of an SSE answer as JSON, until the stream ends or breaks.
async fn events_until_cut(res: http::Response<Body>) -> (Vec<Value>, bool) {
    use http_body_util::BodyExt;
    let mut body = res.into_body();
    let mut text = String::new();
    let mut cut = false;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => {
                if let Some(d) = f.data_ref() {
                    text.push_str(&String::from_utf8_lossy(d));
                }
            }
            Err(_) => {
                cut = true;
                break;
            }
        }
    }
    let events = text
        .replace("\r\n", "\n")
        .split("\n\n")
        .filter_map(|e| e.trim().strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str(d.trim()).ok())
        .collect();
    (events, cut)
}

fn delta_text(events: &[Value]) -> String {
    events
        .iter()
        .filter(|e| e["event_type"] == "step.delta")
        .filter_map(|e| e["delta"]["text"].as_str())
        .collect()
}

#[tokio::test]
async fn a_streamed_interaction_cut_off_resumes_with_last_event_id_on_its_key() {
    let (fake, proxy) = setup().await;
    let body = json!({"model": MODEL, "input": "Tell me about the sea.", "stream": true});
    // The whole stream, for reference.
    let req = |token: &str, method: &str, path: &str, body: Option<&Value>| {
        Request::builder()
            .method(method)
            .uri(path)
            .header("x-goog-api-key", token)
            .header("content-type", "application/json")
            .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
            .unwrap()
    };
    let res = send(
        &proxy,
        req(CLIENT, "POST", "/v1beta/interactions", Some(&body)),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    let (whole, cut) = events_until_cut(res).await;
    assert!(!cut);
    assert_eq!(whole.last().unwrap()["event_type"], "interaction.completed");

    // The same asked again, cut after three events.
    fake.push_fault(tower_gemini::testing::Fault::DropAfter(3));
    let res = send(
        &proxy,
        req(CLIENT, "POST", "/v1beta/interactions", Some(&body)),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    let (first, cut) = events_until_cut(res).await;
    assert!(cut, "the stream was cut: {first:?}");
    assert_eq!(first.len(), 3, "{first:?}");
    let id = first[0]["interaction"]["id"].as_str().unwrap().to_owned();
    let last = first[2]["event_id"].as_str().unwrap().to_owned();
    let owner = owner_of(&fake, &format!("interactions/{id}"));

    // Resumed several times: round robin would send most of these to the other keys, whose
    // projects do not hold the interaction.
    let path = format!("/v1beta/interactions/{id}?stream=true&last_event_id={last}");
    for _ in 0..6 {
        let before = fake.received().len();
        let res = send(&proxy, req(CLIENT, "GET", &path, None)).await;
        assert_eq!(res.status(), StatusCode::OK);
        let (rest, cut) = events_until_cut(res).await;
        assert!(!cut);
        assert_eq!(rest[0]["event_id"], "evt_0004", "{rest:?}");
        assert_eq!(rest.last().unwrap()["event_type"], "interaction.completed");
        let joined = delta_text(&first) + &delta_text(&rest);
        assert_eq!(joined, delta_text(&whole), "one seamless answer");
        let calls = fake.received();
        assert_eq!(calls.len(), before + 1);
        let key = calls.last().unwrap().headers["x-goog-api-key"]
            .to_str()
            .unwrap()
            .to_owned();
        assert_eq!(key, owner, "the resume reached the key that holds it");
    }
    // Another client does not reach it.
    let res = send(&proxy, req(OTHER, "GET", &path, None)).await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    assert_no_key_disabled(&proxy);
}

#[tokio::test]
async fn a_file_search_store_is_used_on_its_own_key_and_seen_by_its_client_only() {
    let (fake, proxy) = setup().await;
    let (status, store) = call(
        &proxy,
        "POST",
        "/v1beta/fileSearchStores",
        CLIENT,
        Some(json!({"displayName": "handbook"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{store}");
    let name = store["name"].as_str().unwrap().to_owned();
    let owner = owner_of(&fake, &name);
    // Generations searching the store: round robin would send two of three elsewhere (403).
    let search = json!({
        "contents": [{"role": "user", "parts": [{"text": "What does the handbook say?"}]}],
        "tools": [{"fileSearch": {"fileSearchStoreNames": [name]}}],
    });
    for i in 0..10 {
        let (status, answer) = call(
            &proxy,
            "POST",
            &format!("/v1beta/models/{MODEL}:generateContent"),
            CLIENT,
            Some(search.clone()),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "call {i}: {answer}");
    }
    // Importing a file: on the store's key it works; a file of another key is a clear 400.
    let mut imported = false;
    let mut refused = false;
    for i in 0..3 {
        let file = multipart(&proxy, CLIENT, &format!("page {i}")).await;
        let file_name = file["name"].as_str().unwrap().to_owned();
        let (status, op) = call(
            &proxy,
            "POST",
            &format!("/v1beta/{name}:importFile"),
            CLIENT,
            Some(json!({"fileName": file_name})),
        )
        .await;
        if owner_of(&fake, &file_name) == owner {
            assert_eq!(status, StatusCode::OK, "{op}");
            let (status, polled) = call(
                &proxy,
                "GET",
                &format!("/v1beta/{}", op["name"].as_str().unwrap()),
                CLIENT,
                None,
            )
            .await;
            assert_eq!(status, StatusCode::OK, "{polled}");
            assert_eq!(polled["done"], true);
            imported = true;
        } else {
            assert_eq!(status, StatusCode::BAD_REQUEST, "{op}");
            let message = op["error"]["message"].as_str().unwrap();
            assert!(
                message.contains(&name) && message.contains(&file_name),
                "{message}"
            );
            refused = true;
        }
    }
    assert!(
        imported && refused,
        "round robin put the three files on three keys"
    );
    // Listed for its client, hidden from the other.
    let (status, list) = call(&proxy, "GET", "/v1beta/fileSearchStores", CLIENT, None).await;
    assert_eq!(status, StatusCode::OK, "{list}");
    let names: Vec<&str> = list["fileSearchStores"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert_eq!(names, [name.as_str()]);
    let (_, other) = call(&proxy, "GET", "/v1beta/fileSearchStores", OTHER, None).await;
    assert_eq!(other["fileSearchStores"], json!([]), "{other}");
    let path = format!("/v1beta/{name}");
    let (status, _) = call(&proxy, "GET", &path, OTHER, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Deleted on its key; the pin goes with it.
    let (status, _) = call(&proxy, "DELETE", &path, CLIENT, None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = call(&proxy, "GET", &path, CLIENT, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_no_key_disabled(&proxy);
}

#[tokio::test]
async fn ownership_survives_a_restart_with_the_tokens_reordered() {
    // Short tokens all mask to the same `…`; their display ids (`…`, `…#2`) follow the order
    // of ALLOWED_TOKENS. What a client owns must follow the token, not that order.
    let fake = FakeGemini::start(KEYS).await.unwrap();
    let url = fake.url();
    let keys = KEYS.join(",");
    let dir = std::env::temp_dir().join(format!(
        "owners-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let db = dir.join("gateway.db");
    let start = |tokens: &'static str| {
        let (keys, url, db) = (keys.clone(), url.clone(), db.clone());
        async move {
            Proxy::start(&[
                ("GEMINI_API_KEYS", keys.as_str()),
                ("UPSTREAM_URL", url.as_str()),
                ("ALLOWED_TOKENS", tokens),
                ("ADMIN_TOKEN", ADMIN),
                ("DATABASE_PATH", db.to_str().unwrap()),
            ])
            .await
        }
    };
    let proxy = start("alpha-1,bravo-2").await;
    let file = multipart(&proxy, "alpha-1", "alpha's notes").await;
    let path = format!("/v1beta/{}", file["name"].as_str().unwrap());
    let (status, _) = call(&proxy, "GET", &path, "bravo-2", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    drop(proxy);

    let proxy = start("bravo-2,alpha-1").await;
    let (status, _) = call(&proxy, "GET", &path, "bravo-2", None).await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "bravo must not inherit alpha's file"
    );
    let (status, got) = call(&proxy, "GET", &path, "alpha-1", None).await;
    assert_eq!(status, StatusCode::OK, "{got}");
    drop(proxy);
    std::fs::remove_dir_all(dir).ok();
}
