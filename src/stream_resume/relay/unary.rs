//! `:generateContent`: the whole answer retried while it is empty or cut off.

use bytes::Bytes;
use http::{Request, Response};
use serde::Deserialize;
use serde_json::Value;
use tower::Service;

use super::event::{PeekContent, visible_text};
use super::request::{RequestTemplate, call};
use crate::body::{Body, BoxError, collect_limited};
use crate::gemini::peek::{First, borrowed_str};
use crate::stream_resume::layer::Config;

/// Just what [`unary_needs_retry`] needs of a `:generateContent` answer.
#[derive(Deserialize)]
struct UnaryPeek<'a> {
    #[serde(default, borrow)]
    candidates: First<UnaryCandidate<'a>>,
}

#[derive(Deserialize)]
struct UnaryCandidate<'a> {
    #[serde(default, borrow)]
    content: Option<PeekContent<'a>>,
    #[serde(
        rename = "finishReason",
        default,
        borrow,
        deserialize_with = "borrowed_str"
    )]
    finish_reason: Option<std::borrow::Cow<'a, str>>,
}

/// The answer of a `:generateContent` call, retried whole while it is empty or cut off.
pub(crate) async fn retry_unary<S, B>(
    mut inner: S,
    template: RequestTemplate,
    mut res: Response<Body>,
    config: std::sync::Arc<Config>,
    max_answer: usize,
) -> Response<Body>
where
    S: Service<Request<Body>, Response = Response<B>> + Send + 'static,
    S::Error: Into<BoxError>,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let mut attempts = 0;
    loop {
        if res.status() != http::StatusCode::OK {
            return res;
        }
        let (parts, body) = res.into_parts();
        let Ok(bytes) = collect_limited(body, max_answer).await else {
            return crate::ApiError::bad_gateway("the upstream answer could not be read")
                .into_response(crate::Dialect::Gemini);
        };
        let again = unary_needs_retry(&bytes, &config);
        if again.is_none()
            || attempts >= config.max_consecutive_retries
            || attempts >= config.max_resume_attempts
        {
            if again == Some(NOT_JSON) {
                return not_json();
            }
            return Response::from_parts(parts, Body::from(bytes));
        }
        attempts += 1;
        template.note_resume();
        tracing::info!(
            attempt = attempts + 1,
            reason = again.unwrap_or_default(),
            "retrying an empty or cut-off answer"
        );
        tokio::time::sleep(config.retry_delay).await;
        res = match call(&mut inner, template.original()).await {
            Ok(r) => r.map(Body::new),
            Err(_) if again == Some(NOT_JSON) => return not_json(),
            Err(_) => return Response::from_parts(parts, Body::from(bytes)),
        };
    }
}

/// The retry reason of a 200 whose body is not JSON (an HTML error page from a middlebox, a
/// body cut short).
const NOT_JSON: &str = "not JSON";

fn not_json() -> Response<Body> {
    tracing::warn!("the upstream answered 200 with a body that is not JSON");
    crate::ApiError::bad_gateway("the upstream answered with a body that is not valid JSON")
        .into_response(crate::Dialect::Gemini)
}

fn unary_needs_retry(bytes: &[u8], config: &Config) -> Option<&'static str> {
    // The common answer, read into borrowed structs without building a JSON tree; anything
    // they do not describe (odd types, duplicate keys, not JSON) gets the full reading.
    if let Ok(peek) = serde_json::from_slice::<UnaryPeek<'_>>(bytes) {
        let c = peek.candidates.first()?;
        let finish = c.finish_reason.as_deref();
        if finish.is_some_and(|f| config.retryable_finish_reasons.contains(f)) {
            return Some("finish reason");
        }
        // A generated image is an answer: asking again would make (and bill) another one.
        let has_call = c
            .content
            .as_ref()
            .is_some_and(|c| c.parts.function_call || c.parts.media);
        let has_text = c.content.as_ref().is_some_and(|c| !c.parts.text.is_empty());
        if !has_text
            && !has_call
            && finish.is_none_or(|f| f == "STOP")
            && config.empty_stop_is_retryable
        {
            return Some("empty answer");
        }
        return None;
    }
    unary_needs_retry_tree(bytes, config)
}

