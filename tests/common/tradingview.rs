//! A webhook sender that keeps TradingView's delivery contract exactly, and nothing more
//! generous: one send; a request not answered within 3 s is cancelled and never resent; on
//! an answer of 500–599 it resends after 5 s, at most 3 times; it never resends a 4xx (nor a
//! refused connection). At most 4 sends over about 15 s for one alert. (TradingView support
//! articles "Webhook resubmission", 43000735201, and "About webhooks", 43000529348.)
#![allow(dead_code)]

use std::time::Duration;

/// TradingView cancels a webhook request after this long.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// TradingView resends a 5xx after this long.
pub const RESEND_DELAY: Duration = Duration::from_secs(5);
/// TradingView resends a 5xx at most this many times.
pub const MAX_RESENDS: usize = 3;

/// What became of one alert's delivery.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// Each send's answer: the status, or `None` when it was cancelled or refused.
    pub sends: Vec<Option<u16>>,
    /// The last answer's JSON body (null when there was none).
    pub last_body: serde_json::Value,
}

impl Delivery {
    /// Whether TradingView would count the alert delivered: the last send answered 2xx.
    pub fn acknowledged(&self) -> bool {
        matches!(self.sends.last(), Some(Some(status)) if (200..300).contains(status))
    }

    /// The last answer's `status` field (`applied`, `queued`, `duplicate`, ...).
    pub fn outcome(&self) -> Option<&str> {
        self.last_body["status"].as_str()
    }
}

/// Delivers `body` to `url` (`…/webhook`) as TradingView would.
pub async fn deliver(client: &reqwest::Client, url: &str, body: &str) -> Delivery {
    let mut sends = Vec::new();
    let mut last_body = serde_json::Value::Null;
    for attempt in 0..=MAX_RESENDS {
        if attempt > 0 {
            tokio::time::sleep(RESEND_DELAY).await;
        }
        let answer = client
            .post(url)
            .header("content-type", "application/json")
            .body(body.to_string())
            .timeout(REQUEST_TIMEOUT)
            .send()
            .await;
        let response = match answer {
            Ok(response) => response,
            Err(_) => {
                // Cancelled at 3 s, or no connection: never resent.
                sends.push(None);
                break;
            }
        };
        let status = response.status().as_u16();
        sends.push(Some(status));
        last_body = match tokio::time::timeout(REQUEST_TIMEOUT, response.bytes()).await {
            Ok(Ok(bytes)) => serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
            _ => serde_json::Value::Null,
        };
        if !(500..600).contains(&status) {
            break;
        }
    }
    Delivery { sends, last_body }
}

/// A client as TradingView's: no proxy, no connection reuse across alerts needed.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("a plain HTTP client builds")
}
