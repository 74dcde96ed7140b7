//! `MetricsSink`: usage records as Prometheus metrics (through the `metrics` facade).

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, RwLock};

use metrics::{Counter, Histogram, Recorder, counter, gauge, histogram};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};

use super::record::{UsageRecord, UsageSink};

/// Distinct model labels kept; later models are labelled `other` (client-chosen model names
/// must not grow the series without bound).
const MAX_MODEL_LABELS: usize = 128;
/// Key labels whose counters are kept at hand; further keys are looked up on each record.
const MAX_CACHED_KEYS: usize = 1024;
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
/// Requests of each client token, by `account` (the token id, `tok_…`; never the token).
pub(crate) const ACCOUNT_REQUESTS_TOTAL: &str = "gemini_gateway_account_requests_total";
/// Tokens (prompt + output + thoughts) used by each client token, by `account`.
pub(crate) const ACCOUNT_TOKENS_TOTAL: &str = "gemini_gateway_account_tokens_total";
/// Distinct account labels kept; further accounts are labelled `other`.
const MAX_ACCOUNT_LABELS: usize = 1024;
/// Upstream keys, by `state` (`enabled`, `cooling`, `disabled`, `probing`).
#[cfg(feature = "key-rotation")]
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
/// client tokens as their id (`tok_…`, a hash; anything else is `other`), and model names are
/// checked and capped.
///
/// | metric | labels |
/// |---|---|
/// | `gemini_gateway_requests_total` (counter) | `route`, `model`, `status` |
/// | `gemini_gateway_request_duration_seconds` (histogram, until the body ended) | `route`, `model`, `status` |
/// | `gemini_gateway_tokens_total` | `model`, `type` (`prompt`, `output`, `thoughts`, `cached`, `total`) |
/// | `gemini_gateway_key_requests_total`, `gemini_gateway_upstream_attempts_total` | `key` (the id) |
/// | `gemini_gateway_account_requests_total`, `gemini_gateway_account_tokens_total` (prompt + output + thoughts) | `account` (the token id `tok_…`, at most 1024, then `other`) |
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
    /// Metric handles already registered, so that recording a request is a few atomic adds
    /// instead of a registry look-up (label hashing and allocation) per metric.
    handles: RwLock<Handles>,
}

/// The registered handles, by label.
#[derive(Default)]
struct Handles {
    /// By model label (`none`, `invalid` and `other` included).
    models: HashMap<String, Arc<ModelHandles>>,
    /// Plausible model names seen (capped at [`MAX_MODEL_LABELS`]).
    real_models: usize,
    /// By key label: requests, upstream attempts.
    keys: HashMap<String, Arc<[Counter; 2]>>,
    /// By account label: requests, tokens.
    accounts: HashMap<String, Arc<[Counter; 2]>>,
    /// By route: rate limited, incomplete.
    routes: HashMap<String, Arc<[Counter; 2]>>,
}

