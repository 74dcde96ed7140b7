//! Writing events to the client in the stream's format.

use std::collections::VecDeque;

use bytes::Bytes;
use serde_json::json;

use super::request::Mode;
use crate::sse::{JsonArrayEncoder, LineEnding, RawSpan, encode_data};

/// Writes events to the client in the stream's format: frames wait in a queue that the body
/// hands out before it reads on.
pub(super) struct Output {
    pub(super) queue: VecDeque<Bytes>,
    /// SSE events passed on as they came, not queued yet: those that follow each other in one
    /// upstream buffer become one frame, sliced from it without a copy.
    pub(super) run: Option<RawSpan>,
    pub(super) mode: Mode,
    pub(super) array: JsonArrayEncoder,
}

impl Output {
    /// Passes an event on unchanged: its own bytes when the decoder kept them.
    pub(super) fn send_original(&mut self, json: &Bytes, raw: Option<RawSpan>) {
        let Some(raw) = raw else {
            return self.send(json);
        };
        if let Some(run) = &mut self.run {
            if run.join(&raw) {
                return;
            }
        }
        self.flush();
        self.run = Some(raw);
    }

    /// Queues the events held in the run.
    pub(super) fn flush(&mut self) {
        if let Some(run) = self.run.take() {
            self.queue.push_back(run.bytes());
        }
    }

    pub(super) fn send(&mut self, json: &[u8]) {
        self.flush();
        let bytes = match self.mode {
            Mode::JsonArray => self.array.element(json),
            _ => encode_data(json, LineEnding::CrLf),
        };
        self.queue.push_back(bytes);
    }

    pub(super) fn close(&mut self) {
        self.flush();
        if self.mode == Mode::JsonArray {
            let end = self.array.close();
            self.queue.push_back(end);
        }
    }

    /// Ends the stream with an explicit Gemini error event.
    pub(super) fn fail(&mut self, code: u16, status: &str, message: &str) {
        let err = json!({ "error": { "code": code, "message": message, "status": status } });
        let bytes = serde_json::to_vec(&err).unwrap_or_default();
        self.send(&bytes);
        self.close();
    }
}
