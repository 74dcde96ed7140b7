//! Rules: what a limit is keyed by (client, IP, model, global) and its quotas.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use crate::Error;

const SECOND: Duration = Duration::from_secs(1);
const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86_400);

// === Quota ===

/// What a [`Quota`] counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum QuotaKind {
    /// Requests: each request costs one.
    Requests,
    /// Tokens: a request is charged an estimate before the call and settled with the real
    /// `usageMetadata.totalTokenCount` after it.
    Tokens,
}

/// An amount per period, enforced smoothly with GCRA (no fixed-window cliffs).
///
/// The burst is how much may be spent at once from a full bucket; it defaults to the amount,
/// so `60 requests per minute` lets 60 requests through at once and then one per second.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Quota {
    kind: QuotaKind,
    amount: u64,
    period: Duration,
    burst: Option<u64>,
}

impl Quota {
    /// `amount` requests per `period`.
    pub fn requests(amount: u64, period: Duration) -> Quota {
        Quota {
            kind: QuotaKind::Requests,
            amount,
            period,
            burst: None,
        }
    }

    /// `amount` tokens per `period`.
    pub fn tokens(amount: u64, period: Duration) -> Quota {
        Quota {
            kind: QuotaKind::Tokens,
            amount,
            period,
            burst: None,
        }
    }

    /// `n` requests per second.
    pub fn requests_per_second(n: u64) -> Quota {
        Quota::requests(n, SECOND)
    }

    /// `n` requests per minute.
    pub fn requests_per_minute(n: u64) -> Quota {
        Quota::requests(n, MINUTE)
    }

    /// `n` requests per day (a rolling 24 hours, not a calendar day).
    pub fn requests_per_day(n: u64) -> Quota {
        Quota::requests(n, DAY)
    }

    /// `n` tokens per minute.
    pub fn tokens_per_minute(n: u64) -> Quota {
        Quota::tokens(n, MINUTE)
    }

    /// `n` tokens per day (a rolling 24 hours, not a calendar day).
    pub fn tokens_per_day(n: u64) -> Quota {
        Quota::tokens(n, DAY)
    }

    /// Sets the burst: how much may be spent at once from a full bucket (default: the amount).
    pub fn with_burst(mut self, burst: u64) -> Quota {
        self.burst = Some(burst);
        self
    }

    /// What the quota counts.
    pub fn kind(&self) -> QuotaKind {
        self.kind
    }

    /// The amount per period.
    pub fn amount(&self) -> u64 {
        self.amount
    }

    /// The period.
    pub fn period(&self) -> Duration {
        self.period
    }

    /// The burst (the amount unless set).
    pub fn burst(&self) -> u64 {
        self.burst.unwrap_or(self.amount)
    }

    /// GCRA's emission interval: the period divided by the amount (at least 1 ns).
    pub(crate) fn interval(&self) -> Duration {
        let nanos = self.period.as_nanos() / u128::from(self.amount.max(1));
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX).max(1))
    }

    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.amount == 0 {
            return Err(format!("quota `{self}` has an amount of 0"));
        }
        if self.period.is_zero() {
            return Err("a quota has a period of 0".to_owned());
        }
        if self.burst == Some(0) {
            return Err(format!("quota `{self}` has a burst of 0"));
        }
        Ok(())
    }
}

impl fmt::Display for Quota {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.kind {
            QuotaKind::Requests => "requests",
            QuotaKind::Tokens => "tokens",
        };
        write!(f, "{} {what} per ", self.amount)?;
        match self.period {
            SECOND => f.write_str("second"),
            MINUTE => f.write_str("minute"),
            HOUR => f.write_str("hour"),
            DAY => f.write_str("day"),
            p if p.subsec_nanos() == 0 => write!(f, "{} s", p.as_secs()),
            p => write!(f, "{} ms", p.as_millis()),
        }
    }
}

// === Scope ===

