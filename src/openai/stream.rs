//! Gemini SSE chunks → OpenAI `chat.completion.chunk` events, one upstream event at a time.

use bytes::BytesMut;
use http::StatusCode;
use serde::Serialize;
use serde_json::Value;

use super::response::{
    ChatContext, arguments_of, blocked_message, code_block, error_json, finish_reason, image_of,
    inline_markdown, logprobs_of, result_block, usage_of,
};
use super::types::{FunctionCallDelta, ImageOutput, ToolCallDelta, Usage};
use crate::error::ApiError;
use crate::gemini::{Candidate, FunctionCall, GeminiError, GenerateContentResponse, UsageMetadata};

const DONE: &[u8] = b"data: [DONE]\n\n";

/// Borrowed readings of the common stream chunk, for [`StreamTranslator::push_fast`].
mod fast {
    use serde::Deserialize;
    use serde_json::value::RawValue;

    use crate::gemini::peek::{Only, Parts, borrowed_str, present};

    /// Fields the full reading types strictly are read (or seen) here too, so a malformed one
    /// sends the chunk to the full reading, which answers it with an upstream error.
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub(super) struct Chunk<'a> {
        #[serde(borrow)]
        pub(super) candidates: Only<Candidate<'a>>,
        #[serde(default, borrow)]
        pub(super) usage_metadata: Option<&'a RawValue>,
        #[serde(default, deserialize_with = "present")]
        pub(super) prompt_feedback: bool,
        #[serde(default, deserialize_with = "present")]
        pub(super) error: bool,
        // Type checks only: a string (or null), as the full reading wants.
        #[serde(
            default,
            borrow,
            rename = "modelVersion",
            deserialize_with = "borrowed_str"
        )]
        _model_version: Option<std::borrow::Cow<'a, str>>,
        #[serde(
            default,
            borrow,
            rename = "responseId",
            deserialize_with = "borrowed_str"
        )]
        _response_id: Option<std::borrow::Cow<'a, str>>,
    }

    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub(super) struct Candidate<'a> {
        #[serde(default, borrow)]
        pub(super) content: Option<Content<'a>>,
        #[serde(default, deserialize_with = "present")]
        pub(super) finish_reason: bool,
        #[serde(default)]
        pub(super) index: Option<i32>,
        #[serde(default, deserialize_with = "present")]
        pub(super) logprobs_result: bool,
        /// Safety ratings, grounding, a finish message or token counts: rare on a plain text
        /// chunk and strictly typed by the full reading, which takes such a chunk.
        #[serde(default, alias = "groundingMetadata", alias = "finishMessage")]
        #[serde(
            alias = "tokenCount",
            alias = "avgLogprobs",
            deserialize_with = "present"
        )]
        pub(super) safety_ratings: bool,
    }

    #[derive(Deserialize)]
    pub(super) struct Content<'a> {
        #[serde(default, borrow)]
        pub(super) parts: Parts<'a>,
    }
}

// === StreamTranslator ===

/// Translates a Gemini stream into OpenAI chunk events, chunk by chunk.
///
/// Feed it the data of each upstream SSE event with [`push`](StreamTranslator::push) and call
/// [`finish`](StreamTranslator::finish) at the end of the upstream body; each call appends
/// ready-to-send `data: …\n\n` events to `out`. It keeps per choice only what a later chunk
/// needs: whether the role was sent, whether a function call was seen (so a final `STOP`
/// becomes `tool_calls`) and calls still waiting for a thought signature that may arrive on the
/// next chunk. Exactly one chunk per choice carries a `finish_reason`; a stream that ends
/// without one, an upstream error event, or a malformed call ends with an OpenAI error event
/// instead of `[DONE]`.
#[derive(Debug)]
pub struct StreamTranslator {
    cx: ChatContext,
    include_usage: bool,
    choices: Vec<ChoiceState>,
    /// The last `usageMetadata` seen.
    usage: Option<UsageMetadata>,
    done: bool,
    scratch: String,
}

#[derive(Debug, Default)]
struct ChoiceState {
    started: bool,
    finished: bool,
    saw_call: bool,
    calls: u32,
    at_line_start: bool,
    /// Calls that arrived without a thought signature: sent with the next chunk, which may
    /// carry their signature on an empty text part.
    pending: Vec<FunctionCall>,
}

