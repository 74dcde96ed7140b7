//! Gemini answers → Responses output items and stream events. One builder serves both: a
//! whole answer is one chunk pushed without events; a stream pushes each chunk as it arrives
//! and writes the typed events of what changed.

use bytes::BytesMut;
use http::StatusCode;
use serde_json::{Map, Value, json};

use super::request::ToolMap;
use super::types::CreateResponse;
use crate::error::ApiError;
use crate::gemini::{
    Candidate, FinishReason, FunctionCall, GeminiError, GenerateContentResponse, GroundingMetadata,
    Part, UsageMetadata,
};
use crate::openai::response::{
    arguments_of, blocked_message, code_block, finish_reason, inline_markdown, result_block,
    unique_hex, unix_now, usage_of,
};
use crate::translate::THOUGHT_SIGNATURE_SEPARATOR;

/// A fresh response id: `resp_` and 24 hex digits.
pub(crate) fn response_id() -> String {
    format!("resp_{}", unique_hex())
}

/// The item open in the stream (at most one at a time: Gemini's parts arrive in order).
#[derive(Debug)]
enum Open {
    Reasoning {
        id: String,
        text: String,
        signature: Option<String>,
    },
    Message {
        id: String,
        text: String,
    },
}

/// Builds one response from Gemini chunks; see the module docs.
#[derive(Debug)]
pub(crate) struct ResponseBuilder {
    base: Map<String, Value>,
    tools: ToolMap,
    streaming: bool,
    signature_in_id: bool,
    parallel: bool,
    seq: u64,
    output: Vec<Value>,
    open: Option<Open>,
    /// Calls that arrived without a thought signature: sent with the next part, which may
    /// carry their signature.
    pending: Vec<(FunctionCall, Option<String>)>,
    calls: u32,
    saw_call: bool,
    usage: Option<UsageMetadata>,
    grounding: Option<GroundingMetadata>,
    finish: Option<FinishReason>,
    blocked: bool,
    at_line_start: bool,
    done: bool,
    failure: Option<ApiError>,
    final_response: Option<Value>,
}

impl ResponseBuilder {
    /// A builder for the answer to `req`, with id `id`.
    pub(crate) fn new(
        id: String,
        req: &CreateResponse,
        model: &str,
        streaming: bool,
        signature_in_id: bool,
    ) -> Self {
        let mut base = Map::new();
        let effort = req.effort().map_or(Value::Null, |e| json!(e));
        let summary = req
            .reasoning
            .as_ref()
            .and_then(|r| r.get("summary"))
            .cloned()
            .unwrap_or(Value::Null);
        let fields = [
            ("id", json!(id)),
            ("object", json!("response")),
            ("created_at", json!(unix_now())),
            ("status", json!("in_progress")),
            ("background", json!(false)),
            ("error", Value::Null),
            ("incomplete_details", Value::Null),
            ("instructions", json!(req.instructions)),
            ("max_output_tokens", json!(req.max_output_tokens)),
            ("model", json!(model)),
            ("output", json!([])),
            (
                "parallel_tool_calls",
                json!(req.parallel_tool_calls.unwrap_or(true)),
            ),
            ("previous_response_id", json!(req.previous_response_id)),
            ("reasoning", json!({"effort": effort, "summary": summary})),
            ("store", json!(req.is_stored())),
            ("temperature", json!(req.temperature.unwrap_or(1.0))),
            (
                "text",
                req.text
                    .clone()
                    .filter(|t| t.get("format").is_some())
                    .unwrap_or_else(|| json!({"format": {"type": "text"}})),
            ),
            (
                "tool_choice",
                req.tool_choice.clone().unwrap_or_else(|| json!("auto")),
            ),
            ("tools", json!(req.tools.clone().unwrap_or_default())),
            ("top_p", json!(req.top_p.unwrap_or(1.0))),
            ("truncation", json!("disabled")),
            ("usage", Value::Null),
            ("user", json!(req.user)),
            (
                "metadata",
                req.metadata.clone().unwrap_or_else(|| json!({})),
            ),
        ];
        for (k, v) in fields {
            base.insert(k.to_owned(), v);
        }
        Self {
            base,
            tools: ToolMap::default(),
            streaming,
            signature_in_id,
            parallel: req.parallel_tool_calls.unwrap_or(true),
            seq: 0,
            output: Vec::new(),
            open: None,
            pending: Vec::new(),
            calls: 0,
            saw_call: false,
            usage: None,
            grounding: None,
            finish: None,
            blocked: false,
            at_line_start: true,
            done: false,
            failure: None,
            final_response: None,
        }
    }

