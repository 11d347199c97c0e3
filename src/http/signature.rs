//! Signed webhooks, for senders that can sign (TradingView cannot; its alerts carry the
//! passphrase). The header `X-Vigil-Signature: t=<unix seconds>,v1=<hex>` carries an
//! HMAC-SHA256 over `"<t>.<raw body>"` (`t` exactly as the header writes it): a signature is
//! valid when one configured key made it (two keys may be valid at once, for rotation), its
//! time is within the tolerance of now, and the signed message (its time and body) was not
//! accepted before inside that window (a replay is refused, however its `v1=` values are
//! ordered or chosen). Comparisons are the
//! `hmac` crate's, in constant time; keys are never logged or shown.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use std::collections::{HashSet, VecDeque};
use std::fmt;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

/// The header a signing sender sets.
pub const SIGNATURE_HEADER: &str = "x-vigil-signature";

/// How many signatures the replay check remembers; past it the oldest are forgotten first.
/// Alerts come a few a minute, so a window of minutes holds far fewer.
pub const MAX_REMEMBERED_SIGNATURES: usize = 10_000;

/// The most `v1=` values one header may carry (a sender rotating keys sends two).
pub const MAX_SIGNATURES_PER_HEADER: usize = 4;

/// Why a signature was refused. Each says what to check, never a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// Signatures are required and the request has none.
    #[error("the X-Vigil-Signature header is required and missing")]
    Missing,
    /// The header is not `t=<unix seconds>,v1=<hex>`.
    #[error("the X-Vigil-Signature header is not t=<unix seconds>,v1=<hex>")]
    Malformed,
    /// Its time is too far from now.
    #[error("the signature's time is outside the accepted window; check the sender's clock")]
    Expired,
    /// No configured key made it.
    #[error("the signature does not match the body under any configured key")]
    Mismatch,
    /// It was used before.
    #[error("the signature was already used; a signed request is accepted once")]
    Replayed,
}

/// Verifies signed webhooks.
pub struct Signatures {
    /// The keys whose signatures are valid (one, or two while rotating).
    keys: Vec<Vec<u8>>,
    /// How far a signature's time may be from now, either way.
    tolerance: Duration,
    /// Whether an unsigned request is refused.
    required: bool,
    /// Signatures seen inside the window.
    seen: Mutex<Seen>,
}

impl fmt::Debug for Signatures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signatures")
            .field("keys", &format_args!("<{} redacted>", self.keys.len()))
            .field("tolerance", &self.tolerance)
            .field("required", &self.required)
            .finish_non_exhaustive()
    }
}

/// Signed messages accepted (SHA-256 of their time and body), oldest first, each with the
/// time it stops mattering.
#[derive(Debug, Default)]
struct Seen {
    /// For lookups.
    set: HashSet<Vec<u8>>,
    /// For expiry and eviction: (forget after, in unix seconds; signature).
    order: VecDeque<(i64, Vec<u8>)>,
}

impl Signatures {
    /// Verifies with `keys`, accepting times within `tolerance` of now; with `required`,
    /// unsigned requests are refused.
    pub fn new(keys: Vec<Vec<u8>>, tolerance: Duration, required: bool) -> Signatures {
        Signatures {
            keys,
            tolerance,
            required,
            seen: Mutex::new(Seen::default()),
        }
    }

    /// Checks `header` (the X-Vigil-Signature value, if any) over `body` at `now_s` (unix
    /// seconds). Unsigned requests pass unless signatures are required.
    pub fn verify(
        &self,
        header: Option<&str>,
        body: &[u8],
        now_s: i64,
    ) -> Result<(), SignatureError> {
        let Some(header) = header else {
            return match self.required {
                true => Err(SignatureError::Missing),
                false => Ok(()),
            };
        };
        let (time, time_text, signatures) = parse(header)?;
        let tolerance = i64::try_from(self.tolerance.as_secs()).unwrap_or(i64::MAX);
        if now_s.abs_diff(time) > tolerance.unsigned_abs() {
            return Err(SignatureError::Expired);
        }
        let matches = signatures.iter().any(|signature| {
            self.keys.iter().any(|key| {
                let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else {
                    return false;
                };
                mac.update(time_text.as_bytes());
                mac.update(b".");
                mac.update(body);
                mac.verify_slice(signature).is_ok()
            })
        });
        if !matches {
            return Err(SignatureError::Mismatch);
        }
        let message = Sha256::new()
            .chain_update(time_text.as_bytes())
            .chain_update(b".")
            .chain_update(body)
            .finalize()
            .to_vec();
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        while let Some((forget_after, _)) = seen.order.front() {
            if *forget_after >= now_s && seen.order.len() < MAX_REMEMBERED_SIGNATURES {
                break;
            }
            if let Some((_, old)) = seen.order.pop_front() {
                seen.set.remove(&old);
            }
        }
        if !seen.set.insert(message.clone()) {
            return Err(SignatureError::Replayed);
        }
        seen.order
            .push_back((time.saturating_add(tolerance), message));
        Ok(())
    }

