//! Where a webhook comes from, and whether that source may send alerts: the peer address,
//! or, behind proxies the deployment trusts, the address they forwarded (`Forwarded`, else
//! `X-Forwarded-For`). Forwarding headers from anyone else are ignored, so a client cannot
//! claim an allowed address by writing one.

use axum::http::HeaderMap;
use ipnet::IpNet;
use std::net::IpAddr;

/// The preset naming TradingView's published webhook addresses.
pub const TRADINGVIEW_PRESET: &str = "tradingview";

/// The addresses TradingView sends webhooks from (its "About webhooks" article).
pub const TRADINGVIEW_ADDRESSES: [&str; 4] = [
    "52.89.214.238",
    "34.212.75.30",
    "54.218.53.128",
    "52.32.178.7",
];

/// The most forwarded hops read from one request: a longer chain is cut from the left
/// (where a client writes what it likes), which only ever makes the answer more cautious.
pub const MAX_FORWARDED_HOPS: usize = 16;

/// Who may send webhooks, and which proxies are believed about who sent them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourcePolicy {
    /// Networks allowed to send webhooks; `None` allows every source.
    pub allow: Option<Vec<IpNet>>,
    /// Proxies whose forwarding headers are believed.
    pub trusted_proxies: Vec<IpNet>,
}

impl SourcePolicy {
    /// Reads one allowlist or proxy entry: an address, a CIDR network, or (for the allowlist)
    /// the `tradingview` preset. The error says what was expected.
    pub fn entry(text: &str, preset_allowed: bool) -> Result<Vec<IpNet>, String> {
        let text = text.trim();
        if text == TRADINGVIEW_PRESET && preset_allowed {
            return Ok(TRADINGVIEW_ADDRESSES
                .iter()
                .filter_map(|address| address.parse::<IpAddr>().ok())
                .map(IpNet::from)
                .collect());
        }
        if let Ok(network) = text.parse::<IpNet>() {
            return Ok(vec![network.trunc()]);
        }
        if let Ok(address) = text.parse::<IpAddr>() {
            return Ok(vec![IpNet::from(address)]);
        }
        let preset = match preset_allowed {
            true => format!(", or \"{TRADINGVIEW_PRESET}\" for TradingView's addresses"),
            false => String::new(),
        };
        Err(format!(
            "{text:?} is not an address or a network; write \"203.0.113.7\" or \"10.0.0.0/8\"{preset}"
        ))
    }

    /// The client's address: the peer, unless the peer is a trusted proxy, in which case the
    /// forwarded chain is walked from the right past every trusted proxy. `None` when a
    /// trusted proxy forwarded something that is not an address: the source is unknown.
    pub fn client(&self, peer: IpAddr, headers: &HeaderMap) -> Option<IpAddr> {
        let peer = canonical(peer);
        if !self.trusts(peer) {
            return Some(peer);
        }
        let Some(chain) = forwarded(headers) else {
            return Some(peer);
        };
        let mut client = peer;
        for hop in chain.iter().rev().take(MAX_FORWARDED_HOPS) {
            if !self.trusts(client) {
                break;
            }
            client = canonical(hop.parse::<IpAddr>().ok()?);
        }
        Some(client)
    }

    /// Whether `client` may send webhooks.
    pub fn allows(&self, client: IpAddr) -> bool {
        let client = canonical(client);
        self.allow
            .as_ref()
            .is_none_or(|allow| allow.iter().any(|network| network.contains(&client)))
    }

    fn trusts(&self, address: IpAddr) -> bool {
        self.trusted_proxies
            .iter()
            .any(|network| network.contains(&address))
    }
}

