//! The public configuration types: how the fake treats a key, and scripted faults.

use std::time::Duration;

use serde_json::Value;

/// How the fake treats a key (globally, or for one model).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyBehavior {
    /// Serves requests.
    Valid,
    /// 400 `INVALID_ARGUMENT` with `ErrorInfo.reason = API_KEY_INVALID`.
    Invalid,
    /// 429 `RESOURCE_EXHAUSTED` with `QuotaFailure` and `RetryInfo`.
    Exhausted {
        /// The `retryDelay` sent in `RetryInfo`.
        retry_delay: Duration,
        /// A per-day quota (`...PerDay...` quota id) instead of per-minute.
        daily: bool,
    },
    /// 403 `PERMISSION_DENIED`.
    PermissionDenied,
    /// 503 `UNAVAILABLE` ("The model is overloaded"), Google's side failing for this key.
    Unavailable,
    /// 404 `NOT_FOUND` "... is no longer available to new users": the model is refused to
    /// this (newer) key while older keys still serve it. Set it per model.
    ModelNotForNewUsers,
}

impl KeyBehavior {
    /// A per-minute quota exhaustion with this retry delay.
    pub fn exhausted(retry_delay: Duration) -> Self {
        KeyBehavior::Exhausted {
            retry_delay,
            daily: false,
        }
    }
}

/// A scripted fault, applied to the next `generateContent`/`streamGenerateContent` request.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Fault {
    /// Send `n` chunks, then break the connection (a body error, not a clean end). On HTTP/2
    /// the whole connection goes, and every other request on it fails too, as when a TCP
    /// connection to Google breaks; [`Fault::ResetAfter`] cuts one stream only.
    DropAfter(usize),
    /// Reset the stream before any response header: RST_STREAM (`INTERNAL_ERROR`) on HTTP/2,
    /// the connection closed without an answer on HTTP/1.1. Other streams on the same HTTP/2
    /// connection go on.
    ResetStream,
    /// Send `n` chunks, then reset this stream: RST_STREAM (`INTERNAL_ERROR`) on HTTP/2 with
    /// other streams on the connection going on; on HTTP/1.1 the connection breaks as with
    /// [`Fault::DropAfter`].
    ResetAfter(usize),
    /// Send `n` chunks, then end cleanly without any finishReason.
    EndWithoutFinish(usize),
    /// The `chunks`-th chunk carries `reason` as finishReason and the stream ends there.
    FinishAfter {
        /// Chunks sent, the last with the finishReason.
        chunks: usize,
        /// E.g. `OTHER`, `SAFETY`, `MAX_TOKENS`.
        reason: String,
    },
    /// Send `chunks` chunks, then stay silent for `pause` (then go on; `Duration::MAX` never).
    /// A non-streamed answer stalls before its headers whatever `chunks` says.
    StallAfter {
        /// Chunks before the stall.
        chunks: usize,
        /// How long to stall.
        pause: Duration,
    },
    /// Answer with an HTTP error before any byte of the body.
    HttpError {
        /// HTTP status.
        status: u16,
        /// Message of the Gemini error body.
        message: String,
    },
    /// Send `n` chunks, then an SSE event whose data is a Gemini error object, then end.
    ErrorEventAfter(usize),
    /// Thought parts before the answer.
    Thoughts,
    /// A `functionCall` part (with a `thoughtSignature`) in one chunk without finishReason,
    /// then a final `{"text": ""}` chunk with `STOP` and usage.
    FunctionCall {
        /// Function name.
        name: String,
        /// Arguments.
        args: Value,
    },
    /// `promptFeedback.blockReason` and no candidates.
    BlockPrompt(String),
    /// A candidate with `STOP` and no parts.
    Empty,
    /// A continuation that first repeats the last `k` characters already answered (widened
    /// to whole words).
    RepeatTail(usize),
    /// An image answer of this many bytes from whatever model (as a model whose name holds
    /// `image` answers; see [`FakeGemini::image`](crate::testing::FakeGemini::image)).
    Image(usize),
    /// 200 with a body that is not JSON.
    Garbage,
    /// 200 with JSON cut in the middle.
    TruncatedJson,
    /// A scripted code run whatever the request's tools: a text part, an `executableCode`
    /// part, its `codeExecutionResult`, then the answer (in streams, one part a chunk). (A
    /// request with the `codeExecution` tool gets a code run without any fault.)
    CodeExecution {
        /// The generated code (language `PYTHON`).
        code: String,
        /// What running it printed (outcome `OUTCOME_OK`).
        output: String,
    },
}
