//! `embedContent` and `batchEmbedContents`.

use http::Response;
use serde_json::{Value, json};

use super::plan::texts_of;
use super::response::{error, json_response};
use crate::body::Body;
use crate::testing::passage;

fn embed_values(req: &Value) -> Value {
    let text = texts_of(&req["content"]).join(" ");
    let dims = req["outputDimensionality"].as_u64().unwrap_or(768) as usize;
    json!({ "values": passage::embedding(&text, dims.clamp(1, 3072)) })
}

pub(super) fn embed_one(req: &Value) -> Response<Body> {
    json_response(200, &json!({ "embedding": embed_values(req) }))
}

pub(super) fn embed_batch(req: &Value) -> Response<Body> {
    let Some(requests) = req["requests"].as_array() else {
        return error(
            400,
            "Invalid JSON payload received. `requests` is required.",
        );
    };
    let embeddings: Vec<Value> = requests.iter().map(embed_values).collect();
    json_response(200, &json!({ "embeddings": embeddings }))
}
