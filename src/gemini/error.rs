//! Gemini's error body: `{"error":{"code","message","status","details":[...]}}`.
//!
//! The `details` carry `google.rpc` messages told apart by `@type`; [`ErrorInfo`] (the reason,
//! e.g. `API_KEY_INVALID`), [`RetryInfo`] (how long to wait) and [`QuotaFailure`] (which
//! quota ran out) are typed, anything else is kept as raw JSON.

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use serde::ser::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

use crate::body::Body;

/// `@type` of [`ErrorInfo`].
pub(crate) const ERROR_INFO_TYPE: &str = "type.googleapis.com/google.rpc.ErrorInfo";
/// `@type` of [`RetryInfo`].
pub(crate) const RETRY_INFO_TYPE: &str = "type.googleapis.com/google.rpc.RetryInfo";
/// `@type` of [`QuotaFailure`].
pub(crate) const QUOTA_FAILURE_TYPE: &str = "type.googleapis.com/google.rpc.QuotaFailure";

// === GeminiError ===

/// A Gemini error body: `{"error": {...}}`.
///
/// Parse an upstream body with [`GeminiError::parse`]; build one to send with
/// [`GeminiError::new`] / [`GeminiError::from_status`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GeminiError {
    /// The status object.
    pub error: ErrorStatus,
    /// Fields this crate does not know, kept verbatim.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// The `error` object: HTTP code, message, `google.rpc.Code` name and details.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ErrorStatus {
    /// The HTTP status code, e.g. `429`.
    #[serde(default)]
    pub code: u16,
    /// A developer-facing message (may echo the key: scrub before relaying).
    #[serde(default)]
    pub message: String,
    /// The `google.rpc.Code` name, e.g. `RESOURCE_EXHAUSTED`.
    #[serde(default)]
    pub status: String,
    /// Typed details.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<ErrorDetail>,
    /// Fields this crate does not know, kept verbatim.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl GeminiError {
    /// An error with an HTTP code, a message and a `google.rpc.Code` name
    /// (`"RESOURCE_EXHAUSTED"`).
    pub fn new(code: u16, message: impl Into<String>, status: impl Into<String>) -> Self {
        Self {
            error: ErrorStatus {
                code,
                message: message.into(),
                status: status.into(),
                details: Vec::new(),
                extra: Map::new(),
            },
            extra: Map::new(),
        }
    }

    /// An error for an HTTP status, with the matching `google.rpc.Code` name.
    pub fn from_status(status: StatusCode, message: impl Into<String>) -> Self {
        Self::new(
            status.as_u16(),
            message,
            crate::error::gemini_status_name(status),
        )
    }

    /// Adds a detail.
    pub fn with_detail(mut self, detail: ErrorDetail) -> Self {
        self.error.details.push(detail);
        self
    }

    /// Adds a [`RetryInfo`] detail with this delay.
    pub fn with_retry_delay(self, delay: Duration) -> Self {
        self.with_detail(ErrorDetail::RetryInfo(RetryInfo {
            retry_delay: Some(format_duration(delay)),
            extra: Map::new(),
        }))
    }

    /// Adds an [`ErrorInfo`] detail with this reason and domain `googleapis.com`.
    pub fn with_reason(self, reason: impl Into<String>) -> Self {
        self.with_detail(ErrorDetail::ErrorInfo(ErrorInfo {
            reason: Some(reason.into()),
            domain: Some("googleapis.com".to_owned()),
            ..ErrorInfo::default()
        }))
    }

    /// Parses an error body. Tolerates surrounding whitespace and the one-element array that
    /// non-SSE streams wrap errors in (`[{"error": ...}]`); anything else that is not an error
    /// body (garbage, HTML, a success body, an `error` object with neither `code` nor
    /// `status`) is `None`.
    pub fn parse(body: &[u8]) -> Option<GeminiError> {
        let body = body.trim_ascii();
        let parsed: GeminiError = if body.first() == Some(&b'[') {
            let mut list: Vec<GeminiError> = serde_json::from_slice(body).ok()?;
            if list.len() != 1 {
                return None;
            }
            list.pop()?
        } else {
            serde_json::from_slice(body).ok()?
        };
        (parsed.error.code != 0 || !parsed.error.status.is_empty()).then_some(parsed)
    }

    /// The HTTP code.
    pub fn code(&self) -> u16 {
        self.error.code
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.error.message
    }

    /// The `google.rpc.Code` name, e.g. `INVALID_ARGUMENT`.
    pub fn status(&self) -> &str {
        &self.error.status
    }

    /// The details.
    pub fn details(&self) -> &[ErrorDetail] {
        &self.error.details
    }

    /// The first [`ErrorInfo`] detail.
    pub fn error_info(&self) -> Option<&ErrorInfo> {
        self.details().iter().find_map(|d| match d {
            ErrorDetail::ErrorInfo(i) => Some(i),
            _ => None,
        })
    }

    /// `ErrorInfo.reason`, e.g. `API_KEY_INVALID`.
    pub fn reason(&self) -> Option<&str> {
        self.error_info()?.reason.as_deref()
    }

    /// The first [`RetryInfo`] detail.
    pub fn retry_info(&self) -> Option<&RetryInfo> {
        self.details().iter().find_map(|d| match d {
            ErrorDetail::RetryInfo(r) => Some(r),
            _ => None,
        })
    }

    /// How long to wait before retrying: `RetryInfo.retryDelay`, else the
    /// "Please retry in 12.5s." hint of the message. `None` when neither parses.
    pub fn retry_delay(&self) -> Option<Duration> {
        self.details()
            .iter()
            .find_map(|d| match d {
                ErrorDetail::RetryInfo(r) => r.delay(),
                _ => None,
            })
            .or_else(|| retry_hint_in_message(&self.error.message))
    }

    /// All quota violations of all [`QuotaFailure`] details.
    pub fn quota_violations(&self) -> impl Iterator<Item = &QuotaViolation> {
        self.details()
            .iter()
            .filter_map(|d| match d {
                ErrorDetail::QuotaFailure(q) => Some(q.violations.iter()),
                _ => None,
            })
            .flatten()
    }

    /// The `quotaId` of every violation, e.g.
    /// `GenerateRequestsPerMinutePerProjectPerModel-FreeTier`.
    pub fn quota_ids(&self) -> Vec<&str> {
        self.quota_violations()
            .filter_map(|v| v.quota_id.as_deref())
            .collect()
    }

    /// Whether the key itself is invalid: `ErrorInfo.reason == "API_KEY_INVALID"`, or (only
    /// when no reason is given) a 400 whose message says "API key not valid".
    pub fn is_api_key_invalid(&self) -> bool {
        match self.reason() {
            Some(reason) => reason == "API_KEY_INVALID",
            None => self.error.code == 400 && self.error.message.contains("API key not valid"),
        }
    }

    /// Whether this is a quota error (`RESOURCE_EXHAUSTED` or code 429).
    pub fn is_resource_exhausted(&self) -> bool {
        self.error.status == "RESOURCE_EXHAUSTED" || self.error.code == 429
    }

    /// The body as JSON.
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }

    /// The body as bytes.
    pub fn to_bytes(&self) -> Bytes {
        Bytes::from(serde_json::to_vec(self).unwrap_or_default())
    }

    /// A JSON response with this body, the status of `code` (500 if it is not a valid status)
    /// and, when a retry delay is known, `Retry-After` in whole seconds (rounded up, at least 1).
    pub fn into_response(self) -> Response<Body> {
        let status =
            StatusCode::from_u16(self.error.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let retry = self.retry_delay();
        let mut res = Response::new(Body::from(self.to_bytes()));
        *res.status_mut() = status;
        let headers = res.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(d) = retry {
            let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        res
    }
}

impl fmt::Display for GeminiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.error.code, self.error.status)?;
        if let Some(reason) = self.reason() {
            write!(f, " ({reason})")?;
        }
        write!(f, ": {}", crate::secret::scrub(&self.error.message))
    }
}

