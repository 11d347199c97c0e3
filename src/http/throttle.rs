//! Brute force: a source that keeps failing authentication (a wrong passphrase, a bad
//! signature) is slowed, then refused for a while. Memory is bounded, and exempt sources
//! (the allowlist, or without one TradingView's own addresses; loopback and the trusted
//! proxies) are never slowed or refused: TradingView never resends a 4xx, so a refused valid
//! alert would be a lost one, its addresses are shared by every TradingView user, an
//! attacker included, and a proxy's own address stands for everyone behind it. IPv6 sources
//! are counted per /64, the block one host is usually given.

use ipnet::IpNet;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;
use tokio::time::Instant;

/// Failures a source may have before its answers are slowed.
pub const FAILURES_BEFORE_SLOWING: u32 = 3;

/// The delay added per failure past [`FAILURES_BEFORE_SLOWING`].
pub const SLOWDOWN_STEP: Duration = Duration::from_millis(200);

/// The longest delay before a refusal is answered: well inside the request timeout.
pub const MAX_SLOWDOWN: Duration = Duration::from_secs(1);

/// Failures after which a source is refused outright for [`LOCKOUT`].
pub const FAILURES_BEFORE_LOCKOUT: u32 = 10;

/// How long failures are remembered: a source that stays quiet this long starts afresh.
pub const FAILURE_WINDOW: Duration = Duration::from_secs(600);

/// How long a locked-out source is refused.
pub const LOCKOUT: Duration = Duration::from_secs(900);

/// The most sources remembered at once; past it the one that failed longest ago is
/// forgotten first.
pub const MAX_TRACKED_SOURCES: usize = 4096;

/// Whether a source may try now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// It may.
    Open,
    /// It is locked out for this much longer.
    Locked {
        /// How long until it may try again.
        retry_after: Duration,
    },
}

/// What is remembered of one source.
#[derive(Debug, Clone, Copy)]
struct Record {
    /// Failures inside the window.
    failures: u32,
    /// The first of them.
    first_at: Instant,
    /// The latest, for eviction.
    last_at: Instant,
    /// Until when it is refused, once locked out.
    locked_until: Option<Instant>,
}

/// Counts authentication failures per source.
#[derive(Debug)]
pub struct Throttle {
    /// Sources never slowed or refused.
    exempt: Vec<IpNet>,
    /// Sources that failed recently.
    sources: Mutex<HashMap<IpAddr, Record>>,
}

impl Throttle {
    /// The throttle for a deployment admitting `sources`: its allowlist is exempt (without
    /// one TradingView's addresses), and so are loopback and the trusted proxies.
    pub fn for_sources(sources: &super::source::SourcePolicy) -> Throttle {
        let mut exempt = match &sources.allow {
            Some(allow) => allow.clone(),
            None => super::source::SourcePolicy::entry(super::source::TRADINGVIEW_PRESET, true)
                .unwrap_or_default(),
        };
        exempt.extend(sources.trusted_proxies.iter().copied());
        exempt.extend(
            ["127.0.0.0/8", "::1/128"]
                .iter()
                .filter_map(|net| net.parse::<IpNet>().ok()),
        );
        Throttle::new(exempt)
    }

    /// A throttle that never slows or refuses `exempt`.
    pub fn new(exempt: Vec<IpNet>) -> Throttle {
        Throttle {
            exempt,
            sources: Mutex::new(HashMap::new()),
        }
    }

    fn is_exempt(&self, source: IpAddr) -> bool {
        self.exempt.iter().any(|network| network.contains(&source))
    }

    /// Whether `source` may try at `now`.
    pub fn check(&self, source: IpAddr, now: Instant) -> Gate {
        if self.is_exempt(source) {
            return Gate::Open;
        }
        let sources = self.sources.lock().unwrap_or_else(PoisonError::into_inner);
        match sources
            .get(&counted_as(source))
            .and_then(|record| record.locked_until)
        {
            Some(until) if until > now => Gate::Locked {
                retry_after: until - now,
            },
            _ => Gate::Open,
        }
    }

    /// Records a failure of `source` at `now`; returns how long to wait before answering.
    pub fn failed(&self, source: IpAddr, now: Instant) -> Duration {
        if self.is_exempt(source) {
            return Duration::ZERO;
        }
        let source = counted_as(source);
        let mut sources = self.sources.lock().unwrap_or_else(PoisonError::into_inner);
        if !sources.contains_key(&source) && sources.len() >= MAX_TRACKED_SOURCES {
            // Locked-out sources are forgotten last, so a flood from new addresses cannot
            // free an attacker's own.
            let oldest = sources
                .iter()
                .min_by_key(|(_, record)| {
                    (
                        record.locked_until.is_some_and(|until| until > now),
                        record.last_at,
                    )
                })
                .map(|(address, _)| *address);
            if let Some(oldest) = oldest {
                sources.remove(&oldest);
            }
        }
        let record = sources.entry(source).or_insert(Record {
            failures: 0,
            first_at: now,
            last_at: now,
            locked_until: None,
        });
        let lapsed = record.locked_until.is_some_and(|until| until <= now);
        if lapsed || now.duration_since(record.first_at) > FAILURE_WINDOW {
            *record = Record {
                failures: 0,
                first_at: now,
                last_at: now,
                locked_until: None,
            };
        }
        record.failures += 1;
        record.last_at = now;
        if record.failures >= FAILURES_BEFORE_LOCKOUT {
            record.locked_until = Some(now + LOCKOUT);
        }
        let past = record.failures.saturating_sub(FAILURES_BEFORE_SLOWING);
        SLOWDOWN_STEP.saturating_mul(past).min(MAX_SLOWDOWN)
    }