/// [`unary_needs_retry`] on a JSON tree: for answers the borrowed reading does not describe.
fn unary_needs_retry_tree(bytes: &[u8], config: &Config) -> Option<&'static str> {
    let Ok(v) = serde_json::from_slice::<Value>(bytes) else {
        return Some(NOT_JSON);
    };
    let c = v.get("candidates")?.get(0)?;
    let parts = c
        .get("content")
        .and_then(|c| c.get("parts"))
        .and_then(Value::as_array);
    let finish = c.get("finishReason").and_then(Value::as_str);
    let has_call = parts.is_some_and(|p| {
        p.iter().any(|p| {
            p.get("functionCall").is_some()
                || p.get("inlineData").is_some()
                || p.get("fileData").is_some()
        })
    });
    let text = parts.map(|p| visible_text(p)).unwrap_or_default();
    if finish.is_some_and(|f| config.retryable_finish_reasons.contains(f)) {
        return Some("finish reason");
    }
    if text.is_empty()
        && !has_call
        && finish.is_none_or(|f| f == "STOP")
        && config.empty_stop_is_retryable
    {
        return Some("empty answer");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_borrowed_unary_check_agrees_with_the_tree() {
        let config = Config::default();
        let bodies = [
            r#"{"candidates":[{"content":{"parts":[{"text":"hi"}]},"finishReason":"STOP"}]}"#,
            r#"{"candidates":[{"content":{"parts":[{"text":""}]},"finishReason":"STOP"}]}"#,
            r#"{"candidates":[{"content":{"parts":[{"text":"x","thought":true}]}}]}"#,
            r#"{"candidates":[{"content":{"parts":[{"text":"x","thought":false}]}}]}"#,
            r#"{"candidates":[{"content":{"parts":[{"functionCall":null}]},"finishReason":"STOP"}]}"#,
            r#"{"candidates":[{"content":{"parts":[{"text":"cut"}]},"finishReason":"MAX_TOKENS"}]}"#,
            r#"{"candidates":[{"content":{"parts":[{"text":"a"}]},"finishReason":"MALFORMED_FUNCTION_CALL"}]}"#,
            r#"{"candidates":[{"content":null,"finishReason":"SAFETY"}]}"#,
            r#"{"candidates":[{"finishReason":null}]}"#,
            r#"{"candidates":[{"content":{"parts":[{"text":"\u0041"}]}}]}"#,
            r#"{"candidates":[],"promptFeedback":{"blockReason":"SAFETY"}}"#,
            r#"{"usageMetadata":{"totalTokenCount":1}}"#,
            r#"{"candidates":[{"content":{"parts":[{"inlineData":{"mimeType":"image/png","data":"AA"}}]},"finishReason":"STOP"}]}"#,
        ];
        for body in bodies {
            assert!(
                serde_json::from_slice::<UnaryPeek<'_>>(body.as_bytes()).is_ok(),
                "{body}"
            );
            assert_eq!(
                unary_needs_retry(body.as_bytes(), &config),
                unary_needs_retry_tree(body.as_bytes(), &config),
                "{body}"
            );
        }
        // What the borrowed reading refuses still gets an answer, from the tree.
        for body in [
            r#"{"candidates":[{"content":{"parts":[{"text":3}]}}]}"#,
            r#"{"candidates":null}"#,
            "<html>",
        ] {
            assert_eq!(
                unary_needs_retry(body.as_bytes(), &config),
                unary_needs_retry_tree(body.as_bytes(), &config),
                "{body}"
            );
        }
        assert_eq!(unary_needs_retry(b"<html>", &config), Some(NOT_JSON));
    }

    #[test]
    fn an_image_only_answer_is_not_retried_as_empty() {
        let image = br#"{"candidates":[{"content":{"parts":[{"inlineData":{"mimeType":"image/png","data":"AA"}}]},"finishReason":"STOP"}]}"#;
        assert_eq!(unary_needs_retry(image, &Config::default()), None);
        let odd = br#"{"candidates":[{"content":{"parts":[{"inlineData":{"data":"AA"},"text":3}]},"finishReason":"STOP"}]}"#;
        assert_eq!(unary_needs_retry(odd, &Config::default()), None);
    }
}
