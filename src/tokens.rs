//! Token counts of an answer ([`Tokens`]) and the one incremental scanner that finds them in
//! Gemini and OpenAI answers ([`TokenScanner`]): usage records and token quotas both read it.

/// Token counts of one answer, from its `usageMetadata` (or an OpenAI `usage`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Tokens {
    /// `promptTokenCount`.
    pub prompt: u64,
    /// `candidatesTokenCount` (the Live API's `responseTokenCount`): the visible answer.
    pub output: u64,
    /// `thoughtsTokenCount`: thinking tokens.
    pub thoughts: u64,
    /// `cachedContentTokenCount`: prompt tokens served from a cache.
    pub cached: u64,
    /// `totalTokenCount` (the sum of the others when the answer has none).
    pub total: u64,
}

impl Tokens {
    /// The tokens an answer is charged for (token budgets, per-account metrics): prompt +
    /// output + thoughts, or the total when the parts are unknown.
    pub fn billable(&self) -> u64 {
        let parts = self
            .prompt
            .saturating_add(self.output)
            .saturating_add(self.thoughts);
        if parts == 0 { self.total } else { parts }
    }

    /// Adds `other` into `self`, saturating.
    pub fn add(&mut self, other: &Tokens) {
        self.prompt = self.prompt.saturating_add(other.prompt);
        self.output = self.output.saturating_add(other.output);
        self.thoughts = self.thoughts.saturating_add(other.thoughts);
        self.cached = self.cached.saturating_add(other.cached);
        self.total = self.total.saturating_add(other.total);
    }
}

/// Longest key name kept while scanning; longer keys are not token counts.
const MAX_KEY: usize = 32;

/// The token counts a scanner recognises, by key name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Field {
    Prompt,
    Output,
    Thoughts,
    Cached,
    Total,
    /// OpenAI's `completion_tokens`: output and reasoning together.
    Completion,
}

impl Field {
    fn of(key: &[u8]) -> Option<Field> {
        Some(match key {
            b"promptTokenCount" | b"prompt_tokens" => Field::Prompt,
            // The Live API names the answer's tokens `responseTokenCount`.
            b"candidatesTokenCount" | b"responseTokenCount" => Field::Output,
            b"thoughtsTokenCount" | b"reasoning_tokens" => Field::Thoughts,
            b"cachedContentTokenCount" | b"cached_tokens" => Field::Cached,
            b"totalTokenCount" | b"total_tokens" => Field::Total,
            b"completion_tokens" => Field::Completion,
            _ => return None,
        })
    }

