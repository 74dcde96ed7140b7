//! Finding a request's client, IP address and model, and naming its buckets.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

use http::{HeaderName, Request};

use super::rule::{ModelScope, Scope};
use crate::facts::Identity;

pub use crate::facts::ClientAddr;

/// An IP network (`10.0.0.0/8`, `::1/128`, or a bare address).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    pub(crate) fn parse(s: &str) -> Option<IpNet> {
        let s = s.trim();
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a.parse::<IpAddr>().ok()?, Some(p.parse::<u8>().ok()?)),
            None => (s.parse::<IpAddr>().ok()?, None),
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        (prefix <= max).then_some(IpNet { addr, prefix })
    }

    fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// An IPv4-mapped IPv6 address as IPv4, so dual-stack sockets key clients like IPv4 ones.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Where the client IP address comes from.
#[derive(Clone, Debug, Default)]
pub(crate) struct IpSource {
    pub(crate) header: Option<HeaderName>,
    pub(crate) trusted: Vec<IpNet>,
}

impl IpSource {
    /// The client IP of a request.
    ///
    /// Without a forwarding header: the peer ([`ClientAddr`], else a [`SocketAddr`] extension).
    /// With one: the right-most entry of the header that is not a trusted proxy; when trusted
    /// proxies are configured and the peer is known but not one of them, the header is ignored
    /// (anyone can send one) and the peer is the client. No usable header: the peer.
    pub(crate) fn client_ip<B>(&self, req: &Request<B>) -> Option<IpAddr> {
        let peer = req
            .extensions()
            .get::<ClientAddr>()
            .map(|a| a.0.ip())
            .or_else(|| req.extensions().get::<SocketAddr>().map(SocketAddr::ip))
            .map(canonical);
        let Some(header) = &self.header else {
            return peer;
        };
        if let Some(p) = peer {
            if !self.trusted.is_empty() && !self.is_trusted(p) {
                return Some(p);
            }
        }
        let mut hops: Vec<&str> = Vec::new();
        for value in req.headers().get_all(header) {
            let Ok(value) = value.to_str() else {
                return peer;
            };
            hops.extend(value.split(',').map(str::trim).filter(|h| !h.is_empty()));
        }
        let mut leftmost = None;
        for hop in hops.iter().rev() {
            let Some(ip) = parse_hop(hop) else {
                // Garbage in the chain: nothing left of it can be believed.
                return leftmost.or(peer);
            };
            if !self.is_trusted(ip) {
                return Some(ip);
            }
            leftmost = Some(ip);
        }
        leftmost.or(peer)
    }

    fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|n| n.contains(ip))
    }
}

/// `1.2.3.4`, `1.2.3.4:5678`, `::1`, `[::1]:5678`.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim_matches('"');
    hop.parse::<IpAddr>()
        .ok()
        .or_else(|| hop.parse::<SocketAddr>().ok().map(|s| s.ip()))
        .or_else(|| {
            hop.strip_prefix('[')
                .and_then(|h| h.strip_suffix(']'))
                .and_then(|h| h.parse().ok())
        })
        .map(canonical)
}

/// What identifies a request for the rules: client, IP address, model.
#[derive(Debug, Default)]
pub(crate) struct Subject {
    pub(crate) client: Option<String>,
    pub(crate) ip: Option<IpAddr>,
    pub(crate) model: Option<String>,
    /// Whether the call spends tokens (a model method other than `countTokens`).
    pub(crate) spends_tokens: bool,
    /// Whether the call streams (`:streamGenerateContent`).
    pub(crate) streams: bool,
    /// The client token's own quotas (its account's `rpm`, `tpm`, `rpd`).
    pub(crate) account_quotas: Vec<super::rule::Quota>,
}

impl Subject {
    pub(crate) fn of<B>(req: &Request<B>, ip: &IpSource) -> Subject {
        let identity = req.extensions().get::<Identity>();
        // The subject, not the display id: one token is one bucket on every instance.
        let client = identity.map(|i| i.subject().to_owned());
        let mut account_quotas = Vec::new();
        if let Some(a) = identity.and_then(Identity::account) {
            use super::rule::Quota;
            account_quotas.extend(a.rpm.filter(|n| *n > 0).map(Quota::requests_per_minute));
            account_quotas.extend(a.tpm.filter(|n| *n > 0).map(Quota::tokens_per_minute));
            account_quotas.extend(a.rpd.filter(|n| *n > 0).map(Quota::requests_per_day));
        }
        // The Gemini call as the layers above resolved it (an alias already renamed).
        let (model, method) = match crate::facts::gemini_call(req) {
            Some(p) if !p.model.is_empty() => (
                Some(crate::gemini::strip_models_prefix(&p.model).to_owned()),
                p.method,
            ),
            _ => (None, None),
        };
        Subject {
            client,
            ip: ip.client_ip(req),
            model,
            spends_tokens: method.is_some_and(|m| m != crate::gemini::Method::CountTokens),
            streams: method == Some(crate::gemini::Method::StreamGenerateContent),
            account_quotas,
        }
    }