/// An IPv4 address written as IPv6 (`::ffff:a.b.c.d`, as a dual-stack listener reports it)
/// is the IPv4 address.
fn canonical(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// The forwarded chain, oldest hop first: the `for=` values of `Forwarded` (RFC 7239), or
/// else the entries of `X-Forwarded-For`; ports and brackets removed.
fn forwarded(headers: &HeaderMap) -> Option<Vec<String>> {
    let values = |name: &str| -> Vec<String> {
        headers
            .get_all(name)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .map(|item| item.trim().to_string())
            .filter(|item| !item.is_empty())
            .collect()
    };
    let standard: Vec<String> = values("forwarded")
        .iter()
        .filter_map(|element| {
            element.split(';').find_map(|pair| {
                let (key, value) = pair.split_once('=')?;
                key.trim()
                    .eq_ignore_ascii_case("for")
                    .then(|| strip_port(value.trim().trim_matches('"')))
            })
        })
        .collect();
    if !standard.is_empty() {
        return Some(standard);
    }
    let legacy: Vec<String> = values("x-forwarded-for")
        .iter()
        .map(|hop| strip_port(hop))
        .collect();
    (!legacy.is_empty()).then_some(legacy)
}

/// `[2001:db8::1]:4711` → `2001:db8::1`, `192.0.2.60:80` → `192.0.2.60`; anything else as is.
fn strip_port(hop: &str) -> String {
    if let Some(rest) = hop.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest).to_string();
    }
    match hop.split_once(':') {
        // One colon: an IPv4 address with a port. More: a bare IPv6 address.
        Some((address, _)) if hop.matches(':').count() == 1 => address.to_string(),
        _ => hop.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use axum::http::HeaderValue;

    fn policy(allow: &[&str], proxies: &[&str]) -> SourcePolicy {
        let nets = |entries: &[&str], preset: bool| -> Vec<IpNet> {
            entries
                .iter()
                .flat_map(|entry| SourcePolicy::entry(entry, preset).unwrap())
                .collect()
        };
        SourcePolicy {
            allow: (!allow.is_empty()).then(|| nets(allow, true)),
            trusted_proxies: nets(proxies, false),
        }
    }

    /// (allow, trusted proxies, peer, headers, the client found, whether it is allowed)
    type Case<'a> = (
        &'a [&'a str],
        &'a [&'a str],
        &'a str,
        &'a [(&'a str, &'a str)],
        Option<&'a str>,
        bool,
    );

    #[test]
    fn sources() {
        #[rustfmt::skip]
        let cases: &[Case<'_>] = &[
            // No allowlist: everyone, and headers from an untrusted peer change nothing.
            (&[], &[], "198.51.100.1", &[("x-forwarded-for", "52.89.214.238")], Some("198.51.100.1"), true),
            // The preset.
            (&["tradingview"], &[], "52.89.214.238", &[], Some("52.89.214.238"), true),
            (&["tradingview"], &[], "52.32.178.7", &[], Some("52.32.178.7"), true),
            (&["tradingview"], &[], "52.32.178.8", &[], Some("52.32.178.8"), false),
            // A client writing a forwarded header is not believed.
            (&["tradingview"], &[], "198.51.100.1", &[("x-forwarded-for", "52.89.214.238")], Some("198.51.100.1"), false),
            (&["tradingview"], &["10.0.0.0/8"], "198.51.100.1", &[("forwarded", "for=52.89.214.238")], Some("198.51.100.1"), false),
            // Behind a trusted proxy the forwarded address decides.
            (&["tradingview"], &["10.0.0.0/8"], "10.1.2.3", &[("x-forwarded-for", "52.89.214.238")], Some("52.89.214.238"), true),
            (&["tradingview"], &["10.0.0.0/8"], "10.1.2.3", &[("x-forwarded-for", "198.51.100.1")], Some("198.51.100.1"), false),
            // The rightmost untrusted hop is the client, whatever a client wrote to its left.
            (&["tradingview"], &["10.0.0.0/8"], "10.1.2.3", &[("x-forwarded-for", "52.89.214.238, 198.51.100.1, 10.9.9.9")], Some("198.51.100.1"), false),
            (&["tradingview"], &["10.0.0.0/8"], "10.1.2.3", &[("x-forwarded-for", "198.51.100.1, 52.89.214.238")], Some("52.89.214.238"), true),
            // Forwarded (RFC 7239) wins over X-Forwarded-For; ports and brackets are stripped.
            (&["tradingview"], &["10.0.0.0/8"], "10.1.2.3", &[("forwarded", "for=\"52.89.214.238:4711\";proto=https"), ("x-forwarded-for", "198.51.100.1")], Some("52.89.214.238"), true),
            (&["2001:db8::/32"], &["10.0.0.0/8"], "10.1.2.3", &[("forwarded", "for=\"[2001:db8::1]:4711\"")], Some("2001:db8::1"), true),
            // A trusted proxy with no header is the client itself.
            (&["10.0.0.0/8"], &["10.0.0.0/8"], "10.1.2.3", &[], Some("10.1.2.3"), true),
            // Garbage forwarded by a trusted proxy: the source is unknown.
            (&["tradingview"], &["10.0.0.0/8"], "10.1.2.3", &[("x-forwarded-for", "not-an-address")], None, false),
            // An IPv4 peer on a dual-stack listener.
            (&["tradingview"], &[], "::ffff:52.89.214.238", &[], Some("52.89.214.238"), true),
        ];
        for (allow, proxies, peer, headers, client, allowed) in cases {
            let policy = policy(allow, proxies);
            let mut map = HeaderMap::new();
            for (name, value) in *headers {
                map.append(*name, HeaderValue::from_str(value).unwrap());
            }
            let found = policy.client(peer.parse().unwrap(), &map);
            let expected: Option<IpAddr> = client.map(|c| c.parse().unwrap());
            assert_eq!(found, expected, "{peer} {headers:?}");
            assert_eq!(
                found.is_some_and(|found| policy.allows(found)),
                *allowed,
                "{peer} {headers:?}"
            );
        }
    }

    #[test]
    fn entries_say_what_they_expect() {
        assert_eq!(SourcePolicy::entry("tradingview", true).unwrap().len(), 4);
        let error = SourcePolicy::entry("tradingview", false).unwrap_err();
        assert!(error.contains("not an address"), "{error}");
        let error = SourcePolicy::entry("10.0.0.0/33", true).unwrap_err();
        assert!(error.contains("\"tradingview\""), "{error}");
        assert_eq!(
            SourcePolicy::entry("10.1.2.3/8", true).unwrap(),
            vec!["10.0.0.0/8".parse::<IpNet>().unwrap()]
        );
    }
}
