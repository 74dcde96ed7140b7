//! What an upstream answer means for the key that sent it, read from the status and the
//! crate's one reading of Gemini error bodies, [`GeminiError`].

use std::time::Duration;

use http::StatusCode;

use crate::gemini::{GeminiError, QuotaViolation, RetryInfo};

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
    /// 404 for the model on this key while the model exists ("no longer available to new
    /// users"): the (key, model) pair is set aside like a long cool-down; other keys are tried
    /// and the key keeps serving other models.
    ModelUnavailable,
    /// The client's fault (or nothing to do with the key): return it, no retry.
    Final,
}

impl Outcome {
    /// [`classify`](Self::classify) for a call to `model`'s methods: a 404 `NOT_FOUND` whose
    /// error names the model (Google's "models/{model} is no longer available to new users",
    /// or "not found" for a model this key's project cannot see) is [`ModelUnavailable`]
    /// (Self::ModelUnavailable), so other keys are tried; if every key answers so, the last 404
    /// reaches the client as Google sent it.
    pub(crate) fn classify_model_call(
        status: StatusCode,
        error: Option<&GeminiError>,
        model: &str,
    ) -> Outcome {
        if status == StatusCode::NOT_FOUND
            && !model.is_empty()
            && let Some(e) = error
            && e.status() == "NOT_FOUND"
            && e.message().contains(&format!("models/{model}"))
            && !is_about_a_resource(e)
        {
            return Outcome::ModelUnavailable;
        }
        Outcome::classify_for(status, error, false)
    }

    /// Classifies an upstream answer from its status and its error body, when that parsed.
    #[cfg(test)]
    pub(crate) fn classify(status: StatusCode, error: Option<&GeminiError>) -> Outcome {
        Self::classify_for(status, error, false)
    }

    /// Classifies an upstream answer to a request that names a project-bound resource
    /// (`names_resource`: a file, cached content, batch, operation or upload) or not. A 403 or
    /// 404 about a resource is the request's fault (the resource lives in another project, or
    /// not at all): [`Outcome::Final`], never a key failure, so no healthy key is disabled for
    /// it. The error text counts too: Google's "You do not have permission to access the File
    /// ... or it may not exist" names a resource whatever the request looked like.
    pub(crate) fn classify_for(
        status: StatusCode,
        error: Option<&GeminiError>,
        names_resource: bool,
    ) -> Outcome {
        let reason = error.and_then(GeminiError::reason);
        if matches!(status.as_u16(), 403 | 404)
            && (names_resource || error.is_some_and(is_about_a_resource))
        {
            return Outcome::Final;
        }
        match status.as_u16() {
            200..=299 => Outcome::Success,
            429 => Outcome::Exhausted {
                // RetryInfo only: without it the pool's own cool-down applies, not a hint
                // read from the message.
                retry_delay: error
                    .and_then(|e| e.retry_info())
                    .and_then(RetryInfo::delay),
                per_day: error
                    .is_some_and(|e| e.quota_violations().any(QuotaViolation::is_per_day)),
            },
            400 => match error {
                Some(e) if e.is_api_key_invalid() => Outcome::KeyFailure {
                    reason: "API_KEY_INVALID".to_owned(),
                },
                Some(e) if e.status() == "FAILED_PRECONDITION" => Outcome::KeyFailure {
                    reason: format!(
                        "FAILED_PRECONDITION ({})",
                        short(reason.unwrap_or("FAILED_PRECONDITION"))
                    ),
                },
                _ => Outcome::Final,
            },
            401 => Outcome::KeyFailure {
                reason: reason_or(reason, "UNAUTHENTICATED"),
            },
            403 => Outcome::KeyFailure {
                reason: reason_or(reason, "PERMISSION_DENIED"),
            },
            500 | 502 | 503 | 504 => Outcome::Transient,
            _ => Outcome::Final,
        }
    }
}

/// Whether an error's text is about a resource the key's project cannot see, not the key.
fn is_about_a_resource(e: &GeminiError) -> bool {
    let m = e.message();
    m.contains("or it may not exist")
        || (m.contains("permission to access")
            && [
                "File",
                "CachedContent",
                "Batch",
                "Operation",
                "files/",
                "cachedContents/",
            ]
            .iter()
            .any(|r| m.contains(r)))
}