#[derive(Serialize)]
struct ChunkOut<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: &'a [ChoiceOut<'a>],
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Usage>,
}

#[derive(Serialize)]
struct ChoiceOut<'a> {
    index: u32,
    delta: DeltaOut<'a>,
    finish_reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    logprobs: Option<Value>,
}

#[derive(Serialize, Default)]
struct DeltaOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning_content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    refusal: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tool_calls: Vec<ToolCallDelta>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    images: Vec<ImageOutput>,
}

impl StreamTranslator {
    /// A translator for one stream; `include_usage` adds the final `choices: []` usage chunk.
    pub fn new(cx: ChatContext, include_usage: bool) -> Self {
        let choices = (0..cx.n).map(|_| ChoiceState::new()).collect();
        Self {
            cx,
            include_usage,
            choices,
            usage: None,
            done: false,
            scratch: String::new(),
        }
    }

    /// Whether the stream is over (finished, or ended by an error event).
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Translates the data of one upstream SSE event.
    pub fn push(&mut self, data: &[u8], out: &mut BytesMut) {
        if self.done || data.trim_ascii().is_empty() {
            return;
        }
        if self.push_fast(data, out) {
            return;
        }
        let chunk: GenerateContentResponse = match serde_json::from_slice(data) {
            Ok(c) => c,
            Err(_) => {
                let err = GeminiError::parse(data);
                return self.fail_with_upstream(err, out);
            }
        };
        if chunk.extra.contains_key("error") {
            return self.fail_with_upstream(GeminiError::parse(data), out);
        }
        self.push_chunk(&chunk, out);
    }

