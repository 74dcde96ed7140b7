//! `UsageStats`: per-model, per-key and per-client totals over rolling windows.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use serde_json::{Map, Value, json};
use tokio::time::Instant;

use super::record::{UsageRecord, UsageSink};

/// Distinct names kept per dimension; further ones are counted under [`OTHER`].
const DEFAULT_MAX_ENTRIES: usize = 512;
/// The name that collects entries past the cap.
pub const OTHER: &str = "(other)";

/// A rolling window of [`UsageStats`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Window {
    /// The last minute, in 60 one-second buckets.
    Minute,
    /// The last hour, in 60 one-minute buckets.
    Hour,
    /// The last day, in 24 one-hour buckets.
    Day,
}

impl Window {
    const ALL: [Window; 3] = [Window::Minute, Window::Hour, Window::Day];

    fn bucket(self) -> Duration {
        match self {
            Window::Minute => Duration::from_secs(1),
            Window::Hour => Duration::from_secs(60),
            Window::Day => Duration::from_secs(3600),
        }
    }

    fn buckets(self) -> usize {
        match self {
            Window::Minute | Window::Hour => 60,
            Window::Day => 24,
        }
    }

    /// The window's name in [`UsageStats::to_json`]: `minute`, `hour` or `day`.
    pub fn as_str(self) -> &'static str {
        match self {
            Window::Minute => "minute",
            Window::Hour => "hour",
            Window::Day => "day",
        }
    }
}

/// What [`UsageStats`] groups requests by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dimension {
    /// The model (requests without one are not counted here).
    Model,
    /// The upstream key id (requests that used no key are not counted here).
    Key,
    /// The client's name (unauthenticated requests are not counted here).
    Client,
    /// The answer's `modelVersion`, the model that served (answers without one are not
    /// counted here).
    ModelVersion,
}

impl Dimension {
    fn index(self) -> usize {
        self as usize
    }

    fn name(self) -> &'static str {
        match self {
            Dimension::Model => "models",
            Dimension::Key => "keys",
            Dimension::Client => "clients",
            Dimension::ModelVersion => "model_versions",
        }
    }
}

/// Counts over one window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    /// Requests.
    pub requests: u64,
    /// Requests answered with a status of 400 or more.
    pub errors: u64,
    /// Total tokens.
    pub tokens: u64,
    /// Prompt tokens.
    pub prompt_tokens: u64,
    /// Output (candidate) tokens.
    pub output_tokens: u64,
    /// Thinking tokens.
    pub thoughts_tokens: u64,
    /// Cached prompt tokens.
    pub cached_tokens: u64,
}

impl Totals {
    fn add(&mut self, o: &Totals) {
        self.requests += o.requests;
        self.errors += o.errors;
        self.tokens = self.tokens.saturating_add(o.tokens);
        self.prompt_tokens = self.prompt_tokens.saturating_add(o.prompt_tokens);
        self.output_tokens = self.output_tokens.saturating_add(o.output_tokens);
        self.thoughts_tokens = self.thoughts_tokens.saturating_add(o.thoughts_tokens);
        self.cached_tokens = self.cached_tokens.saturating_add(o.cached_tokens);
    }

    fn of(record: &UsageRecord) -> Totals {
        let t = record.tokens.unwrap_or_default();
        Totals {
            requests: 1,
            errors: u64::from(record.status >= 400),
            tokens: t.total,
            prompt_tokens: t.prompt,
            output_tokens: t.output,
            thoughts_tokens: t.thoughts,
            cached_tokens: t.cached,
        }
    }

    /// The totals as JSON: `{"requests", "errors", "tokens", "prompt_tokens", ...}`.
    pub fn to_json(&self) -> Value {
        json!({
            "requests": self.requests,
            "errors": self.errors,
            "tokens": self.tokens,
            "prompt_tokens": self.prompt_tokens,
            "output_tokens": self.output_tokens,
            "thoughts_tokens": self.thoughts_tokens,
            "cached_tokens": self.cached_tokens,
        })
    }
}

/// A ring of buckets; each remembers which bucket number it holds, so stale ones read as empty.
#[derive(Clone, Debug)]
struct Ring {
    slots: Vec<(u64, Totals)>,
}

impl Ring {
    fn new(window: Window) -> Self {
        Self {
            slots: vec![(u64::MAX, Totals::default()); window.buckets()],
        }
    }

    fn add(&mut self, bucket: u64, t: &Totals) {
        let len = self.slots.len() as u64;
        let slot = &mut self.slots[(bucket % len) as usize];
        if slot.0 != bucket {
            *slot = (bucket, Totals::default());
        }
        slot.1.add(t);
    }

    fn sum(&self, bucket: u64) -> Totals {
        let len = self.slots.len() as u64;
        let mut out = Totals::default();
        for (b, t) in &self.slots {
            if *b <= bucket && bucket - *b < len {
                out.add(t);
            }
        }
        out
    }
}

/// The three windows of one name.
#[derive(Clone, Debug)]
struct Series {
    rings: [Ring; 3],
    last: Duration,
}

impl Series {
    fn new() -> Self {
        Self {
            rings: Window::ALL.map(Ring::new),
            last: Duration::ZERO,
        }
    }

    fn add(&mut self, now: Duration, t: &Totals) {
        for (ring, w) in self.rings.iter_mut().zip(Window::ALL) {
            ring.add(bucket_of(now, w), t);
        }
        self.last = now;
    }

