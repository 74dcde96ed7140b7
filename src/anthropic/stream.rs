//! Gemini SSE chunks → Anthropic Messages stream events, one upstream event at a time.

use bytes::BytesMut;
use http::StatusCode;
use serde_json::{Value, json};

use super::response::{
    MessageContext, blocked_message, error_json, input_json, stop_reason, usage_json,
};
use crate::error::ApiError;
use crate::gemini::{FunctionCall, GeminiError, GenerateContentResponse, Part, UsageMetadata};
use crate::translate::{code_block, result_block};

/// The largest piece of a tool's input JSON sent in one `input_json_delta`.
const INPUT_PIECE_BYTES: usize = 128;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Open {
    Text,
    Thinking { signed: bool },
    ToolUse,
}

// === MessageStreamTranslator ===

/// Translates a Gemini stream into Anthropic's stream events, chunk by chunk.
///
/// Feed it the data of each upstream SSE event with [`push`](Self::push) and call
/// [`finish`](Self::finish) at the end of the upstream body; each call appends ready-to-send
/// `event: …\ndata: …\n\n` events to `out`. The sequence is Anthropic's: `message_start`, then
/// per content block `content_block_start`, its deltas (`text_delta`, `thinking_delta`,
/// `signature_delta`, `input_json_delta`) and `content_block_stop` (a `ping` after the first
/// start), then `message_delta` with the stop reason and usage, and `message_stop`. A stream
/// cut before its finish reason, an upstream error event or a malformed call ends with an
/// `error` event instead.
#[derive(Debug)]
pub struct MessageStreamTranslator {
    cx: MessageContext,
    started: bool,
    pinged: bool,
    index: u32,
    open: Option<Open>,
    saw_call: bool,
    calls: u32,
    at_line_start: bool,
    /// Calls that arrived without a thought signature: sent with the next chunk, which may
    /// carry their signature on an empty text part.
    pending: Vec<(FunctionCall, Option<String>)>,
    usage: Option<UsageMetadata>,
    done: bool,
}

