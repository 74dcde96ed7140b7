//! The `generateContent` response body (also each `streamGenerateContent` chunk).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::content::{Content, FunctionCall, Part};

// === GenerateContentResponse ===

/// The answer of `generateContent`, and each chunk of `streamGenerateContent`.
///
/// The convenience methods read candidate 0, the only one a gateway asks for.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GenerateContentResponse {
    /// The candidate answers; absent when the prompt was blocked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub candidates: Vec<Candidate>,
    /// Why the prompt was blocked, if it was (first chunk only, with no candidates).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_feedback: Option<PromptFeedback>,
    /// Token counts; on streams usually on the last chunk only (the last one wins).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage_metadata: Option<UsageMetadata>,
    /// The model version that answered, e.g. `gemini-2.5-flash`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_version: Option<String>,
    /// Google's id for this response (the same on every chunk of one stream).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_id: Option<String>,
    /// Fields this crate does not know, kept verbatim.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl GenerateContentResponse {
    /// Candidate 0.
    pub fn first_candidate(&self) -> Option<&Candidate> {
        self.candidates.first()
    }

    /// The parts of candidate 0 (empty when there is none).
    pub fn parts(&self) -> &[Part] {
        self.first_candidate().map_or(&[], Candidate::parts)
    }

    /// The concatenated text of the non-thought parts of candidate 0.
    pub fn visible_text(&self) -> String {
        self.first_candidate()
            .map(Candidate::visible_text)
            .unwrap_or_default()
    }

    /// The concatenated text of the thought parts of candidate 0.
    pub fn thought_text(&self) -> String {
        self.first_candidate()
            .map(Candidate::thought_text)
            .unwrap_or_default()
    }

    /// The finish reason of candidate 0 (absent on every stream chunk but the last).
    pub fn finish_reason(&self) -> Option<&FinishReason> {
        self.first_candidate()?.finish_reason.as_ref()
    }

    /// Whether candidate 0 holds a function call.
    pub fn has_function_call(&self) -> bool {
        self.first_candidate()
            .is_some_and(Candidate::has_function_call)
    }

    /// The function calls of candidate 0, in order.
    pub fn function_calls(&self) -> impl Iterator<Item = &FunctionCall> {
        self.parts().iter().filter_map(|p| p.function_call.as_ref())
    }

    /// `promptFeedback.blockReason`: set when the prompt was blocked before any candidate.
    pub fn block_reason(&self) -> Option<&BlockReason> {
        self.prompt_feedback.as_ref()?.block_reason.as_ref()
    }
}

// === Candidate ===

/// One candidate answer.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Candidate {
    /// The generated turn (role `model`); absent or without parts on empty or blocked answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<Content>,
    /// Why generation stopped; absent while a stream is still going.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finish_reason: Option<FinishReason>,
    /// A readable explanation of the finish reason (sent with some reasons).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finish_message: Option<String>,
    /// Safety ratings of the answer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub safety_ratings: Vec<SafetyRating>,
    /// Citations of recited sources, kept as raw JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub citation_metadata: Option<Value>,
    /// Search grounding metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grounding_metadata: Option<GroundingMetadata>,
    /// The candidate's index (often omitted for 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<i32>,
    /// Token count of this candidate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_count: Option<i32>,
    /// Average log-probability of the candidate's tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub avg_logprobs: Option<f64>,
    /// Per-token log-probabilities, kept as raw JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs_result: Option<Value>,
    /// Fields this crate does not know (e.g. `urlContextMetadata`), kept verbatim.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Candidate {
    /// The parts of the candidate's content (empty when there is none).
    pub fn parts(&self) -> &[Part] {
        self.content.as_ref().map_or(&[], |c| c.parts.as_slice())
    }

    /// The concatenated text of the non-thought parts.
    pub fn visible_text(&self) -> String {
        self.content
            .as_ref()
            .map(Content::visible_text)
            .unwrap_or_default()
    }

    /// The concatenated text of the thought parts.
    pub fn thought_text(&self) -> String {
        self.content
            .as_ref()
            .map(Content::thought_text)
            .unwrap_or_default()
    }

    /// Whether any part is a function call.
    pub fn has_function_call(&self) -> bool {
        self.parts().iter().any(|p| p.function_call.is_some())
    }
}