    /// The header value for `body` at `time_s` under `key`, as a sender computes it.
    pub fn sign(key: &[u8], time_s: i64, body: &[u8]) -> String {
        let mut mac = match Hmac::<Sha256>::new_from_slice(key) {
            Ok(mac) => mac,
            // HMAC takes keys of any length.
            Err(_) => unreachable!("HMAC accepts keys of every length"),
        };
        mac.update(time_s.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("t={time_s},v1={}", hex::encode(mac.finalize().into_bytes()))
    }
}

/// `t=<unix seconds>,v1=<hex>[,v1=<hex>]`, in any order: the time, as a number and as
/// written, and the signatures.
fn parse(header: &str) -> Result<(i64, String, Vec<Vec<u8>>), SignatureError> {
    let mut time = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        let (key, value) = part
            .trim()
            .split_once('=')
            .ok_or(SignatureError::Malformed)?;
        match key.trim() {
            "t" => {
                let text = value.trim();
                let number = text.parse::<i64>().map_err(|_| SignatureError::Malformed)?;
                time = Some((number, text.to_string()));
            }
            "v1" if signatures.len() < MAX_SIGNATURES_PER_HEADER => {
                signatures.push(hex::decode(value.trim()).map_err(|_| SignatureError::Malformed)?);
            }
            // Other schemes (and signatures past the bound) are not ours to check.
            _ => {}
        }
    }
    match (time, signatures.is_empty()) {
        (Some((time, text)), false) => Ok((time, text, signatures)),
        _ => Err(SignatureError::Malformed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_764_640_000;
    const BODY: &[u8] = br#"{"signal":"EXIT"}"#;

    fn signatures(required: bool) -> Signatures {
        Signatures::new(
            vec![b"old-key".to_vec(), b"new-key".to_vec()],
            Duration::from_secs(300),
            required,
        )
    }

    /// (what, required, header, body, expected)
    type Case<'a> = (
        &'a str,
        bool,
        Option<&'a str>,
        &'a [u8],
        Result<(), SignatureError>,
    );

    #[test]
    fn verdicts() {
        let good = Signatures::sign(b"new-key", NOW, BODY);
        let old = Signatures::sign(b"old-key", NOW - 10, BODY);
        let other = Signatures::sign(b"other-key", NOW, BODY);
        let early = Signatures::sign(b"new-key", NOW - 301, BODY);
        let late = Signatures::sign(b"new-key", NOW + 301, BODY);
        let edge = Signatures::sign(b"new-key", NOW - 300, BODY);
        let two = format!(
            "{},v1={}",
            other,
            &good[good.find("v1=").map_or(0, |at| at + 3)..]
        );
        #[rustfmt::skip]
        let cases: &[Case<'_>] = &[
            ("unsigned, not required", false, None, BODY, Ok(())),
            ("unsigned, required", true, None, BODY, Err(SignatureError::Missing)),
            ("signed with the new key", false, Some(&good), BODY, Ok(())),
            ("signed with the old key during rotation", false, Some(&old), BODY, Ok(())),
            ("signed with a key not configured", false, Some(&other), BODY, Err(SignatureError::Mismatch)),
            ("a changed body", false, Some(&good), br#"{"signal":"BASE_ENTRY"}"#, Err(SignatureError::Mismatch)),
            ("too old", false, Some(&early), BODY, Err(SignatureError::Expired)),
            ("too far ahead", false, Some(&late), BODY, Err(SignatureError::Expired)),
            ("at the edge of the window", false, Some(&edge), BODY, Ok(())),
            ("two signatures, one good", false, Some(&two), BODY, Ok(())),
            ("no time", false, Some("v1=00"), BODY, Err(SignatureError::Malformed)),
            ("not hex", false, Some("t=1,v1=zz"), BODY, Err(SignatureError::Malformed)),
            ("no signature", false, Some("t=1"), BODY, Err(SignatureError::Malformed)),
            ("garbage", false, Some("hello"), BODY, Err(SignatureError::Malformed)),
        ];
        for (what, required, header, body, expected) in cases {
            let verifier = signatures(*required);
            assert_eq!(verifier.verify(*header, body, NOW), *expected, "{what}");
        }
    }

    #[test]
    fn a_signature_is_accepted_once() {
        let verifier = signatures(false);
        let header = Signatures::sign(b"new-key", NOW, BODY);
        assert_eq!(verifier.verify(Some(&header), BODY, NOW), Ok(()));
        assert_eq!(
            verifier.verify(Some(&header), BODY, NOW + 1),
            Err(SignatureError::Replayed)
        );
        // Reordered or chosen v1 values are the same message, refused too.
        let rotating = format!("{header},v1={}", "00".repeat(32));
        let swapped = format!("v1={},{header}", "00".repeat(32));
        for replay in [rotating, swapped] {
            assert_eq!(
                verifier.verify(Some(&replay), BODY, NOW + 1),
                Err(SignatureError::Replayed),
                "{replay}"
            );
        }
        // Past the window it is refused as expired, not remembered for ever.
        assert_eq!(
            verifier.verify(Some(&header), BODY, NOW + 301),
            Err(SignatureError::Expired)
        );
    }

    #[test]
    fn the_replay_memory_is_bounded() {
        let verifier = signatures(false);
        for n in 0..MAX_REMEMBERED_SIGNATURES + 10 {
            let body = format!("{{\"n\":{n}}}");
            let header = Signatures::sign(b"new-key", NOW, body.as_bytes());
            assert_eq!(verifier.verify(Some(&header), body.as_bytes(), NOW), Ok(()));
        }
        let seen = verifier.seen.lock().unwrap_or_else(PoisonError::into_inner);
        assert!(seen.order.len() <= MAX_REMEMBERED_SIGNATURES);
        assert_eq!(seen.order.len(), seen.set.len());
    }

    #[test]
    fn keys_never_show() {
        let shown = format!("{:?}", signatures(true));
        assert!(
            !shown.contains("new-key") && !shown.contains("old-key"),
            "{shown}"
        );
    }
}
