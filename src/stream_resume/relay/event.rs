//! One event: read it (cheaply when it is a common one), rewrite it when needed, forward it.

use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::answer::{Answer, Usage, fold_usage};
use super::attempt::{Break, Fault, Interruption};
use super::output::Output;
use crate::gemini::peek::{self, First, present};
use crate::sse::RawSpan;
use crate::stream_resume::layer::Config;
use crate::stream_resume::seam::overlap;

pub(super) enum Outcome {
    Finished,
    Interrupted(Interruption),
    /// Not an interruption: the stream ends with an error, never resumed.
    Fault(Fault),
}

impl From<Break> for Outcome {
    fn from(b: Break) -> Self {
        match b {
            Break::Interrupted(why) => Outcome::Interrupted(why),
            Break::Fault(f) => Outcome::Fault(f),
        }
    }
}

/// Just what the relay needs of a common event, read without building a JSON tree: anything
/// this does not describe (an error, a finishReason, a blocked prompt, odd types) is handled
/// by the full reading in [`handle_event`].
///
/// Reading one allocates nothing: only the first candidate is kept, its parts are folded into
/// a [`peek::Parts`] as they are read, and the usage stays raw JSON until something sums it.
#[derive(Deserialize)]
struct Peek<'a> {
    #[serde(default, borrow)]
    candidates: First<PeekCandidate<'a>>,
    #[serde(default, deserialize_with = "present")]
    error: bool,
    #[serde(rename = "usageMetadata", default, borrow)]
    usage: Option<&'a serde_json::value::RawValue>,
}

#[derive(Deserialize)]
struct PeekCandidate<'a> {
    #[serde(default, borrow)]
    content: Option<PeekContent<'a>>,
    #[serde(rename = "finishReason", default, deserialize_with = "present")]
    finish_reason: bool,
}

#[derive(Deserialize)]
pub(super) struct PeekContent<'a> {
    #[serde(default, borrow)]
    pub(super) parts: peek::Parts<'a>,
}

/// Relays an event of a healthy, never-resumed stream that neither ends nor breaks it, as it
/// came; `false` when the event needs the full reading.
fn pass_through(
    data: &Bytes,
    raw: &mut Option<RawSpan>,
    out: &mut Output,
    answer: &mut Answer,
) -> bool {
    if answer.resumed || answer.seam.is_some() {
        return false;
    }
    let Ok(peek) = serde_json::from_slice::<Peek<'_>>(data) else {
        return false;
    };
    let Some(candidate) = peek.candidates.first() else {
        return false;
    };
    if peek.error || candidate.finish_reason {
        return false;
    }
    // Only an object counts as usage (the full reading ignores anything else too).
    if let Some(u) = peek.usage.filter(|u| u.get().starts_with('{')) {
        let raw = u.get().as_bytes();
        match &mut answer.attempt_usage {
            Some(Usage::Raw(buf)) => {
                buf.clear();
                buf.extend_from_slice(raw);
            }
            other => *other = Some(Usage::Raw(raw.to_vec())),
        }
    }
    if let Some(parts) = candidate.content.as_ref().map(|c| &c.parts) {
        answer.function_called |= parts.function_call;
        answer.media |= parts.media;
        answer.sent.push_str(&parts.text);
        answer.progress |= !parts.text.is_empty();
        if parts.count > 0 {
            out.send_original(data, raw.take());
        }
    }
    true
}

pub(super) enum Step {
    Continue,
    Done(Outcome),
}

/// A generated image (or other inline or file data): an answer that holds one is not empty.
fn is_media(part: &Value) -> bool {
    part.get("inlineData").is_some() || part.get("fileData").is_some()
}

fn is_thought(part: &Value) -> bool {
    part.get("thought").and_then(Value::as_bool) == Some(true)
}

pub(super) fn visible_text(parts: &[Value]) -> String {
    parts
        .iter()
        .filter(|p| !is_thought(p))
        .filter_map(|p| p.get("text").and_then(Value::as_str))
        .collect()
}