    /// The key suffix for a scope, or `None` when the request lacks part of it.
    pub(crate) fn key(&self, scope: &Scope, out: &mut String) -> Option<()> {
        if scope.client {
            write!(out, "|c={}", self.client.as_deref()?).ok()?;
        }
        if scope.ip {
            write!(out, "|i={}", self.ip?).ok()?;
        }
        match &scope.model {
            ModelScope::Any => {}
            ModelScope::Each => write!(out, "|m={}", self.model.as_deref()?).ok()?,
            ModelScope::Only(m) => {
                if self.model.as_deref()? != &**m {
                    return None;
                }
                write!(out, "|m={m}").ok()?;
            }
        }
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(peer: Option<&str>, xff: &[&str]) -> Request<()> {
        let mut b = Request::builder().uri("/v1beta/models");
        for v in xff {
            b = b.header("x-forwarded-for", *v);
        }
        let mut r = b.body(()).unwrap();
        if let Some(p) = peer {
            r.extensions_mut().insert(ClientAddr(p.parse().unwrap()));
        }
        r
    }

    fn source(header: bool, trusted: &[&str]) -> IpSource {
        IpSource {
            header: header.then(|| HeaderName::from_static("x-forwarded-for")),
            trusted: trusted.iter().map(|t| IpNet::parse(t).unwrap()).collect(),
        }
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn peer_address_without_a_header() {
        let r = req(Some("1.2.3.4:5"), &["9.9.9.9"]);
        assert_eq!(source(false, &[]).client_ip(&r), ip("1.2.3.4"));
        let mut r = Request::new(());
        r.extensions_mut()
            .insert("[::ffff:1.2.3.4]:80".parse::<SocketAddr>().unwrap());
        assert_eq!(source(false, &[]).client_ip(&r), ip("1.2.3.4"));
        assert_eq!(source(false, &[]).client_ip(&Request::new(())), None);
    }

    #[test]
    fn header_alone_takes_the_right_most_hop() {
        let r = req(Some("10.0.0.1:5"), &["6.6.6.6, 7.7.7.7", "8.8.8.8"]);
        assert_eq!(source(true, &[]).client_ip(&r), ip("8.8.8.8"));
        let r = req(Some("10.0.0.1:5"), &[]);
        assert_eq!(source(true, &[]).client_ip(&r), ip("10.0.0.1"));
    }

    #[test]
    fn trusted_proxies_are_skipped_from_the_right() {
        let s = source(true, &["10.0.0.0/8", "192.168.1.1"]);
        let r = req(
            Some("10.0.0.1:5"),
            &["6.6.6.6, 7.7.7.7, 192.168.1.1, 10.1.2.3"],
        );
        assert_eq!(s.client_ip(&r), ip("7.7.7.7"));
        // Every hop trusted: the left-most one.
        let r = req(Some("10.0.0.1:5"), &["10.9.9.9, 192.168.1.1"]);
        assert_eq!(s.client_ip(&r), ip("10.9.9.9"));
        // A peer that is not a trusted proxy cannot pick its own address.
        let r = req(Some("5.5.5.5:5"), &["7.7.7.7"]);
        assert_eq!(s.client_ip(&r), ip("5.5.5.5"));
        // Garbage stops the walk.
        let r = req(Some("10.0.0.1:5"), &["7.7.7.7, nonsense, 10.1.1.1"]);
        assert_eq!(s.client_ip(&r), ip("10.1.1.1"));
        let r = req(Some("10.0.0.1:5"), &["[2001:db8::1]:443, 1.2.3.4:80"]);
        assert_eq!(s.client_ip(&r), ip("1.2.3.4"));
    }

    #[test]
    fn networks_match_by_prefix() {
        let n = IpNet::parse("10.0.0.0/8").unwrap();
        assert!(n.contains("10.255.0.1".parse().unwrap()));
        assert!(!n.contains("11.0.0.1".parse().unwrap()));
        assert!(
            IpNet::parse("0.0.0.0/0")
                .unwrap()
                .contains("8.8.8.8".parse().unwrap())
        );
        let v6 = IpNet::parse("2001:db8::/32").unwrap();
        assert!(v6.contains("2001:db8:1::1".parse().unwrap()));
        assert!(!v6.contains("10.0.0.1".parse().unwrap()));
        assert!(IpNet::parse("10.0.0.0/33").is_none());
        assert!(IpNet::parse("nope").is_none());
    }
}
