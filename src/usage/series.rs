//! `UsageSeries`: requests, errors and tokens over time (per minute for the last hour, per hour
//! for the last day), in total, per upstream key and per account.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use super::record::{UsageRecord, UsageSink};
use super::stats::OTHER;

/// Distinct keys (and, apart, accounts) tracked by default; later ones count under [`OTHER`].
const DEFAULT_MAX_NAMES: usize = 1000;
/// Names without a request for this long are forgotten (the longest span is a day).
const FORGET_AFTER_SECS: u64 = 24 * 3600;

/// The time span of a [`UsageSeries`] view.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Span {
    /// The last hour, in 60 one-minute buckets.
    Hour,
    /// The last day, in 24 one-hour buckets.
    Day,
}

impl Span {
    /// The span named `hour` or `day`.
    pub fn parse(name: &str) -> Option<Span> {
        match name {
            "hour" => Some(Span::Hour),
            "day" => Some(Span::Day),
            _ => None,
        }
    }

    /// `hour` or `day`.
    pub fn as_str(self) -> &'static str {
        match self {
            Span::Hour => "hour",
            Span::Day => "day",
        }
    }

    /// The width of one bucket in seconds: 60 or 3600.
    pub fn bucket_seconds(self) -> u64 {
        match self {
            Span::Hour => 60,
            Span::Day => 3600,
        }
    }

    /// How many buckets the span has: 60 or 24.
    pub fn buckets(self) -> usize {
        match self {
            Span::Hour => 60,
            Span::Day => 24,
        }
    }

    fn index(self) -> usize {
        match self {
            Span::Hour => 0,
            Span::Day => 1,
        }
    }
}

/// The counts of one bucket.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Point {
    /// The bucket's start, in Unix seconds (a whole minute or hour).
    pub t: u64,
    /// Requests finished in the bucket.
    pub requests: u64,
    /// Of those, answered with a status of 400 or more.
    pub errors: u64,
    /// Of the errors, those upstream trouble causes: 5xx, and 429 not sent by the gateway's own
    /// rate limits. The rest (`errors - upstream_errors`) are the clients' (bad requests,
    /// refused tokens, the gateway's quotas).
    pub upstream_errors: u64,
    /// Total tokens of the answers.
    pub tokens: u64,
}

impl Point {
    fn add(&mut self, o: &Point) {
        self.requests += o.requests;
        self.errors += o.errors;
        self.upstream_errors += o.upstream_errors;
        self.tokens = self.tokens.saturating_add(o.tokens);
    }

    fn of(record: &UsageRecord) -> Point {
        let error = record.status >= 400;
        let upstream = record.status >= 500 || (record.status == 429 && !record.rate_limited);
        Point {
            t: 0,
            requests: 1,
            errors: u64::from(error),
            upstream_errors: u64::from(error && upstream),
            tokens: record.tokens.map_or(0, |t| t.total),
        }
    }

    /// `{"t", "requests", "errors", "upstream_errors", "client_errors", "tokens"}`.
    pub fn to_json(&self) -> Value {
        json!({
            "t": self.t,
            "requests": self.requests,
            "errors": self.errors,
            "upstream_errors": self.upstream_errors,
            "client_errors": self.errors - self.upstream_errors,
            "tokens": self.tokens,
        })
    }
}

/// A ring of buckets; each slot remembers which bucket number it holds, so stale ones read as
/// empty.
#[derive(Clone, Debug)]
struct Ring {
    slots: Vec<(u64, Point)>,
}

impl Ring {
    fn new(span: Span) -> Ring {
        Ring {
            slots: vec![(u64::MAX, Point::default()); span.buckets()],
        }
    }

    fn add(&mut self, bucket: u64, p: &Point) {
        let len = self.slots.len() as u64;
        let slot = &mut self.slots[(bucket % len) as usize];
        if slot.0 != bucket {
            *slot = (bucket, Point::default());
        }
        slot.1.add(p);
    }

    fn get(&self, bucket: u64) -> Option<&Point> {
        let len = self.slots.len() as u64;
        let slot = &self.slots[(bucket % len) as usize];
        (slot.0 == bucket).then_some(&slot.1)
    }
}

/// Both spans of one name.
#[derive(Clone, Debug)]
struct Track {
    rings: [Ring; 2],
    /// When the name last had a request (Unix seconds).
    last: u64,
    /// The account's name, as last seen.
    label: Option<String>,
}

impl Track {
    fn new() -> Track {
        Track {
            rings: [Ring::new(Span::Hour), Ring::new(Span::Day)],
            last: 0,
            label: None,
        }
    }

    fn add(&mut self, now: u64, p: &Point) {
        for span in [Span::Hour, Span::Day] {
            self.rings[span.index()].add(now / span.bucket_seconds(), p);
        }
        self.last = self.last.max(now);
    }

