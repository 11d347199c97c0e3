//! Alerts sent to `POST /webhook` as TradingView sends them, each answer read whole and
//! held to the one the run expects.

use crate::stats::{error_chain, shorten, Answer, Sample};
use crate::workload::Load;
use anyhow::Context;
use std::time::{Duration, Instant};

/// How long one webhook request may take before it counts as failed. The service answers
/// 503 itself after 2.5 s.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The client that sends a run's alerts: up to `load.concurrency` connections kept open.
pub fn webhook_client(load: &Load) -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(REQUEST_TIMEOUT)
        .pool_max_idle_per_host(load.concurrency)
        .tcp_nodelay(true)
        .build()
        .context("cannot build the HTTP client")
}

/// The answer a run expects for every alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// 200 `applied`: the database took it within the request.
    Applied,
    /// 202 `queued`: recorded durably, to be applied later (the intake journal, while the
    /// database is down).
    Queued,
}

impl Expect {
    /// The HTTP status and the body's `status` word of the expected answer.
    fn answer(self) -> (reqwest::StatusCode, &'static str) {
        match self {
            Expect::Applied => (reqwest::StatusCode::OK, "applied"),
            Expect::Queued => (reqwest::StatusCode::ACCEPTED, "queued"),
        }
    }
}

/// Sends one alert and reads the whole answer, which should be `expect`.
pub async fn post(client: &reqwest::Client, url: &str, body: Vec<u8>, expect: Expect) -> Sample {
    let started = Instant::now();
    let answer = async {
        let response = client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await?;
        let status = response.status();
        let bytes = response.bytes().await?;
        Ok::<_, reqwest::Error>((status, bytes))
    }
    .await;
    let latency = started.elapsed();
    let answer = match answer {
        Ok((status, bytes)) => {
            let (expected_status, expected_word) = expect.answer();
            let word = serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|value| {
                    value
                        .get("status")
                        .and_then(serde_json::Value::as_str)
                        .map(str::to_owned)
                });
            if status == expected_status && word.as_deref() == Some(expected_word) {
                Answer::Accepted
            } else {
                Answer::Refused {
                    category: format!(
                        "HTTP {} {}",
                        status.as_u16(),
                        word.as_deref().unwrap_or("(no status)")
                    ),
                    detail: shorten(&String::from_utf8_lossy(&bytes)),
                }
            }
        }
        Err(error) => Answer::Refused {
            category: String::from("request failed"),
            detail: shorten(&error_chain(&error)),
        },
    };
    Sample {
        answer,
        latency,
        started,
    }
}
