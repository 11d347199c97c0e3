//! Where a webhook comes from, and whether that source may send alerts: the peer address,
//! or, behind proxies the deployment trusts, the address they forwarded in the one header
//! the deployment names (`X-Forwarded-For` by default, or `Forwarded`). Only that header is
//! read, since a proxy that sets one passes the other through as the client wrote it, and
//! forwarding headers from anyone but a trusted proxy are ignored: a client cannot claim an
//! allowed address by writing one.

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

/// The header trusted proxies name the client in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ForwardedHeader {
    /// `X-Forwarded-For: client, proxy1, ...` (nginx, most load balancers).
    #[default]
    XForwardedFor,
    /// `Forwarded: for=client, for=proxy1` (RFC 7239).
    Forwarded,
}

impl ForwardedHeader {
    /// Reads the deployment's `forwarded_header` value.
    pub fn parse(text: &str) -> Option<ForwardedHeader> {
        match text.trim().to_ascii_lowercase().as_str() {
            "x-forwarded-for" => Some(ForwardedHeader::XForwardedFor),
            "forwarded" => Some(ForwardedHeader::Forwarded),
            _ => None,
        }
    }
}

/// Who may send webhooks, and which proxies are believed about who sent them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourcePolicy {
    /// Networks allowed to send webhooks; `None` allows every source.
    pub allow: Option<Vec<IpNet>>,
    /// Proxies whose forwarding header is believed.
    pub trusted_proxies: Vec<IpNet>,
    /// The one header they name the client in.
    pub header: ForwardedHeader,
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
        if let Ok(address) = text.parse::<IpAddr>() {
            return Ok(vec![IpNet::from(canonical(address))]);
        }
        if let Ok(network) = text.parse::<IpNet>() {
            // `::ffff:a.b.c.d/n` is the IPv4 network, as addresses are compared in IPv4 form.
            let network = match network {
                IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
                    Some(v4) => ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96)
                        .map_or(IpNet::V6(v6), IpNet::V4),
                    None => IpNet::V6(v6),
                },
                other => other,
            };
            return Ok(vec![network.trunc()]);
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
        let Some(chain) = forwarded(headers, self.header) else {
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

    /// Whether `address` is a trusted proxy.
    pub fn trusts(&self, address: IpAddr) -> bool {
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

/// The forwarded chain in `header`, oldest hop first: the entries of `X-Forwarded-For`, or the
/// `for=` values of `Forwarded` (RFC 7239); ports and brackets removed.
fn forwarded(headers: &HeaderMap, header: ForwardedHeader) -> Option<Vec<String>> {
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
    let chain: Vec<String> = match header {
        ForwardedHeader::XForwardedFor => values("x-forwarded-for")
            .iter()
            .map(|hop| strip_port(hop))
            .collect(),
        // An element without `for=` names no client: it stays in the chain, unparseable, so
        // the source is unknown rather than guessed.
        ForwardedHeader::Forwarded => values("forwarded")
            .iter()
            .map(|element| {
                element
                    .split(';')
                    .find_map(|pair| {
                        let (key, value) = pair.split_once('=')?;
                        key.trim()
                            .eq_ignore_ascii_case("for")
                            .then(|| strip_port(value.trim().trim_matches('"')))
                    })
                    .unwrap_or_default()
            })
            .collect(),
    };
    (!chain.is_empty()).then_some(chain)
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

    fn policy(allow: &[&str], proxies: &[&str], header: ForwardedHeader) -> SourcePolicy {
        let nets = |entries: &[&str], preset: bool| -> Vec<IpNet> {
            entries
                .iter()
                .flat_map(|entry| SourcePolicy::entry(entry, preset).unwrap())
                .collect()
        };
        SourcePolicy {
            allow: (!allow.is_empty()).then(|| nets(allow, true)),
            trusted_proxies: nets(proxies, false),
            header,
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
            // Only the configured header is read: a client's own Forwarded, passed through by a
            // proxy that sets X-Forwarded-For, is ignored, and the other way round.
            (&["tradingview"], &["10.0.0.0/8"], "10.1.2.3", &[("x-forwarded-for", "198.51.100.1"), ("forwarded", "for=52.89.214.238")], Some("198.51.100.1"), false),
            // Forwarded (RFC 7239) when configured; ports and brackets are stripped.
            (&["tradingview"], &["10.0.0.0/8"], "10.1.2.3", &[("forwarded", "for=\"52.89.214.238:4711\";proto=https"), ("x-forwarded-for", "198.51.100.1")], Some("52.89.214.238"), true),
            (&["2001:db8::/32"], &["10.0.0.0/8"], "10.1.2.3", &[("forwarded", "for=\"[2001:db8::1]:4711\"")], Some("2001:db8::1"), true),
            // A trusted proxy with no header is the client itself.
            (&["10.0.0.0/8"], &["10.0.0.0/8"], "10.1.2.3", &[], Some("10.1.2.3"), true),
            // Garbage forwarded by a trusted proxy: the source is unknown.
            (&["tradingview"], &["10.0.0.0/8"], "10.1.2.3", &[("x-forwarded-for", "not-an-address")], None, false),
            // A Forwarded element without for= names nobody: the source is unknown.
            (&["tradingview"], &["10.0.0.0/8"], "10.1.2.3", &[("forwarded", "proto=https")], None, false),
            // An IPv4 peer on a dual-stack listener, and an IPv4 entry written as IPv6.
            (&["::ffff:52.89.214.238"], &[], "52.89.214.238", &[], Some("52.89.214.238"), true),
            (&["tradingview"], &[], "::ffff:52.89.214.238", &[], Some("52.89.214.238"), true),
        ];
        for (allow, proxies, peer, headers, client, allowed) in cases {
            // A case whose first header is `Forwarded` runs with `forwarded_header = "forwarded"`.
            let header = match headers.first() {
                Some(("forwarded", _)) => ForwardedHeader::Forwarded,
                _ => ForwardedHeader::XForwardedFor,
            };
            let policy = policy(allow, proxies, header);
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