/// Handles one event: classifies it, rewrites it when needed, and forwards it.
pub(super) fn handle_event(
    data: Bytes,
    mut raw: Option<RawSpan>,
    out: &mut Output,
    answer: &mut Answer,
    config: &Config,
) -> Step {
    if pass_through(&data, &mut raw, out, answer) {
        return Step::Continue;
    }
    let Ok(Value::Object(mut event)) = serde_json::from_slice::<Value>(&data) else {
        return Step::Done(Outcome::Fault(Fault::NotJson));
    };
    if event.contains_key("error") {
        tracing::warn!(error = %crate::secret::scrub(&event["error"].to_string()), "error event inside the stream");
        return Step::Done(Outcome::Interrupted(Interruption::ErrorEvent));
    }
    let mut modified = answer.resumed;
    if let Some(Value::Object(u)) = event.remove("usageMetadata") {
        answer.attempt_usage = Some(Usage::Map(u));
    }
    let candidate = event
        .get_mut("candidates")
        .and_then(Value::as_array_mut)
        .and_then(|c| c.first_mut())
        .and_then(Value::as_object_mut);
    let Some(candidate) = candidate else {
        // No candidate: a blocked prompt (final) or a usage-only chunk.
        let blocked = event
            .get("promptFeedback")
            .and_then(|f| f.get("blockReason"))
            .is_some();
        if blocked {
            let original = (!modified).then_some((&data, raw));
            return finish(event, original, out, answer);
        }
        if answer.attempt_usage.is_some() && !answer.resumed {
            // Forward as it came (usage is re-added on the final chunk otherwise).
            out.send_original(&data, raw);
            return Step::Continue;
        }
        return Step::Continue;
    };

    let mut parts: Vec<Value> = candidate
        .get_mut("content")
        .and_then(|c| c.get_mut("parts"))
        .and_then(Value::as_array_mut)
        .map(std::mem::take)
        .unwrap_or_default();
    if answer.resumed && config.swallow_thoughts_after_retry {
        parts.retain(|p| !is_thought(p));
    }
    if parts.iter().any(|p| p.get("functionCall").is_some()) {
        answer.function_called = true;
    }
    let media = parts.iter().any(is_media);
    let mut visible = visible_text(&parts);
    let finish_reason = candidate
        .get("finishReason")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let retryable = finish_reason.as_deref().is_some_and(|f| {
        config.retryable_finish_reasons.contains(f)
            || (f == "STOP"
                && config.empty_stop_is_retryable
                && answer.sent.is_empty()
                && visible.is_empty()
                && !answer.function_called
                && !answer.media
                && !media)
    });
    if retryable {
        candidate.remove("finishReason");
        modified = true;
    }

    // After a resume, hold the continuation's first text until the repeated tail can be cut.
    if let Some(seam) = answer.seam.as_mut() {
        seam.push_str(&visible);
        let other_parts = parts
            .iter()
            .any(|p| p.get("text").is_none() || is_thought(p));
        if seam.len() < config.seam_window && finish_reason.is_none() && !other_parts {
            return Step::Continue;
        }
        let held = answer.seam.take().unwrap_or_default();
        let cut = overlap(answer.sent.as_str(), &held, config.min_overlap);
        if cut > 0 {
            tracing::debug!(chars = cut, "dropped the repeated tail at the seam");
        }
        visible = held[cut..].to_owned();
        parts.retain(|p| p.get("text").is_none() || is_thought(p));
        if !visible.is_empty() {
            parts.insert(0, json!({ "text": visible }));
        }
        modified = true;
    }

    let has_content = !parts.is_empty();
    if let Some(content) = candidate.get_mut("content").and_then(Value::as_object_mut) {
        content.insert("parts".into(), Value::Array(parts));
    }
    answer.sent.push_str(&visible);
    answer.media |= media;
    if !visible.is_empty() {
        answer.progress = true;
    }

    if finish_reason.is_some() && !retryable {
        let original = (!modified).then_some((&data, raw));
        return finish(event, original, out, answer);
    }
    if has_content {
        if modified {
            out.send(&serde_json::to_vec(&event).unwrap_or_default());
        } else {
            out.send_original(&data, raw);
        }
    }
    if retryable {
        return Step::Done(Outcome::Interrupted(Interruption::Finish(
            finish_reason.unwrap_or_default(),
        )));
    }
    Step::Continue
}

/// Sends the final event with the usage of the whole answer (the event exactly as it came when
/// nothing was resumed).
fn finish(
    mut event: Map<String, Value>,
    original: Option<(&Bytes, Option<RawSpan>)>,
    out: &mut Output,
    answer: &mut Answer,
) -> Step {
    match original {
        Some((data, raw)) => out.send_original(data, raw),
        None => {
            fold_usage(answer);
            if let Some(u) = answer.usage_total.take() {
                event.insert("usageMetadata".into(), Value::Object(u));
            }
            out.send(&serde_json::to_vec(&event).unwrap_or_default());
        }
    }
    Step::Done(Outcome::Finished)
}