/// The handles of one model label.
struct ModelHandles {
    label: String,
    /// `prompt`, `output`, `thoughts`, `cached`, `total`.
    tokens: [Counter; 5],
    resumes: Counter,
    /// By route and status: requests and durations.
    requests: RwLock<Vec<(String, u16, Counter, Histogram)>>,
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
            handles: RwLock::default(),
        }
    }

    /// A sink recording through the globally installed `metrics` recorder. Each series is
    /// registered once, on its first record, so install the recorder before the first request.
    pub fn global() -> Self {
        Self {
            target: Target::Global,
            handles: RwLock::default(),
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

    /// The model as a label: a plausible model name, at most [`MAX_MODEL_LABELS`] of them,
    /// else `none`, `invalid` or `other`; with the label's handles.
    fn model_handles(&self, model: &str) -> Arc<ModelHandles> {
        let plausible = !model.is_empty()
            && model.len() <= 64
            && model
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
            && crate::secret::scrub(model) == model;
        let label = match model {
            "" => "none",
            _ if !plausible => "invalid",
            m => m,
        };
        if let Some(h) = read(&self.handles).models.get(label) {
            return h.clone();
        }
        let mut handles = write(&self.handles);
        if let Some(h) = handles.models.get(label) {
            return h.clone();
        }
        let label = if !plausible || handles.real_models < MAX_MODEL_LABELS {
            label
        } else {
            "other"
        };
        if let Some(h) = handles.models.get(label) {
            return h.clone();
        }
        if plausible && label != "other" {
            handles.real_models += 1;
        }
        let owned = label.to_owned();
        let h = self.with(|| {
            let kind =
                |k: &'static str| counter!(TOKENS_TOTAL, "model" => owned.clone(), "type" => k);
            Arc::new(ModelHandles {
                tokens: [
                    kind("prompt"),
                    kind("output"),
                    kind("thoughts"),
                    kind("cached"),
                    kind("total"),
                ],
                resumes: counter!(RESUMES_TOTAL, "model" => owned.clone()),
                requests: RwLock::default(),
                label: owned.clone(),
            })
        });
        handles.models.insert(owned, h.clone());
        h
    }

    /// The request counter and duration histogram of `route`, `model` and `status`.
    fn request_handles(
        &self,
        model: &str,
        m: &ModelHandles,
        route: &str,
        status: u16,
    ) -> (Counter, Histogram) {
        let find = |v: &Vec<(String, u16, Counter, Histogram)>| {
            v.iter()
                .find(|(r, s, ..)| *s == status && r == route)
                .map(|(_, _, c, h)| (c.clone(), h.clone()))
        };
        if let Some(found) = find(&read(&m.requests)) {
            return found;
        }
        let mut v = write(&m.requests);
        if let Some(found) = find(&v) {
            return found;
        }
        let (c, h) = self.with(|| {
            let labels = [
                ("route", route.to_owned()),
                ("model", model.to_owned()),
                ("status", status.to_string()),
            ];
            (
                counter!(REQUESTS_TOTAL, &labels),
                histogram!(REQUEST_DURATION, &labels),
            )
        });
        v.push((route.to_owned(), status, c.clone(), h.clone()));
        (c, h)
    }

    /// The requests and upstream attempts counters of a key label.
    fn key_handles(&self, key: &str) -> Arc<[Counter; 2]> {
        if let Some(h) = read(&self.handles).keys.get(key) {
            return h.clone();
        }
        let h = self.with(|| {
            Arc::new([
                counter!(KEY_REQUESTS_TOTAL, "key" => key.to_owned()),
                counter!(UPSTREAM_ATTEMPTS_TOTAL, "key" => key.to_owned()),
            ])
        });
        let mut handles = write(&self.handles);
        if handles.keys.len() < MAX_CACHED_KEYS {
            handles.keys.insert(key.to_owned(), h.clone());
        }
        h
    }

    /// The requests and tokens counters of a client token id (`other` past the cap, or for
    /// an id that is not a token id).
    fn account_handles(&self, id: &str) -> Arc<[Counter; 2]> {
        let is_token_id = id.len() == 16
            && id.starts_with("tok_")
            && id[4..].bytes().all(|b| b.is_ascii_hexdigit());
        let label = if is_token_id { id } else { "other" };
        if let Some(h) = read(&self.handles).accounts.get(label) {
            return h.clone();
        }
        let mut handles = write(&self.handles);
        let label = if handles.accounts.len() >= MAX_ACCOUNT_LABELS {
            "other"
        } else {
            label
        };
        if let Some(h) = handles.accounts.get(label) {
            return h.clone();
        }
        let h = self.with(|| {
            Arc::new([
                counter!(ACCOUNT_REQUESTS_TOTAL, "account" => label.to_owned()),
                counter!(ACCOUNT_TOKENS_TOTAL, "account" => label.to_owned()),
            ])
        });
        handles.accounts.insert(label.to_owned(), h.clone());
        h
    }

    /// The rate-limited and incomplete counters of a route.
    fn route_handles(&self, route: &str) -> Arc<[Counter; 2]> {
        if let Some(h) = read(&self.handles).routes.get(route) {
            return h.clone();
        }
        let h = self.with(|| {
            Arc::new([
                counter!(RATE_LIMITED_TOTAL, "route" => route.to_owned()),
                counter!(INCOMPLETE_TOTAL, "route" => route.to_owned()),
            ])
        });
        // Routes are a short fixed list (the route names of `UsageLayer`).
        write(&self.handles)
            .routes
            .insert(route.to_owned(), h.clone());
        h
    }
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|p| p.into_inner())
}

/// Key ids are fingerprints; anything else (a custom sink's id) is not put in a label.
fn key_label(id: &str) -> &str {
    let ok = id.len() <= 24 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if ok { id } else { "invalid" }
}

impl UsageSink for MetricsSink {
    fn record(&self, r: &UsageRecord) {
        let model = self.model_handles(&r.model);
        let (requests, duration) = self.request_handles(&model.label, &model, &r.route, r.status);
        requests.increment(1);
        duration.record(r.duration.as_secs_f64());
        if let Some(t) = r.tokens {
            for (c, n) in model
                .tokens
                .iter()
                .zip([t.prompt, t.output, t.thoughts, t.cached, t.total])
            {
                c.increment(n);
            }
        }
        if let Some(key) = &r.key_id {
            let [requests, attempts] = &*self.key_handles(key_label(key));
            requests.increment(1);
            attempts.increment(u64::from(r.upstream_attempts));
        }
        if let Some(client) = &r.client {
            let [requests, tokens] = &*self.account_handles(&client.id);
            requests.increment(1);
            if let Some(t) = &r.tokens {
                tokens.increment(t.billable());
            }
        }
        if r.resumes > 0 {
            model.resumes.increment(u64::from(r.resumes));
        }
        if r.rate_limited || !r.completed {
            let [rate_limited, incomplete] = &*self.route_handles(&r.route);
            if r.rate_limited {
                rate_limited.increment(1);
            }
            if !r.completed {
                incomplete.increment(1);
            }
        }
    }
}
