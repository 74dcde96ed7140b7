//! `TOKENS_FILE`: client tokens and their accounts, seeded from a TOML file that deployments
//! keep with the rest of their configuration. A malformed file (bad syntax, an unknown field,
//! a wrong type, a duplicate token) stops the start with an error that names the line.
//!
//! ```toml
//! [[token]]
//! name = "team-x"
//! token_sha256 = "9f86d08188...  (64 hex: the SHA-256 of the token; keeps the secret out of git)"
//! models = ["gemini-2.5-*"]
//! rpm = 60
//! daily_token_budget = 1_000_000
//! expires_at = 2027-01-01T00:00:00Z
//! labels = { team = "x" }
//!
//! [[token]]
//! name = "ci"
//! token = "sk-ci-..."   # the token itself (then protect the file like ALLOWED_TOKENS)
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use tower_gemini::auth::TokenDigest;
use tower_gemini::facts::Account;

use super::fleet::BaseToken;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    token: Vec<toml::Spanned<Entry>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    name: String,
    token: Option<String>,
    token_sha256: Option<String>,
    models: Option<Vec<String>>,
    rpm: Option<u64>,
    tpm: Option<u64>,
    rpd: Option<u64>,
    daily_token_budget: Option<u64>,
    monthly_token_budget: Option<u64>,
    expires_at: Option<Time>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

/// A TOML datetime, or a string in RFC 3339.
#[derive(Deserialize)]
#[serde(untagged)]
enum Time {
    Toml(toml::value::Datetime),
    Text(String),
}

/// The tokens `path` lists; the error names the file and the line.
pub fn load(path: &Path) -> Result<Vec<BaseToken>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("TOKENS_FILE: `{}`: {e}", path.display()))?;
    parse(&text).map_err(|e| format!("TOKENS_FILE: `{}`: {e}", path.display()))
}

/// The tokens a file's text lists.
pub fn parse(text: &str) -> Result<Vec<BaseToken>, String> {
    let file: File = toml::from_str(text).map_err(|e| one_line(&e.to_string()))?;
    let line_of = |offset: usize| text[..offset.min(text.len())].lines().count().max(1);
    let mut out: Vec<BaseToken> = Vec::new();
    for spanned in file.token {
        let line = line_of(spanned.span().start);
        let e = spanned.into_inner();
        let at = |what: String| format!("line {line}: [[token]] `{}`: {what}", e.name);
        let digest = match (&e.token, &e.token_sha256) {
            (Some(t), None) if !t.trim().is_empty() => TokenDigest::of(t.trim()),
            (None, Some(hex)) => TokenDigest::from_hex(hex.trim())
                .ok_or_else(|| at("`token_sha256` must be 64 hex digits".into()))?,
            (Some(_), Some(_)) => {
                return Err(at("give `token` or `token_sha256`, not both".into()));
            }
            _ => return Err(at("needs `token` (or `token_sha256`)".into())),
        };
        if e.name.trim().is_empty() {
            return Err(format!("line {line}: [[token]]: `name` must not be empty"));
        }
        if out.iter().any(|t| t.digest == digest) {
            return Err(at("the same token is listed twice".into()));
        }
        let expires_at = match &e.expires_at {
            None => None,
            Some(Time::Toml(d)) => {
                Some(Account::parse_time(&d.to_string()).ok_or_else(|| {
                    at(format!("`expires_at` {d} needs a date, a time and a zone"))
                })?)
            }
            Some(Time::Text(s)) => Some(
                Account::parse_time(s)
                    .ok_or_else(|| at(format!("`expires_at` {s:?} is not an RFC 3339 time")))?,
            ),
        };
        for (name, v) in [("rpm", e.rpm), ("tpm", e.tpm), ("rpd", e.rpd)] {
            if v == Some(0) {
                return Err(at(format!(
                    "`{name}` must be at least 1 (leave it out for no limit)"
                )));
            }
        }
        out.push(BaseToken {
            digest,
            name: e.name.trim().to_owned(),
            account: Account {
                models: e.models,
                rpm: e.rpm,
                tpm: e.tpm,
                rpd: e.rpd,
                daily_token_budget: e.daily_token_budget,
                monthly_token_budget: e.monthly_token_budget,
                expires_at,
                labels: e.labels,
            },
            source: "file",
        });
    }
    Ok(out)
}

/// toml's message spans several lines (the line, a caret); keep it on one.
fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.chars().all(|c| matches!(c, '|' | '^' | ' ')))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_tokens_and_names_the_line_of_a_mistake() {
        let ok = "[[token]]\nname = \"a\"\ntoken = \"sk-a\"\nrpm = 5\nexpires_at = 2027-01-01T00:00:00Z\n\n[[token]]\nname = \"b\"\ntoken_sha256 = \"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\"\nmodels = [\"gemini-2.5-*\"]\n";
        let t = super::parse(ok).unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(t[0].account.rpm, Some(5));
        assert_eq!(t[0].account.expires_at, Some(1_798_761_600));
        assert!(t[1].account.allows_model("gemini-2.5-pro"));

        let typo = "[[token]]\nname = \"a\"\ntoken = \"sk-a\"\n\n[[token]]\nname = \"b\"\ntoken = \"sk-b\"\nmodles = [\"x\"]\n";
        let e = super::parse(typo).unwrap_err();
        assert!(e.contains("line 8") && e.contains("modles"), "{e}");

        let bad_type = "[[token]]\nname = \"a\"\ntoken = \"sk-a\"\nrpm = \"sixty\"\n";
        let e = super::parse(bad_type).unwrap_err();
        assert!(e.contains("line 4"), "{e}");

        let missing = "[[token]]\nname = \"a\"\n\n[[token]]\nname = \"b\"\n";
        let e = super::parse(missing).unwrap_err();
        assert!(e.contains("line 1") && e.contains("needs `token`"), "{e}");
    }
}
