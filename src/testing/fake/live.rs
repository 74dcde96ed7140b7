//! The Live API's WebSocket: key check at the handshake, then `setup`, text and audio turns.
//!
//! Messages go out as binary frames holding JSON, as Google's server sends them. Field names
//! are read in either case, as proto JSON allows (`client_content` or `clientContent`). The
//! answers:
//! - `setup` → `{"setupComplete":{}}`;
//! - `clientContent` (with `turnComplete` not `false`) or `realtimeInput.text` → the
//!   [passage](super::FakeGemini::passage) of the turn's text in `serverContent.modelTurn`
//!   chunks, then `generationComplete`, `turnComplete` and a `usageMetadata` message;
//! - `realtimeInput` audio (`audio` or `mediaChunks`, base64 PCM) → one `inlineData` part of
//!   `audio/pcm;rate=24000` (silence, 1.5 times the bytes received: 16 kHz in, 24 kHz out),
//!   then the same end of turn;
//! - anything else (`toolResponse`, `activityStart`, ...) → nothing.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures_util::{SinkExt, StreamExt};
use http::header::{CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, UPGRADE};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

use super::received::{ReceivedRequest, key_of};
use super::response::error;
use super::routes::key_check;
use super::server::{State, lock};
use crate::body::Body;
use crate::testing::passage;

/// Whether a request is a WebSocket handshake on a Live path.
pub(super) fn is_live(req: &Request<Incoming>) -> bool {
    req.uri()
        .path()
        .starts_with("/ws/google.ai.generativelanguage.")
        && req
            .uri()
            .path()
            .ends_with(".GenerativeService.BidiGenerateContent")
}

/// Checks the key, answers `101` and serves the session on the upgraded connection.
pub(super) fn accept(state: Arc<State>, mut req: Request<Incoming>, conn: u64) -> Response<Body> {
    let key = key_of(req.headers(), req.uri().query());
    state.total.fetch_add(1, Ordering::SeqCst);
    if let Some(k) = &key {
        *lock(&state.counters).entry(k.clone()).or_default() += 1;
    }
    lock(&state.received).push(ReceivedRequest {
        method: req.method().clone(),
        path: req.uri().path().to_owned(),
        query: req.uri().query().map(str::to_owned),
        version: req.version(),
        connection: conn,
        headers: req.headers().clone(),
        body: bytes::Bytes::new(),
    });
    let Some(key) = key else {
        return error(
            403,
            "Method doesn't allow unregistered callers (callers without established identity). \
             Please use API Key or other form of API consumer identity to call this API.",
        );
    };
    if let Some(res) = key_check(&state, &key, "") {
        return res;
    }
    let Some(ws_key) = req.headers().get(SEC_WEBSOCKET_KEY) else {
        return error(400, "Request is not a WebSocket handshake.");
    };
    let accept = derive_accept_key(ws_key.as_bytes());
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        if let Ok(upgraded) = on_upgrade.await {
            let ws =
                WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
            session(state, ws).await;
        }
    });
    let mut res = Response::new(Body::empty());
    *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = res.headers_mut();
    h.insert(CONNECTION, http::HeaderValue::from_static("upgrade"));
    h.insert(UPGRADE, http::HeaderValue::from_static("websocket"));
    if let Ok(v) = http::HeaderValue::from_str(&accept) {
        h.insert(SEC_WEBSOCKET_ACCEPT, v);
    }
    res
}