impl std::error::Error for GeminiError {}

// === ErrorDetail ===

/// One entry of `details`, told apart by its `@type`.
///
/// A detail whose `@type` is known but whose body does not fit the typed struct is kept as
/// [`ErrorDetail::Other`], so parsing never fails on details and they always round-trip.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum ErrorDetail {
    /// `google.rpc.ErrorInfo`.
    ErrorInfo(ErrorInfo),
    /// `google.rpc.RetryInfo`.
    RetryInfo(RetryInfo),
    /// `google.rpc.QuotaFailure`.
    QuotaFailure(QuotaFailure),
    /// Any other detail (`google.rpc.Help`, `LocalizedMessage`, ...), raw, `@type` included.
    Other(Value),
}

impl ErrorDetail {
    /// The `@type` URL.
    pub fn type_url(&self) -> Option<&str> {
        match self {
            Self::ErrorInfo(_) => Some(ERROR_INFO_TYPE),
            Self::RetryInfo(_) => Some(RETRY_INFO_TYPE),
            Self::QuotaFailure(_) => Some(QUOTA_FAILURE_TYPE),
            Self::Other(v) => v.get("@type").and_then(Value::as_str),
        }
    }
}

impl Serialize for ErrorDetail {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let typed = match self {
            Self::ErrorInfo(d) => serde_json::to_value(d),
            Self::RetryInfo(d) => serde_json::to_value(d),
            Self::QuotaFailure(d) => serde_json::to_value(d),
            Self::Other(v) => return v.serialize(serializer),
        };
        let mut value = typed.map_err(S::Error::custom)?;
        if let (Value::Object(map), Some(url)) = (&mut value, self.type_url()) {
            map.insert("@type".to_owned(), Value::String(url.to_owned()));
        }
        value.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for ErrorDetail {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(deserializer)?;
        let Value::Object(mut map) = value else {
            return Ok(Self::Other(value));
        };
        let url = map.get("@type").and_then(Value::as_str).unwrap_or_default();
        let kind = match url {
            ERROR_INFO_TYPE => 0,
            RETRY_INFO_TYPE => 1,
            QUOTA_FAILURE_TYPE => 2,
            _ => return Ok(Self::Other(Value::Object(map))),
        };
        let type_url = map.remove("@type");
        let body = Value::Object(map);
        let typed = match kind {
            0 => ErrorInfo::deserialize(&body).map(Self::ErrorInfo),
            1 => RetryInfo::deserialize(&body).map(Self::RetryInfo),
            _ => QuotaFailure::deserialize(&body).map(Self::QuotaFailure),
        };
        Ok(typed.unwrap_or_else(|_: serde_json::Error| {
            let Value::Object(mut map) = body else {
                return Self::Other(body);
            };
            if let Some(url) = type_url {
                map.insert("@type".to_owned(), url);
            }
            Self::Other(Value::Object(map))
        }))
    }
}

