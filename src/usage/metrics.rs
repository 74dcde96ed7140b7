//! `MetricsSink`: usage records as Prometheus metrics (through the `metrics` facade).

use std::collections::HashSet;
use std::fmt;
use std::sync::Mutex;

use metrics::{Recorder, counter, gauge, histogram};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};

use super::record::{UsageRecord, UsageSink};

/// Distinct model labels kept; later models are labelled `other` (client-chosen model names
/// must not grow the series without bound).
const MAX_MODEL_LABELS: usize = 128;
/// Buckets of the request duration histogram, in seconds.
const DURATION_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// Requests, by `route`, `model` and `status` (each request counted once, when it ends).
pub(crate) const REQUESTS_TOTAL: &str = "gemini_gateway_requests_total";
/// Request duration until the body ended, by `route`, `model` and `status`.
pub(crate) const REQUEST_DURATION: &str = "gemini_gateway_request_duration_seconds";
/// Tokens, by `model` and `type` (`prompt`, `output`, `thoughts`, `cached`, `total`).
pub(crate) const TOKENS_TOTAL: &str = "gemini_gateway_tokens_total";
/// Requests answered through each upstream key, by `key` (the key id, a fingerprint).
pub(crate) const KEY_REQUESTS_TOTAL: &str = "gemini_gateway_key_requests_total";
/// Upstream calls, retries and resumes included, by `key`.
pub(crate) const UPSTREAM_ATTEMPTS_TOTAL: &str = "gemini_gateway_upstream_attempts_total";
/// Streams (or cut-off answers) resumed, by `model`.
pub(crate) const RESUMES_TOTAL: &str = "gemini_gateway_stream_resumes_total";
/// Requests refused by a rate limit of the gateway, by `route`.
pub(crate) const RATE_LIMITED_TOTAL: &str = "gemini_gateway_rate_limited_total";
/// Responses whose body did not end normally (client gone, stream failed), by `route`.
pub(crate) const INCOMPLETE_TOTAL: &str = "gemini_gateway_incomplete_responses_total";
/// Upstream keys, by `state` (`enabled`, `cooling`, `disabled`, `probing`).
pub(crate) const KEYS: &str = "gemini_gateway_keys";
/// Requests in flight.
pub(crate) const IN_FLIGHT: &str = "gemini_gateway_requests_in_flight";

enum Target {
    Global,
    Prometheus(Box<PrometheusRecorder>, PrometheusHandle),
}

/// A [`UsageSink`] that turns each record into Prometheus metrics: request counters and a
/// duration histogram by route/model/status, token counters, per-key counters, resumes,
/// rate-limit refusals. Labels never hold a secret: keys appear as their id (a fingerprint),
/// clients not at all, and model names are checked and capped.
///
/// | metric | labels |
/// |---|---|
/// | `gemini_gateway_requests_total` (counter) | `route`, `model`, `status` |
/// | `gemini_gateway_request_duration_seconds` (histogram, until the body ended) | `route`, `model`, `status` |
/// | `gemini_gateway_tokens_total` | `model`, `type` (`prompt`, `output`, `thoughts`, `cached`, `total`) |
/// | `gemini_gateway_key_requests_total`, `gemini_gateway_upstream_attempts_total` | `key` (the id) |
/// | `gemini_gateway_stream_resumes_total` | `model` |
/// | `gemini_gateway_rate_limited_total`, `gemini_gateway_incomplete_responses_total` | `route` |
/// | `gemini_gateway_keys` (gauge, [`set_key_states`](Self::set_key_states)) | `state` |
/// | `gemini_gateway_requests_in_flight` (gauge, [`set_in_flight`](Self::set_in_flight)) | |
///
/// [`MetricsSink::prometheus`] keeps its own registry and renders it with
/// [`render`](MetricsSink::render) (several gateways in one process never mix their counts);
/// [`MetricsSink::global`] records through whatever recorder the program installed.
///
/// ```
/// use tower_gemini::usage::{MetricsSink, UsageRecord, UsageSink};
///
/// let metrics = MetricsSink::prometheus();
/// metrics.record(&UsageRecord::new("generateContent", "gemini-2.5-flash").with_status(200));
/// let text = metrics.render().unwrap();
/// assert!(text.contains(
///     r#"gemini_gateway_requests_total{route="generateContent",model="gemini-2.5-flash",status="200"} 1"#
/// ));
/// ```
pub struct MetricsSink {
    target: Target,
    models: Mutex<HashSet<String>>,
}

impl fmt::Debug for MetricsSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let target = match self.target {
            Target::Global => "global",
            Target::Prometheus(..) => "prometheus",
        };
        f.debug_struct("MetricsSink")
            .field("target", &target)
            .finish_non_exhaustive()
    }
}

