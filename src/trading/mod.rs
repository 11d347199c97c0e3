//! Trading signals: what a TradingView alert says, how it is checked and fingerprinted, and
//! (in [`plan`]) what it changes. Pure: no I/O, no clock.

pub mod plan;

use crate::vocabulary::SignalType;
use chrono::{DateTime, SecondsFormat, Utc};
use rust_decimal::Decimal;
use serde::Serialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// The longest text field accepted (instrument, position label, timestamp). Longer values are
/// not from TradingView and would only bloat the signal log.
pub const MAX_FIELD_CHARS: usize = 64;

/// The most decimal places a price, stop or lot count may have. Risk, margin and P&L are
/// rounded to [`plan::MONEY_DECIMAL_PLACES`]; bounded inputs keep every product exact.
pub const MAX_INPUT_DECIMAL_PLACES: u32 = 8;

/// The label an entry gets when its alert names none.
pub const DEFAULT_LABEL: &str = "long";

/// A checked signal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Signal {
    /// BASE_ENTRY, PYRAMID or EXIT.
    pub kind: SignalType,
    /// The instrument, upper-cased, as the deployment names it.
    pub instrument: String,
    /// The position label (TradingView's order id), if the alert names one. An entry without
    /// one is labelled [`DEFAULT_LABEL`]; an EXIT without one closes the whole instrument.
    pub position: Option<String>,
    /// Entry price, or exit price for EXIT.
    pub price: Decimal,
    /// Protective stop; entries only.
    pub stop: Option<Decimal>,
    /// Size in lots; entries only.
    pub lots: Option<Decimal>,
    /// The alert's own time, in UTC: it tells a resend (same time) from a new alert with the
    /// same numbers.
    pub timestamp: DateTime<Utc>,
    /// The alert's own id, when its template sends one (`alert_id`, or `id`; for example
    /// `{{strategy.order.id}}-{{time}}`). TradingView's `{{timenow}}` has a resolution of one
    /// second, so two alerts with the same content in the same second share a fingerprint,
    /// and the second is taken for a resend of the first; an id tells them apart. Part of
    /// the fingerprint only when present, so alerts without one keep theirs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alert_id: Option<String>,
}

/// Why a body was refused before any state was looked at.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignalError {
    /// Not JSON, or not a JSON object: HTTP 400.
    #[error("malformed JSON: {0}")]
    Malformed(String),
    /// Well-formed but a field is missing or wrong: HTTP 422.
    #[error("{field}: {message}")]
    Invalid {
        /// The field at fault.
        field: &'static str,
        /// What is wrong with it.
        message: String,
    },
}

fn invalid(field: &'static str, message: impl Into<String>) -> SignalError {
    SignalError::Invalid {
        field,
        message: message.into(),
    }
}

/// A parsed body: the signal and the passphrase it carried (checked by the HTTP layer, in
/// constant time, and never logged).
#[derive(Debug)]
pub struct Parsed {
    /// The signal.
    pub signal: Signal,
    /// The passphrase field, if present.
    pub passphrase: Option<String>,
}

/// An alert body that is a JSON object, not yet checked.
#[derive(Debug)]
pub struct Body(Map<String, Value>);

impl Body {
    /// Reads the body; anything but a JSON object is [`SignalError::Malformed`].
    pub fn parse(bytes: &[u8]) -> Result<Body, SignalError> {
        match serde_json::from_slice(bytes) {
            Ok(Value::Object(map)) => Ok(Body(map)),
            Ok(_) => Err(SignalError::Malformed(
                "the body must be a JSON object".into(),
            )),
            Err(error) => Err(SignalError::Malformed(error.to_string())),
        }
    }

    /// The passphrase field, if it is a string.
    pub fn passphrase(&self) -> Option<&str> {
        self.0.get("passphrase").and_then(Value::as_str)
    }

    /// Checks the fields; anything wrong names the field.
    pub fn signal(&self) -> Result<Signal, SignalError> {
        check(&self.0)
    }
}

/// Parses and checks an alert body.
pub fn parse(bytes: &[u8]) -> Result<Parsed, SignalError> {
    let body = Body::parse(bytes)?;
    let signal = body.signal()?;
    Ok(Parsed {
        signal,
        passphrase: body.passphrase().map(str::to_string),
    })
}