    /// The span's buckets, oldest first, the last one holding `now`.
    fn points(&self, span: Span, now: u64) -> Vec<Point> {
        let width = span.bucket_seconds();
        let current = now / width;
        let first = current.saturating_sub(span.buckets() as u64 - 1);
        (first..=current)
            .map(|b| {
                let mut p = self.rings[span.index()].get(b).copied().unwrap_or_default();
                p.t = b * width;
                p
            })
            .collect()
    }
}

struct Inner {
    total: Track,
    keys: HashMap<String, Track>,
    accounts: HashMap<String, Track>,
    last_sweep: u64,
}

/// The buckets of one key or account in a [`SeriesView`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Named {
    /// The key id (a fingerprint) or the account's id (the client token's id), or [`OTHER`].
    pub id: String,
    /// The account's name (`None` for keys).
    pub name: Option<String>,
    /// The buckets, oldest first.
    pub points: Vec<Point>,
}

impl Named {
    /// The sum of the buckets (`t` is the first bucket's).
    pub fn sum(&self) -> Point {
        sum(&self.points)
    }
}

fn sum(points: &[Point]) -> Point {
    let mut out = Point {
        t: points.first().map_or(0, |p| p.t),
        ..Point::default()
    };
    for p in points {
        out.add(p);
    }
    out
}

/// What [`UsageSeries::view`] returns: the buckets of one span in total, per key and per
/// account (only names with a request in the span; the busiest first).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SeriesView {
    /// The span.
    pub span: Span,
    /// Every request's buckets, oldest first.
    pub total: Vec<Point>,
    /// Per upstream key.
    pub keys: Vec<Named>,
    /// Per account (client token).
    pub accounts: Vec<Named>,
}

impl SeriesView {
    /// `{"range", "bucket_seconds", "buckets", "start", "end", "total": {"sum", "points"},
    /// "keys": [{"id", "sum", "points"}], "accounts": [{"id", "name", "sum", "points"}]}`,
    /// each bucket a [`Point::to_json`]; `end` is the end of the last bucket.
    pub fn to_json(&self) -> Value {
        let points = |ps: &[Point]| Value::Array(ps.iter().map(Point::to_json).collect());
        let named = |list: &[Named]| {
            Value::Array(
                list.iter()
                    .map(|n| {
                        json!({
                            "id": n.id,
                            "name": n.name,
                            "sum": n.sum().to_json(),
                            "points": points(&n.points),
                        })
                    })
                    .collect(),
            )
        };
        let width = self.span.bucket_seconds();
        let start = self.total.first().map_or(0, |p| p.t);
        json!({
            "range": self.span.as_str(),
            "bucket_seconds": width,
            "buckets": self.total.len(),
            "start": start,
            "end": self.total.last().map_or(0, |p| p.t + width),
            "total": { "sum": sum(&self.total).to_json(), "points": points(&self.total) },
            "keys": named(&self.keys),
            "accounts": named(&self.accounts),
        })
    }
}

/// An in-memory [`UsageSink`]: requests, errors and tokens per minute over the last hour and
/// per hour over the last day, for every request, per upstream key id and per account (the
/// client's id: the token's id, never the token). Buckets are aligned on the wall clock
/// (whole minutes and hours, Unix time), so two instances' series line up.
///
/// Memory is bounded: 84 buckets per name, at most 1000 keys and 1000 accounts (past that
/// they count under [`OTHER`]), names idle for a day forgotten.
///
/// ```
/// use tower_gemini::usage::{Span, Tokens, UsageRecord, UsageSeries, UsageSink};
///
/// let series = UsageSeries::new();
/// let t = Tokens { total: 7, ..Tokens::default() };
/// series.record(&UsageRecord::new("generateContent", "gemini-2.5-flash")
///     .with_status(200).with_key("k1").with_client("team-x", "tok_1").with_tokens(t));
/// series.record(&UsageRecord::new("generateContent", "gemini-2.5-flash").with_status(503).with_key("k1"));
/// let view = series.view(Span::Hour);
/// assert_eq!(view.total.len(), 60);
/// let all = view.keys[0].sum();
/// assert_eq!((all.requests, all.errors, all.upstream_errors, all.tokens), (2, 1, 1, 7));
/// assert_eq!(view.accounts[0].name.as_deref(), Some("team-x"));
/// ```
pub struct UsageSeries {
    max_names: usize,
    inner: Mutex<Inner>,
}

