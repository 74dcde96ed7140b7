//! What an upstream answer means for the key that sent it.
//!
//! A small private parser of Gemini error bodies over `serde_json::Value`: the `status`, the
//! `ErrorInfo` reason, the `RetryInfo` delay and the `QuotaFailure` quota ids. It may later be
//! replaced by the crate's typed Gemini error structs.

use std::time::Duration;

use http::StatusCode;
use serde_json::Value;

/// The parts of a Gemini error body that matter for key rotation.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct ErrorDetails {
    /// `error.status`, e.g. `RESOURCE_EXHAUSTED`.
    pub(crate) status: Option<String>,
    /// `ErrorInfo.reason`, e.g. `API_KEY_INVALID`.
    pub(crate) reason: Option<String>,
    /// `RetryInfo.retryDelay`.
    pub(crate) retry_delay: Option<Duration>,
    /// `QuotaFailure.violations[].quotaId`.
    pub(crate) quota_ids: Vec<String>,
}

impl ErrorDetails {
    /// Parses a Gemini error body; anything unexpected gives empty details.
    pub(crate) fn parse(body: &[u8]) -> ErrorDetails {
        let Ok(v) = serde_json::from_slice::<Value>(body) else {
            return ErrorDetails::default();
        };
        // Some front ends wrap the error in a one-element array.
        let error = match &v {
            Value::Array(items) => items.first().and_then(|i| i.get("error")),
            other => other.get("error"),
        };
        let Some(error) = error else {
            return ErrorDetails::default();
        };
        let mut out = ErrorDetails {
            status: error
                .get("status")
                .and_then(Value::as_str)
                .map(str::to_owned),
            ..ErrorDetails::default()
        };
        let details = error.get("details").and_then(Value::as_array);
        for detail in details.into_iter().flatten() {
            let ty = detail.get("@type").and_then(Value::as_str).unwrap_or("");
            if ty.ends_with("google.rpc.ErrorInfo") {
                if let Some(reason) = detail.get("reason").and_then(Value::as_str) {
                    out.reason = Some(reason.to_owned());
                }
            } else if ty.ends_with("google.rpc.RetryInfo") {
                out.retry_delay = detail
                    .get("retryDelay")
                    .and_then(Value::as_str)
                    .and_then(parse_proto_duration);
            } else if ty.ends_with("google.rpc.QuotaFailure") {
                let violations = detail.get("violations").and_then(Value::as_array);
                out.quota_ids.extend(
                    violations
                        .into_iter()
                        .flatten()
                        .filter_map(|v| v.get("quotaId").and_then(Value::as_str))
                        .map(str::to_owned),
                );
            }
        }
        out
    }

    /// Whether a quota violation is a daily one (reset at midnight Pacific time).
    pub(crate) fn is_per_day(&self) -> bool {
        self.quota_ids.iter().any(|id| id.contains("PerDay"))
    }
}

/// Parses a protobuf JSON Duration such as `"12s"` or `"1.5s"`.
pub(crate) fn parse_proto_duration(s: &str) -> Option<Duration> {
    let secs: f64 = s.trim().strip_suffix('s')?.parse().ok()?;
    if !secs.is_finite() || !(0.0..=1e9).contains(&secs) {
        return None;
    }
    Some(Duration::from_secs_f64(secs))
}

/// What one upstream answer means for the key and for the request.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Outcome {
    /// 2xx.
    Success,
    /// 429: cool the (key, model) pair down; retry on another key at once.
    Exhausted {
        /// `RetryInfo.retryDelay`, when given.
        retry_delay: Option<Duration>,
        /// A daily quota: park until the daily reset.
        per_day: bool,
    },
    /// The key is invalid, suspended or not allowed: count a failure; retry on another key.
    KeyFailure {
        /// Why, for the key's state (no secret: a status or reason name).
        reason: String,
    },
    /// Google's side or the transport: retry with a small backoff; counts against the key only
    /// when it repeats (see `KeyPoolBuilder::max_transient_failures`).
    Transient,
    /// The client's fault (or nothing to do with the key): return it, no retry.
    Final,
}

impl Outcome {
    /// Classifies an upstream answer from its status and (bounded, maybe absent) error body.
    pub(crate) fn classify(status: StatusCode, details: &ErrorDetails) -> Outcome {
        match status.as_u16() {
            200..=299 => Outcome::Success,
            429 => Outcome::Exhausted {
                retry_delay: details.retry_delay,
                per_day: details.is_per_day(),
            },
            400 => {
                if details.reason.as_deref() == Some("API_KEY_INVALID") {
                    Outcome::KeyFailure {
                        reason: "API_KEY_INVALID".to_owned(),
                    }
                } else if details.status.as_deref() == Some("FAILED_PRECONDITION") {
                    let reason = details.reason.as_deref().unwrap_or("FAILED_PRECONDITION");
                    Outcome::KeyFailure {
                        reason: format!("FAILED_PRECONDITION ({})", short(reason)),
                    }
                } else {
                    Outcome::Final
                }
            }
            401 => Outcome::KeyFailure {
                reason: reason_or(details, "UNAUTHENTICATED"),
            },
            403 => Outcome::KeyFailure {
                reason: reason_or(details, "PERMISSION_DENIED"),
            },
            500 | 502 | 503 | 504 => Outcome::Transient,
            _ => Outcome::Final,
        }
    }
}

