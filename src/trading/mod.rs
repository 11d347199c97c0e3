//! Trading signals: what a TradingView alert says, how it is checked and fingerprinted, and
//! (in [`plan`]) what it changes. Pure: no I/O, no clock.

pub mod plan;

use crate::vocabulary::SignalType;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The longest text field accepted (instrument, position label, timestamp). Longer values are
/// not from TradingView and would only bloat the signal log.
pub const MAX_FIELD_CHARS: usize = 64;

/// A checked signal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Signal {
    /// BASE_ENTRY, PYRAMID or EXIT.
    pub kind: SignalType,
    /// The instrument, as the deployment names it.
    pub instrument: String,
    /// The position label (TradingView's order id or comment); `long` when absent.
    pub position: String,
    /// Entry price, or exit price for EXIT.
    pub price: Decimal,
    /// Protective stop; required for entries.
    pub stop: Option<Decimal>,
    /// Size in lots; required for entries.
    pub lots: Option<Decimal>,
    /// The alert's own timestamp, as sent: it tells a resend (same timestamp) from a new
    /// alert with the same numbers.
    pub timestamp: String,
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

/// A number as TradingView sends it: a JSON number, or a string holding one
/// (`"{{close}}"` placeholders are quoted in most alert templates).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum Number {
    Text(String),
    Json(serde_json::Number),
}

/// The alert body as sent.
#[derive(Debug, Deserialize)]
struct RawSignal {
    passphrase: Option<String>,
    #[serde(alias = "type", alias = "action")]
    signal: Option<String>,
    #[serde(alias = "ticker", alias = "symbol")]
    instrument: Option<String>,
    #[serde(alias = "label", alias = "position_label")]
    position: Option<String>,
    #[serde(alias = "entry", alias = "close")]
    price: Option<Number>,
    #[serde(alias = "stop_loss", alias = "sl")]
    stop: Option<Number>,
    #[serde(alias = "quantity", alias = "qty")]
    lots: Option<Number>,
    #[serde(alias = "time", alias = "timenow")]
    timestamp: Option<String>,
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
pub struct Body(serde_json::Map<String, serde_json::Value>);

impl Body {
    /// Reads the body; anything but a JSON object is [`SignalError::Malformed`].
    pub fn parse(bytes: &[u8]) -> Result<Body, SignalError> {
        match serde_json::from_slice(bytes) {
            Ok(serde_json::Value::Object(map)) => Ok(Body(map)),
            Ok(_) => Err(SignalError::Malformed(
                "the body must be a JSON object".into(),
            )),
            Err(error) => Err(SignalError::Malformed(error.to_string())),
        }
    }

    /// The passphrase field, if it is a string.
    pub fn passphrase(&self) -> Option<&str> {
        self.0.get("passphrase").and_then(serde_json::Value::as_str)
    }

    /// Checks the fields; anything wrong names the field.
    pub fn signal(self) -> Result<Signal, SignalError> {
        check(serde_json::Value::Object(self.0)).map(|parsed| parsed.signal)
    }
}

/// Parses and checks an alert body. Malformed JSON is [`SignalError::Malformed`]; anything
/// else wrong names the field.
pub fn parse(body: &[u8]) -> Result<Parsed, SignalError> {
    let Body(map) = Body::parse(body)?;
    check(serde_json::Value::Object(map))
}

fn check(value: serde_json::Value) -> Result<Parsed, SignalError> {
    let raw: RawSignal =
        serde_json::from_value(value).map_err(|error| invalid("body", error.to_string()))?;
    let kind_text = raw
        .signal
        .ok_or_else(|| invalid("signal", "is missing; use BASE_ENTRY, PYRAMID or EXIT"))?;
    let kind =
        SignalType::parse(kind_text.trim().to_ascii_uppercase().as_str()).ok_or_else(|| {
            invalid(
                "signal",
                format!("{kind_text:?} is not BASE_ENTRY, PYRAMID or EXIT"),
            )
        })?;
    let instrument = text("instrument", raw.instrument)?
        .ok_or_else(|| invalid("instrument", "is missing"))?
        .to_ascii_uppercase();
    let position = text("position", raw.position)?.unwrap_or_else(|| "long".to_string());
    let timestamp = text("timestamp", raw.timestamp)?.ok_or_else(|| {
        invalid(
            "timestamp",
            "is missing; TradingView's {{timenow}} fills it",
        )
    })?;
    let price = positive("price", raw.price)?.ok_or_else(|| invalid("price", "is missing"))?;
    let stop = match raw.stop {
        None => None,
        Some(stop) => {
            Some(number("stop", stop)?).filter(|stop| !stop.is_zero() || kind == SignalType::Exit)
        }
    };
    let lots = positive("lots", raw.lots)?;
    if kind != SignalType::Exit {
        let stop = stop.ok_or_else(|| invalid("stop", "is required for an entry"))?;
        if stop <= Decimal::ZERO {
            return Err(invalid("stop", format!("{stop} is not positive")));
        }
        if stop >= price {
            return Err(invalid(
                "stop",
                format!("{stop} is not below the entry price {price}; vigil trades long positions"),
            ));
        }
        if lots.is_none() {
            return Err(invalid("lots", "is required for an entry"));
        }
    }
    Ok(Parsed {
        signal: Signal {
            kind,
            instrument,
            position,
            price,
            stop,
            lots,
            timestamp,
        },
        passphrase: raw.passphrase,
    })
}

fn text(field: &'static str, value: Option<String>) -> Result<Option<String>, SignalError> {
    let Some(value) = value.map(|value| value.trim().to_string()) else {
        return Ok(None);
    };
    if value.is_empty() {
        return Err(invalid(field, "is empty"));
    }
    if value.chars().count() > MAX_FIELD_CHARS || value.chars().any(char::is_control) {
        return Err(invalid(
            field,
            format!("must be at most {MAX_FIELD_CHARS} printable characters"),
        ));
    }
    Ok(Some(value))
}

fn number(field: &'static str, value: Number) -> Result<Decimal, SignalError> {
    let text = match value {
        Number::Text(text) => text,
        Number::Json(number) => number.to_string(),
    };
    crate::domain::parse_decimal(text.trim())
        .or_else(|| Decimal::from_scientific(text.trim()).ok())
        .ok_or_else(|| invalid(field, format!("{text:?} is not a number")))
}

fn positive(field: &'static str, value: Option<Number>) -> Result<Option<Decimal>, SignalError> {
    let Some(value) = value else { return Ok(None) };
    let number = number(field, value)?;
    if number <= Decimal::ZERO {
        return Err(invalid(field, format!("{number} is not positive")));
    }
    Ok(Some(number))
}

impl Signal {
    /// SHA-256 over the canonical form: every field that decides what the signal does, with
    /// numbers normalised (`22000.50` and `"22000.5"` are the same signal), and not the
    /// passphrase. A resend, a replay or the same alert at two instances has one fingerprint.
    pub fn fingerprint(&self) -> String {
        let optional = |value: Option<Decimal>| {
            value
                .map(|value| value.normalize().to_string())
                .unwrap_or_default()
        };
        let canonical = format!(
            "v1|{}|{}|{}|{}|{}|{}|{}",
            self.kind.as_str(),
            self.instrument,
            self.position,
            self.price.normalize(),
            optional(self.stop),
            optional(self.lots),
            self.timestamp
        );
        hex::encode(Sha256::digest(canonical.as_bytes()))
    }