    /// The client's names for the functions of the request.
    pub(crate) fn tools(mut self, tools: ToolMap) -> Self {
        self.tools = tools;
        self
    }

    /// Whether the response is over (completed, incomplete or failed).
    pub(crate) fn is_done(&self) -> bool {
        self.done
    }

    /// The response as answered, once done.
    pub(crate) fn final_response(&self) -> Option<&Value> {
        self.final_response.as_ref()
    }

    /// The error that ended the response, if one did.
    pub(crate) fn failure(&self) -> Option<&ApiError> {
        self.failure.as_ref()
    }

    /// The response object now.
    fn snapshot(&self, status: &str) -> Value {
        let mut v = self.base.clone();
        v.insert("status".to_owned(), json!(status));
        v.insert("output".to_owned(), Value::Array(self.output.clone()));
        Value::Object(v)
    }

    fn emit(&mut self, out: &mut BytesMut, kind: &str, mut event: Value) {
        if !self.streaming {
            return;
        }
        event["type"] = json!(kind);
        event["sequence_number"] = json!(self.seq);
        self.seq += 1;
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(kind.as_bytes());
        out.extend_from_slice(b"\ndata: ");
        out.extend_from_slice(&serde_json::to_vec(&event).unwrap_or_default());
        out.extend_from_slice(b"\n\n");
    }

    /// The first events: `response.created` and `response.in_progress`.
    pub(crate) fn start(&mut self, out: &mut BytesMut) {
        let snapshot = self.snapshot("in_progress");
        self.emit(out, "response.created", json!({"response": snapshot}));
        let snapshot = self.snapshot("in_progress");
        self.emit(out, "response.in_progress", json!({"response": snapshot}));
    }

    /// The data of one upstream SSE event.
    pub(crate) fn push(&mut self, data: &[u8], out: &mut BytesMut) {
        if self.done || data.trim_ascii().is_empty() {
            return;
        }
        match serde_json::from_slice::<GenerateContentResponse>(data) {
            Ok(chunk) if !chunk.extra.contains_key("error") => self.push_chunk(&chunk, out),
            _ => self.fail_with_upstream(GeminiError::parse(data), out),
        }
    }

    /// One parsed upstream chunk (or a whole answer).
    pub(crate) fn push_chunk(&mut self, chunk: &GenerateContentResponse, out: &mut BytesMut) {
        if self.done {
            return;
        }
        if let Some(u) = &chunk.usage_metadata {
            self.usage = Some(u.clone());
        }
        let Some(cand) = chunk.candidates.first() else {
            if let Some(reason) = chunk.block_reason() {
                self.refuse(&blocked_message(reason.as_str()), out);
            }
            return;
        };
        self.candidate(cand, out);
    }

    fn candidate(&mut self, cand: &Candidate, out: &mut BytesMut) {
        for part in cand.parts() {
            self.part(part, out);
        }
        if let Some(g) = &cand.grounding_metadata {
            self.grounding = Some(g.clone());
        }
        if let Some(reason) = &cand.finish_reason {
            match finish_reason(Some(reason), self.saw_call) {
                Ok(_) => {
                    self.finish = Some(reason.clone());
                    self.blocked = reason.is_blocked();
                    self.complete(out);
                }
                Err(e) => self.fail(e, None, out),
            }
        }
    }

