//! Plain answers: a body with a content type, JSON, and Gemini error bodies.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use serde_json::{Value, json};

use crate::body::Body;
use crate::error::gemini_status_name;

pub(super) fn raw(status: u16, content_type: &'static str, body: Bytes) -> Response<Body> {
    let mut res = Response::new(Body::from(body));
    *res.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    res.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    res
}

pub(super) fn json_response(status: u16, v: &Value) -> Response<Body> {
    raw(
        status,
        "application/json; charset=UTF-8",
        Bytes::from(serde_json::to_vec(v).unwrap_or_default()),
    )
}

pub(super) fn error(status: u16, message: &str) -> Response<Body> {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json_response(
        status,
        &json!({"error": {"code": status, "message": message, "status": gemini_status_name(code)}}),
    )
}