/// A safety rating of a prompt or candidate.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SafetyRating {
    /// The harm category, e.g. `HARM_CATEGORY_DANGEROUS_CONTENT`.
    #[serde(default)]
    pub category: String,
    /// `NEGLIGIBLE`, `LOW`, `MEDIUM` or `HIGH`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probability: Option<String>,
    /// Whether this rating caused the block.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocked: Option<bool>,
    /// Fields this crate does not know, kept verbatim.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `promptFeedback`: sent when the prompt itself was judged (and maybe blocked).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PromptFeedback {
    /// Set when the prompt was blocked; the response then has no candidates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_reason: Option<BlockReason>,
    /// Safety ratings of the prompt.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub safety_ratings: Vec<SafetyRating>,
    /// Fields this crate does not know, kept verbatim.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `groundingMetadata`, with the commonly read fields typed and the rest kept raw.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GroundingMetadata {
    /// The sources used.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub grounding_chunks: Vec<GroundingChunk>,
    /// The search queries the model ran.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub web_search_queries: Vec<String>,
    /// Fields this crate does not know (`groundingSupports`, `searchEntryPoint`, ...), kept
    /// verbatim.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// One grounding source.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GroundingChunk {
    /// A web source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub web: Option<WebSource>,
    /// Fields this crate does not know, kept verbatim.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A web grounding source: `groundingChunks[].web`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WebSource {
    /// The source URI (often a Google redirect URL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    /// The source title (often the domain).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// Fields this crate does not know, kept verbatim.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

// === FinishReason, BlockReason ===

wire_enum! {
    /// `candidates[].finishReason`: why the model stopped.
    ///
    /// Any value this crate does not know parses to [`FinishReason::Unknown`] and serializes back
    /// unchanged; it is never a parse error.
    pub enum FinishReason {
        /// `FINISH_REASON_UNSPECIFIED`.
        Unspecified = "FINISH_REASON_UNSPECIFIED",
        /// `STOP`: a natural stop or a stop sequence.
        Stop = "STOP",
        /// `MAX_TOKENS`: `maxOutputTokens` reached.
        MaxTokens = "MAX_TOKENS",
        /// `SAFETY`: the answer was flagged by the safety filters.
        Safety = "SAFETY",
        /// `RECITATION`: the answer recited a source.
        Recitation = "RECITATION",
        /// `LANGUAGE`: the answer used an unsupported language.
        Language = "LANGUAGE",
        /// `OTHER`: any other reason (observed as a silent cut-off).
        Other = "OTHER",
        /// `BLOCKLIST`: a term from a blocklist.
        Blocklist = "BLOCKLIST",
        /// `PROHIBITED_CONTENT`: prohibited content.
        ProhibitedContent = "PROHIBITED_CONTENT",
        /// `SPII`: sensitive personally identifiable information.
        Spii = "SPII",
        /// `MALFORMED_FUNCTION_CALL`: the model produced an unparsable function call.
        MalformedFunctionCall = "MALFORMED_FUNCTION_CALL",
        /// `IMAGE_SAFETY`: a generated image was flagged.
        ImageSafety = "IMAGE_SAFETY",
        /// `IMAGE_PROHIBITED_CONTENT`: a generated image had prohibited content.
        ImageProhibitedContent = "IMAGE_PROHIBITED_CONTENT",
        /// `IMAGE_OTHER`: image generation stopped for another reason.
        ImageOther = "IMAGE_OTHER",
        /// `IMAGE_RECITATION`: a generated image recited a source.
        ImageRecitation = "IMAGE_RECITATION",
        /// `NO_IMAGE`: an image was expected and none was generated.
        NoImage = "NO_IMAGE",
        /// `UNEXPECTED_TOOL_CALL`: a tool call with no tools enabled.
        UnexpectedToolCall = "UNEXPECTED_TOOL_CALL",
        /// `TOO_MANY_TOOL_CALLS`: too many consecutive tool calls.
        TooManyToolCalls = "TOO_MANY_TOOL_CALLS",
        /// `MALFORMED_RESPONSE`: the model produced a malformed response.
        MalformedResponse = "MALFORMED_RESPONSE",
        /// `MISSING_THOUGHT_SIGNATURE`: the request lacked a required thought signature.
        MissingThoughtSignature = "MISSING_THOUGHT_SIGNATURE",
    }
}