    /// The common chunk (one candidate, text or thought parts, perhaps usage, no finish
    /// reason) read into borrowed structs and translated without building the typed response:
    /// what [`push_chunk`](Self::push_chunk) would write, for a fraction of the allocations.
    /// `false` (and nothing done) for any other chunk.
    fn push_fast(&mut self, data: &[u8], out: &mut BytesMut) -> bool {
        let Ok(chunk) = serde_json::from_slice::<fast::Chunk<'_>>(data) else {
            return false;
        };
        let c = &chunk.candidates.0;
        if chunk.error
            || chunk.prompt_feedback
            || c.finish_reason
            || c.logprobs_result
            || c.safety_ratings
        {
            return false;
        }
        let parts = c.content.as_ref().map(|c| &c.parts);
        if parts.is_some_and(|p| p.other) {
            return false;
        }
        let index = c.index.and_then(|i| u32::try_from(i).ok()).unwrap_or(0);
        if self
            .choices
            .get(index as usize)
            .is_some_and(|s| !s.pending.is_empty())
        {
            // Calls waiting for a signature: the full reading decides.
            return false;
        }
        if let Some(u) = chunk.usage_metadata {
            // Read now, as the full reading does: malformed usage is an upstream error, not
            // a stream that reports zero tokens at its end.
            match serde_json::from_str::<UsageMetadata>(u.get()) {
                Ok(read) => self.usage = Some(read),
                Err(_) => return false,
            }
        }
        let state = self.state(index);
        if state.finished {
            return true;
        }
        let (text, reasoning) = parts.map_or(("", ""), |p| (&*p.text, &*p.reasoning));
        if !text.is_empty() {
            state.at_line_start = text.ends_with('\n');
        }
        if text.is_empty() && reasoning.is_empty() {
            return true;
        }
        let role = (!std::mem::replace(&mut state.started, true)).then_some("assistant");
        let delta = DeltaOut {
            role,
            content: (!text.is_empty()).then_some(text),
            reasoning_content: (!reasoning.is_empty()).then_some(reasoning),
            refusal: None,
            tool_calls: Vec::new(),
            images: Vec::new(),
        };
        self.write(index, delta, None, None, out);
        true
    }

    /// Translates one parsed upstream chunk.
    pub fn push_chunk(&mut self, chunk: &GenerateContentResponse, out: &mut BytesMut) {
        if self.done {
            return;
        }
        if let Some(u) = &chunk.usage_metadata {
            self.usage = Some(u.clone());
        }
        if chunk.candidates.is_empty() {
            if let Some(reason) = chunk.block_reason() {
                let message = blocked_message(reason.as_str());
                for index in 0..self.cx.n {
                    let state = self.state(index);
                    if state.finished {
                        continue;
                    }
                    state.finished = true;
                    let role =
                        (!std::mem::replace(&mut state.started, true)).then_some("assistant");
                    let delta = DeltaOut {
                        role,
                        refusal: Some(message.clone()),
                        ..DeltaOut::default()
                    };
                    self.write(index, delta, Some("content_filter"), None, out);
                }
            }
            return;
        }
        for (pos, cand) in chunk.candidates.iter().enumerate() {
            let index = cand
                .index
                .and_then(|i| u32::try_from(i).ok())
                .unwrap_or(pos as u32);
            self.candidate(index, cand, out);
            if self.done {
                return;
            }
        }
    }

    fn state(&mut self, index: u32) -> &mut ChoiceState {
        self.ensure(index);
        &mut self.choices[index as usize]
    }

    fn ensure(&mut self, index: u32) {
        let i = index as usize;
        if self.choices.len() <= i {
            self.choices.resize_with(i + 1, ChoiceState::new);
        }
    }

    fn candidate(&mut self, index: u32, cand: &Candidate, out: &mut BytesMut) {
        let parallel = self.cx.parallel_tool_calls;
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        let mut reasoning = String::new();
        let mut calls: Vec<(FunctionCall, Option<String>)> = Vec::new();
        let mut images = Vec::new();
        self.ensure(index);
        let cx = &self.cx;
        let state = &mut self.choices[index as usize];
        if state.finished {
            self.scratch = scratch;
            return;
        }
        // A signature on an empty part belongs to the last call still waiting for one.
        let mut pending: Vec<(FunctionCall, Option<String>)> =
            state.pending.drain(..).map(|c| (c, None)).collect();
        for part in cand.parts() {
            if let Some(call) = &part.function_call {
                state.saw_call = true;
                if part.thought_signature.is_some() {
                    // Earlier unsigned calls go first, in order.
                    calls.append(&mut pending);
                    calls.push((call.clone(), part.thought_signature.clone()));
                } else {
                    pending.push((call.clone(), None));
                }
                continue;
            }
            if let Some(sig) = &part.thought_signature
                && part.text.as_deref().unwrap_or_default().is_empty()
                && let Some(last) = pending.iter_mut().rev().find(|c| c.1.is_none())
            {
                last.1 = Some(sig.clone());
            }
            if let Some(image) = image_of(part) {
                images.push(image);
                continue;
            }
            if let Some(text) = &part.text {
                if part.is_thought() {
                    reasoning.push_str(text);
                } else {
                    scratch.push_str(text);
                }
            } else if let Some(code) = &part.executable_code {
                let at = state.at_line_start && scratch.is_empty() || scratch.ends_with('\n');
                scratch.push_str(&code_block(code, at));
            } else if let Some(result) = &part.code_execution_result {
                let at = state.at_line_start && scratch.is_empty() || scratch.ends_with('\n');
                scratch.push_str(&result_block(result, at));
            } else if let Some(md) = inline_markdown(part) {
                scratch.push_str(&md);
            }
        }
        let finishing = cand.finish_reason.is_some();
        // Unsigned calls wait for one more chunk, unless this one ends the answer or already
        // brought their signature.
        for (call, sig) in pending {
            if finishing || sig.is_some() {
                calls.push((call, sig));
            } else {
                state.pending.push(call);
            }
        }
        if !scratch.is_empty() {
            state.at_line_start = scratch.ends_with('\n');
        }
        let mut tool_calls = Vec::new();
        for (call, sig) in calls {
            if !parallel && state.calls >= 1 {
                continue;
            }
            let id = cx.tool_call_id(sig.as_deref());
            tool_calls.push(ToolCallDelta {
                index: state.calls,
                id: Some(id),
                kind: Some("function".to_owned()),
                function: FunctionCallDelta {
                    name: Some(call.name.clone()),
                    arguments: Some(arguments_of(&call)),
                },
                extra_content: sig.map(|s| serde_json::json!({"google": {"thought_signature": s}})),
            });
            state.calls += 1;
        }
        let finish = match cand.finish_reason.as_ref() {
            Some(r) => match finish_reason(Some(r), state.saw_call) {
                Ok(f) => Some(f),
                Err(e) => {
                    // Send what arrived, then the error instead of a clean stop.
                    let role =
                        (!std::mem::replace(&mut state.started, true)).then_some("assistant");
                    let delta = DeltaOut {
                        role,
                        content: (!scratch.is_empty()).then_some(scratch.as_str()),
                        reasoning_content: (!reasoning.is_empty()).then_some(reasoning.as_str()),
                        refusal: None,
                        tool_calls,
                        images,
                    };
                    if !delta.is_empty() {
                        self.write(index, delta, None, None, out);
                    }
                    self.scratch = scratch;
                    return self.fail(&e, None, out);
                }
            },
            None => None,
        };
        if finish.is_some() {
            state.finished = true;
        }
        let delta_empty = scratch.is_empty()
            && reasoning.is_empty()
            && tool_calls.is_empty()
            && images.is_empty();
        if delta_empty && finish.is_none() {
            self.scratch = scratch;
            return;
        }
        let role = (!std::mem::replace(&mut state.started, true)).then_some("assistant");
        let delta = DeltaOut {
            role,
            content: (!scratch.is_empty()).then_some(scratch.as_str()),
            reasoning_content: (!reasoning.is_empty()).then_some(reasoning.as_str()),
            refusal: None,
            tool_calls,
            images,
        };
        let logprobs = logprobs_of(cand.logprobs_result.as_ref());
        self.write(index, delta, finish, logprobs, out);
        self.scratch = scratch;
    }

    fn write(
        &self,
        index: u32,
        delta: DeltaOut<'_>,
        finish: Option<&'static str>,
        logprobs: Option<Value>,
        out: &mut BytesMut,
    ) {
        let chunk = ChunkOut {
            id: &self.cx.id,
            object: "chat.completion.chunk",
            created: self.cx.created,
            model: &self.cx.model,
            choices: &[ChoiceOut {
                index,
                delta,
                finish_reason: finish,
                logprobs,
            }],
            usage: None,
        };
        write_event(&chunk, out);
    }

    /// Ends the stream at the end of the upstream body: calls still waiting are sent, then
    /// the usage chunk (with `include_usage`) and `[DONE]`; or, when the answer was cut
    /// before its finish reason, an error event.
    pub fn finish(&mut self, out: &mut BytesMut) {
        if self.done {
            return;
        }
        let any_finished = self.choices.iter().any(|c| c.finished);
        let cut = !any_finished || self.choices.iter().any(|c| c.started && !c.finished);
        if cut {
            let e = ApiError::bad_gateway(
                "the upstream stream ended before the answer was complete (no finish reason)",
            );
            return self.fail(&e, None, out);
        }
        if self.include_usage {
            let usage = self.usage.as_ref().map(usage_of).unwrap_or_default();
            let chunk = ChunkOut {
                id: &self.cx.id,
                object: "chat.completion.chunk",
                created: self.cx.created,
                model: &self.cx.model,
                choices: &[],
                usage: Some(usage),
            };
            write_event(&chunk, out);
        }
        out.extend_from_slice(DONE);
        self.done = true;
    }

    /// Ends the stream with an OpenAI error event (e.g. the upstream body failed).
    pub fn fail(&mut self, error: &ApiError, code: Option<&str>, out: &mut BytesMut) {
        if self.done {
            return;
        }
        let v = error_json(error.status(), error.message(), code);
        write_event(&v, out);
        self.done = true;
    }

    fn fail_with_upstream(&mut self, err: Option<GeminiError>, out: &mut BytesMut) {
        let (e, code) = match err {
            Some(g) => {
                let status = StatusCode::from_u16(g.code())
                    .ok()
                    .filter(|s| s.is_client_error() || s.is_server_error())
                    .unwrap_or(StatusCode::BAD_GATEWAY);
                let message = crate::secret::scrub(g.message()).into_owned();
                let code = if g.status().is_empty() {
                    None
                } else {
                    Some(g.status().to_ascii_lowercase())
                };
                (ApiError::new(status, message), code)
            }
            None => (
                ApiError::bad_gateway("the upstream sent an event that is not a Gemini response"),
                None,
            ),
        };
        self.fail(&e, code.as_deref(), out);
    }
}