    fn index(self) -> usize {
        self as usize
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum State {
    #[default]
    Outside,
    InString {
        escape: bool,
    },
    AfterString,
    BeforeNumber(Field),
    Number(Field),
    /// After `"modelVersion":`, before its string.
    BeforeVersion,
    /// Inside the `modelVersion` string.
    InVersion {
        escape: bool,
    },
}

/// Longest `modelVersion` kept; a longer one is cut (model versions are short names).
const MAX_VERSION: usize = 64;

/// Finds the token counts of a Gemini `usageMetadata` (or an OpenAI `usage`) in a byte stream
/// fed piece by piece: SSE frames, a streamed JSON array or a whole JSON body, without
/// buffering it. Each count keeps the last value seen, so the final chunk of a stream wins.
///
/// It tracks JSON strings (escapes included), so text that merely looks like a usage key
/// inside a model's answer is never counted.
///
/// ```
/// use tower_gemini::tokens::TokenScanner;
///
/// let mut s = TokenScanner::new();
/// s.feed(b"data: {\"usageMetadata\":{\"promptTokenCount\":4,\"candidatesTok");
/// s.feed(b"enCount\":7,\"totalTokenCount\":11}}\r\n\r\n");
/// let t = s.tokens().unwrap();
/// assert_eq!((t.prompt, t.output, t.total), (4, 7, 11));
/// ```
#[derive(Clone, Debug, Default)]
pub struct TokenScanner {
    state: State,
    key: [u8; MAX_KEY],
    key_len: usize,
    key_overflow: bool,
    value: u64,
    last: [Option<u64>; 6],
    /// The `modelVersion` string being read.
    version: Vec<u8>,
    /// The last complete `modelVersion` seen.
    model_version: Option<String>,
}

impl TokenScanner {
    /// A scanner that has seen nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds the next bytes.
    pub fn feed(&mut self, mut data: &[u8]) {
        // The bulk of an answer is outside keys or inside long strings (the text): jump over
        // those to the next byte that can change the state, then step byte by byte.
        while let Some(&first) = data.first() {
            match self.state {
                State::Outside => match memchr::memchr(b'"', data) {
                    Some(i) => {
                        self.outside(b'"');
                        data = &data[i + 1..];
                    }
                    None => return,
                },
                State::InString { escape: false } => match memchr::memchr2(b'"', b'\\', data) {
                    Some(i) => {
                        self.push_key(&data[..i]);
                        self.byte(data[i]);
                        data = &data[i + 1..];
                    }
                    None => {
                        self.push_key(data);
                        return;
                    }
                },
                _ => {
                    self.byte(first);
                    data = &data[1..];
                }
            }
        }
    }

    /// Plain string bytes: kept as the key while it is short enough to be one.
    fn push_key(&mut self, bytes: &[u8]) {
        let room = MAX_KEY - self.key_len;
        let n = bytes.len().min(room);
        self.key[self.key_len..self.key_len + n].copy_from_slice(&bytes[..n]);
        self.key_len += n;
        if bytes.len() > room {
            self.key_overflow = true;
        }
    }

    fn byte(&mut self, b: u8) {
        match self.state {
            State::Outside => self.outside(b),
            State::InString { escape: true } => {
                self.key_overflow = true;
                self.state = State::InString { escape: false };
            }
            State::InString { escape: false } => match b {
                b'\\' => self.state = State::InString { escape: true },
                b'"' => self.state = State::AfterString,
                _ if self.key_len < MAX_KEY => {
                    self.key[self.key_len] = b;
                    self.key_len += 1;
                }
                _ => self.key_overflow = true,
            },
            State::AfterString => match b {
                b':' => {
                    let key = (!self.key_overflow).then_some(&self.key[..self.key_len]);
                    self.state = match key {
                        Some(b"modelVersion") => State::BeforeVersion,
                        Some(key) => Field::of(key).map_or(State::Outside, State::BeforeNumber),
                        None => State::Outside,
                    };
                }
                _ if b.is_ascii_whitespace() => {}
                _ => self.outside(b),
            },
            State::BeforeNumber(field) => match b {
                b'0'..=b'9' => {
                    self.value = u64::from(b - b'0');
                    self.state = State::Number(field);
                }
                _ if b.is_ascii_whitespace() => {}
                _ => self.outside(b),
            },
            State::Number(field) => {
                if b.is_ascii_digit() {
                    self.value = self
                        .value
                        .saturating_mul(10)
                        .saturating_add(u64::from(b - b'0'));
                } else {
                    self.last[field.index()] = Some(self.value);
                    self.outside(b);
                }
            }
            State::BeforeVersion => match b {
                b'"' => {
                    self.version.clear();
                    self.state = State::InVersion { escape: false };
                }
                _ if b.is_ascii_whitespace() => {}
                _ => self.outside(b),
            },
            State::InVersion { escape: true } => {
                self.push_version(b);
                self.state = State::InVersion { escape: false };
            }
            State::InVersion { escape: false } => match b {
                b'\\' => self.state = State::InVersion { escape: true },
                b'"' => {
                    let version = String::from_utf8_lossy(&self.version);
                    if self.model_version.as_deref() != Some(&*version) {
                        self.model_version = Some(version.into_owned());
                    }
                    self.state = State::Outside;
                }
                _ => self.push_version(b),
            },
        }
    }

    fn push_version(&mut self, b: u8) {
        if self.version.len() < MAX_VERSION {
            self.version.push(b);
        }
    }

    /// The last `modelVersion` seen (Gemini's name of the model that served, e.g.
    /// `gemini-2.5-flash-preview-09-2025` for a request to an alias), cut at 64 bytes.
    pub fn model_version(&self) -> Option<&str> {
        self.model_version.as_deref()
    }

    fn outside(&mut self, b: u8) {
        if b == b'"' {
            self.key_len = 0;
            self.key_overflow = false;
            self.state = State::InString { escape: false };
        } else {
            self.state = State::Outside;
        }
    }

    /// The counts seen so far, or `None` when no count was seen at all. A number still being
    /// read counts (a body may end right after it).
    ///
    /// OpenAI's `completion_tokens` includes reasoning; it is split back into output and
    /// thoughts. A missing total is the sum of prompt, output and thoughts.
    pub fn tokens(&self) -> Option<Tokens> {
        let mut last = self.last;
        if let State::Number(field) = self.state {
            last[field.index()] = Some(self.value);
        }
        if last.iter().all(Option::is_none) {
            return None;
        }
        let get = |f: Field| last[f.index()].unwrap_or(0);
        let thoughts = get(Field::Thoughts);
        let output = match last[Field::Output.index()] {
            Some(n) => n,
            None => get(Field::Completion).saturating_sub(thoughts),
        };
        let prompt = get(Field::Prompt);
        let total = last[Field::Total.index()]
            .unwrap_or_else(|| prompt.saturating_add(output).saturating_add(thoughts));
        Some(Tokens {
            prompt,
            output,
            thoughts,
            cached: get(Field::Cached),
            total,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn scan(pieces: &[&[u8]]) -> Option<Tokens> {
        let mut s = TokenScanner::new();
        for p in pieces {
            s.feed(p);
        }
        s.tokens()
    }

    #[test]
    fn reads_gemini_usage_metadata() {
        let body = br#"{"candidates":[],"usageMetadata":{"promptTokenCount": 10, "candidatesTokenCount": 20, "thoughtsTokenCount": 5, "cachedContentTokenCount": 3, "totalTokenCount": 35}}"#;
        let t = scan(&[body]).unwrap();
        assert_eq!(
            t,
            Tokens {
                prompt: 10,
                output: 20,
                thoughts: 5,
                cached: 3,
                total: 35
            }
        );
    }

    #[test]
    fn every_split_point_gives_the_same_answer() {
        let body = br#"data: {"usageMetadata":{"promptTokenCount":12,"candidatesTokenCount":345,"totalTokenCount":357}}"#;
        let whole = scan(&[body]).unwrap();
        for i in 0..body.len() {
            assert_eq!(
                scan(&[&body[..i], &body[i..]]).unwrap(),
                whole,
                "split at {i}"
            );
        }
    }

    #[test]
    fn the_last_chunk_wins() {
        let t = scan(&[
            b"data: {\"usageMetadata\":{\"promptTokenCount\":4,\"totalTokenCount\":4}}\n\n",
            b"data: {\"usageMetadata\":{\"promptTokenCount\":4,\"candidatesTokenCount\":9,\"totalTokenCount\":13}}\n\n",
        ])
        .unwrap();
        assert_eq!((t.prompt, t.output, t.total), (4, 9, 13));
    }

    #[test]
    fn text_that_looks_like_usage_is_ignored() {
        let body = br#"{"candidates":[{"content":{"parts":[{"text":"say \"totalTokenCount\": 999 and \\\"promptTokenCount\": 7"}]}}],"usageMetadata":{"totalTokenCount":3}}"#;
        let t = scan(&[body]).unwrap();
        assert_eq!((t.prompt, t.total), (0, 3));
    }

    #[test]
    fn reads_openai_usage_and_splits_reasoning() {
        let body = br#"{"usage":{"prompt_tokens":8,"completion_tokens":30,"total_tokens":38,"prompt_tokens_details":{"cached_tokens":2},"completion_tokens_details":{"reasoning_tokens":10}}}"#;
        let t = scan(&[body]).unwrap();
        assert_eq!(
            t,
            Tokens {
                prompt: 8,
                output: 20,
                thoughts: 10,
                cached: 2,
                total: 38
            }
        );
    }

    #[test]
    fn skipping_ahead_reads_like_stepping_byte_by_byte() {
        let body = br#"data: {"candidates":[{"content":{"parts":[{"text":"a \"quoted\" \\ long text with \"promptTokenCount\": 5 inside and a very long key name next"}]}}],"aVeryLongKeyNameThatIsNotATokenCountAtAll":1,"usageMetadata":{"promptTokenCount":12,"candidatesTokenCount":345,"thoughtsTokenCount":6,"totalTokenCount":363}}"#;
        let mut stepped = TokenScanner::new();
        for &b in body.iter() {
            stepped.byte(b);
        }
        for chunk in [1, 2, 3, 7, 16, body.len()] {
            let mut s = TokenScanner::new();
            for piece in body.chunks(chunk) {
                s.feed(piece);
            }
            assert_eq!(s.tokens(), stepped.tokens(), "chunks of {chunk}");
        }
        let t = stepped.tokens().unwrap();
        assert_eq!((t.prompt, t.output, t.thoughts, t.total), (12, 345, 6, 363));
    }

    #[test]
    fn reads_the_model_version_split_anywhere() {
        let body = br#"data: {"candidates":[{"content":{"parts":[{"text":"\"modelVersion\": \"fake\""}]}}],"usageMetadata":{"totalTokenCount":3},"modelVersion": "gemini-2.5-flash-preview-09-2025","responseId":"r1"}"#;
        for i in 0..body.len() {
            let mut s = TokenScanner::new();
            s.feed(&body[..i]);
            s.feed(&body[i..]);
            assert_eq!(
                s.model_version(),
                Some("gemini-2.5-flash-preview-09-2025"),
                "split at {i}"
            );
        }
        let mut s = TokenScanner::new();
        s.feed(br#"{"modelVersion":"a"}{"modelVersion":"b"}"#);
        assert_eq!(s.model_version(), Some("b"), "the last one wins");
        let mut s = TokenScanner::new();
        s.feed(br#"{"modelVersion":42,"x":"y"}"#);
        assert_eq!(s.model_version(), None, "not a string");
        let long = format!(r#"{{"modelVersion":"{}"}}"#, "m".repeat(500));
        let mut s = TokenScanner::new();
        s.feed(long.as_bytes());
        assert_eq!(s.model_version().map(str::len), Some(MAX_VERSION));
    }

    #[test]
    fn no_usage_is_none() {
        assert!(scan(&[br#"{"candidates":[{"index":0}]}"#]).is_none());
    }
}