fn reason_or(details: &ErrorDetails, status: &str) -> String {
    match &details.reason {
        Some(r) => format!("{status} ({})", short(r)),
        None => status.to_owned(),
    }
}

/// Reason names are short upper-case words; keep anything else from growing the state.
fn short(s: &str) -> String {
    let clean: String = s
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '.')
        .take(64)
        .collect();
    clean
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const QUOTA_429: &str = r#"{"error":{"code":429,"message":"You exceeded your current quota. Please retry in 12.5s.","status":"RESOURCE_EXHAUSTED","details":[{"@type":"type.googleapis.com/google.rpc.QuotaFailure","violations":[{"quotaMetric":"generativelanguage.googleapis.com/generate_content_free_tier_requests","quotaId":"GenerateRequestsPerMinutePerProjectPerModel-FreeTier","quotaDimensions":{"location":"global","model":"gemini-2.0-flash"},"quotaValue":"15"}]},{"@type":"type.googleapis.com/google.rpc.Help","links":[{"description":"Learn more","url":"https://ai.google.dev/gemini-api/docs/rate-limits"}]},{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"12s"}]}}"#;

    const INVALID_KEY: &str = r#"{"error":{"code":400,"message":"API key not valid. Please pass a valid API key.","status":"INVALID_ARGUMENT","details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"API_KEY_INVALID","domain":"googleapis.com","metadata":{"service":"generativelanguage.googleapis.com"}}]}}"#;

    #[test]
    fn parses_a_real_429() {
        let d = ErrorDetails::parse(QUOTA_429.as_bytes());
        assert_eq!(d.status.as_deref(), Some("RESOURCE_EXHAUSTED"));
        assert_eq!(d.retry_delay, Some(Duration::from_secs(12)));
        assert!(!d.is_per_day());
        assert_eq!(
            Outcome::classify(StatusCode::TOO_MANY_REQUESTS, &d),
            Outcome::Exhausted {
                retry_delay: Some(Duration::from_secs(12)),
                per_day: false
            }
        );
    }

    #[test]
    fn fractional_and_bad_durations() {
        assert_eq!(
            parse_proto_duration("1.5s"),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(parse_proto_duration("0s"), Some(Duration::ZERO));
        assert_eq!(parse_proto_duration("12"), None);
        assert_eq!(parse_proto_duration("-1s"), None);
        assert_eq!(parse_proto_duration("NaNs"), None);
    }

    #[test]
    fn per_day_quota_is_recognised() {
        let body = QUOTA_429.replace("PerMinute", "PerDay");
        assert!(ErrorDetails::parse(body.as_bytes()).is_per_day());
    }

    #[test]
    fn invalid_key_is_a_key_failure_other_400_is_final() {
        let d = ErrorDetails::parse(INVALID_KEY.as_bytes());
        assert!(matches!(
            Outcome::classify(StatusCode::BAD_REQUEST, &d),
            Outcome::KeyFailure { .. }
        ));
        let other = r#"{"error":{"code":400,"message":"Invalid JSON payload","status":"INVALID_ARGUMENT"}}"#;
        let d = ErrorDetails::parse(other.as_bytes());
        assert_eq!(
            Outcome::classify(StatusCode::BAD_REQUEST, &d),
            Outcome::Final
        );
        let precondition = r#"{"error":{"code":400,"message":"User location is not supported","status":"FAILED_PRECONDITION"}}"#;
        let d = ErrorDetails::parse(precondition.as_bytes());
        assert!(matches!(
            Outcome::classify(StatusCode::BAD_REQUEST, &d),
            Outcome::KeyFailure { .. }
        ));
    }

    #[test]
    fn statuses_without_bodies() {
        let none = ErrorDetails::default();
        let c = |s: u16| Outcome::classify(StatusCode::from_u16(s).unwrap(), &none);
        assert_eq!(c(200), Outcome::Success);
        assert!(matches!(c(401), Outcome::KeyFailure { .. }));
        assert!(matches!(c(403), Outcome::KeyFailure { .. }));
        assert_eq!(c(503), Outcome::Transient);
        assert_eq!(c(500), Outcome::Transient);
        assert_eq!(c(404), Outcome::Final);
        assert_eq!(c(400), Outcome::Final);
        assert!(matches!(
            c(429),
            Outcome::Exhausted {
                retry_delay: None,
                per_day: false
            }
        ));
    }

    #[test]
    fn garbage_bodies_give_no_details() {
        assert_eq!(ErrorDetails::parse(b"not json"), ErrorDetails::default());
        assert_eq!(ErrorDetails::parse(b"{}"), ErrorDetails::default());
        assert_eq!(
            ErrorDetails::parse(br#"[{"error":{"status":"UNAVAILABLE"}}]"#)
                .status
                .as_deref(),
            Some("UNAVAILABLE")
        );
    }
}