/// `google.rpc.ErrorInfo`: a machine-readable reason.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorInfo {
    /// The reason, e.g. `API_KEY_INVALID`, `API_KEY_SERVICE_BLOCKED`, `CONSUMER_SUSPENDED`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The domain, e.g. `googleapis.com`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// Extra context, e.g. `{"service": "generativelanguage.googleapis.com"}`.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub metadata: Map<String, Value>,
    /// Fields this crate does not know, kept verbatim.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `google.rpc.RetryInfo`: how long to wait.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RetryInfo {
    /// A protobuf Duration string, e.g. `"12s"` or `"1.5s"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_delay: Option<String>,
    /// Fields this crate does not know, kept verbatim.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl RetryInfo {
    /// The delay, if present and well-formed.
    pub fn delay(&self) -> Option<Duration> {
        parse_duration(self.retry_delay.as_deref()?)
    }
}

/// `google.rpc.QuotaFailure`: which quotas ran out.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QuotaFailure {
    /// The violations.
    #[serde(default)]
    pub violations: Vec<QuotaViolation>,
    /// Fields this crate does not know, kept verbatim.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// One quota violation.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QuotaViolation {
    /// The quota metric, e.g.
    /// `generativelanguage.googleapis.com/generate_content_free_tier_requests`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota_metric: Option<String>,
    /// The quota id, e.g. `GenerateRequestsPerDayPerProjectPerModel-FreeTier`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota_id: Option<String>,
    /// The dimensions, e.g. `{"location": "global", "model": "gemini-2.0-flash"}`.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub quota_dimensions: Map<String, Value>,
    /// The limit that was hit; an int64 as a string on the wire (`"250"`), kept raw.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota_value: Option<Value>,
    /// Fields this crate does not know (`subject`, `description`, ...), kept verbatim.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl QuotaViolation {
    /// Whether this is a per-day quota (`...PerDay...` in the quota id): it resets at midnight
    /// Pacific time, not after `retryDelay`.
    pub fn is_per_day(&self) -> bool {
        self.quota_id
            .as_deref()
            .is_some_and(|id| id.contains("PerDay"))
    }

    /// Whether this is a per-minute quota (`...PerMinute...` in the quota id).
    pub fn is_per_minute(&self) -> bool {
        self.quota_id
            .as_deref()
            .is_some_and(|id| id.contains("PerMinute"))
    }

    /// `quotaDimensions.model`, the model the quota applies to.
    pub fn model(&self) -> Option<&str> {
        self.quota_dimensions.get("model")?.as_str()
    }

    /// The limit as a number (it is a string on the wire).
    pub fn limit(&self) -> Option<u64> {
        match self.quota_value.as_ref()? {
            Value::String(s) => s.parse().ok(),
            v => v.as_u64(),
        }
    }
}

