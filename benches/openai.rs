//! OpenAiToGemini costs: translating a typical chat request, translating one streamed chunk
//! (target: well under 10 µs), and a whole chat call through the layer against the bare
//! inner service answering the same Gemini request, in one run.
//!
//! `cargo bench --features openai --bench openai`
#![allow(missing_docs, clippy::unwrap_used)]

use std::convert::Infallible;
use std::hint::black_box;

use bytes::{Bytes, BytesMut};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use http::{Request, Response};
use serde_json::json;
use tower::{Layer, ServiceExt, service_fn};
use tower_gemini::Body;
use tower_gemini::body::collect_limited;
use tower_gemini::gemini::GenerateContentResponse;
use tower_gemini::openai::{
    ChatCompletionRequest, ChatContext, OpenAiToGeminiLayer, StreamTranslator, TranslateOptions,
    to_chat_completion, to_gemini_request,
};

fn chat_request() -> serde_json::Value {
    json!({
        "model": "gemini-2.5-flash",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant. Answer briefly."},
            {"role": "user", "content": "What is the capital of France?"},
            {"role": "assistant", "content": "Paris."},
            {"role": "user", "content": [
                {"type": "text", "text": "And what is in this picture?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="}}
            ]}
        ],
        "temperature": 0.7,
        "max_tokens": 1024,
        "tools": [{"type": "function", "function": {"name": "weather", "description": "Weather.",
            "parameters": {"type": "object", "additionalProperties": false,
                "properties": {"city": {"type": "string"}}, "required": ["city"]}}}],
        "stream": false
    })
}

fn answer_json() -> &'static str {
    r#"{"candidates":[{"content":{"role":"model","parts":[{"text":"The picture shows a single transparent pixel; there is nothing else in it."}]},"finishReason":"STOP","index":0}],"usageMetadata":{"promptTokenCount":57,"candidatesTokenCount":17,"totalTokenCount":74},"modelVersion":"gemini-2.5-flash","responseId":"abc"}"#
}

fn chunk_json() -> &'static [u8] {
    br#"{"candidates":[{"content":{"role":"model","parts":[{"text":"a few words of the answer "}]},"index":0}],"modelVersion":"gemini-2.5-flash","responseId":"abc"}"#
}

fn translation(c: &mut Criterion) {
    let mut group = c.benchmark_group("openai_translate");
    let raw = serde_json::to_vec(&chat_request()).unwrap();
    let options = TranslateOptions::default();
    group.throughput(Throughput::Elements(1));
    group.bench_function("chat_request_parse_and_translate", |b| {
        b.iter(|| {
            let req: ChatCompletionRequest = serde_json::from_slice(black_box(&raw)).unwrap();
            let g = to_gemini_request(&req, &options).unwrap();
            black_box(serde_json::to_vec(&g).unwrap())
        })
    });
    let answer = answer_json().as_bytes();
    let cx = ChatContext::new("gemini-2.5-flash");
    group.bench_function("chat_answer_parse_and_translate", |b| {
        b.iter(|| {
            let resp: GenerateContentResponse = serde_json::from_slice(black_box(answer)).unwrap();
            black_box(serde_json::to_vec(&to_chat_completion(&resp, &cx).unwrap()).unwrap())
        })
    });
    let chunk = chunk_json();
    group.bench_function("stream_chunk", |b| {
        let mut t = StreamTranslator::new(ChatContext::new("gemini-2.5-flash"), true);
        let mut out = BytesMut::with_capacity(1024);
        b.iter(|| {
            out.clear();
            t.push(black_box(chunk), &mut out);
            black_box(out.len())
        })
    });
    group.finish();
}

fn layer_throughput(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let inner = service_fn(|req: Request<Body>| async move {
        // Read the request as an upstream would, then answer.
        let _ = collect_limited(req.into_body(), 1 << 20).await;
        Ok::<_, Infallible>(Response::new(Body::from(Bytes::from_static(
            answer_json().as_bytes(),
        ))))
    });
    let openai_body = Bytes::from(serde_json::to_vec(&chat_request()).unwrap());
    let req: ChatCompletionRequest = serde_json::from_value(chat_request()).unwrap();
    let gemini_body = Bytes::from(
        serde_json::to_vec(&to_gemini_request(&req, &TranslateOptions::default()).unwrap())
            .unwrap(),
    );
    let layered = OpenAiToGeminiLayer::new().layer(inner);

    let mut group = c.benchmark_group("openai_layer");
    group.throughput(Throughput::Elements(1));
    group.bench_function("bare_inner_gemini_request", |b| {
        b.iter(|| {
            rt.block_on(async {
                let req = Request::post("/v1beta/models/gemini-2.5-flash:generateContent")
                    .body(Body::from(gemini_body.clone()))
                    .unwrap();
                let res = inner.oneshot(req).await.unwrap();
                black_box(collect_limited(res.into_body(), 1 << 20).await.unwrap())
            })
        })
    });
    group.bench_function("through_layer_openai_request", |b| {
        b.iter(|| {
            rt.block_on(async {
                let req = Request::post("/v1/chat/completions")
                    .body(Body::from(openai_body.clone()))
                    .unwrap();
                let res = layered.clone().oneshot(req).await.unwrap();
                black_box(collect_limited(res.into_body(), 1 << 20).await.unwrap())
            })
        })
    });
    group.finish();
}

criterion_group!(benches, translation, layer_throughput);
criterion_main!(benches);