impl FinishReason {
    /// Content filtering: `SAFETY`, `RECITATION`, `LANGUAGE`, `BLOCKLIST`, `PROHIBITED_CONTENT`,
    /// `SPII` and `IMAGE_SAFETY` / `IMAGE_PROHIBITED_CONTENT` / `IMAGE_RECITATION` /
    /// `IMAGE_OTHER`. Asking again repeats the block, so never resume or retry these; on
    /// OpenAI they are `content_filter`.
    pub fn is_blocked(&self) -> bool {
        matches!(
            self,
            Self::Safety
                | Self::Recitation
                | Self::Language
                | Self::Blocklist
                | Self::ProhibitedContent
                | Self::Spii
                | Self::ImageSafety
                | Self::ImageProhibitedContent
                | Self::ImageRecitation
                | Self::ImageOther
        )
    }

    /// `STOP`. (Whether the answer actually holds text is for the caller to check: `STOP`
    /// with no visible text is an empty answer worth retrying.)
    pub fn is_normal_stop(&self) -> bool {
        matches!(self, Self::Stop)
    }

    /// `MAX_TOKENS` (OpenAI `length`).
    pub fn is_max_tokens(&self) -> bool {
        matches!(self, Self::MaxTokens)
    }

    /// The model produced a broken tool call or response: `MALFORMED_FUNCTION_CALL`,
    /// `UNEXPECTED_TOOL_CALL`, `TOO_MANY_TOOL_CALLS`, `MALFORMED_RESPONSE`. Retry the whole
    /// turn only if nothing reached the client; never present these as a clean stop.
    pub fn is_malformed(&self) -> bool {
        matches!(
            self,
            Self::MalformedFunctionCall
                | Self::UnexpectedToolCall
                | Self::TooManyToolCalls
                | Self::MalformedResponse
        )
    }
}

wire_enum! {
    /// `promptFeedback.blockReason`: why the prompt was blocked before any candidate.
    ///
    /// Any value this crate does not know parses to [`BlockReason::Unknown`] and serializes back
    /// unchanged; it is never a parse error.
    pub enum BlockReason {
        /// `BLOCK_REASON_UNSPECIFIED`.
        Unspecified = "BLOCK_REASON_UNSPECIFIED",
        /// `SAFETY`: the prompt was flagged by the safety filters.
        Safety = "SAFETY",
        /// `OTHER`: blocked for another reason (language, other harmful content).
        Other = "OTHER",
        /// `BLOCKLIST`: a term from a blocklist.
        Blocklist = "BLOCKLIST",
        /// `PROHIBITED_CONTENT`: prohibited content.
        ProhibitedContent = "PROHIBITED_CONTENT",
        /// `IMAGE_SAFETY`: unsafe for image generation.
        ImageSafety = "IMAGE_SAFETY",
    }
}

// === UsageMetadata ===