impl Default for UsageSeries {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for UsageSeries {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = self.lock();
        f.debug_struct("UsageSeries")
            .field("keys", &inner.keys.len())
            .field("accounts", &inner.accounts.len())
            .finish()
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl UsageSeries {
    /// Empty series.
    pub fn new() -> Self {
        Self {
            max_names: DEFAULT_MAX_NAMES,
            inner: Mutex::new(Inner {
                total: Track::new(),
                keys: HashMap::new(),
                accounts: HashMap::new(),
                last_sweep: 0,
            }),
        }
    }

    /// Distinct keys, and apart accounts, tracked (default 1000); later ones count under
    /// [`OTHER`].
    pub fn max_names(mut self, n: usize) -> Self {
        self.max_names = n.max(1);
        self
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The buckets of `span` ending now.
    pub fn view(&self, span: Span) -> SeriesView {
        self.view_at(span, unix_now())
    }

    /// The buckets of `span` whose last one holds `now` (Unix seconds).
    pub(crate) fn view_at(&self, span: Span, now: u64) -> SeriesView {
        let inner = self.lock();
        let named = |map: &HashMap<String, Track>| {
            let mut list: Vec<Named> = map
                .iter()
                .map(|(id, track)| Named {
                    id: id.clone(),
                    name: track.label.clone(),
                    points: track.points(span, now),
                })
                .filter(|n| n.sum().requests > 0)
                .collect();
            list.sort_by(|a, b| {
                let (sa, sb) = (a.sum(), b.sum());
                sb.requests
                    .cmp(&sa.requests)
                    .then(sb.tokens.cmp(&sa.tokens))
                    .then(a.id.cmp(&b.id))
            });
            list
        };
        SeriesView {
            span,
            total: inner.total.points(span, now),
            keys: named(&inner.keys),
            accounts: named(&inner.accounts),
        }
    }

    /// Records one request as finished at `now` (Unix seconds).
    pub(crate) fn record_at(&self, record: &UsageRecord, now: u64) {
        let p = Point::of(record);
        let max = self.max_names;
        let mut inner = self.lock();
        inner.total.add(now, &p);
        let track = |map: &HashMap<String, Track>, id: &str| -> String {
            if map.contains_key(id) || map.len() < max {
                id.to_owned()
            } else {
                OTHER.to_owned()
            }
        };
        if let Some(key) = record.key_id.as_deref() {
            let id = track(&inner.keys, key);
            inner.keys.entry(id).or_insert_with(Track::new).add(now, &p);
        }
        if let Some(client) = &record.client {
            let id = track(&inner.accounts, &client.id);
            let other = id == OTHER;
            let t = inner.accounts.entry(id).or_insert_with(Track::new);
            t.add(now, &p);
            if !other {
                t.label = Some(client.name.clone());
            }
        }
        // Forget names idle for a day, at most once a minute.
        if now.saturating_sub(inner.last_sweep) >= 60 {
            inner.last_sweep = now;
            let keep = |_: &String, t: &mut Track| now.saturating_sub(t.last) < FORGET_AFTER_SECS;
            inner.keys.retain(keep);
            inner.accounts.retain(keep);
        }
    }
}

impl UsageSink for UsageSeries {
    fn record(&self, record: &UsageRecord) {
        self.record_at(record, unix_now());
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::usage::Tokens;

    fn rec(
        status: u16,
        key: Option<&str>,
        account: Option<(&str, &str)>,
        tokens: u64,
    ) -> UsageRecord {
        let mut r = UsageRecord::new("generateContent", "gemini-2.5-flash").with_status(status);
        if let Some(k) = key {
            r = r.with_key(k);
        }
        if let Some((name, id)) = account {
            r = r.with_client(name, id);
        }
        if tokens > 0 {
            r = r.with_tokens(Tokens {
                total: tokens,
                ..Tokens::default()
            });
        }
        r
    }

    // A whole hour, so minute and hour buckets start together.
    const T0: u64 = 1_800_000_000; // 500 000 hours since the epoch, to the second

    #[test]
    fn buckets_count_exactly_and_line_up_with_the_clock() {
        let s = UsageSeries::new();
        s.record_at(&rec(200, Some("k1"), Some(("team-x", "tok_a")), 10), T0 + 5);
        s.record_at(
            &rec(200, Some("k1"), Some(("team-x", "tok_a")), 20),
            T0 + 59,
        );
        s.record_at(&rec(503, Some("k2"), Some(("team-y", "tok_b")), 0), T0 + 60);
        s.record_at(&rec(401, None, None, 0), T0 + 61);
        let mut limited = rec(429, None, Some(("team-y", "tok_b")), 0);
        limited.rate_limited = true;
        s.record_at(&limited, T0 + 62);
        s.record_at(
            &rec(429, Some("k2"), Some(("team-y", "tok_b")), 0),
            T0 + 3600 + 1,
        );

        let v = s.view_at(Span::Hour, T0 + 3600 + 30);
        assert_eq!(v.total.len(), 60);
        assert_eq!(v.total[59].t, T0 + 3600);
        assert_eq!(v.total[0].t, T0 + 3600 - 59 * 60);
        // The bucket of T0 itself has left the last hour; T0+60 is the first one kept.
        assert_eq!(v.total[0].requests, 3);
        assert_eq!(v.total[0].errors, 3);
        assert_eq!(
            v.total[0].upstream_errors, 1,
            "503 yes; 401 and the gateway's 429 no"
        );
        assert_eq!(v.total[59].upstream_errors, 1, "an upstream 429");
        let sum = sum(&v.total);
        assert_eq!((sum.requests, sum.errors, sum.tokens), (4, 4, 0));

        let d = s.view_at(Span::Day, T0 + 3600 + 30);
        assert_eq!(d.total.len(), 24);
        assert_eq!(d.total[23].t, T0 + 3600);
        assert_eq!(d.total[22].t, T0);
        assert_eq!(d.total[22].requests, 5);
        assert_eq!(d.total[22].tokens, 30);
        assert_eq!(d.total[22].errors, 3);
        assert_eq!(d.total[23].requests, 1);
        // Per key and account, the busiest first.
        let ids: Vec<&str> = d.keys.iter().map(|n| n.id.as_str()).collect();
        assert_eq!(ids, ["k1", "k2"]);
        assert_eq!(d.keys[0].sum().tokens, 30);
        assert_eq!(d.keys[1].sum().errors, 2);
        let accounts: Vec<(&str, Option<&str>, u64)> = d
            .accounts
            .iter()
            .map(|n| (n.id.as_str(), n.name.as_deref(), n.sum().requests))
            .collect();
        assert_eq!(
            accounts,
            [("tok_b", Some("team-y"), 3), ("tok_a", Some("team-x"), 2)]
        );
        // In the hour view, tok_a's requests (T0's minute) are gone: it is not listed.
        assert_eq!(v.accounts.len(), 1);
    }

    #[test]
    fn old_buckets_read_empty_and_idle_names_are_forgotten() {
        let s = UsageSeries::new();
        s.record_at(&rec(200, Some("k1"), None, 5), T0);
        // A day and more later, the ring slot of T0 holds nothing for this hour.
        let later = T0 + 25 * 3600;
        let v = s.view_at(Span::Day, later);
        assert!(v.total.iter().all(|p| p.requests == 0));
        assert!(v.keys.is_empty());
        s.record_at(&rec(200, Some("k2"), None, 5), later);
        let inner = s.lock();
        assert!(!inner.keys.contains_key("k1"), "forgotten after a day idle");
        assert!(inner.keys.contains_key("k2"));
    }

    #[test]
    fn names_past_the_cap_count_as_other() {
        let s = UsageSeries::new().max_names(2);
        for (i, id) in ["a", "b", "c", "d"].iter().enumerate() {
            s.record_at(&rec(200, Some(id), Some(("n", id)), 1), T0 + i as u64);
        }
        let v = s.view_at(Span::Hour, T0 + 10);
        let mut ids: Vec<&str> = v.keys.iter().map(|n| n.id.as_str()).collect();
        ids.sort_unstable();
        assert_eq!(ids, ["(other)", "a", "b"]);
        let other = v.keys.iter().find(|n| n.id == OTHER).unwrap();
        assert_eq!(other.sum().requests, 2);
        let other = v.accounts.iter().find(|n| n.id == OTHER).unwrap();
        assert_eq!(other.name, None);
        assert_eq!(sum(&v.total).requests, 4);
    }

    #[test]
    fn json_has_the_documented_shape() {
        let s = UsageSeries::new();
        s.record_at(
            &rec(500, Some("k1"), Some(("team-x", "tok_a")), 3),
            T0 + 120,
        );
        let j = s.view_at(Span::Hour, T0 + 150).to_json();
        assert_eq!(j["range"], "hour");
        assert_eq!(j["bucket_seconds"], 60);
        assert_eq!(j["buckets"], 60);
        assert_eq!(j["end"], T0 + 180);
        assert_eq!(j["start"], T0 + 180 - 3600);
        let last = &j["total"]["points"][59];
        assert_eq!(last["t"], T0 + 120);
        assert_eq!(last["requests"], 1);
        assert_eq!(last["errors"], 1);
        assert_eq!(last["upstream_errors"], 1);
        assert_eq!(last["client_errors"], 0);
        assert_eq!(last["tokens"], 3);
        assert_eq!(j["total"]["sum"]["requests"], 1);
        assert_eq!(j["accounts"][0]["id"], "tok_a");
        assert_eq!(j["accounts"][0]["name"], "team-x");
        assert_eq!(j["keys"][0]["name"], Value::Null);
        assert_eq!(j["keys"][0]["points"].as_array().unwrap().len(), 60);
    }
}
