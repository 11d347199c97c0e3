//! `POST /webhook`: a TradingView alert becomes exactly one change to the portfolio.
//!
//! Order of checks: the source may send webhooks (403), a signature, when one is present or
//! required, holds (401), the body is JSON (400), the passphrase matches (401), the fields make a
//! signal for a configured instrument (422), the lifecycle accepts this signal type (503),
//! it was not seen recently (200 duplicate), it is not marked applied in Redis (200
//! duplicate), its instrument's lock is free within a bound (503 otherwise), then one
//! transaction claims the fingerprint and applies the change (200, or 200 duplicate, or 422
//! when the state does not allow it). Redis only saves work; the transaction decides.

use super::metrics::{SIGNALS_TOTAL, SIGNAL_LATENCY};
use super::signature::SIGNATURE_HEADER;
use super::throttle::Gate as Admission;
use super::{ApiError, AppState};
use crate::broker::Order;
use crate::coordination::{Gate, SIGNAL_REDIS_BUDGET};
use crate::driver::Input;
use crate::store::{Applied, ApplyError, SignalClaim, Store, StoreError};
use crate::trading::plan::plan;
use crate::trading::{Body, SignalError};
use crate::vocabulary::FailureKind;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::{Extension, Json};
use chrono::Utc;
use serde::Serialize;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

/// How long a signal's transaction may take, queueing included. Below the request timeout,
/// so that a database that stops answering is answered with a 503 and reported to the
/// machines rather than cut off by the timeout layer.
pub const SIGNAL_STORE_DEADLINE: Duration = Duration::from_millis(1500);

/// How long confirming a fast-layer duplicate against the signal log may take; past it the
/// signal's own transaction decides.
pub const DUPLICATE_CHECK_TIMEOUT: Duration = Duration::from_millis(250);

// The Redis work, a duplicate check and the transaction fit inside the request timeout, so a
// slow dependency is answered by this handler rather than cut off by the timeout layer.
const _: () = assert!(
    SIGNAL_REDIS_BUDGET.as_millis()
        + DUPLICATE_CHECK_TIMEOUT.as_millis()
        + SIGNAL_STORE_DEADLINE.as_millis()
        < super::REQUEST_TIMEOUT.as_millis()
);

/// The answer to an accepted or duplicate signal.
#[derive(Debug, Serialize)]
pub struct Accepted {
    /// `accepted` or `duplicate`.
    status: &'static str,
    /// Whether the signal had been seen before (and changed nothing now).
    duplicate: bool,
    /// The signal's fingerprint.
    fingerprint: String,
    /// Positions opened or closed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    positions: Vec<String>,
}

impl Accepted {
    fn duplicate(fingerprint: String) -> Accepted {
        Accepted {
            status: "duplicate",
            duplicate: true,
            fingerprint,
            positions: Vec::new(),
        }
    }
}