    fn part(&mut self, part: &Part, out: &mut BytesMut) {
        let text = part.text.as_deref().unwrap_or_default();
        let has_other = part.executable_code.is_some()
            || part.code_execution_result.is_some()
            || part.inline_data.is_some();
        if let Some(call) = &part.function_call {
            self.saw_call = true;
            if part.thought_signature.is_some() {
                self.flush_pending(out);
                self.call(call, part.thought_signature.clone(), out);
            } else {
                self.pending.push((call.clone(), None));
            }
            return;
        }
        if text.is_empty() && !has_other {
            // A signature on an empty part belongs to the last call waiting for one, else to
            // the reasoning item open.
            if let Some(sig) = &part.thought_signature {
                if let Some(last) = self.pending.iter_mut().rev().find(|c| c.1.is_none()) {
                    last.1 = Some(sig.clone());
                } else if let Some(Open::Reasoning { signature, .. }) = &mut self.open {
                    signature.get_or_insert_with(|| sig.clone());
                }
            }
            return;
        }
        self.flush_pending(out);
        if let Some(image) = part
            .inline_data
            .as_ref()
            .filter(|b| b.mime_type.starts_with("image/"))
        {
            self.image(&image.mime_type, &image.data, out);
            return;
        }
        if part.is_thought() {
            self.reasoning_delta(text, part.thought_signature.as_deref(), out);
            return;
        }
        let piece = if !text.is_empty() {
            text.to_owned()
        } else if let Some(code) = &part.executable_code {
            code_block(code, self.at_line_start)
        } else if let Some(result) = &part.code_execution_result {
            result_block(result, self.at_line_start)
        } else if let Some(md) = inline_markdown(part) {
            md
        } else {
            return;
        };
        self.text_delta(&piece, out);
    }

    fn reasoning_delta(&mut self, text: &str, sig: Option<&str>, out: &mut BytesMut) {
        if !matches!(self.open, Some(Open::Reasoning { .. })) {
            self.close(out);
            let id = format!("rs_{}", unique_hex());
            let output_index = self.output.len();
            self.emit(
                out,
                "response.output_item.added",
                json!({"output_index": output_index,
                       "item": {"type": "reasoning", "id": id, "summary": []}}),
            );
            self.emit(
                out,
                "response.reasoning_summary_part.added",
                json!({"item_id": id, "output_index": output_index, "summary_index": 0,
                       "part": {"type": "summary_text", "text": ""}}),
            );
            self.open = Some(Open::Reasoning {
                id,
                text: String::new(),
                signature: None,
            });
        }
        let output_index = self.output.len();
        let Some(Open::Reasoning {
            id,
            text: all,
            signature,
        }) = &mut self.open
        else {
            return;
        };
        all.push_str(text);
        if let Some(s) = sig {
            signature.get_or_insert_with(|| s.to_owned());
        }
        let id = id.clone();
        self.emit(
            out,
            "response.reasoning_summary_text.delta",
            json!({"item_id": id, "output_index": output_index, "summary_index": 0,
                   "delta": text}),
        );
    }

    fn text_delta(&mut self, text: &str, out: &mut BytesMut) {
        if !matches!(self.open, Some(Open::Message { .. })) {
            self.close(out);
            let id = format!("msg_{}", unique_hex());
            let output_index = self.output.len();
            self.emit(
                out,
                "response.output_item.added",
                json!({"output_index": output_index,
                       "item": {"type": "message", "id": id, "status": "in_progress",
                                "role": "assistant", "content": []}}),
            );
            self.emit(
                out,
                "response.content_part.added",
                json!({"item_id": id, "output_index": output_index, "content_index": 0,
                       "part": {"type": "output_text", "text": "", "annotations": []}}),
            );
            self.open = Some(Open::Message {
                id,
                text: String::new(),
            });
        }
        let output_index = self.output.len();
        let Some(Open::Message { id, text: all }) = &mut self.open else {
            return;
        };
        all.push_str(text);
        let id = id.clone();
        self.at_line_start = text.ends_with('\n');
        self.emit(
            out,
            "response.output_text.delta",
            json!({"item_id": id, "output_index": output_index, "content_index": 0,
                   "delta": text, "logprobs": []}),
        );
    }