/// Which model requests a rule applies to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum ModelScope {
    /// Every request; the model is not part of the key.
    Any,
    /// Requests naming a model; each model has its own bucket.
    Each,
    /// Requests for this model only.
    Only(Arc<str>),
}

/// What a rule's buckets are keyed by.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Scope {
    pub(crate) client: bool,
    pub(crate) ip: bool,
    pub(crate) model: ModelScope,
}

impl Scope {
    /// Per client and nothing else (what a token's own quotas replace).
    pub(crate) fn is_client_only(&self) -> bool {
        self.client && !self.ip && matches!(self.model, ModelScope::Any)
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut per = Vec::new();
        if self.client {
            per.push("client");
        }
        if self.ip {
            per.push("IP address");
        }
        if self.model == ModelScope::Each {
            per.push("model");
        }
        let only = match &self.model {
            ModelScope::Only(m) => Some(m),
            _ => None,
        };
        match (per.is_empty(), only) {
            (true, None) => f.write_str("for the whole gateway"),
            (true, Some(m)) => write!(f, "for model {m}"),
            (false, None) => write!(f, "per {}", per.join(" and ")),
            (false, Some(m)) => write!(f, "per {} for model {m}", per.join(" and ")),
        }
    }
}

// === Rule ===

/// A limit: what it is keyed by and one or more quotas.
///
/// ```
/// use tower_gemini::rate_limit::Rule;
///
/// let per_client = Rule::per_client().requests_per_minute(60).burst(10);
/// let pro = Rule::per_model("gemini-2.5-pro").tokens_per_minute(250_000).requests_per_day(100);
/// let per_client_and_model = Rule::per_client().and_model().requests_per_minute(10);
/// assert_eq!(pro.to_string(), "for model gemini-2.5-pro: 250000 tokens per minute, 100 requests per day");
/// # let _ = (per_client, per_client_and_model);
/// ```
///
/// A rule applies to a request only when the request has every part of its key: a per-client
/// rule skips requests without an [`Identity`](crate::facts::Identity), a per-IP rule requests
/// whose address is unknown, a per-model rule requests that name no model (or another model).
/// Token quotas apply only to model calls that spend tokens (any `:method` but `countTokens`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub(crate) scope: Scope,
    pub(crate) quotas: Vec<Quota>,
    burst: Option<u64>,
}

impl Rule {
    fn new(client: bool, ip: bool, model: ModelScope) -> Rule {
        Rule {
            scope: Scope { client, ip, model },
            quotas: Vec::new(),
            burst: None,
        }
    }

    /// One bucket for the whole gateway.
    pub fn global() -> Rule {
        Rule::new(false, false, ModelScope::Any)
    }

    /// One bucket per authenticated client ([`Identity::id`](crate::facts::Identity::id)).
    pub fn per_client() -> Rule {
        Rule::new(true, false, ModelScope::Any)
    }

    /// One bucket per client IP address (see the layer's IP settings).
    pub fn per_ip() -> Rule {
        Rule::new(false, true, ModelScope::Any)
    }

    /// One bucket for one model, shared by every client (a `models/` prefix is ignored).
    pub fn per_model(model: impl AsRef<str>) -> Rule {
        let model = crate::gemini::strip_models_prefix(model.as_ref().trim());
        Rule::new(false, false, ModelScope::Only(model.into()))
    }

    /// One bucket per model, for every model.
    pub fn per_each_model() -> Rule {
        Rule::new(false, false, ModelScope::Each)
    }

    /// Also keys the bucket by client: `Rule::per_model("m").and_client()` gives each client
    /// its own bucket for model `m`.
    pub fn and_client(mut self) -> Rule {
        self.scope.client = true;
        self
    }

    /// Also keys the bucket by client IP address.
    pub fn and_ip(mut self) -> Rule {
        self.scope.ip = true;
        self
    }