async fn session<S>(state: Arc<State>, mut ws: WebSocketStream<S>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    while let Some(Ok(m)) = ws.next().await {
        let data = match &m {
            Message::Text(t) => t.as_bytes(),
            Message::Binary(b) => &b[..],
            Message::Close(_) => break,
            _ => continue,
        };
        let Ok(v) = serde_json::from_slice::<Value>(data) else {
            let _ = ws.close(None).await;
            break;
        };
        // Proto JSON takes field names in either case; google-genai sends `client_content`.
        let v = camel_keys(v);
        if let Some(model) = v.pointer("/setup/model").and_then(Value::as_str) {
            if !is_live_model(model) {
                // As Google: the session ends at `setup` with a policy close naming the model.
                let reason = format!(
                    "{model} is not found for API version v1beta, or is not supported for bidiGenerateContent."
                );
                let frame = tokio_tungstenite::tungstenite::protocol::CloseFrame {
                    code:
                        tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode::Policy,
                    reason: reason.into(),
                };
                let _ = ws.close(Some(frame)).await;
                break;
            }
        }
        for answer in answers(&state, &v) {
            let bytes = answer.to_string().into_bytes();
            if ws.send(Message::Binary(bytes.into())).await.is_err() {
                return;
            }
            let delay = *lock(&state.chunk_delay);
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// Whether `setup.model` names a model the Live API serves: `models/` and a Live or native
/// audio model (the names Google gives them).
fn is_live_model(model: &str) -> bool {
    model
        .strip_prefix("models/")
        .is_some_and(|m| m.contains("live") || m.contains("native-audio"))
}

/// The server messages answering one client message.
fn answers(state: &State, v: &Value) -> Vec<Value> {
    if v.get("setup").is_some() {
        return vec![json!({"setupComplete": {}})];
    }
    if let Some(c) = v.get("clientContent") {
        if c.get("turnComplete") == Some(&Value::Bool(false)) {
            return Vec::new();
        }
        let prompt = c
            .get("turns")
            .and_then(Value::as_array)
            .and_then(|turns| {
                turns
                    .iter()
                    .rev()
                    .find(|t| t.get("role").and_then(Value::as_str) != Some("model"))
            })
            .map(turn_text)
            .unwrap_or_default();
        return text_turn(state, &prompt);
    }
    if let Some(r) = v.get("realtimeInput") {
        if let Some(text) = r.get("text").and_then(Value::as_str) {
            return text_turn(state, text);
        }
        let mut b64 = 0usize;
        if let Some(d) = r.pointer("/audio/data").and_then(Value::as_str) {
            b64 += d.len();
        }
        for chunk in r
            .get("mediaChunks")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let audio = chunk
                .get("mimeType")
                .and_then(Value::as_str)
                .is_some_and(|m| m.starts_with("audio/"));
            if audio {
                b64 += chunk
                    .get("data")
                    .and_then(Value::as_str)
                    .map_or(0, str::len);
            }
        }
        if b64 == 0 {
            return Vec::new();
        }
        // 16-bit samples at 16 kHz in, 24 kHz out: 1.5 times the bytes, in whole samples.
        let pcm_in = b64 / 4 * 3;
        let pcm_out = (pcm_in * 3 / 2).div_ceil(6).max(1) * 6;
        let silence = "A".repeat(pcm_out / 3 * 4);
        let prompt_tokens = (pcm_in as u64 / 32_000).max(1) * 25;
        let response_tokens = (pcm_out as u64 / 48_000).max(1) * 25;
        return vec![
            json!({"serverContent": {"modelTurn": {"parts": [
                {"inlineData": {"mimeType": "audio/pcm;rate=24000", "data": silence}}
            ]}}}),
            json!({"serverContent": {"generationComplete": true}}),
            json!({"serverContent": {"turnComplete": true}}),
            usage(prompt_tokens, response_tokens),
        ];
    }
    Vec::new()
}

/// `v` with every object key in lowerCamelCase (`turn_complete` → `turnComplete`).
fn camel_keys(v: Value) -> Value {
    match v {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| {
                    let mut out = String::with_capacity(k.len());
                    let mut upper = false;
                    for c in k.chars() {
                        if c == '_' {
                            upper = true;
                        } else if upper {
                            out.extend(c.to_uppercase());
                            upper = false;
                        } else {
                            out.push(c);
                        }
                    }
                    (out, camel_keys(v))
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(camel_keys).collect()),
        other => other,
    }
}

fn turn_text(turn: &Value) -> String {
    let parts = turn.get("parts").and_then(Value::as_array);
    let texts: Vec<&str> = parts
        .into_iter()
        .flatten()
        .filter_map(|p| p.get("text").and_then(Value::as_str))
        .collect();
    texts.join(" ")
}

fn text_turn(state: &State, prompt: &str) -> Vec<Value> {
    let answer = passage::passage(prompt);
    let mut out: Vec<Value> = passage::chunks(&answer, state.chunk_words)
        .into_iter()
        .map(|text| json!({"serverContent": {"modelTurn": {"parts": [{"text": text}]}}}))
        .collect();
    out.push(json!({"serverContent": {"generationComplete": true}}));
    out.push(json!({"serverContent": {"turnComplete": true}}));
    out.push(usage(
        passage::tokens(prompt).max(1),
        passage::tokens(&answer).max(1),
    ));
    out
}

/// A Live `usageMetadata` message (Live names the answer's tokens `responseTokenCount`).
fn usage(prompt: u64, response: u64) -> Value {
    json!({"usageMetadata": {
        "promptTokenCount": prompt,
        "responseTokenCount": response,
        "totalTokenCount": prompt + response,
    }})
}