impl MessageStreamTranslator {
    /// A translator for one stream.
    pub fn new(cx: MessageContext) -> Self {
        Self {
            cx,
            started: false,
            pinged: false,
            index: 0,
            open: None,
            saw_call: false,
            calls: 0,
            at_line_start: true,
            pending: Vec::new(),
            usage: None,
            done: false,
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
        let chunk: GenerateContentResponse = match serde_json::from_slice(data) {
            Ok(c) => c,
            Err(_) => return self.fail_with_upstream(GeminiError::parse(data), out),
        };
        if chunk.extra.contains_key("error") {
            return self.fail_with_upstream(GeminiError::parse(data), out);
        }
        self.push_chunk(&chunk, out);
    }

    /// Translates one parsed upstream chunk.
    pub fn push_chunk(&mut self, chunk: &GenerateContentResponse, out: &mut BytesMut) {
        if self.done {
            return;
        }
        if let Some(u) = &chunk.usage_metadata {
            self.usage = Some(u.clone());
        }
        self.start(out);
        let Some(cand) = chunk.candidates.first() else {
            if let Some(reason) = chunk.block_reason() {
                let text = blocked_message(reason.as_str());
                self.text(&text, out);
                self.end("refusal", out);
            }
            return;
        };
        // Calls held back from the last chunk: this one may bring their signature.
        let mut pending = std::mem::take(&mut self.pending);
        for part in cand.parts() {
            self.part(part, &mut pending, out);
        }
        let finishing = cand.finish_reason.is_some();
        for (call, sig) in pending {
            if finishing || sig.is_some() {
                self.tool_use(&call, sig.as_deref(), out);
            } else {
                self.pending.push((call, sig));
            }
        }
        if let Some(reason) = &cand.finish_reason {
            match stop_reason(Some(reason), self.saw_call) {
                Ok(stop) => self.end(stop, out),
                Err(e) => self.fail(&e, out),
            }
        }
    }

    fn part(
        &mut self,
        part: &Part,
        pending: &mut Vec<(FunctionCall, Option<String>)>,
        out: &mut BytesMut,
    ) {
        let sig = part.thought_signature.as_deref();
        if let Some(call) = &part.function_call {
            self.saw_call = true;
            if let Some(s) = sig {
                self.sign_thinking(s, out);
                // Earlier unsigned calls go first, in order.
                for (c, s) in pending.drain(..) {
                    self.tool_use(&c, s.as_deref(), out);
                }
                self.tool_use(call, Some(s), out);
            } else {
                pending.push((call.clone(), None));
            }
            return;
        }
        // Content after unsigned calls: the calls came first in the answer, so they go out
        // first (as a whole answer orders them), whether or not a signature follows.
        let content = part.is_thought()
            || part.text.as_deref().is_some_and(|t| !t.is_empty())
            || part.executable_code.is_some()
            || part.code_execution_result.is_some();
        if content {
            for (c, s) in pending.drain(..) {
                self.tool_use(&c, s.as_deref(), out);
            }
        }
        if part.is_thought() {
            let text = part.text.as_deref().unwrap_or_default();
            if !matches!(self.open, Some(Open::Thinking { .. })) {
                self.open_block(
                    json!({"type": "thinking", "thinking": "", "signature": ""}),
                    Open::Thinking { signed: false },
                    out,
                );
            }
            if !text.is_empty() {
                self.delta(json!({"type": "thinking_delta", "thinking": text}), out);
            }
            if let Some(s) = sig {
                self.sign_thinking(s, out);
            }
            return;
        }
        if let Some(s) = sig {
            if matches!(self.open, Some(Open::Thinking { signed: false })) {
                self.sign_thinking(s, out);
            } else if part.text.as_deref().unwrap_or_default().is_empty()
                && let Some(last) = pending.iter_mut().rev().find(|c| c.1.is_none())
            {
                // A signature on an empty part belongs to the last call waiting for one.
                last.1 = Some(s.to_owned());
            } else if !part.text.as_deref().unwrap_or_default().is_empty() {
                // Text signed with no thoughts shown: a thinking block with only its signature
                // (Anthropic's "omitted" thinking), so the signature comes back on that text.
                self.open_block(
                    json!({"type": "thinking", "thinking": "", "signature": ""}),
                    Open::Thinking { signed: false },
                    out,
                );
                self.sign_thinking(s, out);
            }
        }
        let text = if let Some(t) = &part.text {
            t.clone()
        } else if let Some(code) = &part.executable_code {
            code_block(code, self.at_line_start)
        } else if let Some(result) = &part.code_execution_result {
            result_block(result, self.at_line_start)
        } else {
            String::new()
        };
        if !text.is_empty() {
            self.text(&text, out);
        }
    }

    fn start(&mut self, out: &mut BytesMut) {
        if std::mem::replace(&mut self.started, true) {
            return;
        }
        let mut usage = usage_json(self.usage.as_ref());
        usage["output_tokens"] = json!(0);
        write_event(
            "message_start",
            &json!({
                "type": "message_start",
                "message": {
                    "id": self.cx.id,
                    "type": "message",
                    "role": "assistant",
                    "model": self.cx.model,
                    "content": [],
                    "stop_reason": null,
                    "stop_sequence": null,
                    "usage": usage,
                }
            }),
            out,
        );
    }

    fn ping(&mut self, out: &mut BytesMut) {
        if !std::mem::replace(&mut self.pinged, true) {
            write_event("ping", &json!({"type": "ping"}), out);
        }
    }

    fn open_block(&mut self, block: Value, kind: Open, out: &mut BytesMut) {
        self.close(out);
        write_event(
            "content_block_start",
            &json!({"type": "content_block_start", "index": self.index, "content_block": block}),
            out,
        );
        self.ping(out);
        self.open = Some(kind);
    }

    fn close(&mut self, out: &mut BytesMut) {
        if self.open.take().is_some() {
            write_event(
                "content_block_stop",
                &json!({"type": "content_block_stop", "index": self.index}),
                out,
            );
            self.index += 1;
        }
    }

    fn delta(&mut self, delta: Value, out: &mut BytesMut) {
        write_event(
            "content_block_delta",
            &json!({"type": "content_block_delta", "index": self.index, "delta": delta}),
            out,
        );
    }

    fn sign_thinking(&mut self, sig: &str, out: &mut BytesMut) {
        if let Some(Open::Thinking { signed: false }) = self.open {
            self.delta(json!({"type": "signature_delta", "signature": sig}), out);
            self.open = Some(Open::Thinking { signed: true });
        }
    }

    fn text(&mut self, text: &str, out: &mut BytesMut) {
        if self.open != Some(Open::Text) {
            self.open_block(json!({"type": "text", "text": ""}), Open::Text, out);
        }
        self.at_line_start = text.ends_with('\n');
        self.delta(json!({"type": "text_delta", "text": text}), out);
    }

    fn tool_use(&mut self, call: &FunctionCall, sig: Option<&str>, out: &mut BytesMut) {
        self.saw_call = true;
        if !self.cx.parallel_tool_use && self.calls >= 1 {
            return;
        }
        self.calls += 1;
        let id = self.cx.tool_use_id(sig);
        self.open_block(
            json!({"type": "tool_use", "id": id, "name": call.name, "input": {}}),
            Open::ToolUse,
            out,
        );
        let input = input_json(call);
        let mut rest = input.as_str();
        while !rest.is_empty() {
            let mut at = rest.len().min(INPUT_PIECE_BYTES);
            while !rest.is_char_boundary(at) {
                at -= 1;
            }
            let (piece, tail) = rest.split_at(at);
            self.delta(
                json!({"type": "input_json_delta", "partial_json": piece}),
                out,
            );
            rest = tail;
        }
        self.close(out);
    }

    /// Closes the open block and ends the message with `stop` and the usage.
    fn end(&mut self, stop: &str, out: &mut BytesMut) {
        for (call, sig) in std::mem::take(&mut self.pending) {
            self.tool_use(&call, sig.as_deref(), out);
        }
        self.close(out);
        self.ping(out);
        let stop = if self.saw_call && stop == "end_turn" {
            "tool_use"
        } else {
            stop
        };
        write_event(
            "message_delta",
            &json!({
                "type": "message_delta",
                "delta": {"stop_reason": stop, "stop_sequence": null},
                "usage": usage_json(self.usage.as_ref()),
            }),
            out,
        );
        write_event("message_stop", &json!({"type": "message_stop"}), out);
        self.done = true;
    }

    /// Ends the stream at the end of the upstream body: an `error` event when the answer was
    /// cut before its finish reason.
    pub fn finish(&mut self, out: &mut BytesMut) {
        if self.done {
            return;
        }
        let e = ApiError::bad_gateway(
            "the upstream stream ended before the answer was complete (no finish reason)",
        );
        self.fail(&e, out);
    }

    /// Ends the stream with an Anthropic `error` event (e.g. the upstream body failed).
    pub fn fail(&mut self, error: &ApiError, out: &mut BytesMut) {
        if self.done {
            return;
        }
        write_event("error", &error_json(error.status(), error.message()), out);
        self.done = true;
    }

    fn fail_with_upstream(&mut self, err: Option<GeminiError>, out: &mut BytesMut) {
        let e = match err {
            Some(g) => {
                let status = StatusCode::from_u16(g.code())
                    .ok()
                    .filter(|s| s.is_client_error() || s.is_server_error())
                    .unwrap_or(StatusCode::BAD_GATEWAY);
                ApiError::new(status, crate::secret::scrub(g.message()).into_owned())
            }
            None => {
                ApiError::bad_gateway("the upstream sent an event that is not a Gemini response")
            }
        };
        self.fail(&e, out);
    }
}

fn write_event(name: &str, data: &Value, out: &mut BytesMut) {
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\ndata: ");
    out.extend_from_slice(&serde_json::to_vec(data).unwrap_or_else(|_| b"{}".to_vec()));
    out.extend_from_slice(b"\n\n");
}

// === EventTranslator ===

impl crate::translate::stream::EventTranslator for MessageStreamTranslator {
    fn translate(&mut self, data: &[u8], out: &mut BytesMut) {
        self.push(data, out);
    }

    fn end(&mut self, out: &mut BytesMut) {
        self.finish(out);
    }

    fn abort(&mut self, error: &ApiError, out: &mut BytesMut) {
        self.fail(error, out);
    }

    fn done(&self) -> bool {
        self.is_done()
    }
}
