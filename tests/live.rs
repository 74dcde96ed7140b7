//! The Live API through full_proxy: a real WebSocket client (tokio-tungstenite) on loopback,
//! FakeGemini's Live endpoint upstream, three pool keys.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http::{Request, StatusCode};
use serde_json::{Value, json};
use support::{Proxy, get, send, status_and_text};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tower_gemini::Body;
use tower_gemini::testing::{FakeGemini, KeyBehavior};

const KEYS: [&str; 3] = [
    "AIzaSyLive-test-key-number-one-0000001",
    "AIzaSyLive-test-key-number-two-0000002",
    "AIzaSyLive-test-key-number-three-00003",
];
const CLIENT: &str = "test-client-token-1";
const ADMIN: &str = "test-admin-token-1";
const MODEL: &str = "gemini-live-2.5-flash-preview";
const PATH: &str = "/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent";

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

async fn setup() -> (FakeGemini, Proxy) {
    let fake = FakeGemini::start(KEYS).await.unwrap();
    let url = fake.url();
    let keys = KEYS.join(",");
    let proxy = Proxy::start(&[
        ("GEMINI_API_KEYS", keys.as_str()),
        ("UPSTREAM_URL", url.as_str()),
    ])
    .await;
    (fake, proxy)
}

fn ws_url(proxy: &Proxy, path: &str, token: Option<&str>) -> String {
    match token {
        Some(t) => format!("ws://{}{path}?key={t}", proxy.addr),
        None => format!("ws://{}{path}", proxy.addr),
    }
}

/// Opens a session and sends `setup`; returns once `setupComplete` has arrived.
async fn open(proxy: &Proxy) -> Ws {
    let (mut ws, res) = tokio_tungstenite::connect_async(ws_url(proxy, PATH, Some(CLIENT)))
        .await
        .expect("the gateway upgrades");
    assert!(res.headers().contains_key("x-request-id"));
    let setup = json!({"setup": {"model": format!("models/{MODEL}"),
                                 "generationConfig": {"responseModalities": ["TEXT"]}}});
    ws.send(Message::text(setup.to_string())).await.unwrap();
    assert_eq!(next_json(&mut ws).await, json!({"setupComplete": {}}));
    ws
}

/// The next text or binary message as JSON.
async fn next_json(ws: &mut Ws) -> Value {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a message in time")
            .expect("the session is open")
            .expect("no error");
        match m {
            Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
            Message::Binary(b) => return serde_json::from_slice(&b).unwrap(),
            Message::Close(c) => panic!("closed: {c:?}"),
            _ => {}
        }
    }
}

/// Reads one whole turn: the messages up to `turnComplete`, then the `usageMetadata` one.
async fn turn(ws: &mut Ws) -> (Vec<Value>, Value) {
    let mut parts = Vec::new();
    loop {
        let v = next_json(ws).await;
        if let Some(p) = v.pointer("/serverContent/modelTurn/parts") {
            parts.extend(p.as_array().unwrap().iter().cloned());
        }
        if v.pointer("/serverContent/turnComplete") == Some(&Value::Bool(true)) {
            break;
        }
    }
    let usage = next_json(ws).await;
    assert!(usage.get("usageMetadata").is_some(), "{usage}");
    (parts, usage)
}

async fn text_turn(ws: &mut Ws, prompt: &str) -> (String, Value) {
    let msg = json!({"clientContent": {"turns": [{"role": "user", "parts": [{"text": prompt}]}],
                                       "turnComplete": true}});
    ws.send(Message::text(msg.to_string())).await.unwrap();
    let (parts, usage) = turn(ws).await;
    let text: String = parts.iter().filter_map(|p| p["text"].as_str()).collect();
    (text, usage)
}

/// The keys the upstream's Live handshakes carried, in order.
fn live_keys(fake: &FakeGemini) -> Vec<String> {
    fake.received()
        .into_iter()
        .filter(|r| r.path == PATH)
        .map(|r| r.api_key().expect("a key upstream"))
        .collect()
}

/// Waits for the close frame at the end of a session.
async fn close_frame(ws: &mut Ws) -> Option<tungstenite::protocol::CloseFrame> {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            Ok(Some(Ok(Message::Close(c)))) => return c,
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(e))) => panic!("error instead of a close frame: {e}"),
            Ok(None) => panic!("ended without a close frame"),
            Err(_) => panic!("no close frame in time"),
        }
    }
}