/// `usageMetadata`: token counts.
///
/// The invariant is `total = prompt + candidates + thoughts + toolUsePrompt`; `cachedContent`
/// is part of `prompt`, not added on top.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UsageMetadata {
    /// Tokens in the prompt (including cached content).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_token_count: Option<u32>,
    /// Tokens in the generated candidates (not counting thoughts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidates_token_count: Option<u32>,
    /// Thinking tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thoughts_token_count: Option<u32>,
    /// Prompt tokens served from cached content.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_content_token_count: Option<u32>,
    /// Tokens of tool results fed back to the model (e.g. search results).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_use_prompt_token_count: Option<u32>,
    /// The total.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_token_count: Option<u32>,
    /// Prompt tokens per modality.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prompt_tokens_details: Vec<ModalityTokenCount>,
    /// Cached tokens per modality.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cache_tokens_details: Vec<ModalityTokenCount>,
    /// Candidate tokens per modality.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub candidates_tokens_details: Vec<ModalityTokenCount>,
    /// Tool-use prompt tokens per modality.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_use_prompt_tokens_details: Vec<ModalityTokenCount>,
    /// Fields this crate does not know, kept verbatim.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl UsageMetadata {
    /// Adds another attempt's usage to this one, as a resumed stream must report the sum of
    /// its attempts.
    ///
    /// Every count is summed (a missing count is 0; the sum is present if either side had it),
    /// per-modality details are summed by modality, and `totalTokenCount` is recomputed as
    /// `prompt + candidates + thoughts + toolUsePrompt` so the invariant holds. Unknown fields
    /// of `self` are kept. Take the *last* usage of each attempt (a stream may repeat it on
    /// several chunks) and accumulate those.
    pub fn accumulate(&mut self, other: &UsageMetadata) {
        fn add(a: &mut Option<u32>, b: Option<u32>) {
            *a = match (*a, b) {
                (None, None) => None,
                (x, y) => Some(x.unwrap_or(0).saturating_add(y.unwrap_or(0))),
            };
        }
        let had_any = self.total_token_count.is_some() || other.total_token_count.is_some();
        add(&mut self.prompt_token_count, other.prompt_token_count);
        add(
            &mut self.candidates_token_count,
            other.candidates_token_count,
        );
        add(&mut self.thoughts_token_count, other.thoughts_token_count);
        add(
            &mut self.cached_content_token_count,
            other.cached_content_token_count,
        );
        add(
            &mut self.tool_use_prompt_token_count,
            other.tool_use_prompt_token_count,
        );
        merge_details(
            &mut self.prompt_tokens_details,
            &other.prompt_tokens_details,
        );
        merge_details(&mut self.cache_tokens_details, &other.cache_tokens_details);
        merge_details(
            &mut self.candidates_tokens_details,
            &other.candidates_tokens_details,
        );
        merge_details(
            &mut self.tool_use_prompt_tokens_details,
            &other.tool_use_prompt_tokens_details,
        );
        let any_count = self.prompt_token_count.is_some()
            || self.candidates_token_count.is_some()
            || self.thoughts_token_count.is_some()
            || self.tool_use_prompt_token_count.is_some();
        if had_any || any_count {
            self.total_token_count = Some(self.computed_total());
        }
    }

    /// `prompt + candidates + thoughts + toolUsePrompt` (missing counts are 0).
    pub fn computed_total(&self) -> u32 {
        [
            self.prompt_token_count,
            self.candidates_token_count,
            self.thoughts_token_count,
            self.tool_use_prompt_token_count,
        ]
        .into_iter()
        .flatten()
        .fold(0u32, u32::saturating_add)
    }

    /// Output tokens as OpenAI counts them: `candidates + thoughts`.
    pub fn completion_tokens(&self) -> u32 {
        self.candidates_token_count
            .unwrap_or(0)
            .saturating_add(self.thoughts_token_count.unwrap_or(0))
    }
}

fn merge_details(into: &mut Vec<ModalityTokenCount>, from: &[ModalityTokenCount]) {
    for d in from {
        match into.iter_mut().find(|e| e.modality == d.modality) {
            Some(e) => {
                e.token_count = Some(
                    e.token_count
                        .unwrap_or(0)
                        .saturating_add(d.token_count.unwrap_or(0)),
                );
            }
            None => into.push(d.clone()),
        }
    }
}

/// A token count for one modality (`TEXT`, `IMAGE`, `AUDIO`, `VIDEO`, `DOCUMENT`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ModalityTokenCount {
    /// The modality.
    #[serde(default)]
    pub modality: String,
    /// The tokens of that modality.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_count: Option<u32>,
    /// Fields this crate does not know, kept verbatim.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}