fn reason_or(reason: Option<&str>, status: &str) -> String {
    match reason {
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

    fn parse(body: &str) -> Option<GeminiError> {
        GeminiError::parse(body.as_bytes())
    }

    #[test]
    fn a_real_429_cools_the_key_for_its_retry_delay() {
        let e = parse(QUOTA_429).unwrap();
        assert_eq!(e.status(), "RESOURCE_EXHAUSTED");
        assert_eq!(
            e.quota_ids(),
            ["GenerateRequestsPerMinutePerProjectPerModel-FreeTier"]
        );
        assert_eq!(
            Outcome::classify(StatusCode::TOO_MANY_REQUESTS, Some(&e)),
            Outcome::Exhausted {
                retry_delay: Some(Duration::from_secs(12)),
                per_day: false
            }
        );
    }

    #[test]
    fn fractional_retry_delays_are_kept() {
        let body = QUOTA_429.replace("\"12s\"", "\"1.5s\"");
        assert_eq!(
            Outcome::classify(StatusCode::TOO_MANY_REQUESTS, parse(&body).as_ref()),
            Outcome::Exhausted {
                retry_delay: Some(Duration::from_millis(1500)),
                per_day: false
            }
        );
    }

    #[test]
    fn the_message_hint_alone_is_not_a_retry_delay() {
        // The pool's cool-down applies unless RetryInfo says otherwise.
        let body = r#"{"error":{"code":429,"message":"Please retry in 12.5s.","status":"RESOURCE_EXHAUSTED"}}"#;
        assert_eq!(
            Outcome::classify(StatusCode::TOO_MANY_REQUESTS, parse(body).as_ref()),
            Outcome::Exhausted {
                retry_delay: None,
                per_day: false
            }
        );
    }

    #[test]
    fn per_day_quota_is_recognised() {
        let body = QUOTA_429.replace("PerMinute", "PerDay");
        assert!(matches!(
            Outcome::classify(StatusCode::TOO_MANY_REQUESTS, parse(&body).as_ref()),
            Outcome::Exhausted { per_day: true, .. }
        ));
    }

    #[test]
    fn invalid_key_is_a_key_failure_other_400_is_final() {
        let c = |body: &str| Outcome::classify(StatusCode::BAD_REQUEST, parse(body).as_ref());
        assert_eq!(
            c(INVALID_KEY),
            Outcome::KeyFailure {
                reason: "API_KEY_INVALID".to_owned()
            }
        );
        // The same error in the one-element array a non-SSE stream wraps it in.
        assert!(matches!(
            c(&format!("[{INVALID_KEY}]")),
            Outcome::KeyFailure { .. }
        ));
        let other = r#"{"error":{"code":400,"message":"Invalid JSON payload","status":"INVALID_ARGUMENT"}}"#;
        assert_eq!(c(other), Outcome::Final);
        let precondition = r#"{"error":{"code":400,"message":"User location is not supported","status":"FAILED_PRECONDITION"}}"#;
        assert!(matches!(c(precondition), Outcome::KeyFailure { .. }));
    }

    #[test]
    fn reasons_name_the_key_failure() {
        let body = r#"{"error":{"code":403,"message":"m","status":"PERMISSION_DENIED","details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"API_KEY_SERVICE_BLOCKED <b>"}]}}"#;
        assert_eq!(
            Outcome::classify(StatusCode::FORBIDDEN, parse(body).as_ref()),
            Outcome::KeyFailure {
                reason: "PERMISSION_DENIED (API_KEY_SERVICE_BLOCKEDb)".to_owned()
            }
        );
    }

    #[test]
    fn a_403_about_a_resource_is_the_requests_fault() {
        let body = r#"{"error":{"code":403,"message":"You do not have permission to access the File abc or it may not exist.","status":"PERMISSION_DENIED"}}"#;
        assert_eq!(
            Outcome::classify(StatusCode::FORBIDDEN, parse(body).as_ref()),
            Outcome::Final
        );
        // Any 403 or 404 on a request that names a resource.
        let plain = r#"{"error":{"code":403,"message":"denied","status":"PERMISSION_DENIED"}}"#;
        assert_eq!(
            Outcome::classify_for(StatusCode::FORBIDDEN, parse(plain).as_ref(), true),
            Outcome::Final
        );
        assert!(matches!(
            Outcome::classify_for(StatusCode::FORBIDDEN, parse(plain).as_ref(), false),
            Outcome::KeyFailure { .. }
        ));
    }

    #[test]
    fn statuses_without_bodies() {
        let c = |s: u16| Outcome::classify(StatusCode::from_u16(s).unwrap(), None);
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
    fn garbage_bodies_classify_by_status_alone() {
        for garbage in ["not json", "{}", "<html>403</html>", "[1,2]"] {
            let e = parse(garbage);
            assert!(e.is_none(), "{garbage}");
            assert_eq!(
                Outcome::classify(StatusCode::BAD_REQUEST, e.as_ref()),
                Outcome::Final
            );
            assert_eq!(
                Outcome::classify(StatusCode::FORBIDDEN, e.as_ref()),
                Outcome::KeyFailure {
                    reason: "PERMISSION_DENIED".to_owned()
                }
            );
        }
    }

    #[test]
    fn a_404_naming_the_model_sets_the_pair_aside_any_other_404_is_final() {
        let refused = parse(
            r#"{"error":{"code":404,"message":"This model models/gemini-2.5-flash is no longer available to new users.","status":"NOT_FOUND"}}"#,
        );
        let not_found = StatusCode::NOT_FOUND;
        assert_eq!(
            Outcome::classify_model_call(not_found, refused.as_ref(), "gemini-2.5-flash"),
            Outcome::ModelUnavailable
        );
        // Another model's name, a file, or no body: the request's business.
        assert_eq!(
            Outcome::classify_model_call(not_found, refused.as_ref(), "gemini-2.5-pro"),
            Outcome::Final
        );
        let file = parse(
            r#"{"error":{"code":404,"message":"File files/abc was not found.","status":"NOT_FOUND"}}"#,
        );
        assert_eq!(
            Outcome::classify_model_call(not_found, file.as_ref(), "gemini-2.5-flash"),
            Outcome::Final
        );
        assert_eq!(
            Outcome::classify_model_call(not_found, None, "gemini-2.5-flash"),
            Outcome::Final
        );
    }
}