    /// Closes the open item: its `.done` events, then it joins the output.
    fn close(&mut self, out: &mut BytesMut) {
        let Some(open) = self.open.take() else {
            return;
        };
        let output_index = self.output.len();
        let item = match open {
            Open::Reasoning {
                id,
                text,
                signature,
            } => {
                let part = json!({"type": "summary_text", "text": text});
                self.emit(
                    out,
                    "response.reasoning_summary_text.done",
                    json!({"item_id": id, "output_index": output_index, "summary_index": 0,
                           "text": text}),
                );
                self.emit(
                    out,
                    "response.reasoning_summary_part.done",
                    json!({"item_id": id, "output_index": output_index, "summary_index": 0,
                           "part": part}),
                );
                let mut item = json!({"type": "reasoning", "id": id, "summary": [part]});
                if let Some(sig) = signature {
                    item["encrypted_content"] = json!(sig);
                }
                item
            }
            Open::Message { id, text } => {
                let annotations = annotations(self.grounding.as_ref(), &text);
                let part = json!({"type": "output_text", "text": text,
                                  "annotations": annotations});
                self.emit(
                    out,
                    "response.output_text.done",
                    json!({"item_id": id, "output_index": output_index, "content_index": 0,
                           "text": text, "logprobs": []}),
                );
                self.emit(
                    out,
                    "response.content_part.done",
                    json!({"item_id": id, "output_index": output_index, "content_index": 0,
                           "part": part}),
                );
                json!({"type": "message", "id": id, "status": "completed", "role": "assistant",
                       "content": [part]})
            }
        };
        self.emit(
            out,
            "response.output_item.done",
            json!({"output_index": output_index, "item": item}),
        );
        self.output.push(item);
    }

    fn flush_pending(&mut self, out: &mut BytesMut) {
        for (call, sig) in std::mem::take(&mut self.pending) {
            self.call(&call, sig, out);
        }
    }

    /// A whole function call: its item, its arguments in one delta, done.
    fn call(&mut self, call: &FunctionCall, sig: Option<String>, out: &mut BytesMut) {
        if let (Some(s), Some(Open::Reasoning { signature, .. })) = (&sig, &mut self.open) {
            // The reasoning item before a call carries the call's signature too.
            signature.get_or_insert_with(|| s.clone());
        }
        self.close(out);
        if !self.parallel && self.calls >= 1 {
            return;
        }
        self.calls += 1;
        let hex = unique_hex();
        let call_id = match &sig {
            Some(s) if self.signature_in_id => {
                format!("call_{hex}{THOUGHT_SIGNATURE_SEPARATOR}{s}")
            }
            _ => format!("call_{hex}"),
        };
        let tool = self.tools.client(&call.name);
        let arguments = arguments_of(call);
        let output_index = self.output.len();
        let (id, mut item, kind) = if tool.custom {
            // A custom tool's call carries its free text as `input`.
            let input = call.args.as_ref().and_then(|a| a.get("input")).map_or_else(
                || arguments.clone(),
                |v| v.as_str().map_or_else(|| v.to_string(), str::to_owned),
            );
            let id = format!("ctc_{hex}");
            let item = json!({"type": "custom_tool_call", "id": id, "call_id": call_id,
                              "name": tool.name, "input": input, "status": "completed"});
            (id, item, "custom_tool_call_input")
        } else {
            let id = format!("fc_{hex}");
            let item = json!({"type": "function_call", "id": id, "call_id": call_id,
                              "name": tool.name, "arguments": arguments, "status": "completed"});
            (id, item, "function_call_arguments")
        };
        if let Some(ns) = &tool.namespace {
            item["namespace"] = json!(ns);
        }
        let (field, value) = if tool.custom {
            ("input", item["input"].clone())
        } else {
            ("arguments", item["arguments"].clone())
        };
        let mut added = item.clone();
        added[field] = json!("");
        added["status"] = json!("in_progress");
        self.emit(
            out,
            "response.output_item.added",
            json!({"output_index": output_index, "item": added}),
        );
        self.emit(
            out,
            &format!("response.{kind}.delta"),
            json!({"item_id": id, "output_index": output_index, "delta": value}),
        );
        let mut done = json!({"item_id": id, "output_index": output_index, field: value});
        if !tool.custom {
            done["name"] = json!(tool.name);
        }
        self.emit(out, &format!("response.{kind}.done"), done);
        self.emit(
            out,
            "response.output_item.done",
            json!({"output_index": output_index, "item": item}),
        );
        self.output.push(item);
    }