    /// `source` authenticated: its failures are forgotten.
    pub fn succeeded(&self, source: IpAddr) {
        self.sources
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&counted_as(source));
    }

    /// How many sources are remembered.
    pub fn tracked(&self) -> usize {
        self.sources
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// The address failures are counted against: IPv4 as is, IPv6 by its /64.
fn counted_as(source: IpAddr) -> IpAddr {
    match source {
        IpAddr::V6(v6) => {
            let segments = v6.segments();
            IpAddr::V6(std::net::Ipv6Addr::new(
                segments[0],
                segments[1],
                segments[2],
                segments[3],
                0,
                0,
                0,
                0,
            ))
        }
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn attacker() -> IpAddr {
        "198.51.100.9".parse().unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn failures_slow_then_lock_out_then_lapse() {
        let throttle = Throttle::new(vec!["52.89.214.238/32".parse().unwrap()]);
        let start = Instant::now();
        let delays: Vec<u128> = (0..FAILURES_BEFORE_LOCKOUT)
            .map(|_| throttle.failed(attacker(), start).as_millis())
            .collect();
        assert_eq!(delays, [0, 0, 0, 200, 400, 600, 800, 1000, 1000, 1000]);
        assert_eq!(
            throttle.check(attacker(), start),
            Gate::Locked {
                retry_after: LOCKOUT
            }
        );
        let later = start + LOCKOUT;
        assert_eq!(throttle.check(attacker(), later), Gate::Open);
        // A lapsed lockout starts afresh.
        assert_eq!(throttle.failed(attacker(), later), Duration::ZERO);
        assert_eq!(throttle.check(attacker(), later), Gate::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn quiet_sources_and_good_passphrases_start_afresh() {
        let throttle = Throttle::new(Vec::new());
        let start = Instant::now();
        for _ in 0..FAILURES_BEFORE_LOCKOUT - 1 {
            throttle.failed(attacker(), start);
        }
        let quiet = start + FAILURE_WINDOW + Duration::from_secs(1);
        assert_eq!(throttle.failed(attacker(), quiet), Duration::ZERO);
        for _ in 0..FAILURES_BEFORE_LOCKOUT - 2 {
            throttle.failed(attacker(), quiet);
        }
        throttle.succeeded(attacker());
        assert_eq!(throttle.failed(attacker(), quiet), Duration::ZERO);
        assert_eq!(throttle.check(attacker(), quiet), Gate::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn exempt_sources_are_never_slowed_or_refused() {
        let tradingview: IpAddr = "52.89.214.238".parse().unwrap();
        let throttle = Throttle::new(vec!["52.89.214.238/32".parse().unwrap()]);
        let now = Instant::now();
        for _ in 0..100 {
            assert_eq!(throttle.failed(tradingview, now), Duration::ZERO);
        }
        assert_eq!(throttle.check(tradingview, now), Gate::Open);
        assert_eq!(throttle.tracked(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn ipv6_hosts_count_per_block_and_proxies_are_exempt() {
        let sources = crate::http::source::SourcePolicy {
            trusted_proxies: vec!["10.0.0.0/8".parse().unwrap()],
            ..Default::default()
        };
        let throttle = Throttle::for_sources(&sources);
        let now = Instant::now();
        for host in 1..=FAILURES_BEFORE_LOCKOUT {
            let address: IpAddr = format!("2001:db8:1:2::{host:x}").parse().unwrap();
            throttle.failed(address, now);
        }
        let sibling: IpAddr = "2001:db8:1:2::ffff".parse().unwrap();
        assert!(matches!(throttle.check(sibling, now), Gate::Locked { .. }));
        let elsewhere: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(throttle.check(elsewhere, now), Gate::Open);
        for exempt in ["10.1.2.3", "127.0.0.1", "::1", "52.89.214.238"] {
            let address: IpAddr = exempt.parse().unwrap();
            for _ in 0..FAILURES_BEFORE_LOCKOUT * 2 {
                assert_eq!(throttle.failed(address, now), Duration::ZERO, "{exempt}");
            }
            assert_eq!(throttle.check(address, now), Gate::Open, "{exempt}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_flood_of_new_sources_does_not_free_a_locked_one() {
        let throttle = Throttle::new(Vec::new());
        let now = Instant::now();
        for _ in 0..FAILURES_BEFORE_LOCKOUT {
            throttle.failed(attacker(), now);
        }
        for n in 0..MAX_TRACKED_SOURCES + 10 {
            let address = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + n as u32));
            throttle.failed(address, now + Duration::from_millis(1 + n as u64));
        }
        assert!(matches!(
            throttle.check(attacker(), now + Duration::from_secs(60)),
            Gate::Locked { .. }
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn memory_is_bounded() {
        let throttle = Throttle::new(Vec::new());
        let now = Instant::now();
        for n in 0..MAX_TRACKED_SOURCES + 100 {
            let address = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + n as u32));
            throttle.failed(address, now + Duration::from_millis(n as u64));
        }
        assert_eq!(throttle.tracked(), MAX_TRACKED_SOURCES);
        // The newest are kept; the oldest were forgotten first.
        let newest = IpAddr::from(std::net::Ipv4Addr::from(
            0x0a00_0000 + (MAX_TRACKED_SOURCES + 99) as u32,
        ));
        assert!(throttle.sources.lock().unwrap().contains_key(&newest));
    }
}