    /// Also keys the bucket by model: `Rule::per_client().and_model()` gives each (client,
    /// model) pair its own bucket. No effect on a rule already limited to one model.
    pub fn and_model(mut self) -> Rule {
        if self.scope.model == ModelScope::Any {
            self.scope.model = ModelScope::Each;
        }
        self
    }

    /// Adds a quota.
    pub fn quota(mut self, quota: Quota) -> Rule {
        self.quotas.push(quota);
        self
    }

    /// Adds a quota of `n` requests per `period`.
    pub fn requests(self, n: u64, period: Duration) -> Rule {
        self.quota(Quota::requests(n, period))
    }

    /// Adds a quota of `n` requests per second.
    pub fn requests_per_second(self, n: u64) -> Rule {
        self.quota(Quota::requests_per_second(n))
    }

    /// Adds a quota of `n` requests per minute.
    pub fn requests_per_minute(self, n: u64) -> Rule {
        self.quota(Quota::requests_per_minute(n))
    }

    /// Adds a quota of `n` requests per (rolling) day.
    pub fn requests_per_day(self, n: u64) -> Rule {
        self.quota(Quota::requests_per_day(n))
    }

    /// Adds a quota of `n` tokens per `period`.
    pub fn tokens(self, n: u64, period: Duration) -> Rule {
        self.quota(Quota::tokens(n, period))
    }

    /// Adds a quota of `n` tokens per minute.
    pub fn tokens_per_minute(self, n: u64) -> Rule {
        self.quota(Quota::tokens_per_minute(n))
    }

    /// Adds a quota of `n` tokens per (rolling) day.
    pub fn tokens_per_day(self, n: u64) -> Rule {
        self.quota(Quota::tokens_per_day(n))
    }

    /// Sets the burst of this rule's request quotas that have none of their own (default: each
    /// quota's amount).
    pub fn burst(mut self, burst: u64) -> Rule {
        self.burst = Some(burst);
        self
    }

    /// The quotas, with the rule's burst applied.
    pub fn quotas(&self) -> Vec<Quota> {
        self.quotas
            .iter()
            .map(|q| match (q.kind, q.burst, self.burst) {
                (QuotaKind::Requests, None, Some(b)) => q.with_burst(b),
                _ => *q,
            })
            .collect()
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:", self.scope)?;
        for (i, q) in self.quotas.iter().enumerate() {
            let sep = if i == 0 { " " } else { ", " };
            write!(f, "{sep}{q}")?;
        }
        Ok(())
    }
}

// === ModelLimits ===

/// Per-model limits in the `MODEL_LIMITS` syntax:
/// `gemini-2.5-pro=5rpm,250000tpm,100rpd;gemini-2.5-flash=10rpm`.
///
/// Models are separated by `;`, limits by `,`; a limit is a whole number (`_` allowed) and a
/// unit: `rps`, `rpm`, `rph`, `rpd` (requests per second, minute, hour, day) or `tpm`, `tph`,
/// `tpd` (tokens per minute, hour, day). Spaces are ignored, units are case-insensitive.
///
/// ```
/// use tower_gemini::rate_limit::{ModelLimits, Quota};
///
/// let limits = ModelLimits::parse("gemini-2.5-pro=5rpm,250000tpm,100rpd; gemini-2.5-flash=10rpm").unwrap();
/// assert_eq!(limits.get("gemini-2.5-flash"), Some(&[Quota::requests_per_minute(10)][..]));
/// assert_eq!(limits.rules().len(), 2);
///
/// let err = ModelLimits::parse("gemini-2.5-pro=5rpx").unwrap_err();
/// assert!(err.to_string().contains("`5rpx`"));
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ModelLimits {
    models: Vec<(String, Vec<Quota>)>,
}

