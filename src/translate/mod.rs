//! What the fronts that translate another API into Gemini's (the OpenAI and Anthropic fronts)
//! share: media parts, JSON Schema cleaning, thought-signature carriers, ids and the HTTP
//! plumbing of a translated request. One copy each, so the fronts cannot drift.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::ApiError;
use crate::gemini::{CodeExecutionResult, ExecutableCode, strip_models_prefix};

pub(crate) mod future;
pub(crate) mod http;
pub(crate) mod media;
pub(crate) mod schema;
pub(crate) mod stream;

/// What separates the call id from the thought signature in a tool call id that carries one:
/// `call_<id>__thought__<signature>` (OpenAI), `toolu_<id>__thought__<signature>` (Anthropic).
pub(crate) const THOUGHT_SIGNATURE_SEPARATOR: &str = "__thought__";

/// The placeholder Google documents for function calls in history that Gemini did not produce.
pub(crate) const SKIP_THOUGHT_SIGNATURE: &str = "skip_thought_signature_validator";

/// The thought signature a tool call id carries (`<id>__thought__<sig>`), if any.
pub(crate) fn signature_in_id(id: &str) -> Option<&str> {
    id.split_once(THOUGHT_SIGNATURE_SEPARATOR)
        .map(|(_, sig)| sig)
        .filter(|s| !s.is_empty())
}

/// A fresh tool call id, `{prefix}<hex>`, carrying `signature` when there is one and `carry`
/// is on (`call_<hex>__thought__<signature>`).
pub(crate) fn signed_call_id(prefix: &str, signature: Option<&str>, carry: bool) -> String {
    match signature {
        Some(sig) if carry => format!("{prefix}{}{THOUGHT_SIGNATURE_SEPARATOR}{sig}", unique_hex()),
        _ => format!("{prefix}{}", unique_hex()),
    }
}

/// The error a client should see instead of a clean stop when Gemini ends an answer with a
/// malformed call or response, or refuses a history call that lacks its thought signature;
/// `None` for other finish reasons.
pub(crate) fn unfinished(reason: &crate::gemini::FinishReason) -> Option<ApiError> {
    use crate::gemini::FinishReason;
    if !(reason.is_malformed() || *reason == FinishReason::MissingThoughtSignature) {
        return None;
    }
    Some(ApiError::bad_gateway(format!(
        "Gemini ended the answer with {reason}: {}",
        match reason {
            FinishReason::MissingThoughtSignature => {
                "a tool call in the history lacks its thought signature"
            }
            _ => "the model produced a malformed tool call or response; retry",
        }
    )))
}

/// The token counts of Gemini's refusal of a prompt longer than the model's window ("The input
/// token count (1200000) exceeds the maximum number of tokens allowed (1048576)."): `(tokens,
/// maximum)`. The fronts answer it in the words their clients act on (OpenAI's
/// `context_length_exceeded`, Anthropic's "prompt is too long"), which agents read to compact
/// their history.
pub(crate) fn context_overflow(message: &str) -> Option<(u64, u64)> {
    let lower = message.to_ascii_lowercase();
    if !(lower.contains("input token count") && lower.contains("exceeds")) {
        return None;
    }
    let mut numbers = message
        .split(['(', ')'])
        .skip(1)
        .step_by(2)
        .filter_map(|n| n.trim().parse::<u64>().ok());
    Some((numbers.next()?, numbers.next()?))
}

/// 24 hex digits that differ on every call (a random per-process seed and a counter).
pub(crate) fn unique_hex() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut h = RandomState::new().build_hasher();
    h.write_u64(n);
    format!("{:016x}{:08x}", h.finish(), n as u32)
}

/// Seconds since the Unix epoch.
#[cfg_attr(not(feature = "openai"), allow(dead_code))]
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Validates and returns the model id of a request: without a `models/` prefix, and safe to
/// put in a path.
pub(crate) fn model_id(model: &str) -> Result<&str, ApiError> {
    let id = strip_models_prefix(model.trim());
    if id.is_empty() {
        return Err(ApiError::bad_request(
            "`model` is required (e.g. \"gemini-2.5-flash\")",
        ));
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(ApiError::bad_request(format!(
            "`model` {id:?} is not a valid model id: use letters, digits, '-', '_' and '.'"
        )));
    }
    Ok(id)
}

/// A fenced markdown block for generated code, on its own lines.
pub(crate) fn code_block(code: &ExecutableCode, at_line_start: bool) -> String {
    let lang = code.language.to_ascii_lowercase();
    let lang = if lang == "language_unspecified" {
        ""
    } else {
        &lang
    };
    fence(lang, &code.code, at_line_start)
}

/// A fenced markdown block for a code execution result.
pub(crate) fn result_block(result: &CodeExecutionResult, at_line_start: bool) -> String {
    let output = result.output.as_deref().unwrap_or_default();
    let body = if result.outcome == "OUTCOME_OK" || result.outcome.is_empty() {
        output.to_owned()
    } else {
        format!("{}\n{output}", result.outcome)
    };
    fence("output", &body, at_line_start)
}

fn fence(lang: &str, body: &str, at_line_start: bool) -> String {
    let lead = if at_line_start { "" } else { "\n" };
    let nl = if body.ends_with('\n') { "" } else { "\n" };
    format!("{lead}```{lang}\n{body}{nl}```\n")
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_context_overflow_is_read_from_geminis_message() {
        let m = "The input token count (1200000) exceeds the maximum number of tokens allowed (1048576).";
        assert_eq!(super::context_overflow(m), Some((1_200_000, 1_048_576)));
        assert_eq!(
            super::context_overflow("Request contains an invalid argument."),
            None
        );
        assert_eq!(
            super::context_overflow("The input token count exceeds the maximum"),
            None,
            "no numbers, no claim"
        );
    }
}