/// Handles one alert and records its outcome and latency.
pub async fn receive(
    State(app): State<Arc<AppState>>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Accepted>, ApiError> {
    let started = Instant::now();
    let _in_flight = app.shared.in_flight.enter();
    let peer = peer.map(|Extension(ConnectInfo(peer))| peer.ip());
    // Who to count failures against: the source as trusted proxies forward it. An unknown
    // source (a proxy forwarding something that is not an address) is not counted: its
    // failures would land on the proxy, which stands for everyone behind it.
    let source = peer.and_then(|peer| app.sources.client(peer, &headers));
    let admission = source.map_or(Admission::Open, |source| {
        app.throttle.check(source, tokio::time::Instant::now())
    });
    let answer = match (admission, admit(&app, source), body) {
        (Admission::Locked { retry_after }, _, _) => Err(ApiError::locked_out(retry_after)),
        (Admission::Open, Err(refused), _) => Err(refused),
        (Admission::Open, Ok(()), Ok(body)) => match signed(&app, &headers, &body) {
            Ok(()) => handle(&app, &body).await,
            Err(refused) => Err(refused),
        },
        (Admission::Open, Ok(()), Err(rejection))
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE =>
        {
            Err(ApiError::too_large())
        }
        (Admission::Open, Ok(()), Err(rejection)) => {
            Err(ApiError::malformed(rejection.body_text()))
        }
    };
    if let Some(source) = source {
        match &answer {
            Err(error) if error.status == StatusCode::UNAUTHORIZED => {
                let delay = app.throttle.failed(source, tokio::time::Instant::now());
                tokio::time::sleep(delay).await;
            }
            Ok(_) => app.throttle.succeeded(source),
            Err(_) => {}
        }
    }
    let outcome = match &answer {
        Ok(accepted) if accepted.duplicate => "duplicate",
        Ok(_) => "accepted",
        Err(error) => error.code,
    };
    metrics::counter!(SIGNALS_TOTAL, "outcome" => outcome).increment(1);
    metrics::histogram!(SIGNAL_LATENCY).record(started.elapsed().as_secs_f64());
    answer.map(Json)
}

/// The source check: with an allowlist, only its sources (`client`, as trusted proxies
/// forward it) may send; an unknown source is refused.
fn admit(app: &AppState, client: Option<IpAddr>) -> Result<(), ApiError> {
    if app.sources.allow.is_none() {
        return Ok(());
    }
    match client {
        Some(client) if app.sources.allows(client) => Ok(()),
        _ => {
            let shown = client.map_or("unknown".to_string(), |client| client.to_string());
            tracing::warn!(target: "vigil::signal", source = %shown, "webhook refused: source not allowed");
            Err(ApiError::forbidden())
        }
    }
}

/// The signature check, over the raw body, before it is read.
fn signed(app: &AppState, headers: &HeaderMap, body: &[u8]) -> Result<(), ApiError> {
    let Some(signatures) = &app.signatures else {
        return Ok(());
    };
    let header = headers
        .get(SIGNATURE_HEADER)
        .map(|value| value.to_str().unwrap_or(""));
    signatures
        .verify(header, body, Utc::now().timestamp())
        .map_err(|error| {
            tracing::warn!(target: "vigil::signal", "webhook refused: {error}");
            ApiError::bad_signature(error)
        })
}

async fn handle(app: &AppState, bytes: &[u8]) -> Result<Accepted, ApiError> {
    let body = Body::parse(bytes).map_err(|error| ApiError::malformed(error.to_string()))?;
    match body.passphrase() {
        Some(given) if app.passphrase.matches(given) => {}
        _ => return Err(ApiError::unauthorized()),
    }
    let signal = body.signal().map_err(|error| match error {
        SignalError::Malformed(message) => ApiError::malformed(message),
        SignalError::Invalid { field, message } => {
            ApiError::invalid(field, format!("{field}: {message}"))
        }
    })?;
    let Some(instrument) = app.instruments.get(&signal.instrument) else {
        let known: Vec<&str> = app.instruments.keys().map(String::as_str).collect();
        return Err(ApiError::invalid(
            "instrument",
            format!(
                "instrument: {} is not configured; configured: {}",
                signal.instrument,
                known.join(", ")
            ),
        ));
    };
    let view = app.shared.view();
    if !view.accepts.contains(signal.kind) {
        return Err(ApiError::unavailable(format!(
            "not accepting {} while {}",
            signal.kind,
            view.state.name()
        )));
    }
    let fingerprint = signal.fingerprint();
    if app
        .recent
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .contains(&fingerprint)
    {
        return Ok(Accepted::duplicate(fingerprint));
    }
    let Some(store) = app.shared.store() else {
        return Err(ApiError::unavailable("the database is not connected yet"));
    };
    let ticket = match app
        .shared
        .coordination
        .before_signal(&signal.instrument, &fingerprint)
        .await
    {
        // Redis may remember a fingerprint the database lost (a restored database) or never
        // held (another deployment on the same Redis): only the signal log says duplicate.
        Gate::Duplicate => {
            let check = store.signal_claimed(&fingerprint);
            match tokio::time::timeout(DUPLICATE_CHECK_TIMEOUT, check).await {
                Ok(Ok(true)) => return Ok(Accepted::duplicate(fingerprint)),
                Ok(Ok(false)) | Err(_) => None,
                Ok(Err(error)) => return Err(store_failure(app, error)),
            }
        }
        Gate::Busy => {
            return Err(ApiError::unavailable(format!(
                "another instance is processing a signal for {}; nothing was changed",
                signal.instrument
            )))
        }
        Gate::Proceed(ticket) => Some(ticket),
    };
    let order = Order {
        client_order_id: format!("vigil-{}", &fingerprint[..24]),
        kind: signal.kind,
        instrument: signal.instrument.clone(),
        lots: signal.lots,
        price: signal.price,
    };
    let fill = match app.broker.execute(&order).await {
        Ok(fill) => fill,
        Err(error) => {
            tracing::warn!(target: "vigil::signal", "order not executed: {error}");
            drop(ticket);
            report(app, FailureKind::BrokerUnavailable);
            return Err(ApiError::unavailable(
                "the broker is unavailable; nothing was changed",
            ));
        }
    };
    let now = Utc::now();
    let claim = SignalClaim {
        signal: &signal,
        fingerprint: &fingerprint,
        instance_id: &app.shared.instance,
        received_at: now,
    };
    let applying = store.apply_signal(&claim, |book| {
        plan(&signal, &fingerprint, instrument, fill.price, now, book)
    });
    // Dropping the transaction on the deadline rolls it back: nothing is applied, the client
    // hears 503 in time to resend, and the machines hear that the database is not answering.
    let applied = match tokio::time::timeout(SIGNAL_STORE_DEADLINE, applying).await {
        Ok(applied) => applied,
        Err(_) => Err(ApplyError::Store(StoreError::Unavailable(format!(
            "no answer within {SIGNAL_STORE_DEADLINE:?}"
        )))),
    };
    if let Some(ticket) = ticket {
        ticket.settle(applied.is_ok());
    }
    match applied {
        Ok(applied) => {
            app.recent
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(&fingerprint);
            Ok(match applied {
                Applied::Done(plan) => {
                    tracing::info!(
                        target: "vigil::signal",
                        signal = %signal.kind,
                        instrument = %signal.instrument,
                        fingerprint = %&fingerprint[..16],
                        "applied: {}",
                        plan.position_ids().join(", ")
                    );
                    Accepted {
                        status: "accepted",
                        duplicate: false,
                        fingerprint,
                        positions: plan.position_ids(),
                    }
                }
                Applied::Duplicate => Accepted::duplicate(fingerprint),
            })
        }
        Err(ApplyError::Rejected(rejection)) => {
            Err(ApiError::invalid(rejection.field, rejection.to_string()))
        }
        Err(ApplyError::Store(error)) => Err(store_failure(app, error)),
    }
}

/// Turns a store failure into an answer, and tells the machines when it is one the policy
/// answers (the database is gone, the data is corrupt).
fn store_failure(app: &AppState, error: StoreError) -> ApiError {
    tracing::warn!(target: "vigil::signal", "signal not applied: {error}");
    match error {
        StoreError::Unavailable(_) => {
            report(app, FailureKind::DbUnavailable);
            ApiError::unavailable("the database is unavailable; nothing was changed")
        }
        StoreError::Conflict(_) => ApiError::unavailable(
            "the portfolio was busy with a concurrent signal; nothing was changed",
        ),
        StoreError::Corrupt(_) => {
            report(app, FailureKind::DataCorrupt);
            ApiError::unavailable("stored data failed to decode; nothing was changed")
        }
        StoreError::NoSchema(_)
        | StoreError::BadUrl(_)
        | StoreError::Fenced(_)
        | StoreError::Other(_) => ApiError::internal(),
    }
}

/// Tells the machines about a failure seen while serving. A full queue means the driver
/// already has news to process; dropping this report loses nothing it would not learn.
fn report(app: &AppState, kind: FailureKind) {
    let _ = app.shared.inputs.try_send(Input::Failure(kind));
}