impl ModelLimits {
    /// Parses the `MODEL_LIMITS` syntax. An empty string gives no limits; an error names the
    /// part it could not read.
    pub fn parse(s: &str) -> Result<ModelLimits, Error> {
        let bad = |msg: String| Error::config(format!("MODEL_LIMITS: {msg}"));
        let mut models: Vec<(String, Vec<Quota>)> = Vec::new();
        for entry in s.split(';').map(str::trim).filter(|e| !e.is_empty()) {
            let Some((model, limits)) = entry.split_once('=') else {
                return Err(bad(format!(
                    "`{entry}` has no `=`: expected `model=limit,limit` (e.g. `gemini-2.5-pro=5rpm,250000tpm`)"
                )));
            };
            let model = crate::gemini::strip_models_prefix(model.trim());
            if model.is_empty() || model.contains(char::is_whitespace) {
                return Err(bad(format!("`{entry}` does not name a model before `=`")));
            }
            if models.iter().any(|(m, _)| m == model) {
                return Err(bad(format!("model `{model}` is listed twice")));
            }
            let mut quotas: Vec<Quota> = Vec::new();
            for limit in limits.split(',').map(str::trim) {
                if limit.is_empty() {
                    return Err(bad(format!("model `{model}` has an empty limit")));
                }
                let q = parse_limit(limit).ok_or_else(|| {
                    bad(format!(
                        "`{limit}` for model `{model}` is not a limit: expected a whole number \
                         and one of rps, rpm, rph, rpd, tpm, tph, tpd (e.g. `10rpm`)"
                    ))
                })?;
                if q.amount == 0 {
                    return Err(bad(format!(
                        "`{limit}` for model `{model}` is 0; leave the limit out to disable it"
                    )));
                }
                if quotas
                    .iter()
                    .any(|o| o.kind == q.kind && o.period == q.period)
                {
                    return Err(bad(format!(
                        "model `{model}` has two limits like `{limit}`"
                    )));
                }
                quotas.push(q);
            }
            models.push((model.to_owned(), quotas));
        }
        Ok(ModelLimits { models })
    }

    /// The quotas of a model, if it has any.
    pub fn get(&self, model: &str) -> Option<&[Quota]> {
        let model = crate::gemini::strip_models_prefix(model);
        self.models
            .iter()
            .find(|(m, _)| m == model)
            .map(|(_, q)| q.as_slice())
    }

    /// The models and their quotas, in the order given.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[Quota])> {
        self.models.iter().map(|(m, q)| (m.as_str(), q.as_slice()))
    }

    /// Number of models.
    pub fn len(&self) -> usize {
        self.models.len()
    }

    /// Whether no model has limits.
    pub fn is_empty(&self) -> bool {
        self.models.is_empty()
    }

    /// One [`Rule::per_model`] per model: the quota is shared by every client (the way
    /// Google's per-project, per-model quotas are).
    pub fn rules(&self) -> Vec<Rule> {
        self.to_rules(false)
    }

    /// One [`Rule::per_model`]`.and_client()` per model: each client gets the quota.
    pub fn rules_per_client(&self) -> Vec<Rule> {
        self.to_rules(true)
    }

    fn to_rules(&self, per_client: bool) -> Vec<Rule> {
        self.models
            .iter()
            .map(|(m, quotas)| {
                let rule = Rule::per_model(m);
                let rule = if per_client { rule.and_client() } else { rule };
                quotas.iter().fold(rule, |r, q| r.quota(*q))
            })
            .collect()
    }
}

impl FromStr for ModelLimits {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        ModelLimits::parse(s)
    }
}