/// The first of `names` present in the body (TradingView templates use several spellings).
fn field<'a>(body: &'a Map<String, Value>, names: &[&str]) -> Option<&'a Value> {
    names
        .iter()
        .find_map(|name| body.get(*name))
        .filter(|value| !value.is_null())
}

fn text(
    body: &Map<String, Value>,
    field_name: &'static str,
    names: &[&str],
) -> Result<Option<String>, SignalError> {
    let Some(value) = field(body, names) else {
        return Ok(None);
    };
    let Value::String(text) = value else {
        return Err(invalid(
            field_name,
            format!("must be a string, found {value}"),
        ));
    };
    let text = text.trim();
    if text.is_empty() {
        return Err(invalid(field_name, "is empty"));
    }
    if text.chars().count() > MAX_FIELD_CHARS || text.chars().any(char::is_control) {
        return Err(invalid(
            field_name,
            format!("must be at most {MAX_FIELD_CHARS} printable characters"),
        ));
    }
    Ok(Some(text.to_string()))
}

/// A number as sent: a JSON number (read from its digits, never through floating point) or a
/// string holding one, written as TradingView renders its numeric placeholders (see
/// [`fixed_point`]).
fn number(
    body: &Map<String, Value>,
    field_name: &'static str,
    names: &[&str],
) -> Result<Option<Decimal>, SignalError> {
    let Some(value) = field(body, names) else {
        return Ok(None);
    };
    let text = match value {
        Value::String(text) => text.clone(),
        Value::Number(number) => number.to_string(),
        other => {
            return Err(invalid(
                field_name,
                format!("must be a number, found {other}"),
            ))
        }
    };
    fixed_point(&text)
        .map(Some)
        .map_err(|message| invalid(field_name, message))
}

/// Reads a positive fixed-point number, `(0|[1-9][0-9]*)(\.[0-9]{1,8})?`, the form TradingView
/// gives its numeric placeholders (`{{close}}`, `{{strategy.order.price}}`, a plot). Anything
/// else is refused with what is wrong with it: a value that only looks like a number is more
/// likely a broken template than an order to trade.
pub fn fixed_point(text: &str) -> Result<Decimal, String> {
    let shown = format!("{text:?}");
    if text.is_empty() {
        return Err("is empty".into());
    }
    if text.contains("{{") {
        return Err(format!(
            "{shown} is a placeholder TradingView did not fill; check its name in the alert's message"
        ));
    }
    if text.eq_ignore_ascii_case("nan") {
        return Err(format!(
            "{shown} is not a number (TradingView sends NaN for a plot with no value)"
        ));
    }
    if text.chars().any(char::is_whitespace) {
        return Err(format!(
            "{shown} holds white space; write the digits alone, for example \"22000.5\""
        ));
    }
    if let Some(rest) = text.strip_prefix('-') {
        return Err(format!("-{rest} is not positive"));
    }
    if let Some(rest) = text.strip_prefix('+') {
        return Err(format!("{shown} has a sign; write {rest}"));
    }
    if text.contains(['e', 'E']) {
        let hint = Decimal::from_scientific(text)
            .map(|value| format!(", {}", value.normalize()))
            .unwrap_or_default();
        return Err(format!(
            "{shown} has an exponent; write it in fixed point{hint}"
        ));
    }
    if text.contains(',') {
        return Err(format!(
            "{shown} has a separator; write {} (digits and one decimal point)",
            text.replace(',', "")
        ));
    }
    if !text.chars().all(|c| c.is_ascii_digit() || c == '.') || text.matches('.').count() > 1 {
        return Err(format!("{shown} is not a number"));
    }
    let (whole, fraction) = match text.split_once('.') {
        Some((whole, fraction)) => (whole, Some(fraction)),
        None => (text, None),
    };
    if whole.is_empty() || fraction.is_some_and(str::is_empty) {
        return Err(format!(
            "{shown} needs a digit on each side of its decimal point, for example 0.5 or 5.0"
        ));
    }
    if whole.len() > 1 && whole.starts_with('0') {
        let digits = match whole.trim_start_matches('0') {
            "" => "0",
            digits => digits,
        };
        let point = fraction
            .map(|fraction| format!(".{fraction}"))
            .unwrap_or_default();
        return Err(format!("{shown} has a leading zero; write {digits}{point}"));
    }
    let places = fraction.map_or(0, str::len);
    if places > MAX_INPUT_DECIMAL_PLACES as usize {
        return Err(format!(
            "{shown} has {places} decimal places; at most {MAX_INPUT_DECIMAL_PLACES} are read"
        ));
    }
    let number =
        Decimal::from_str_exact(text).map_err(|_| format!("{shown} is too large a number"))?;
    if number.is_zero() {
        return Err(format!("{text} is not positive"));
    }
    Ok(number.normalize())
}