impl ChoiceState {
    fn new() -> Self {
        Self {
            at_line_start: true,
            ..Self::default()
        }
    }
}

impl DeltaOut<'_> {
    fn is_empty(&self) -> bool {
        self.role.is_none()
            && self.content.is_none()
            && self.reasoning_content.is_none()
            && self.refusal.is_none()
            && self.tool_calls.is_empty()
            && self.images.is_empty()
    }
}

fn write_event<T: Serialize>(v: &T, out: &mut BytesMut) {
    out.extend_from_slice(b"data: ");
    let mut w = BytesMutWriter(out);
    if serde_json::to_writer(&mut w, v).is_err() {
        out.extend_from_slice(b"{}");
    }
    out.extend_from_slice(b"\n\n");
}

struct BytesMutWriter<'a>(&'a mut BytesMut);

impl std::io::Write for BytesMutWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

// === EventTranslator ===

impl crate::translate::stream::EventTranslator for StreamTranslator {
    fn translate(&mut self, data: &[u8], out: &mut BytesMut) {
        self.push(data, out);
    }

    fn end(&mut self, out: &mut BytesMut) {
        self.finish(out);
    }

    fn abort(&mut self, error: &ApiError, out: &mut BytesMut) {
        self.fail(error, None, out);
    }

    fn done(&self) -> bool {
        self.is_done()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use bytes::BytesMut;
    use serde_json::{Value, json};

    use super::StreamTranslator;
    use crate::gemini::GenerateContentResponse;
    use crate::openai::ChatContext;

    fn text(parts: Value) -> Value {
        json!({"candidates": [{"content": {"role": "model", "parts": parts}}], "modelVersion": "gemini-2.5-flash"})
    }

    /// Every sequence through `push` (which takes the fast reading when it can) and through
    /// `push_chunk` on the fully read chunk gives the same bytes.
    #[test]
    fn the_fast_reading_writes_what_the_full_one_does() {
        let usage =
            json!({"promptTokenCount": 5, "candidatesTokenCount": 7, "totalTokenCount": 12});
        let mut with_usage = text(json!([{"text": "Hello"}]));
        with_usage["usageMetadata"] = usage.clone();
        let mut last = json!({"candidates": [{"content": {"role": "model", "parts": [{"text": "."}]}, "finishReason": "STOP"}]});
        last["usageMetadata"] =
            json!({"promptTokenCount": 5, "candidatesTokenCount": 9, "totalTokenCount": 14});
        let call = json!({"candidates": [{"content": {"role": "model", "parts": [{"functionCall": {"name": "f", "args": {"a": 1}}}]}}]});
        let mut second = text(json!([{"text": "two"}]));
        second["candidates"][0]["index"] = json!(1);
        let sequences = vec![
            vec![
                text(json!([{"text": "Hel"}])),
                text(json!([{"text": "lo\n"}])),
                last.clone(),
            ],
            vec![with_usage.clone(), with_usage.clone(), last.clone()],
            vec![
                text(json!([{"text": "esc \"aped\" \u{e9}\n"}, {"text": " two"}])),
                last.clone(),
            ],
            vec![
                text(
                    json!([{"text": "thinking", "thought": true}, {"text": "answer", "thoughtSignature": "c2ln"}]),
                ),
                last.clone(),
            ],
            vec![text(json!([{"text": ""}])), text(json!([])), last.clone()],
            vec![
                call.clone(),
                text(json!([{"text": "", "thoughtSignature": "c2ln"}])),
                last.clone(),
            ],
            vec![
                text(json!([{"inlineData": {"mimeType": "image/png", "data": "AAAA"}}])),
                last.clone(),
            ],
            vec![text(json!([{"text": "a"}])), second, last.clone()],
            vec![with_usage, text(json!([{"text": "cut"}]))],
        ];
        for chunks in &sequences {
            for include_usage in [false, true] {
                let mut cx = ChatContext::new("gemini-2.5-flash");
                cx.n = 2;
                let mut fast = StreamTranslator::new(cx.clone(), include_usage);
                let mut full = StreamTranslator::new(cx, include_usage);
                let (mut a, mut b) = (BytesMut::new(), BytesMut::new());
                for c in chunks {
                    let bytes = serde_json::to_vec(c).unwrap();
                    fast.push(&bytes, &mut a);
                    let parsed: GenerateContentResponse = serde_json::from_slice(&bytes).unwrap();
                    full.push_chunk(&parsed, &mut b);
                }
                fast.finish(&mut a);
                full.finish(&mut b);
                assert_eq!(without_call_ids(&a), without_call_ids(&b), "{chunks:?}");
            }
        }
    }

    /// The bytes as text with each tool call id's unique hex part blanked out.
    fn without_call_ids(bytes: &[u8]) -> String {
        let text = std::str::from_utf8(bytes).unwrap();
        let mut out = String::new();
        let mut rest = text;
        while let Some(at) = rest.find("\"call_") {
            out.push_str(&rest[..at + 6]);
            rest = rest[at + 6..].trim_start_matches(|c: char| c.is_ascii_hexdigit());
        }
        out.push_str(rest);
        out
    }

    /// A chunk the full reading refuses (a malformed usage, safety or other typed field) ends
    /// the stream with an upstream error on either reading, never with zero usage.
    #[test]
    fn malformed_typed_fields_are_upstream_errors_on_the_fast_reading_too() {
        let bad = [
            ("usageMetadata", json!({"promptTokenCount": "five"})),
            ("usageMetadata", json!({"candidatesTokenCount": -1})),
            ("usageMetadata", json!({"promptTokensDetails": 3})),
            ("usageMetadata", json!(7)),
            ("modelVersion", json!(12)),
            ("responseId", json!({"a": 1})),
        ];
        let bad_candidate = [
            ("safetyRatings", json!("HARM")),
            ("safetyRatings", json!([{"category": 1}])),
            ("groundingMetadata", json!(5)),
            ("tokenCount", json!("x")),
            ("avgLogprobs", json!("x")),
            ("finishMessage", json!(3)),
        ];
        let mut chunks = Vec::new();
        for (field, value) in bad {
            let mut c = text(json!([{"text": "hi"}]));
            c[field] = value;
            chunks.push(c);
        }
        for (field, value) in bad_candidate {
            let mut c = text(json!([{"text": "hi"}]));
            c["candidates"][0][field] = value;
            chunks.push(c);
        }
        for chunk in chunks {
            let bytes = serde_json::to_vec(&chunk).unwrap();
            assert!(
                serde_json::from_slice::<GenerateContentResponse>(&bytes).is_err(),
                "the full reading refuses {chunk}"
            );
            for include_usage in [false, true] {
                let mut t = StreamTranslator::new(ChatContext::new("m"), include_usage);
                let mut out = BytesMut::new();
                t.push(
                    &serde_json::to_vec(&text(json!([{"text": "a"}]))).unwrap(),
                    &mut out,
                );
                t.push(&bytes, &mut out);
                t.finish(&mut out);
                let out = String::from_utf8(out.to_vec()).unwrap();
                assert!(t.is_done());
                assert!(out.contains("\"error\""), "{chunk}: {out}");
                assert!(!out.contains("[DONE]"), "{chunk}: {out}");
                assert!(!out.contains("\"usage\""), "{chunk}: {out}");
            }
        }
    }

    #[test]
    fn plain_text_chunks_take_the_fast_reading_and_others_do_not() {
        let mut t = StreamTranslator::new(ChatContext::new("m"), false);
        let mut out = BytesMut::new();
        let plain = serde_json::to_vec(&text(json!([{"text": "hi"}]))).unwrap();
        assert!(t.push_fast(&plain, &mut out));
        assert!(!out.is_empty());
        for other in [
            text(json!([{"functionCall": {"name": "f", "args": {}}}])),
            json!({"candidates": [{"content": {"parts": [{"text": "x"}]}, "finishReason": "STOP"}]}),
            json!({"candidates": []}),
            json!({"error": {"code": 500}}),
            json!({"candidates": [{"content": {"parts": [{"text": "x"}]}}, {"content": {"parts": []}}]}),
        ] {
            let bytes = serde_json::to_vec(&other).unwrap();
            let mut out = BytesMut::new();
            assert!(!t.push_fast(&bytes, &mut out), "{other}");
            assert!(out.is_empty());
        }
    }
}
