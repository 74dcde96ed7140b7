//! What the relay knows of the answer so far: the text sent, usage, and the held seam.

use serde_json::{Map, Value, json};

use super::output::Output;
use crate::stream_resume::layer::Config;
use crate::stream_resume::seam::overlap;

/// An attempt's `usageMetadata`: as it came (its JSON, copied into a buffer reused from event
/// to event: a slice of the event would keep the whole upstream frame), or already read.
pub(super) enum Usage {
    Raw(Vec<u8>),
    Map(Map<String, Value>),
}

impl Usage {
    /// The usage object; `None` when the raw JSON is not one.
    fn into_map(self) -> Option<Map<String, Value>> {
        match self {
            Usage::Raw(raw) => serde_json::from_slice(&raw).ok(),
            Usage::Map(map) => Some(map),
        }
    }
}

/// What the relay knows about the answer so far.
#[derive(Default)]
pub(super) struct Answer {
    /// Visible (non-thought) text sent to the client.
    pub(super) sent: Sent,
    /// Usage of finished (interrupted) attempts, summed.
    pub(super) usage_total: Option<Map<String, Value>>,
    /// The last usage of the current attempt.
    pub(super) attempt_usage: Option<Usage>,
    pub(super) function_called: bool,
    /// A generated image (or other inline data) went out: a continuation would make it again.
    pub(super) media: bool,
    pub(super) resumed: bool,
    /// Continuation text held until the seam is de-duplicated.
    pub(super) seam: Option<String>,
    pub(super) progress: bool,
}

/// The visible text sent to the client, kept for a continuation request up to a cap, so a
/// long stream is relayed in bounded memory.
#[derive(Default)]
pub(super) struct Sent {
    text: String,
    /// Bytes sent in all, kept or not.
    total: usize,
    cap: usize,
    /// The text outgrew the cap and was dropped: this answer can no longer be resumed.
    pub(super) dropped: bool,
}

impl Sent {
    pub(super) fn new(cap: usize) -> Self {
        Sent {
            cap,
            ..Sent::default()
        }
    }

    pub(super) fn push_str(&mut self, s: &str) {
        self.total += s.len();
        if self.dropped {
            return;
        }
        if self.text.len() + s.len() > self.cap {
            self.dropped = true;
            self.text = String::new();
            return;
        }
        self.text.push_str(s);
    }

    pub(super) fn is_empty(&self) -> bool {
        self.total == 0
    }

    pub(super) fn len(&self) -> usize {
        self.total
    }

    pub(super) fn as_str(&self) -> &str {
        &self.text
    }
}

/// Sends continuation text still held for the seam (the attempt broke before the seam window
/// filled): it is real progress.
pub(super) fn flush_seam(out: &mut Output, answer: &mut Answer, config: &Config) {
    let Some(held) = answer.seam.take().filter(|h| !h.is_empty()) else {
        return;
    };
    let cut = overlap(answer.sent.as_str(), &held, config.min_overlap);
    let text = &held[cut..];
    if text.is_empty() {
        return;
    }
    answer.sent.push_str(text);
    answer.progress = true;
    let chunk = json!({ "candidates": [{ "content": { "parts": [{ "text": text }], "role": "model" }, "index": 0 }] });
    out.send(&serde_json::to_vec(&chunk).unwrap_or_default());
}

pub(super) fn fold_usage(answer: &mut Answer) {
    if let Some(u) = answer.attempt_usage.take().and_then(Usage::into_map) {
        answer.usage_total = Some(match answer.usage_total.take() {
            None => u,
            Some(total) => add_usage(total, &u),
        });
    }
}

/// Adds every numeric count of `b` into `a` (prompt, candidates, thoughts, cached, tool use,
/// total), keeping `total = prompt + candidates + thoughts + toolUsePrompt` when both held it.
fn add_usage(mut a: Map<String, Value>, b: &Map<String, Value>) -> Map<String, Value> {
    for (k, v) in b {
        if let Some(n) = v.as_u64() {
            let sum = a.get(k).and_then(Value::as_u64).unwrap_or(0) + n;
            a.insert(k.clone(), json!(sum));
        } else if !a.contains_key(k) {
            a.insert(k.clone(), v.clone());
        }
    }
    a
}