fn check(body: &Map<String, Value>) -> Result<Signal, SignalError> {
    let kind_text = text(body, "signal", &["signal", "type", "action"])?
        .ok_or_else(|| invalid("signal", "is missing; use BASE_ENTRY, PYRAMID or EXIT"))?;
    let kind = SignalType::parse(&kind_text.to_ascii_uppercase()).ok_or_else(|| {
        invalid(
            "signal",
            format!("{kind_text:?} is not BASE_ENTRY, PYRAMID or EXIT"),
        )
    })?;
    let instrument = text(body, "instrument", &["instrument", "ticker", "symbol"])?
        .ok_or_else(|| invalid("instrument", "is missing"))?
        .to_ascii_uppercase();
    let position = text(body, "position", &["position", "label", "position_label"])?;
    let timestamp_text =
        text(body, "timestamp", &["timestamp", "time", "timenow"])?.ok_or_else(|| {
            invalid(
                "timestamp",
                "is missing; TradingView's {{timenow}} fills it",
            )
        })?;
    let timestamp = DateTime::parse_from_rfc3339(&timestamp_text)
        .map_err(|_| {
            invalid(
                "timestamp",
                format!("{timestamp_text:?} is not an RFC 3339 time such as 2026-11-21T09:15:00Z"),
            )
        })?
        .with_timezone(&Utc);
    let alert_id = text(body, "alert_id", &["alert_id", "id"])?;
    let price = number(body, "price", &["price", "entry", "close"])?
        .ok_or_else(|| invalid("price", "is missing"))?;
    let (stop, lots) = match kind {
        // An exit closes what is open at its price: a stop or size it carries (TradingView
        // may send NaN for an empty plot) is not read, and not part of its fingerprint.
        SignalType::Exit => (None, None),
        SignalType::BaseEntry | SignalType::Pyramid => {
            let stop = number(body, "stop", &["stop", "stop_loss", "sl"])?
                .ok_or_else(|| invalid("stop", "is required for an entry"))?;
            if stop >= price {
                return Err(invalid(
                    "stop",
                    format!(
                        "{stop} is not below the entry price {price}; vigil trades long positions"
                    ),
                ));
            }
            let lots = number(body, "lots", &["lots", "quantity", "qty"])?
                .ok_or_else(|| invalid("lots", "is required for an entry"))?;
            (Some(stop), Some(lots))
        }
    };
    Ok(Signal {
        kind,
        instrument,
        position,
        price,
        stop,
        lots,
        timestamp,
        alert_id,
    })
}

impl Signal {
    /// The label an entry is stored under.
    pub fn entry_label(&self) -> &str {
        self.position.as_deref().unwrap_or(DEFAULT_LABEL)
    }

    /// SHA-256 over the canonical form: a JSON array of every field that decides what the
    /// signal does, numbers normalised (`22000.50` and `"22000.5"` are the same signal), the
    /// time in UTC, and not the passphrase. JSON quoting keeps fields from running into each
    /// other. A resend, a replay or the same alert at two instances has one fingerprint. The
    /// alert id, when there is one, comes last.
    pub fn fingerprint(&self) -> String {
        let mut canonical = vec![
            Value::from("v1"),
            Value::from(self.kind.as_str()),
            Value::from(self.instrument.as_str()),
            Value::from(self.position.as_deref()),
            Value::from(self.price.normalize().to_string()),
            Value::from(self.stop.map(|stop| stop.normalize().to_string())),
            Value::from(self.lots.map(|lots| lots.normalize().to_string())),
            Value::from(self.timestamp.to_rfc3339_opts(SecondsFormat::AutoSi, true)),
        ];
        if let Some(id) = &self.alert_id {
            canonical.push(Value::from(id.as_str()));
        }
        hex::encode(Sha256::digest(
            Value::Array(canonical).to_string().as_bytes(),
        ))
    }