    /// A generated image: an `image_generation_call` item holding it (base64).
    fn image(&mut self, mime_type: &str, data: &str, out: &mut BytesMut) {
        self.close(out);
        let id = format!("ig_{}", unique_hex());
        let output_index = self.output.len();
        let format = mime_type.strip_prefix("image/").unwrap_or("png");
        let item = json!({"type": "image_generation_call", "id": id, "status": "completed",
                          "output_format": format, "result": data});
        let mut added = item.clone();
        added["status"] = json!("in_progress");
        added["result"] = Value::Null;
        self.emit(
            out,
            "response.output_item.added",
            json!({"output_index": output_index, "item": added}),
        );
        self.emit(
            out,
            "response.image_generation_call.completed",
            json!({"item_id": id, "output_index": output_index}),
        );
        self.emit(
            out,
            "response.output_item.done",
            json!({"output_index": output_index, "item": item}),
        );
        self.output.push(item);
    }

    /// A blocked prompt: a refusal message, `incomplete` for `content_filter`.
    fn refuse(&mut self, message: &str, out: &mut BytesMut) {
        self.close(out);
        let id = format!("msg_{}", unique_hex());
        let output_index = self.output.len();
        let part = json!({"type": "refusal", "refusal": message});
        let item = json!({"type": "message", "id": id, "status": "completed",
                          "role": "assistant", "content": [part]});
        self.emit(
            out,
            "response.output_item.added",
            json!({"output_index": output_index, "item": item}),
        );
        self.emit(
            out,
            "response.output_item.done",
            json!({"output_index": output_index, "item": item}),
        );
        self.output.push(item);
        self.blocked = true;
        self.complete(out);
    }

    /// Ends the response at its finish reason: `completed`, or `incomplete` for the output cap
    /// and content filters.
    fn complete(&mut self, out: &mut BytesMut) {
        self.flush_pending(out);
        self.close(out);
        let incomplete = if self.blocked {
            Some("content_filter")
        } else if self.finish == Some(FinishReason::MaxTokens) && !self.saw_call {
            Some("max_output_tokens")
        } else {
            None
        };
        let status = if incomplete.is_some() {
            "incomplete"
        } else {
            "completed"
        };
        let mut response = self.snapshot(status);
        if let Some(reason) = incomplete {
            response["incomplete_details"] = json!({"reason": reason});
        }
        response["usage"] = self.usage_json();
        response["completed_at"] = json!(unix_now());
        self.done = true;
        let kind = if incomplete.is_some() {
            "response.incomplete"
        } else {
            "response.completed"
        };
        self.final_response = Some(response.clone());
        self.emit(out, kind, json!({"response": response}));
    }

    fn usage_json(&self) -> Value {
        let u = self.usage.as_ref().map(usage_of).unwrap_or_default();
        json!({
            "input_tokens": u.prompt_tokens,
            "input_tokens_details": {
                "cached_tokens": u.prompt_tokens_details.map_or(0, |d| d.cached_tokens),
            },
            "output_tokens": u.completion_tokens,
            "output_tokens_details": {
                "reasoning_tokens": u.completion_tokens_details.map_or(0, |d| d.reasoning_tokens),
            },
            "total_tokens": u.total_tokens,
        })
    }

    /// Ends a whole (non-streamed) answer: one without a finish reason is complete as it is.
    pub(crate) fn end_whole(&mut self, out: &mut BytesMut) {
        if !self.done {
            self.complete(out);
        }
    }