    fn sum(&self, now: Duration, w: Window) -> Totals {
        let i = Window::ALL.iter().position(|x| *x == w).unwrap_or(0);
        self.rings[i].sum(bucket_of(now, w))
    }
}

fn bucket_of(elapsed: Duration, w: Window) -> u64 {
    (elapsed.as_nanos() / w.bucket().as_nanos()) as u64
}

struct Inner {
    total: Series,
    maps: [HashMap<String, Series>; 4],
    last_sweep: Duration,
}

/// An in-memory [`UsageSink`]: request and token counts per model, per key and per client over
/// the last minute, hour and day, in rolling buckets (one-second, one-minute and one-hour wide),
/// so memory stays bounded whatever the traffic. Names unseen for a day are forgotten; past
/// 512 names per dimension the rest are counted under [`OTHER`].
///
/// ```
/// use tower_gemini::usage::{UsageRecord, UsageSink, UsageStats, Tokens};
///
/// let stats = UsageStats::new();
/// let t = Tokens { prompt: 3, output: 4, total: 7, ..Tokens::default() };
/// stats.record(&UsageRecord::new("generateContent", "gemini-2.5-flash").with_status(200).with_tokens(t));
/// let json = stats.to_json();
/// assert_eq!(json["models"]["gemini-2.5-flash"]["day"]["requests"], 1);
/// assert_eq!(json["models"]["gemini-2.5-flash"]["minute"]["tokens"], 7);
/// ```
pub struct UsageStats {
    start: Instant,
    max_entries: usize,
    inner: Mutex<Inner>,
}

impl Default for UsageStats {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for UsageStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = self.lock();
        f.debug_struct("UsageStats")
            .field("models", &inner.maps[0].len())
            .field("keys", &inner.maps[1].len())
            .field("clients", &inner.maps[2].len())
            .field("model_versions", &inner.maps[3].len())
            .finish()
    }
}

impl UsageStats {
    /// Empty statistics.
    pub fn new() -> Self {
        Self {
            start: Instant::now(),
            max_entries: DEFAULT_MAX_ENTRIES,
            inner: Mutex::new(Inner {
                total: Series::new(),
                maps: Default::default(),
                last_sweep: Duration::ZERO,
            }),
        }
    }

    /// Distinct names kept per dimension (default 512); later ones count under [`OTHER`].
    pub fn max_entries(mut self, n: usize) -> Self {
        self.max_entries = n.max(1);
        self
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn now(&self) -> Duration {
        self.start.elapsed()
    }

    /// The totals of one name over one window (zero when unknown).
    pub fn totals(&self, dimension: Dimension, name: &str, window: Window) -> Totals {
        let now = self.now();
        self.lock().maps[dimension.index()]
            .get(name)
            .map(|s| s.sum(now, window))
            .unwrap_or_default()
    }

    /// The totals of every request over one window.
    pub fn overall(&self, window: Window) -> Totals {
        let now = self.now();
        self.lock().total.sum(now, window)
    }

    /// Everything as JSON: `{"total": {"minute": {...}, "hour": {...}, "day": {...}},
    /// "models": {name: {"minute": ..., "hour": ..., "day": ...}}, "keys": {...},
    /// "clients": {...}, "model_versions": {...}}`, each window a [`Totals::to_json`]. Names without a request in the
    /// last day are left out.
    pub fn to_json(&self) -> Value {
        let now = self.now();
        let inner = self.lock();
        let windows = |s: &Series| {
            let mut m = Map::new();
            for w in Window::ALL {
                m.insert(w.as_str().to_owned(), s.sum(now, w).to_json());
            }
            Value::Object(m)
        };
        let mut out = Map::new();
        out.insert("total".to_owned(), windows(&inner.total));
        for d in [
            Dimension::Model,
            Dimension::Key,
            Dimension::Client,
            Dimension::ModelVersion,
        ] {
            let mut names: Vec<(&String, &Series)> = inner.maps[d.index()]
                .iter()
                .filter(|(_, s)| s.sum(now, Window::Day).requests > 0)
                .collect();
            names.sort_by(|a, b| a.0.cmp(b.0));
            let m: Map<String, Value> = names
                .into_iter()
                .map(|(n, s)| (n.clone(), windows(s)))
                .collect();
            out.insert(d.name().to_owned(), Value::Object(m));
        }
        Value::Object(out)
    }
}

impl UsageSink for UsageStats {
    fn record(&self, record: &UsageRecord) {
        let now = self.now();
        let t = Totals::of(record);
        let mut inner = self.lock();
        inner.total.add(now, &t);
        let names = [
            Some(record.model.as_str()).filter(|m| !m.is_empty()),
            record.key_id.as_deref(),
            record.client.as_ref().map(|c| c.name.as_str()),
            record.model_version.as_deref(),
        ];
        let max = self.max_entries;
        for (map, name) in inner.maps.iter_mut().zip(names) {
            let Some(name) = name else { continue };
            let name = if map.contains_key(name) || map.len() < max {
                name
            } else {
                OTHER
            };
            map.entry(name.to_owned())
                .or_insert_with(Series::new)
                .add(now, &t);
        }
        // Forget names idle for a day, at most once a minute.
        if now.saturating_sub(inner.last_sweep) >= Duration::from_secs(60) {
            inner.last_sweep = now;
            let day = Duration::from_secs(24 * 3600);
            for map in &mut inner.maps {
                map.retain(|_, s| now.saturating_sub(s.last) < day);
            }
        }
    }
}