fn parse_limit(limit: &str) -> Option<Quota> {
    let limit: String = limit.chars().filter(|c| !c.is_whitespace()).collect();
    let split = limit.find(|c: char| !c.is_ascii_digit() && c != '_')?;
    let (number, unit) = limit.split_at(split);
    let digits: String = number.chars().filter(|c| *c != '_').collect();
    if digits.is_empty() {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    let q = match unit.to_ascii_lowercase().as_str() {
        "rps" => Quota::requests(n, SECOND),
        "rpm" => Quota::requests(n, MINUTE),
        "rph" => Quota::requests(n, HOUR),
        "rpd" => Quota::requests(n, DAY),
        "tpm" => Quota::tokens(n, MINUTE),
        "tph" => Quota::tokens(n, HOUR),
        "tpd" => Quota::tokens(n, DAY),
        _ => return None,
    };
    Some(q)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_example() {
        let l = ModelLimits::parse("gemini-2.5-pro=5rpm,250000tpm,100rpd;gemini-2.5-flash=10rpm")
            .unwrap();
        assert_eq!(l.len(), 2);
        assert_eq!(
            l.get("models/gemini-2.5-pro").unwrap(),
            &[
                Quota::requests_per_minute(5),
                Quota::tokens_per_minute(250_000),
                Quota::requests_per_day(100)
            ]
        );
        let rules = l.rules_per_client();
        assert_eq!(
            rules[1].to_string(),
            "per client for model gemini-2.5-flash: 10 requests per minute"
        );
    }

    #[test]
    fn tolerates_spaces_case_underscores_and_trailing_separators() {
        let l = ModelLimits::parse(" models/a = 1_000 TPM , 2 rps ; ; b=3rph; ").unwrap();
        assert_eq!(
            l.get("a").unwrap(),
            &[
                Quota::tokens_per_minute(1000),
                Quota::requests_per_second(2)
            ]
        );
        assert_eq!(l.get("b").unwrap(), &[Quota::requests(3, HOUR)]);
        assert!(ModelLimits::parse("").unwrap().is_empty());
    }

    #[test]
    fn errors_name_the_bad_part() {
        let cases = [
            ("gemini-2.5-pro", "`gemini-2.5-pro` has no `=`"),
            ("=5rpm", "does not name a model"),
            ("m=5rpx", "`5rpx` for model `m`"),
            ("m=rpm", "`rpm` for model `m`"),
            ("m=5rpm,", "model `m` has an empty limit"),
            ("m=0rpm", "`0rpm` for model `m` is 0"),
            ("m=5rpm,6rpm", "two limits like `6rpm`"),
            ("m=5rpm;m=6rpd", "model `m` is listed twice"),
            (
                "m=99999999999999999999999rpm",
                "`99999999999999999999999rpm`",
            ),
        ];
        for (input, want) in cases {
            let err = ModelLimits::parse(input).unwrap_err();
            assert!(err.is_config());
            let text = err.to_string();
            assert!(text.contains("MODEL_LIMITS"), "{text}");
            assert!(text.contains(want), "{input}: {text}");
        }
    }

    #[test]
    fn quotas_describe_themselves() {
        assert_eq!(
            Quota::requests_per_minute(60).to_string(),
            "60 requests per minute"
        );
        assert_eq!(
            Quota::tokens(5, Duration::from_secs(10)).to_string(),
            "5 tokens per 10 s"
        );
        assert_eq!(
            Quota::requests_per_minute(60).interval(),
            Duration::from_secs(1)
        );
        assert_eq!(Quota::requests_per_minute(60).burst(), 60);
        assert_eq!(
            Rule::per_client().requests_per_minute(60).burst(5).quotas()[0].burst(),
            5
        );
    }

    #[test]
    fn scopes_describe_themselves() {
        assert_eq!(Rule::global().scope.to_string(), "for the whole gateway");
        assert_eq!(Rule::per_client().scope.to_string(), "per client");
        assert_eq!(Rule::per_ip().scope.to_string(), "per IP address");
        assert_eq!(
            Rule::per_client().and_model().scope.to_string(),
            "per client and model"
        );
        assert_eq!(Rule::per_each_model().scope.to_string(), "per model");
        assert_eq!(
            Rule::per_model("x").and_model().scope.to_string(),
            "for model x"
        );
    }
}