impl MetricsSink {
    /// A sink with its own Prometheus registry; read it with [`render`](Self::render).
    pub fn prometheus() -> Self {
        // The bucket list is a non-empty constant, so this cannot fail; keep summaries if it did.
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("seconds".into()), &DURATION_BUCKETS)
            .unwrap_or_else(|_| PrometheusBuilder::new());
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        Self {
            target: Target::Prometheus(Box::new(recorder), handle),
            models: Mutex::default(),
        }
    }

    /// A sink recording through the globally installed `metrics` recorder.
    pub fn global() -> Self {
        Self {
            target: Target::Global,
            models: Mutex::default(),
        }
    }

    fn with<T>(&self, f: impl FnOnce() -> T) -> T {
        match &self.target {
            Target::Global => f(),
            Target::Prometheus(r, _) => metrics::with_local_recorder(&**r as &dyn Recorder, f),
        }
    }

    /// The Prometheus text exposition of everything recorded (`None` for [`global`](Self::global)).
    pub fn render(&self) -> Option<String> {
        match &self.target {
            Target::Global => None,
            Target::Prometheus(_, handle) => {
                handle.run_upkeep();
                Some(handle.render())
            }
        }
    }

    /// Sets the requests-in-flight gauge (call it before rendering).
    pub fn set_in_flight(&self, n: usize) {
        self.with(|| gauge!(IN_FLIGHT).set(n as f64));
    }

    /// Sets the key state gauges from the pool (call it before rendering).
    #[cfg(feature = "key-rotation")]
    #[cfg_attr(docsrs, doc(cfg(feature = "key-rotation")))]
    pub fn set_key_states(&self, pool: &crate::key_rotation::KeyPool) {
        use crate::key_rotation::KeyState;
        let mut counts = [0u32; 4];
        for k in pool.snapshot() {
            let i = match k.state {
                KeyState::Enabled if k.cooling.is_empty() && k.resting.is_none() => 0,
                KeyState::Enabled => 1,
                KeyState::Probing { .. } => 3,
                _ => 2,
            };
            counts[i] += 1;
        }
        self.with(|| {
            for (state, n) in ["enabled", "cooling", "disabled", "probing"]
                .into_iter()
                .zip(counts)
            {
                gauge!(KEYS, "state" => state).set(f64::from(n));
            }
        });
    }

    /// The model as a label: a plausible model name, at most [`MAX_MODEL_LABELS`] of them.
    fn model_label(&self, model: &str) -> String {
        if model.is_empty() {
            return "none".to_owned();
        }
        let plausible = model.len() <= 64
            && model
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
            && crate::secret::scrub(model) == model;
        if !plausible {
            return "invalid".to_owned();
        }
        let mut seen = self.models.lock().unwrap_or_else(|p| p.into_inner());
        if seen.contains(model) {
            return model.to_owned();
        }
        if seen.len() < MAX_MODEL_LABELS {
            seen.insert(model.to_owned());
            return model.to_owned();
        }
        "other".to_owned()
    }
}

/// Key ids are fingerprints; anything else (a custom sink's id) is not put in a label.
fn key_label(id: &str) -> String {
    let ok = id.len() <= 24 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if ok {
        id.to_owned()
    } else {
        "invalid".to_owned()
    }
}

impl UsageSink for MetricsSink {
    fn record(&self, r: &UsageRecord) {
        let model = self.model_label(&r.model);
        let route = r.route.clone();
        let status = r.status.to_string();
        self.with(|| {
            let labels = [
                ("route", route.clone()),
                ("model", model.clone()),
                ("status", status),
            ];
            counter!(REQUESTS_TOTAL, &labels).increment(1);
            histogram!(REQUEST_DURATION, &labels).record(r.duration.as_secs_f64());
            if let Some(t) = r.tokens {
                for (kind, n) in [
                    ("prompt", t.prompt),
                    ("output", t.output),
                    ("thoughts", t.thoughts),
                    ("cached", t.cached),
                    ("total", t.total),
                ] {
                    counter!(TOKENS_TOTAL, "model" => model.clone(), "type" => kind).increment(n);
                }
            }
            if let Some(key) = &r.key_id {
                let key = key_label(key);
                counter!(KEY_REQUESTS_TOTAL, "key" => key.clone()).increment(1);
                counter!(UPSTREAM_ATTEMPTS_TOTAL, "key" => key)
                    .increment(u64::from(r.upstream_attempts));
            }
            if r.resumes > 0 {
                counter!(RESUMES_TOTAL, "model" => model.clone()).increment(u64::from(r.resumes));
            }
            if r.rate_limited {
                counter!(RATE_LIMITED_TOTAL, "route" => route.clone()).increment(1);
            }
            if !r.completed {
                counter!(INCOMPLETE_TOTAL, "route" => route).increment(1);
            }
        });
    }
}