#[tokio::test]
async fn a_session_relays_a_text_turn_and_an_audio_turn_on_one_pool_key() {
    let (fake, proxy) = setup().await;
    let mut ws = open(&proxy).await;

    let prompt = "tell me about bees";
    let (text, usage) = text_turn(&mut ws, prompt).await;
    assert_eq!(text, FakeGemini::passage(prompt));
    assert!(usage["usageMetadata"]["totalTokenCount"].as_u64().unwrap() > 0);

    // Audio in a binary frame, as base64 PCM in `realtimeInput.audio`.
    let audio = json!({"realtimeInput": {"audio": {"data": "AAAAAAAAAAAAAAAA",
                                                   "mimeType": "audio/pcm;rate=16000"}}});
    ws.send(Message::binary(audio.to_string().into_bytes()))
        .await
        .unwrap();
    let (parts, _) = turn(&mut ws).await;
    assert_eq!(parts[0]["inlineData"]["mimeType"], "audio/pcm;rate=24000");
    assert!(!parts[0]["inlineData"]["data"].as_str().unwrap().is_empty());

    // The older `mediaChunks` form works the same.
    let chunks = json!({"realtimeInput": {"mediaChunks": [{"data": "AAAAAAAA",
                                                          "mimeType": "audio/pcm"}]}});
    ws.send(Message::text(chunks.to_string())).await.unwrap();
    let (parts, _) = turn(&mut ws).await;
    assert_eq!(parts[0]["inlineData"]["mimeType"], "audio/pcm;rate=24000");

    // A ping comes back as a pong.
    ws.send(Message::Ping(b"are you there".to_vec().into()))
        .await
        .unwrap();
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            Ok(Some(Ok(Message::Pong(p)))) => {
                assert_eq!(&p[..], b"are you there");
                break;
            }
            Ok(Some(Ok(_))) => {}
            other => panic!("no pong: {other:?}"),
        }
    }

    // One session, one upstream handshake, one pool key; never the client's token.
    let keys = live_keys(&fake);
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert!(KEYS.contains(&keys[0].as_str()), "{keys:?}");
    let handshake = fake
        .received()
        .into_iter()
        .find(|r| r.path == PATH)
        .unwrap();
    let query = handshake.query.clone().unwrap_or_default();
    assert!(!query.contains(CLIENT), "{query}");
    assert!(!handshake.headers.contains_key("authorization"));
    for (_, v) in &handshake.headers {
        assert!(
            !v.as_bytes()
                .windows(CLIENT.len())
                .any(|w| w == CLIENT.as_bytes())
        );
    }

    // The session's key is counted in flight while the session lasts, and released at its end.
    let in_flight: u32 = proxy.pool.snapshot().iter().map(|k| k.in_flight).sum();
    assert_eq!(in_flight, 1);
    ws.close(None).await.unwrap();
    while let Some(Ok(_)) = ws.next().await {}
    for _ in 0..200 {
        if proxy.pool.snapshot().iter().all(|k| k.in_flight == 0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(proxy.pool.snapshot().iter().all(|k| k.in_flight == 0));
}

#[tokio::test]
async fn a_wrong_or_missing_token_gets_401_and_no_upstream_connection() {
    let (fake, proxy) = setup().await;
    for token in [Some("not-a-client-token-000"), None] {
        let err = tokio_tungstenite::connect_async(ws_url(&proxy, PATH, token))
            .await
            .expect_err("refused before the upgrade");
        match err {
            tungstenite::Error::Http(res) => {
                assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
                let body: Value = serde_json::from_slice(res.body().as_deref().unwrap()).unwrap();
                assert_eq!(body["error"]["code"], 401);
            }
            other => panic!("expected a 401, got {other:?}"),
        }
    }
    assert_eq!(fake.total_requests(), 0);
}

#[tokio::test]
async fn the_token_is_taken_from_headers_too_and_the_v1alpha_path_works() {
    use tungstenite::client::IntoClientRequest;
    let (fake, proxy) = setup().await;
    let alpha = "/ws/google.ai.generativelanguage.v1alpha.GenerativeService.BidiGenerateContent";
    for (name, value) in [
        ("x-goog-api-key", CLIENT.to_owned()),
        ("authorization", format!("Bearer {CLIENT}")),
    ] {
        let mut req = ws_url(&proxy, alpha, None).into_client_request().unwrap();
        req.headers_mut().insert(name, value.parse().unwrap());
        let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
        ws.send(Message::text(
            json!({"setup": {"model": MODEL}}).to_string(),
        ))
        .await
        .unwrap();
        assert_eq!(next_json(&mut ws).await, json!({"setupComplete": {}}));
        let (text, _) = text_turn(&mut ws, "hello").await;
        assert_eq!(text, FakeGemini::passage("hello"));
        ws.close(None).await.unwrap();
    }
    let upstream: Vec<_> = fake.received().into_iter().map(|r| r.path).collect();
    assert_eq!(upstream, [alpha, alpha]);
}

#[tokio::test]
async fn two_sessions_use_different_keys_under_round_robin() {
    let (fake, proxy) = setup().await;
    let mut a = open(&proxy).await;
    let mut b = open(&proxy).await;
    text_turn(&mut a, "one").await;
    text_turn(&mut b, "two").await;
    let keys = live_keys(&fake);
    assert_eq!(keys.len(), 2);
    assert_ne!(keys[0], keys[1]);
    let in_flight: u32 = proxy.pool.snapshot().iter().map(|k| k.in_flight).sum();
    assert_eq!(in_flight, 2);
}

#[tokio::test]
async fn usage_from_usage_metadata_shows_in_admin_stats_and_metrics() {
    let (fake, proxy) = setup().await;
    let mut ws = open(&proxy).await;
    let (_, first) = text_turn(&mut ws, "tell me about bees").await;
    let (_, second) = text_turn(&mut ws, "and about rivers").await;
    let total = first["usageMetadata"]["totalTokenCount"].as_u64().unwrap()
        + second["usageMetadata"]["totalTokenCount"].as_u64().unwrap();
    let key_id = tower_gemini::secret::ApiKey::new(&live_keys(&fake)[0]).fingerprint();

    let mut stats = Value::Null;
    for _ in 0..100 {
        let (status, body) =
            status_and_text(send(&proxy, get("/admin/stats", Some(ADMIN))).await).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        stats = serde_json::from_str(&body).unwrap();
        if stats["models"][MODEL]["minute"]["requests"] == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(stats["models"][MODEL]["minute"]["requests"], 2, "{stats}");
    assert_eq!(stats["models"][MODEL]["minute"]["tokens"], total, "{stats}");
    assert_eq!(stats["keys"][&key_id]["minute"]["requests"], 2, "{stats}");

    let (_, metrics) = status_and_text(send(&proxy, get("/metrics", None)).await).await;
    let line = metrics
        .lines()
        .find(|l| {
            l.starts_with("gemini_gateway_requests_total")
                && l.contains("live.bidiGenerateContent")
                && l.contains(MODEL)
        })
        .unwrap_or_else(|| panic!("no Live line in /metrics:\n{metrics}"));
    assert!(line.ends_with(" 2"), "{line}");
    for key in KEYS {
        assert!(!metrics.contains(key));
    }
}

#[tokio::test]
async fn keys_refused_at_the_handshake_are_skipped_and_then_the_client_is_told_why() {
    let (fake, proxy) = setup().await;
    // Two keys refuse: one invalid, one out of quota. The session opens on the third.
    fake.remove_key(KEYS[0]);
    fake.set_key(KEYS[1], KeyBehavior::exhausted(Duration::from_secs(60)));
    let mut ws = open(&proxy).await;
    let (text, _) = text_turn(&mut ws, "hi").await;
    assert_eq!(text, FakeGemini::passage("hi"));
    let keys = live_keys(&fake);
    assert_eq!(keys.last().map(String::as_str), Some(KEYS[2]), "{keys:?}");

    // Every key out of quota: the client gets 1013 and the seconds to wait, no key named.
    fake.set_key(KEYS[2], KeyBehavior::exhausted(Duration::from_secs(60)));
    fake.set_key(KEYS[0], KeyBehavior::exhausted(Duration::from_secs(60)));
    let (mut ws, _) = tokio_tungstenite::connect_async(ws_url(&proxy, PATH, Some(CLIENT)))
        .await
        .unwrap();
    ws.send(Message::text(
        json!({"setup": {"model": MODEL}}).to_string(),
    ))
    .await
    .unwrap();
    let frame = close_frame(&mut ws)
        .await
        .expect("a close frame with a reason");
    assert!(
        matches!(frame.code, CloseCode::Again | CloseCode::Error),
        "{frame:?}"
    );
    assert!(!frame.reason.is_empty());
    for key in KEYS {
        assert!(!frame.reason.contains(key));
    }
}

#[tokio::test]
async fn a_first_message_that_is_not_setup_closes_the_session_without_upstream() {
    let (fake, proxy) = setup().await;
    let (mut ws, _) = tokio_tungstenite::connect_async(ws_url(&proxy, PATH, Some(CLIENT)))
        .await
        .unwrap();
    ws.send(Message::text(r#"{"clientContent":{}}"#))
        .await
        .unwrap();
    let frame = close_frame(&mut ws).await.unwrap();
    assert_eq!(frame.code, CloseCode::Policy);
    assert!(frame.reason.contains("setup"));
    assert_eq!(fake.total_requests(), 0);
}

#[tokio::test]
async fn graceful_shutdown_closes_open_sessions() {
    let (_fake, mut proxy) = setup().await;
    let mut ws = open(&proxy).await;
    text_turn(&mut ws, "hi").await;
    let server = proxy.shutdown();
    let frame = close_frame(&mut ws).await.unwrap();
    assert_eq!(frame.code, CloseCode::Away);
    tokio::time::timeout(Duration::from_secs(30), server)
        .await
        .expect("the server stops once the session has closed")
        .unwrap();
}

#[tokio::test]
async fn snake_case_messages_as_google_genai_sends_them_are_answered() {
    let (_fake, proxy) = setup().await;
    let mut ws = open(&proxy).await;
    let msg = json!({"client_content": {"turns": [{"role": "user", "parts": [{"text": "hi"}]}],
                                        "turn_complete": true}});
    ws.send(Message::text(msg.to_string())).await.unwrap();
    let (parts, _) = turn(&mut ws).await;
    let text: String = parts.iter().filter_map(|p| p["text"].as_str()).collect();
    assert_eq!(text, FakeGemini::passage("hi"));
}

#[tokio::test]
async fn a_wss_upstream_signed_by_upstream_ca_file_serves_sessions() {
    // Production's Live sessions go out as `wss://`; a private CA (or a TLS-inspecting egress
    // proxy) is trusted through the same UPSTREAM_CA_FILE as the REST routes.
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    let fake = FakeGemini::builder()
        .keys(KEYS)
        .tls(cert.der().to_vec(), signing_key.serialize_der())
        .start()
        .await
        .unwrap();
    let url = fake.url();
    assert!(url.starts_with("https://"));
    let dir = std::env::temp_dir().join(format!("live-ca-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, cert.pem()).unwrap();
    let keys = KEYS.join(",");
    let proxy = Proxy::start(&[
        ("GEMINI_API_KEYS", keys.as_str()),
        ("UPSTREAM_URL", url.as_str()),
        ("UPSTREAM_CA_FILE", ca.to_str().unwrap()),
    ])
    .await;
    let mut ws = open(&proxy).await;
    let (text, _) = text_turn(&mut ws, "Tell me about rivers").await;
    assert!(!text.is_empty());
    assert_eq!(live_keys(&fake).len(), 1, "one handshake, over TLS");
    drop(ws);

    // Without the CA the upstream's certificate is refused: the client is told, no key blamed.
    let untrusted = Proxy::start(&[
        ("GEMINI_API_KEYS", keys.as_str()),
        ("UPSTREAM_URL", url.as_str()),
    ])
    .await;
    let (mut ws, _) = tokio_tungstenite::connect_async(ws_url(&untrusted, PATH, Some(CLIENT)))
        .await
        .unwrap();
    let setup = json!({"setup": {"model": format!("models/{MODEL}")}});
    ws.send(Message::text(setup.to_string())).await.unwrap();
    let close = close_frame(&mut ws).await.expect("a close frame");
    assert_ne!(close.code, CloseCode::Normal, "{close:?}");
    assert_eq!(
        live_keys(&fake).len(),
        1,
        "no TLS session, no handshake upstream"
    );
    assert_eq!(
        untrusted.pool.usable_count(),
        3,
        "a TLS failure is no key's fault"
    );
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test]
async fn in_own_key_mode_a_session_runs_on_the_clients_own_key() {
    const OWN: &str = "AIzaSyLive-client-own-key-0000000000009";
    let fake = FakeGemini::start([KEYS[0], OWN]).await.unwrap();
    let url = fake.url();
    let proxy = Proxy::start(&[
        ("GEMINI_API_KEYS", KEYS[0]),
        ("UPSTREAM_URL", url.as_str()),
        ("ALLOWED_TOKENS", CLIENT),
        ("CLIENT_KEY_PASSTHROUGH", "true"),
    ])
    .await;
    let setup = json!({"setup": {"model": format!("models/{MODEL}")}}).to_string();
    // The client's own key serves its session; a gateway token gets a pool key.
    for (credential, expected) in [(OWN, OWN), (CLIENT, KEYS[0])] {
        let (mut ws, _) = tokio_tungstenite::connect_async(ws_url(&proxy, PATH, Some(credential)))
            .await
            .expect("the gateway upgrades");
        ws.send(Message::text(setup.clone())).await.unwrap();
        assert_eq!(next_json(&mut ws).await, json!({"setupComplete": {}}));
        let (text, _) = text_turn(&mut ws, "Tell me about rivers").await;
        assert!(!text.is_empty());
        assert_eq!(live_keys(&fake).last().map(String::as_str), Some(expected));
    }
    // A key Google refuses is the client's to hear about; the pool's key is not blamed.
    const BAD: &str = "AIzaSyLive-client-bad-key-0000000000008";
    let (mut ws, _) = tokio_tungstenite::connect_async(ws_url(&proxy, PATH, Some(BAD)))
        .await
        .expect("the gateway upgrades");
    ws.send(Message::text(setup)).await.unwrap();
    let close = close_frame(&mut ws).await.expect("a close frame");
    assert!(close.reason.contains("refused your key"), "{close:?}");
    assert!(!close.reason.contains(BAD), "{close:?}");
    assert_eq!(live_keys(&fake).len(), 3);
    assert_eq!(proxy.pool.usable_count(), 1);
    for k in proxy.pool.snapshot() {
        assert_eq!(k.consecutive_failures, 0, "{k:?}");
    }
}

#[tokio::test]
async fn the_request_policy_resolves_aliases_and_refuses_models_for_live_sessions() {
    let fake = FakeGemini::start(KEYS).await.unwrap();
    let url = fake.url();
    let keys = KEYS.join(",");
    let aliases = format!("voice={MODEL}");
    let proxy = Proxy::start(&[
        ("GEMINI_API_KEYS", keys.as_str()),
        ("UPSTREAM_URL", url.as_str()),
        ("MODEL_ALIASES", aliases.as_str()),
        ("ALLOWED_MODELS", "voice"),
    ])
    .await;
    // The alias opens a session on the real model (the fake closes a session whose `setup`
    // names a model the Live API does not serve, as Google does).
    let (mut ws, _) = tokio_tungstenite::connect_async(ws_url(&proxy, PATH, Some(CLIENT)))
        .await
        .unwrap();
    ws.send(Message::text(
        json!({"setup": {"model": "models/voice"}}).to_string(),
    ))
    .await
    .unwrap();
    assert_eq!(next_json(&mut ws).await, json!({"setupComplete": {}}));
    let (text, _) = text_turn(&mut ws, "Tell me about rivers").await;
    assert!(!text.is_empty());
    drop(ws);
    // A model outside ALLOWED_MODELS is refused before any upstream connection.
    let before = live_keys(&fake).len();
    let (mut ws, _) = tokio_tungstenite::connect_async(ws_url(&proxy, PATH, Some(CLIENT)))
        .await
        .unwrap();
    let setup = json!({"setup": {"model": format!("models/{MODEL}")}});
    ws.send(Message::text(setup.to_string())).await.unwrap();
    let close = close_frame(&mut ws).await.expect("a close frame");
    assert_eq!(close.code, CloseCode::Policy, "{close:?}");
    assert!(close.reason.contains("not allowed"), "{close:?}");
    assert_eq!(live_keys(&fake).len(), before, "no upstream session");
}

#[tokio::test]
async fn sessions_and_their_turns_count_against_the_clients_rate_limit() {
    let fake = FakeGemini::start(KEYS).await.unwrap();
    let url = fake.url();
    let keys = KEYS.join(",");
    let proxy = Proxy::start(&[
        ("GEMINI_API_KEYS", keys.as_str()),
        ("UPSTREAM_URL", url.as_str()),
        ("MAX_REQUESTS_PER_MINUTE", "2"),
    ])
    .await;
    // The opening is one request and the first turn another: both within the limit.
    let mut ws = open(&proxy).await;
    let (text, _) = text_turn(&mut ws, "Tell me about rivers").await;
    assert!(!text.is_empty());
    // The second turn is answered, then the session ends: the client is over its limit.
    let (text, _) = text_turn(&mut ws, "And lakes?").await;
    assert!(!text.is_empty(), "the turn that went over is still relayed");
    let close = close_frame(&mut ws).await.expect("a close frame");
    assert_eq!(close.code, CloseCode::Again, "{close:?}");
    assert!(close.reason.contains("rate limit"), "{close:?}");
    // A new session is refused at its opening, before any upstream connection.
    let handshakes = live_keys(&fake).len();
    let (mut ws, _) = tokio_tungstenite::connect_async(ws_url(&proxy, PATH, Some(CLIENT)))
        .await
        .unwrap();
    let setup = json!({"setup": {"model": format!("models/{MODEL}")}});
    ws.send(Message::text(setup.to_string())).await.unwrap();
    let close = close_frame(&mut ws).await.expect("a close frame");
    assert_eq!(close.code, CloseCode::Again, "{close:?}");
    assert_eq!(live_keys(&fake).len(), handshakes, "no upstream session");
    // The REST routes share the same quota: this client is out for the minute there too.
    let req = http::Request::post(format!("/v1beta/models/{MODEL}:generateContent"))
        .header("x-goog-api-key", CLIENT)
        .body(tower_gemini::Body::from(
            json!({"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}).to_string(),
        ))
        .unwrap();
    let (status, _) = status_and_text(send(&proxy, req).await).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn a_tokens_models_and_expiry_hold_for_live_sessions() {
    let (fake, proxy) = setup().await;
    let create = |body: Value| {
        Request::post("/admin/tokens")
            .header("authorization", format!("Bearer {ADMIN}"))
            .header("content-type", "application/json")
            .body(Body::from(body.to_string()))
            .unwrap()
    };
    let (status, text) = status_and_text(
        send(
            &proxy,
            create(json!({"name": "text-only", "models": ["gemini-2.5-flash"]})),
        )
        .await,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{text}");
    let text_only: Value = serde_json::from_str(&text).unwrap();
    let token = text_only["token"].as_str().unwrap();
    let before = live_keys(&fake).len();
    let (mut ws, _) = tokio_tungstenite::connect_async(ws_url(&proxy, PATH, Some(token)))
        .await
        .unwrap();
    let setup = json!({"setup": {"model": format!("models/{MODEL}")}});
    ws.send(Message::text(setup.to_string())).await.unwrap();
    let close = close_frame(&mut ws).await.expect("a close frame");
    assert_eq!(close.code, CloseCode::Policy, "{close:?}");
    assert!(close.reason.contains(MODEL), "names the model: {close:?}");
    assert_eq!(live_keys(&fake).len(), before, "no upstream session");

    // An expired token is refused at the handshake, saying so.
    let (_, text) = status_and_text(
        send(
            &proxy,
            create(json!({"name": "old", "expires_at": "2001-01-01T00:00:00Z"})),
        )
        .await,
    )
    .await;
    let old: Value = serde_json::from_str(&text).unwrap();
    let refused = tokio_tungstenite::connect_async(ws_url(
        &proxy,
        PATH,
        Some(old["token"].as_str().unwrap()),
    ))
    .await;
    match refused {
        Err(tungstenite::Error::Http(res)) => assert_eq!(res.status(), 401),
        other => panic!("expected a 401 at the handshake, got {other:?}"),
    }
}