    /// The canonical JSON stored in the signal log.
    pub fn payload(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(body: &str, expected: Result<(), &str>) {
        let got = parse(body.as_bytes())
            .map(|_| ())
            .map_err(|error| error.to_string());
        match (got, expected) {
            (Ok(()), Ok(())) => {}
            (Err(error), Err(part)) => assert!(
                error.starts_with(part),
                "{body}: {error} does not start with {part}"
            ),
            (got, expected) => panic!("{body}: got {got:?}, expected {expected:?}"),
        }
    }

    #[test]
    fn bodies() {
        let t = r#""timestamp":"2026-11-21T09:15:00Z""#;
        let cases: &[(String, Result<(), &str>)] = &[
            (
                format!(
                    r#"{{"signal":"BASE_ENTRY","instrument":"NIFTY","price":"22000","stop":"21900","lots":2,{t}}}"#
                ),
                Ok(()),
            ),
            ("not json".into(), Err("malformed")),
            ("[1]".into(), Err("malformed")),
            (
                format!(r#"{{"signal":"BUY","instrument":"NIFTY","price":1,{t}}}"#),
                Err("signal"),
            ),
            (
                format!(r#"{{"signal":"EXIT","price":1,{t}}}"#),
                Err("instrument"),
            ),
            (
                format!(r#"{{"signal":"EXIT","instrument":5,"price":1,{t}}}"#),
                Err("instrument"),
            ),
            (
                format!(r#"{{"signal":"EXIT","instrument":"NIFTY","price":"-1",{t}}}"#),
                Err("price"),
            ),
            (
                format!(r#"{{"signal":"EXIT","instrument":"NIFTY","price":true,{t}}}"#),
                Err("price"),
            ),
            (
                format!(r#"{{"signal":"EXIT","instrument":"NIFTY","price":"abc",{t}}}"#),
                Err("price"),
            ),
            (
                format!(r#"{{"signal":"EXIT","instrument":"NIFTY","price":1e400,{t}}}"#),
                Err("price"),
            ),
            (
                format!(
                    r#"{{"signal":"EXIT","instrument":"NIFTY","price":"22000.123456789",{t}}}"#
                ),
                Err("price"),
            ),
            (
                format!(
                    r#"{{"signal":"EXIT","instrument":"NIFTY","price":22000,"stop":"NaN","lots":0,{t}}}"#
                ),
                Ok(()),
            ),
            (
                format!(
                    r#"{{"signal":"BASE_ENTRY","instrument":"NIFTY","price":100,"stop":101,"lots":1,{t}}}"#
                ),
                Err("stop"),
            ),
            (
                format!(
                    r#"{{"signal":"BASE_ENTRY","instrument":"NIFTY","price":100,"stop":0,"lots":1,{t}}}"#
                ),
                Err("stop"),
            ),
            (
                format!(
                    r#"{{"signal":"BASE_ENTRY","instrument":"NIFTY","price":100,"stop":99,"lots":0,{t}}}"#
                ),
                Err("lots"),
            ),
            (
                format!(
                    r#"{{"signal":"BASE_ENTRY","instrument":"NIFTY","price":100,"stop":99,{t}}}"#
                ),
                Err("lots"),
            ),
            (
                r#"{"signal":"EXIT","instrument":"NIFTY","price":100}"#.into(),
                Err("timestamp"),
            ),
            (
                r#"{"signal":"EXIT","instrument":"NIFTY","price":100,"timestamp":"{{timenow}}"}"#
                    .into(),
                Err("timestamp"),
            ),
        ];
        for (body, expected) in cases {
            check(body, *expected);
        }
    }

    /// Every way a number may be written, and how each is read: one line per case, in the
    /// snapshot next to its answer.
    #[test]
    fn numbers() {
        let cases = [
            "22000",
            "22000.5",
            "22000.50",
            "0.5",
            "0.00012345",
            "1.00000000",
            "1",
            "007",
            "00.5",
            "0",
            "0.0",
            "-5",
            "+5",
            "1e3",
            "1E-3",
            "2.5e+2",
            " 22000",
            "22000 ",
            "22 000",
            "22,000.5",
            ".5",
            "5.",
            "1.2.3",
            "1.000000000",
            "22000.123456789",
            "NaN",
            "nan",
            "{{plot_0}}",
            "",
            "abc",
            "0x10",
            "\u{664}",
            "99999999999999999999999999999999",
        ];
        let mut lines = String::new();
        for text in cases {
            let answer = match fixed_point(text) {
                Ok(value) => format!("= {value}"),
                Err(message) => format!("refused: {message}"),
            };
            lines.push_str(&format!("{text:?} -> {answer}\n"));
        }
        // JSON numbers are read from the digits as written, through the same rule.
        for json in ["22000.5", "1e3", "-0", "1.0E2", "22000.500"] {
            let body = format!(
                r#"{{"signal":"EXIT","instrument":"NIFTY","price":{json},"timestamp":"2026-11-21T09:15:00Z"}}"#
            );
            let answer = match parse(body.as_bytes()) {
                Ok(parsed) => format!("= {}", parsed.signal.price),
                Err(error) => format!("refused: {error}"),
            };
            lines.push_str(&format!("json {json} -> {answer}\n"));
        }
        insta::assert_snapshot!(lines);
    }

    fn fingerprint(body: &str) -> String {
        parse(body.as_bytes())
            .map(|parsed| parsed.signal.fingerprint())
            .unwrap_or_default()
    }

    #[test]
    fn fingerprints() {
        let a = fingerprint(
            r#"{"signal":"PYRAMID","instrument":"nifty","price":"22000.50","stop":21900,"lots":"1","timestamp":"2026-11-21T09:15:00Z","passphrase":"a"}"#,
        );
        let same = [
            r#"{"type":"PYRAMID","ticker":"NIFTY","price":22000.5,"stop":"21900.0","lots":1,"timestamp":"2026-11-21T09:15:00.000Z","passphrase":"b"}"#,
            r#"{"signal":"PYRAMID","instrument":"NIFTY","price":22000.500,"stop":21900,"lots":1,"timestamp":"2026-11-21T14:45:00+05:30"}"#,
        ];
        assert!(!a.is_empty());
        for body in same {
            assert_eq!(fingerprint(body), a, "{body}");
        }
        let different = [
            r#"{"signal":"PYRAMID","instrument":"NIFTY","price":22000.5,"stop":21900,"lots":1,"timestamp":"2026-11-21T09:15:01Z"}"#,
            r#"{"signal":"PYRAMID","instrument":"NIFTY","position":"p2","price":22000.5,"stop":21900,"lots":1,"timestamp":"2026-11-21T09:15:00Z"}"#,
        ];
        for body in different {
            assert_ne!(fingerprint(body), a, "{body}");
        }
        // Two alerts with the same content in the same second differ by their ids, whichever
        // of the two names the id goes by; without one, the fingerprint is as before.
        let with_id = |name: &str, id: &str| {
            fingerprint(&format!(
                r#"{{"signal":"PYRAMID","instrument":"NIFTY","price":22000.5,"stop":21900,"lots":1,"timestamp":"2026-11-21T09:15:00Z","{name}":"{id}"}}"#
            ))
        };
        assert_ne!(with_id("alert_id", "7-1763716500"), a);
        assert_ne!(
            with_id("alert_id", "7-1763716500"),
            with_id("alert_id", "8-1763716500")
        );
        assert_eq!(
            with_id("alert_id", "7-1763716500"),
            with_id("id", "7-1763716500")
        );
        assert_eq!(
            a, "34ddb57a8a9b7fb4a0c7a8c9340bfd6b40606014957e8a29f9fdfcf55cadec11",
            "the fingerprint of an alert without an id must not change"
        );
        // Fields cannot run into each other.
        let joined_a = fingerprint(
            r#"{"signal":"EXIT","instrument":"A","position":"p|1","price":2,"timestamp":"2026-11-21T09:15:00Z"}"#,
        );
        let joined_b = fingerprint(
            r#"{"signal":"EXIT","instrument":"A|p","position":"1","price":2,"timestamp":"2026-11-21T09:15:00Z"}"#,
        );
        assert_ne!(joined_a, joined_b);
        // An exit's stop and size are not read.
        assert_eq!(
            fingerprint(
                r#"{"signal":"EXIT","instrument":"A","price":2,"stop":"NaN","timestamp":"2026-11-21T09:15:00Z"}"#
            ),
            fingerprint(
                r#"{"signal":"EXIT","instrument":"A","price":2,"lots":3,"timestamp":"2026-11-21T09:15:00Z"}"#
            )
        );
    }
}