    /// The canonical JSON stored in the signal log.
    pub fn payload(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(body: &str, expected: Result<&str, &str>) {
        let got = parse(body.as_bytes())
            .map(|parsed| parsed.signal.fingerprint()[..12].to_string())
            .map_err(|error| error.to_string());
        match (got, expected) {
            (Ok(_), Ok(_)) => {}
            (Err(error), Err(part)) => assert!(
                error.contains(part),
                "{body}: {error} does not mention {part}"
            ),
            (got, expected) => panic!("{body}: got {got:?}, expected {expected:?}"),
        }
    }

    #[test]
    fn bodies() {
        let entry = r#""signal":"BASE_ENTRY","instrument":"NIFTY","price":"22000","stop":"21900","lots":2,"timestamp":"t1""#;
        check(&format!("{{{entry}}}"), Ok(""));
        check("not json", Err("malformed"));
        check("[1]", Err("malformed"));
        check(
            r#"{"signal":"BUY","instrument":"NIFTY","price":1,"timestamp":"t"}"#,
            Err("signal"),
        );
        check(
            r#"{"signal":"EXIT","price":1,"timestamp":"t"}"#,
            Err("instrument"),
        );
        check(
            r#"{"signal":"EXIT","instrument":"NIFTY","price":"-1","timestamp":"t"}"#,
            Err("price"),
        );
        check(
            r#"{"signal":"EXIT","instrument":"NIFTY","price":"abc","timestamp":"t"}"#,
            Err("price"),
        );
        check(
            r#"{"signal":"BASE_ENTRY","instrument":"NIFTY","price":100,"stop":101,"lots":1,"timestamp":"t"}"#,
            Err("stop"),
        );
        check(
            r#"{"signal":"BASE_ENTRY","instrument":"NIFTY","price":100,"stop":99,"lots":0,"timestamp":"t"}"#,
            Err("lots"),
        );
        check(
            r#"{"signal":"BASE_ENTRY","instrument":"NIFTY","price":100,"stop":99,"timestamp":"t"}"#,
            Err("lots"),
        );
        check(
            r#"{"signal":"EXIT","instrument":"NIFTY","price":100}"#,
            Err("timestamp"),
        );
    }

    #[test]
    fn the_fingerprint_ignores_number_spelling_and_the_passphrase() {
        let a = parse(br#"{"signal":"PYRAMID","instrument":"nifty","price":"22000.50","stop":21900,"lots":"1","timestamp":"t","passphrase":"a"}"#);
        let b = parse(br#"{"type":"PYRAMID","ticker":"NIFTY","price":22000.5,"stop":"21900.0","lots":1,"timestamp":"t","passphrase":"b"}"#);
        let (a, b) = (
            a.map(|p| p.signal.fingerprint()),
            b.map(|p| p.signal.fingerprint()),
        );
        assert!(a.is_ok());
        assert_eq!(a, b);
    }
}