// === Durations ===

/// Parses a protobuf Duration string: decimal seconds with up to nine fractional digits and an
/// `s` suffix (`"12s"`, `"1.5s"`, `"0.250s"`). Negative, malformed or overflowing input is
/// `None`; this never panics.
///
/// ```
/// use std::time::Duration;
/// use tower_gemini::gemini::parse_duration;
///
/// assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
/// assert_eq!(parse_duration("soon"), None);
/// ```
pub fn parse_duration(text: &str) -> Option<Duration> {
    let number = text.trim().strip_suffix('s')?;
    parse_seconds(number, 1)
}

/// Formats a duration as a protobuf Duration string (`"12s"`, `"1.500s"`), with 0, 3, 6 or 9
/// fractional digits as protobuf's JSON mapping does.
pub(crate) fn format_duration(d: Duration) -> String {
    let (secs, nanos) = (d.as_secs(), d.subsec_nanos());
    if nanos == 0 {
        format!("{secs}s")
    } else if nanos % 1_000_000 == 0 {
        format!("{secs}.{:03}s", nanos / 1_000_000)
    } else if nanos % 1_000 == 0 {
        format!("{secs}.{:06}s", nanos / 1_000)
    } else {
        format!("{secs}.{nanos:09}s")
    }
}

/// `"<int>[.<frac>]"` in units of `1/divisor` seconds (1 for seconds, 1000 for milliseconds).
fn parse_seconds(number: &str, divisor: u64) -> Option<Duration> {
    let (int, frac) = number.split_once('.').unwrap_or((number, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if int.is_empty() || !digits(int) || !digits(frac) || (number.contains('.') && frac.is_empty())
    {
        return None;
    }
    let whole: u64 = int.parse().ok()?;
    // Nanoseconds from the first nine fractional digits; more precision than that is dropped.
    let frac9: String = frac.chars().chain(std::iter::repeat('0')).take(9).collect();
    let frac_nanos: u64 = frac9.parse().ok()?;
    let total_nanos = u128::from(whole) * 1_000_000_000 + u128::from(frac_nanos);
    let total_nanos = total_nanos / u128::from(divisor);
    let secs = u64::try_from(total_nanos / 1_000_000_000).ok()?;
    let nanos = u32::try_from(total_nanos % 1_000_000_000).ok()?;
    Some(Duration::new(secs, nanos))
}

/// The "Please retry in 12.5s." (or "in 590.5ms") hint of a 429 message.
fn retry_hint_in_message(message: &str) -> Option<Duration> {
    let (_, rest) = message.split_once("retry in ")?;
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == 'm' || c == 's'))
        .unwrap_or(rest.len());
    let token = rest[..end].trim_end_matches('.');
    if let Some(ms) = token.strip_suffix("ms") {
        parse_seconds(ms, 1000)
    } else {
        parse_seconds(token.strip_suffix('s')?, 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_protobuf_durations() {
        let ms = Duration::from_millis;
        assert_eq!(parse_duration("12s"), Some(Duration::from_secs(12)));
        assert_eq!(parse_duration("1.5s"), Some(ms(1500)));
        assert_eq!(parse_duration("0.250s"), Some(ms(250)));
        assert_eq!(parse_duration("0s"), Some(Duration::ZERO));
        assert_eq!(parse_duration(" 3s "), Some(Duration::from_secs(3)));
        assert_eq!(
            parse_duration("41.033975382s"),
            Some(Duration::new(41, 33_975_382))
        );
        // Precision past nanoseconds is dropped, not an error.
        assert_eq!(parse_duration("1.0000000019s"), Some(Duration::new(1, 1)));
    }

    #[test]
    fn rejects_bad_durations_without_panicking() {
        for bad in [
            "",
            "s",
            "12",
            "1.s",
            ".5s",
            "-1s",
            "+1s",
            "1.5",
            "abc",
            "1,5s",
            "1.5ms",
            "1e3s",
            "1.-5s",
            "99999999999999999999999s",
            "١s",
            "12 s",
        ] {
            assert_eq!(parse_duration(bad), None, "{bad:?}");
        }
        // The largest u64 second count still fits in a Duration.
        assert_eq!(
            parse_duration("18446744073709551615.999999999s"),
            Some(Duration::new(u64::MAX, 999_999_999))
        );
    }

    #[test]
    fn formats_protobuf_durations() {
        assert_eq!(format_duration(Duration::from_secs(12)), "12s");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1.500s");
        assert_eq!(
            format_duration(Duration::from_micros(1_000_001)),
            "1.000001s"
        );
        assert_eq!(format_duration(Duration::new(0, 5)), "0.000000005s");
        for d in [Duration::from_millis(250), Duration::new(7, 123_456_789)] {
            assert_eq!(parse_duration(&format_duration(d)), Some(d));
        }
    }

    #[test]
    fn falls_back_to_the_message_hint() {
        let e = GeminiError::new(
            429,
            "Quota exceeded. Please retry in 12.5s.",
            "RESOURCE_EXHAUSTED",
        );
        assert_eq!(e.retry_delay(), Some(Duration::from_millis(12_500)));
        let e = GeminiError::new(429, "Please retry in 590.5ms.", "RESOURCE_EXHAUSTED");
        assert_eq!(e.retry_delay(), Some(Duration::from_micros(590_500)));
        let e = GeminiError::new(429, "Please retry in a while.", "RESOURCE_EXHAUSTED");
        assert_eq!(e.retry_delay(), None);
    }

    #[test]
    fn retry_info_wins_over_the_message() {
        let e = GeminiError::new(429, "Please retry in 12.5s.", "RESOURCE_EXHAUSTED")
            .with_retry_delay(Duration::from_secs(3));
        assert_eq!(e.retry_delay(), Some(Duration::from_secs(3)));
    }

    #[test]
    fn bad_retry_delay_is_none() {
        let body = br#"{"error":{"code":429,"message":"x","status":"RESOURCE_EXHAUSTED",
            "details":[{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"soon"}]}}"#;
        let e = GeminiError::parse(body).unwrap();
        assert_eq!(e.retry_delay(), None);
    }

    /// A real 429 of the free tier, as Google sends it.
    const QUOTA_429: &str = r#"{"error":{"code":429,"message":"You exceeded your current quota. Please retry in 41.5s.","status":"RESOURCE_EXHAUSTED","details":[{"@type":"type.googleapis.com/google.rpc.QuotaFailure","violations":[{"quotaMetric":"generativelanguage.googleapis.com/generate_content_free_tier_requests","quotaId":"GenerateRequestsPerDayPerProjectPerModel-FreeTier","quotaDimensions":{"location":"global","model":"gemini-2.0-flash"},"quotaValue":"250"}]},{"@type":"type.googleapis.com/google.rpc.Help","links":[{"description":"Learn more","url":"https://ai.google.dev/gemini-api/docs/rate-limits"}]},{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"41s"}]}}"#;

    #[test]
    fn reads_a_real_429() {
        let e = GeminiError::parse(QUOTA_429.as_bytes()).unwrap();
        assert!(e.is_resource_exhausted());
        assert_eq!(
            e.retry_info().and_then(RetryInfo::delay),
            Some(Duration::from_secs(41))
        );
        // RetryInfo wins over the message's "retry in 41.5s".
        assert_eq!(e.retry_delay(), Some(Duration::from_secs(41)));
        assert_eq!(
            e.quota_ids(),
            ["GenerateRequestsPerDayPerProjectPerModel-FreeTier"]
        );
        let v = e.quota_violations().next().unwrap();
        assert!(v.is_per_day() && !v.is_per_minute());
        assert_eq!(v.model(), Some("gemini-2.0-flash"));
        assert_eq!(v.limit(), Some(250));
        assert_eq!(e.reason(), None);
        assert_eq!(
            e.details()[1].type_url(),
            Some("type.googleapis.com/google.rpc.Help")
        );
        // Read and written again, it is the same JSON.
        let again: Value = serde_json::from_str(QUOTA_429).unwrap();
        assert_eq!(e.to_json(), again);
    }

    #[test]
    fn reads_the_reason_of_an_invalid_key() {
        let body = br#"{"error":{"code":400,"message":"API key not valid. Please pass a valid API key.","status":"INVALID_ARGUMENT","details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"API_KEY_INVALID","domain":"googleapis.com","metadata":{"service":"generativelanguage.googleapis.com"}}]}}"#;
        let e = GeminiError::parse(body).unwrap();
        assert_eq!(e.reason(), Some("API_KEY_INVALID"));
        assert_eq!(e.status(), "INVALID_ARGUMENT");
        assert_eq!(e.code(), 400);
        assert!(e.is_api_key_invalid());
        assert_eq!(
            e.error_info().unwrap().metadata["service"],
            "generativelanguage.googleapis.com"
        );
        assert_eq!(e.retry_info(), None);
        assert!(e.quota_ids().is_empty());
    }

    #[test]
    fn reads_details_inside_the_array_wrapper() {
        let wrapped = format!("[{QUOTA_429}]");
        let e = GeminiError::parse(wrapped.as_bytes()).unwrap();
        assert_eq!(e.retry_delay(), Some(Duration::from_secs(41)));
        assert_eq!(e.quota_ids().len(), 1);
    }

    #[test]
    fn parse_tolerates_garbage() {
        for bad in [
            &b""[..],
            b"not json",
            b"<html>502 Bad Gateway</html>",
            b"{}",
            b"[]",
            b"null",
            b"{\"error\":\"string\"}",
            b"{\"error\":{}}",
            b"{\"error\":{\"message\":\"only a message\",\"type\":\"openai\"}}",
            b"{\"candidates\":[]}",
            b"[{\"error\":{}},{\"error\":{}}]",
            b"\xff\xfe",
        ] {
            assert!(GeminiError::parse(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn parse_accepts_a_stream_wrapped_error() {
        let e = GeminiError::parse(b" [{\"error\":{\"code\":503,\"message\":\"The model is overloaded.\",\"status\":\"UNAVAILABLE\"}}]\n").unwrap();
        assert_eq!(e.code(), 503);
        assert_eq!(e.status(), "UNAVAILABLE");
    }

    #[test]
    fn mistyped_known_detail_is_kept_raw() {
        let body = br#"{"error":{"code":400,"message":"m","status":"INVALID_ARGUMENT",
            "details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":42}]}}"#;
        let e = GeminiError::parse(body).unwrap();
        assert!(matches!(e.details()[0], ErrorDetail::Other(_)));
        assert_eq!(e.details()[0].type_url(), Some(ERROR_INFO_TYPE));
        assert_eq!(e.reason(), None);
        let again: Value = serde_json::from_slice(body).unwrap();
        assert_eq!(e.to_json(), again);
    }

    #[test]
    fn builds_an_error_response() {
        let res = GeminiError::from_status(StatusCode::TOO_MANY_REQUESTS, "slow down")
            .with_retry_delay(Duration::from_millis(1500))
            .into_response();
        assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(res.headers()[header::RETRY_AFTER], "2");
        assert_eq!(res.headers()[header::CONTENT_TYPE], "application/json");
        let body = res.into_body().as_bytes().cloned().unwrap();
        let e = GeminiError::parse(&body).unwrap();
        assert_eq!(e.status(), "RESOURCE_EXHAUSTED");
        assert_eq!(e.message(), "slow down");
        assert_eq!(e.retry_delay(), Some(Duration::from_millis(1500)));
        assert_eq!(
            e.to_json()["error"]["details"][0],
            serde_json::json!({"@type": RETRY_INFO_TYPE, "retryDelay": "1.500s"})
        );
    }

    #[test]
    fn api_key_invalid_by_reason_or_message() {
        let e =
            GeminiError::new(400, "anything", "INVALID_ARGUMENT").with_reason("API_KEY_INVALID");
        assert!(e.is_api_key_invalid());
        let e = GeminiError::new(
            400,
            "API key not valid. Please pass a valid API key.",
            "INVALID_ARGUMENT",
        );
        assert!(e.is_api_key_invalid());
        // A reason that says otherwise wins over the message.
        let e = GeminiError::new(400, "API key not valid", "INVALID_ARGUMENT").with_reason("OTHER");
        assert!(!e.is_api_key_invalid());
        let e = GeminiError::new(400, "Invalid JSON payload", "INVALID_ARGUMENT");
        assert!(!e.is_api_key_invalid());
    }

    #[test]
    fn display_scrubs_keys() {
        let e = GeminiError::new(
            400,
            "bad key api_key:AIzaSyA1234567890abcdefghijklmnopqrstuv",
            "INVALID_ARGUMENT",
        );
        assert!(
            !e.to_string()
                .contains("AIzaSyA1234567890abcdefghijklmnopqrstuv")
        );
    }
}