    /// Ends the stream at the end of the upstream body: a stream cut before its finish reason
    /// fails.
    pub(crate) fn finish(&mut self, out: &mut BytesMut) {
        if self.done {
            return;
        }
        self.fail(
            ApiError::bad_gateway(
                "the upstream stream ended before the answer was complete (no finish reason)",
            ),
            None,
            out,
        );
    }

    /// Ends the response as `failed` with `error`: `response.failed` in a stream.
    pub(crate) fn fail(&mut self, error: ApiError, code: Option<String>, out: &mut BytesMut) {
        if self.done {
            return;
        }
        self.flush_pending(out);
        self.close(out);
        let mut response = self.snapshot("failed");
        let code = code.unwrap_or_else(|| {
            if error.status() == StatusCode::TOO_MANY_REQUESTS {
                "rate_limit_exceeded".to_owned()
            } else {
                "server_error".to_owned()
            }
        });
        response["error"] = json!({"code": code, "message": error.message()});
        response["usage"] = self.usage_json();
        self.done = true;
        self.final_response = Some(response.clone());
        self.failure = Some(error);
        self.emit(out, "response.failed", json!({"response": response}));
    }

    fn fail_with_upstream(&mut self, err: Option<GeminiError>, out: &mut BytesMut) {
        let (e, code) = match err {
            Some(g) => {
                let status = StatusCode::from_u16(g.code())
                    .ok()
                    .filter(|s| s.is_client_error() || s.is_server_error())
                    .unwrap_or(StatusCode::BAD_GATEWAY);
                let message = crate::secret::scrub(g.message()).into_owned();
                // The codes Codex acts on first (retry later, compact the history).
                let code = if status == StatusCode::TOO_MANY_REQUESTS {
                    Some("rate_limit_exceeded".to_owned())
                } else if crate::translate::context_overflow(g.message()).is_some() {
                    Some("context_length_exceeded".to_owned())
                } else {
                    (!g.status().is_empty()).then(|| g.status().to_ascii_lowercase())
                };
                (ApiError::new(status, message), code)
            }
            None => (
                ApiError::bad_gateway("the upstream sent an event that is not a Gemini response"),
                None,
            ),
        };
        self.fail(e, code, out);
    }
}

/// `url_citation` annotations for the grounding sources of a searched answer: each source
/// over the text its supports cover (the whole text when Gemini names no segment).
fn annotations(grounding: Option<&GroundingMetadata>, text: &str) -> Value {
    let Some(g) = grounding else {
        return json!([]);
    };
    let chars = |byte: u64| -> u64 {
        let b = usize::try_from(byte).unwrap_or(usize::MAX).min(text.len());
        let b = (0..=b)
            .rev()
            .find(|i| text.is_char_boundary(*i))
            .unwrap_or(0);
        text[..b].chars().count() as u64
    };
    let whole = text.chars().count() as u64;
    let mut spans: Vec<Vec<(u64, u64)>> = vec![Vec::new(); g.grounding_chunks.len()];
    if let Some(supports) = g.extra.get("groundingSupports").and_then(Value::as_array) {
        for s in supports {
            let start = chars(s["segment"]["startIndex"].as_u64().unwrap_or(0));
            let end = chars(
                s["segment"]["endIndex"]
                    .as_u64()
                    .unwrap_or(text.len() as u64),
            );
            for i in s["groundingChunkIndices"].as_array().into_iter().flatten() {
                if let Some(v) = i.as_u64().and_then(|i| spans.get_mut(i as usize)) {
                    v.push((start, end));
                }
            }
        }
    }
    let mut out = Vec::new();
    for (chunk, spans) in g.grounding_chunks.iter().zip(spans) {
        let Some(web) = &chunk.web else { continue };
        let Some(url) = web.uri.as_deref() else {
            continue;
        };
        let title = web.title.as_deref().unwrap_or(url);
        let spans = if spans.is_empty() {
            vec![(0, whole)]
        } else {
            spans
        };
        for (start, end) in spans {
            out.push(
                json!({"type": "url_citation", "start_index": start, "end_index": end,
                            "url": url, "title": title}),
            );
        }
    }
    Value::Array(out)
}
