//! The HTTP API, driven through `webhook_app(state)` and `operator_app(state)` with `oneshot`, against a real SQLite database
//! (and PostgreSQL when `VIGIL_TEST_DATABASE_URL` is set).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::{keep_call_sites_interesting, postgres_admin_url, ScratchDatabase};
use http_body_util::BodyExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tower::ServiceExt;
use vigil::domain::default_instruments;
use vigil::http::signature::Signatures;
use vigil::http::source::{ForwardedHeader, SourcePolicy};
use vigil::http::throttle::Throttle;
use vigil::http::{operator_app, webhook_app, AppState, Passphrase};
use vigil::logging::{self, Capture, VirtualTimer};
use vigil::shared::Shared;
use vigil::store::{Access, AnyStore, Store};
use vigil::vocabulary::SignalSet;

const PASSPHRASE: &str = "correct horse battery staple";

static UNIQUE: AtomicUsize = AtomicUsize::new(0);

/// A migrated SQLite store in a fresh directory.
async fn sqlite_store() -> AnyStore {
    sqlite_store_and_url().await.0
}

/// A migrated SQLite store in a fresh directory, and its URL.
async fn sqlite_store_and_url() -> (AnyStore, String) {
    let dir = std::env::temp_dir().join(format!(
        "vigil-http-{}-{}",
        std::process::id(),
        UNIQUE.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("sqlite://{}/vigil.db", dir.display());
    let store = AnyStore::connect(&url, Access::ReadWrite).await.unwrap();
    store.migrate().await.unwrap();
    (store, url)
}

/// A migrated PostgreSQL store in a fresh database, when a server is configured.
async fn postgres_store() -> Option<(AnyStore, ScratchDatabase)> {
    let admin = postgres_admin_url("fifty_identical_signals_at_once_make_one_position")?;
    let scratch = ScratchDatabase::create(&admin, "http").await;
    let store = AnyStore::connect(&scratch.url, Access::ReadWrite)
        .await
        .unwrap();
    store.migrate().await.unwrap();
    Some((store, scratch))
}

/// A migrated store of each backend (PostgreSQL when a server is configured), named, with
/// the scratch database to drop after.
async fn both_stores() -> Vec<(&'static str, AnyStore, Option<ScratchDatabase>)> {
    let mut stores = vec![("sqlite", sqlite_store().await, None)];
    stores.extend(
        postgres_store()
            .await
            .map(|(store, scratch)| ("postgres", store, Some(scratch))),
    );
    stores
}

/// The two listeners' routers of one instance.
struct Api {
    /// `/webhook` and `/health`.
    webhook: axum::Router,
    /// `/ready`, `/status`, `/metrics` (and `/health`).
    operator: axum::Router,
}

/// An app whose lifecycle is `state`, accepting `accepts`.
fn service(store: &AnyStore, state: &'static str, accepts: SignalSet) -> (Api, Arc<AppState>) {
    guarded_service(store, SourcePolicy::default(), None).with_lifecycle(state, accepts)
}

/// What a test app is built from.
struct Built {
    shared: Arc<Shared>,
    state: Arc<AppState>,
}

impl Built {
    fn with_lifecycle(self, state: &'static str, accepts: SignalSet) -> (Api, Arc<AppState>) {
        self.shared.lifecycle.send_modify(|view| {
            view.state = vigil::machines::lifecycle::State::from_name(state).expect("a state name");
            view.accepts = accepts;
        });
        let api = Api {
            webhook: webhook_app(Arc::clone(&self.state)),
            operator: operator_app(Arc::clone(&self.state)),
        };
        (api, self.state)
    }
}

/// An active app whose webhook admits `sources` and checks `signatures`.
fn guarded_service(
    store: &AnyStore,
    sources: SourcePolicy,
    signatures: Option<Signatures>,
) -> Built {
    trading_service(store, sources, signatures, default_instruments())
}

/// An active app trading `instruments`.
fn trading_service(
    store: &AnyStore,
    sources: SourcePolicy,
    signatures: Option<Signatures>,
    instruments: std::collections::BTreeMap<String, vigil::domain::Instrument>,
) -> Built {
    let (sender, receiver) = vigil::driver::live::channel();
    // Reports to the machines are not looked at here; keep the channel open.
    std::mem::forget(receiver);
    let shared = Arc::new(Shared::new("vigil-http", sender));
    shared.store.send_replace(Some(store.clone()));
    let state = Arc::new(AppState {
        shared: Arc::clone(&shared),
        passphrase: Passphrase::new(PASSPHRASE),
        instruments,
        intake: common::intake(&shared),
        throttle: Throttle::for_sources(&sources),
        sources,
        signatures,
        recent: std::sync::Mutex::default(),
        operator_token: None,
    });
    Built { shared, state }
}

async fn send(
    router: &axum::Router,
    method: &str,
    path: &str,
    body: String,
) -> (StatusCode, Option<String>, serde_json::Value) {
    send_from(router, method, path, body, "127.0.0.1:40000", &[]).await
}

/// Sends as the peer `from` would, with `headers` besides the content type.
async fn send_from(
    router: &axum::Router,
    method: &str,
    path: &str,
    body: String,
    from: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, Option<String>, serde_json::Value) {
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let mut request = request.body(Body::from(body)).unwrap();
    let peer: std::net::SocketAddr = from.parse().unwrap();
    request
        .extensions_mut()
        .insert(axum::extract::ConnectInfo(peer));
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|value| value.to_str().unwrap().to_string());
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    (status, retry_after, json)
}

/// An alert; `timestamp` is a time-of-day tag for [`common::at`].
fn signal(
    kind: &str,
    instrument: &str,
    price: &str,
    stop: &str,
    lots: &str,
    timestamp: &str,
) -> String {
    format!(
        r#"{{"passphrase":"{PASSPHRASE}","signal":"{kind}","instrument":"{instrument}","position":"long","price":"{price}","stop":"{stop}","lots":"{lots}","timestamp":"{}"}}"#,
        common::at(timestamp)
    )
}

/// What the database holds, to prove a refused request changed nothing.
async fn counts(store: &AnyStore) -> (i64, i64) {
    store.position_counts().await.unwrap()
}

/// (name, requests sent in order: method, path, body; the status of the last, and the
/// `field` its error names)
type Case = (
    &'static str,
    Vec<(&'static str, &'static str, String)>,
    StatusCode,
    Option<&'static str>,
);

fn bad_input_cases() -> Vec<Case> {
    let base = || {
        (
            "POST",
            "/webhook",
            signal("BASE_ENTRY", "NIFTY", "22000", "21900", "2", "09:15:01"),
        )
    };
    vec![
        (
            "malformed JSON",
            vec![("POST", "/webhook", "{not json".into())],
            StatusCode::BAD_REQUEST,
            None,
        ),
        (
            "not an object",
            vec![("POST", "/webhook", "[1,2]".into())],
            StatusCode::BAD_REQUEST,
            None,
        ),
        (
            "missing passphrase",
            vec![(
                "POST",
                "/webhook",
                signal("BASE_ENTRY", "NIFTY", "1", "0.5", "1", "09:15:00")
                    .replace(PASSPHRASE, "")
                    .replace(r#""passphrase":"","#, ""),
            )],
            StatusCode::UNAUTHORIZED,
            None,
        ),
        (
            "wrong passphrase",
            vec![(
                "POST",
                "/webhook",
                signal("BASE_ENTRY", "NIFTY", "1", "0.5", "1", "09:15:00")
                    .replace(PASSPHRASE, "guess"),
            )],
            StatusCode::UNAUTHORIZED,
            None,
        ),
        (
            "body over the limit",
            vec![(
                "POST",
                "/webhook",
                format!(r#"{{"pad":"{}"}}"#, "x".repeat(20_000)),
            )],
            StatusCode::PAYLOAD_TOO_LARGE,
            None,
        ),
        (
            "unknown instrument",
            vec![(
                "POST",
                "/webhook",
                signal("BASE_ENTRY", "DOGE", "1", "0.5", "1", "09:15:00"),
            )],
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("instrument"),
        ),
        (
            "zero lots",
            vec![(
                "POST",
                "/webhook",
                signal("BASE_ENTRY", "NIFTY", "22000", "21900", "0", "09:15:00"),
            )],
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("lots"),
        ),
        (
            "fractional lots on an instrument that trades whole lots",
            vec![(
                "POST",
                "/webhook",
                signal("BASE_ENTRY", "NIFTY", "22000", "21900", "1.5", "09:15:00"),
            )],
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("lots"),
        ),
        (
            "a price with an exponent",
            vec![(
                "POST",
                "/webhook",
                signal("BASE_ENTRY", "NIFTY", "2.2e4", "21900", "1", "09:15:00"),
            )],
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("price"),
        ),
        (
            "a stop with a sign",
            vec![(
                "POST",
                "/webhook",
                signal("BASE_ENTRY", "NIFTY", "22000", "+21900", "1", "09:15:00"),
            )],
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("stop"),
        ),
        (
            "a price padded with spaces",
            vec![(
                "POST",
                "/webhook",
                signal("BASE_ENTRY", "NIFTY", " 22000", "21900", "1", "09:15:00"),
            )],
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("price"),
        ),
        (
            "negative price",
            vec![(
                "POST",
                "/webhook",
                signal("BASE_ENTRY", "NIFTY", "-5", "-6", "1", "09:15:00"),
            )],
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("price"),
        ),
        (
            "stop above the entry",
            vec![(
                "POST",
                "/webhook",
                signal("BASE_ENTRY", "NIFTY", "22000", "22100", "1", "09:15:00"),
            )],
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("stop"),
        ),
        (
            "pyramid with no base",
            vec![(
                "POST",
                "/webhook",
                signal("PYRAMID", "NIFTY", "22100", "22000", "1", "09:15:00"),
            )],
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("signal"),
        ),
        (
            "exit with nothing open",
            vec![(
                "POST",
                "/webhook",
                signal("EXIT", "NIFTY", "22100", "0", "1", "09:15:00"),
            )],
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("instrument"),
        ),
        (
            "entry while a base is open",
            vec![
                base(),
                (
                    "POST",
                    "/webhook",
                    signal("BASE_ENTRY", "NIFTY", "22050", "21950", "1", "09:15:02"),
                ),
            ],
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("signal"),
        ),
        (
            "wrong method",
            vec![("GET", "/webhook", String::new())],
            StatusCode::METHOD_NOT_ALLOWED,
            None,
        ),
        (
            "wrong path",
            vec![("POST", "/webhooks", String::new())],
            StatusCode::NOT_FOUND,
            None,
        ),
    ]
}

#[tokio::test]
async fn bad_input_is_refused_and_changes_nothing() {
    keep_call_sites_interesting();
    for (name, requests, expected, field) in bad_input_cases() {
        let store = sqlite_store().await;
        let (api, _) = service(&store, "active", SignalSet::ALL);
        let (last, setup) = requests.split_last().unwrap();
        for (method, path, body) in setup {
            let (status, _, json) = send(&api.webhook, method, path, body.clone()).await;
            assert_eq!(status, StatusCode::OK, "{name}: setup failed: {json}");
        }
        let before = counts(&store).await;
        let (status, _, json) = send(&api.webhook, last.0, last.1, last.2.clone()).await;
        assert_eq!(status, expected, "{name}: {json}");
        assert_eq!(json["error"]["field"].as_str(), field, "{name}: {json}");
        assert!(
            json["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{name}: {json}"
        );
        assert_eq!(counts(&store).await, before, "{name} changed the database");
        store.close().await;
    }
}

#[tokio::test]
async fn a_fractional_size_is_traded_where_the_instrument_allows_it() {
    let store = sqlite_store().await;
    let mut instruments = default_instruments();
    if let Some(nifty) = instruments.get_mut("NIFTY") {
        nifty.fractional_lots = true;
    }
    let (api, _) = trading_service(&store, SourcePolicy::default(), None, instruments)
        .with_lifecycle("active", SignalSet::ALL);
    let (status, _, json) = send(
        &api.webhook,
        "POST",
        "/webhook",
        signal("BASE_ENTRY", "NIFTY", "22000", "21900", "1.5", "09:15:00"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{json}");
    let (status, _, json) = send(
        &api.webhook,
        "POST",
        "/webhook",
        signal(
            "BASE_ENTRY",
            "BANKNIFTY",
            "48000",
            "47900",
            "1.5",
            "09:15:00",
        ),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{json}");
    assert_eq!(
        json["error"]["message"].as_str(),
        Some(
            "lots: 1.5 is not a whole number of lots, and BANKNIFTY trades whole lots; if it \
             does trade fractions, set fractional_lots = true in its [instruments.BANKNIFTY] table"
        ),
        "{json}"
    );
    store.close().await;
}

#[tokio::test]
async fn alerts_the_lifecycle_does_not_apply_now_are_queued_then_applied_in_order() {
    keep_call_sites_interesting();
    // (state, what it applies, the alert, its outcome once drained while active)
    let cases = [
        ("recovering", SignalSet::NONE, "BASE_ENTRY", "applied"),
        ("stopping", SignalSet::NONE, "EXIT", "rejected"),
        (
            "degraded",
            SignalSet::NONE.with(vigil::vocabulary::SignalType::Exit),
            "BASE_ENTRY",
            "applied",
        ),
    ];
    for (state, accepts, kind, outcome) in cases {
        let store = sqlite_store().await;
        let (api, app) = service(&store, state, accepts);
        let alert = signal(kind, "NIFTY", "22000", "21900", "1", "09:15:00");
        let (status, _, json) = send(&api.webhook, "POST", "/webhook", alert.clone()).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{state}: {json}");
        assert_eq!(json["status"], "queued", "{state}: {json}");
        let fingerprint = json["fingerprint"].as_str().unwrap().to_string();
        // A resend while it waits is the same queued alert, not a second one.
        let (again, _, json) = send(&api.webhook, "POST", "/webhook", alert).await;
        assert_eq!(
            (again, json["status"].as_str()),
            (StatusCode::ACCEPTED, Some("queued"))
        );
        let page = format!("/signals/{fingerprint}");
        let (_, _, json) = send(&api.operator, "GET", &page, String::new()).await;
        assert_eq!(json["status"], "queued", "{state}: {json}");
        let (ready, retry_after, _) = send(&api.operator, "GET", "/ready", String::new()).await;
        let expected = if accepts == SignalSet::NONE {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::OK
        };
        assert_eq!(ready, expected, "{state}: /ready");
        assert_eq!(
            retry_after.is_some(),
            expected == StatusCode::SERVICE_UNAVAILABLE,
            "{state}: /ready Retry-After"
        );
        assert_eq!(counts(&store).await, (0, 0));
        assert_eq!(
            app.intake.drain(false).await,
            0,
            "{state}: drained while not applied"
        );
        app.shared.lifecycle.send_modify(|view| {
            view.state = vigil::machines::lifecycle::State::from_name("active").unwrap();
            view.accepts = SignalSet::ALL;
        });
        tokio::time::sleep(vigil::intake::QUEUE_SETTLE).await;
        assert_eq!(app.intake.drain(false).await, 1, "{state}");
        assert_eq!(app.intake.pending(), 0, "{state}");
        let (_, _, json) = send(&api.operator, "GET", &page, String::new()).await;
        assert_eq!(json["status"], outcome, "{state}: {json}");
        let opened = i64::from(outcome == "applied");
        assert_eq!(counts(&store).await, (opened, 0), "{state}");
        store.close().await;
    }
}

#[tokio::test]
async fn a_trade_from_entry_to_exit() {
    keep_call_sites_interesting();
    let store = sqlite_store().await;
    let (api, _) = service(&store, "active", SignalSet::ALL);
    let steps = [
        (
            signal("BASE_ENTRY", "NIFTY", "22000", "21900", "2", "09:15:01"),
            "applied",
            (1, 0),
        ),
        (
            signal("BASE_ENTRY", "NIFTY", "22000", "21900", "2", "09:15:01"),
            "duplicate",
            (1, 0),
        ),
        (
            signal("PYRAMID", "NIFTY", "22100.5", "22000", "1", "09:15:02"),
            "applied",
            (2, 0),
        ),
        (
            signal("EXIT", "NIFTY", "22300", "0", "1", "09:15:03"),
            "applied",
            (0, 2),
        ),
    ];
    for (body, outcome, expected) in steps {
        let (status, _, json) = send(&api.webhook, "POST", "/webhook", body).await;
        assert_eq!(
            (status, json["status"].as_str()),
            (StatusCode::OK, Some(outcome)),
            "{json}"
        );
        assert_eq!(counts(&store).await, expected);
    }
    let (status, _, json) = send(&api.operator, "GET", "/status", String::new()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (
            json["open_positions"].as_i64(),
            json["closed_positions"].as_i64()
        ),
        (Some(0), Some(2)),
        "{json}"
    );
    // (22300 − 22000) × 2 × 75 + (22300 − 22100.5) × 1 × 75 = 45000 + 14962.5
    let rows = store.load_recovery_rows().await.unwrap();
    let portfolio = rows.portfolio.clone().unwrap();
    assert_eq!(portfolio.closed_equity.as_deref(), Some("59962.5"));
    assert_eq!(
        (
            portfolio.total_risk.as_deref(),
            portfolio.margin_used.as_deref()
        ),
        (Some("0"), Some("0"))
    );
    assert!(
        rows.pyramiding.is_empty(),
        "the exit leaves no pyramiding state: {:?}",
        rows.pyramiding
    );
    let (metrics, _, _) = send(&api.operator, "GET", "/metrics", String::new()).await;
    assert_eq!(metrics, StatusCode::OK);
    store.close().await;
}

#[tokio::test]
async fn metrics_are_prometheus_text() {
    keep_call_sites_interesting();
    let store = sqlite_store().await;
    let (api, _) = service(&store, "active", SignalSet::ALL);
    send(
        &api.webhook,
        "POST",
        "/webhook",
        signal("BASE_ENTRY", "BANKNIFTY", "48000", "47700", "1", "09:16:00"),
    )
    .await;
    let request = Request::builder()
        .uri("/metrics")
        .body(Body::empty())
        .unwrap();
    let response = api.operator.oneshot(request).await.unwrap();
    let text = String::from_utf8(
        response
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap();
    for name in [
        "vigil_signals_total{outcome=\"applied\"}",
        "vigil_signal_outcomes_total{outcome=\"applied\"}",
        "vigil_signal_latency_seconds_bucket",
        "vigil_lifecycle_state{state=\"active\"} 1",
    ] {
        assert!(text.contains(name), "/metrics lacks {name}:\n{text}");
    }
    store.close().await;
}

#[tokio::test]
async fn the_passphrase_never_reaches_the_logs() {
    keep_call_sites_interesting();
    let capture = Capture::default();
    let _guard = tracing::subscriber::set_default(logging::subscriber(
        capture.clone(),
        VirtualTimer::default(),
    ));
    let store = sqlite_store().await;
    let (api, _) = service(&store, "active", SignalSet::ALL);
    for body in [
        signal("BASE_ENTRY", "NIFTY", "22000", "21900", "2", "09:17:00"),
        signal("BASE_ENTRY", "NIFTY", "22000", "21900", "2", "09:17:00")
            .replace("battery", "batery"),
        signal("BASE_ENTRY", "DOGE", "1", "0.5", "1", "09:17:01"),
        "{broken".to_string(),
        format!(
            r#"{{"passphrase":"{PASSPHRASE}","pad":"{}"}}"#,
            "x".repeat(20_000)
        ),
        signal("BASE_ENTRY", "NIFTY", "22000", "21900", "2", "09:17:00"),
    ] {
        send(&api.webhook, "POST", "/webhook", body).await;
    }
    let lines = capture.take_lines();
    assert!(
        lines.iter().any(|line| line.contains("applied")),
        "the test must see the signal log lines: {lines:?}"
    );
    // Each refusal and the duplicate left one line, with its request id and reason.
    let request_id = regex::Regex::new(r#"request_id="[0-9a-f-]{36}""#).unwrap();
    for (status, reason) in [
        ("401", "alert refused: "),
        ("422", "alert refused: instrument: DOGE is not configured"),
        ("400", "alert refused: "),
        ("413", "alert refused: "),
    ] {
        let found: Vec<&String> = lines
            .iter()
            .filter(|line| line.contains(reason) && line.contains(&format!("status={status}")))
            .collect();
        assert_eq!(found.len(), 1, "{status}: {lines:#?}");
        assert!(request_id.is_match(found[0]), "{}", found[0]);
    }
    let duplicates: Vec<&String> = lines
        .iter()
        .filter(|line| line.contains("alert answered duplicate"))
        .collect();
    assert_eq!(duplicates.len(), 1, "{lines:#?}");
    assert!(request_id.is_match(duplicates[0]), "{}", duplicates[0]);
    for line in &lines {
        assert!(
            !line.contains(PASSPHRASE) && !line.contains("batery"),
            "a log line holds the passphrase: {line}"
        );
    }
    store.close().await;
}

/// `GET /positions` after each step of a trade, on both backends: (kind, label, lots,
/// entry, stop, risk, margin) of every open position, in instrument and entry-time order.
#[tokio::test]
async fn the_open_positions_are_listed() {
    keep_call_sites_interesting();
    type Listed = &'static [(
        &'static str,
        &'static str,
        &'static str,
        &'static str,
        &'static str,
        &'static str,
        &'static str,
    )];
    let steps: [(String, Listed); 4] = [
        (
            signal("BASE_ENTRY", "NIFTY", "22000", "21900", "2", "09:20:01"),
            &[("base", "long", "2", "22000", "21900", "15000", "300000")],
        ),
        (
            labelled("PYRAMID", Some("add1"), "22100.5", "22000", "09:20:02"),
            &[
                ("base", "long", "2", "22000", "21900", "15000", "300000"),
                (
                    "pyramid", "add1", "1", "22100.5", "22000", "7537.5", "150000",
                ),
            ],
        ),
        (
            signal("BASE_ENTRY", "BANKNIFTY", "48000", "47900", "1", "09:20:03"),
            &[
                ("base", "long", "1", "48000", "47900", "3500", "160000"),
                ("base", "long", "2", "22000", "21900", "15000", "300000"),
                (
                    "pyramid", "add1", "1", "22100.5", "22000", "7537.5", "150000",
                ),
            ],
        ),
        (
            signal("EXIT", "NIFTY", "22300", "0", "1", "09:20:04"),
            &[("base", "long", "1", "48000", "47900", "3500", "160000")],
        ),
    ];
    let stores = both_stores().await;
    for (backend, store, database) in stores {
        let (api, _) = service(&store, "active", SignalSet::ALL);
        for (body, expected) in &steps {
            let (status, _, json) = send(&api.webhook, "POST", "/webhook", body.clone()).await;
            assert_eq!(status, StatusCode::OK, "{backend}: {json}");
            let (status, _, page) = send(&api.operator, "GET", "/positions", String::new()).await;
            assert_eq!(status, StatusCode::OK, "{backend}: {page}");
            let listed: Vec<_> = page["positions"]
                .as_array()
                .unwrap()
                .iter()
                .map(|view| {
                    let text = |name: &str| view[name].as_str().unwrap().to_string();
                    assert_eq!(text("side"), "long");
                    assert!(text("entry_time").ends_with('Z'), "{view}");
                    (
                        text("kind"),
                        text("label"),
                        text("lots"),
                        text("entry_price"),
                        text("stop_price"),
                        text("risk"),
                        text("margin"),
                    )
                })
                .collect();
            let expected: Vec<_> = expected
                .iter()
                .map(|&(kind, label, lots, entry, stop, risk, margin)| {
                    let owned = |text: &str| text.to_string();
                    (
                        owned(kind),
                        owned(label),
                        owned(lots),
                        owned(entry),
                        owned(stop),
                        owned(risk),
                        owned(margin),
                    )
                })
                .collect();
            assert_eq!(listed, expected, "{backend}: {page}");
            assert_eq!(page["truncated"], false, "{backend}");
        }
        store.close().await;
        if let Some(scratch) = database {
            scratch.drop_now().await;
        }
    }
}

/// A stored position that does not decode: `GET /positions` answers 500 without the row's
/// contents, which go to the log.
#[tokio::test]
async fn a_damaged_position_is_not_listed_as_if_sound() {
    keep_call_sites_interesting();
    let (store, url) = sqlite_store_and_url().await;
    let (api, _) = service(&store, "active", SignalSet::ALL);
    let body = signal("BASE_ENTRY", "NIFTY", "22000", "21900", "2", "09:21:01");
    let (status, _, json) = send(&api.webhook, "POST", "/webhook", body).await;
    assert_eq!(status, StatusCode::OK, "{json}");
    let hand = sqlx::SqlitePool::connect(&url).await.unwrap();
    sqlx::query("UPDATE positions SET lots = 'two'")
        .execute(&hand)
        .await
        .unwrap();
    hand.close().await;
    let (status, _, page) = send(&api.operator, "GET", "/positions", String::new()).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{page}");
    assert_eq!(page["error"]["code"], "internal", "{page}");
    assert!(!page.to_string().contains("two"), "{page}");
    store.close().await;
}

/// The same payload fifty times at once: exactly one position, every other answer a 200
/// duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_identical_signals_at_once_make_one_position() {
    keep_call_sites_interesting();
    let stores = both_stores().await;
    for (backend, store, database) in stores {
        let (api, _) = service(&store, "active", SignalSet::ALL);
        let body = signal("BASE_ENTRY", "NIFTY", "22000", "21900", "2", "09:18:00");
        let requests = (0..50).map(|_| {
            let webhook = api.webhook.clone();
            let body = body.clone();
            tokio::spawn(async move { send(&webhook, "POST", "/webhook", body).await })
        });
        let mut outcomes = std::collections::BTreeMap::new();
        for request in requests.collect::<Vec<_>>() {
            let (status, _, json) = request.await.unwrap();
            assert_eq!(status, StatusCode::OK, "{backend}: {json}");
            *outcomes
                .entry(json["status"].as_str().unwrap().to_string())
                .or_insert(0) += 1;
        }
        assert_eq!(outcomes.get("applied"), Some(&1), "{backend}: {outcomes:?}");
        assert_eq!(
            outcomes.get("duplicate"),
            Some(&49),
            "{backend}: {outcomes:?}"
        );
        assert_eq!(counts(&store).await, (1, 0), "{backend}");
        store.close().await;
        if let Some(scratch) = database {
            scratch.drop_now().await;
        }
    }
}

/// A request and what it must do: body, status, open positions after.
type Step = (String, StatusCode, i64);

/// An alert with its own label (`position`), or none.
fn labelled(kind: &str, label: Option<&str>, price: &str, stop: &str, time: &str) -> String {
    let label = label
        .map(|label| format!(r#""position":"{label}","#))
        .unwrap_or_default();
    format!(
        r#"{{"passphrase":"{PASSPHRASE}","signal":"{kind}","instrument":"NIFTY",{label}"price":"{price}","stop":"{stop}","lots":"1","timestamp":"{}"}}"#,
        common::at(time)
    )
}

#[tokio::test]
async fn exits_close_what_their_label_names() {
    keep_call_sites_interesting();
    // (steps: body, expected status, open positions after)
    let cases: Vec<(&str, Vec<Step>)> = vec![
        (
            "a pyramid's label closes that pyramid only",
            vec![
                (
                    labelled("BASE_ENTRY", Some("b"), "100", "90", "09:00:00"),
                    StatusCode::OK,
                    1,
                ),
                (
                    labelled("PYRAMID", Some("p1"), "110", "100", "09:01:00"),
                    StatusCode::OK,
                    2,
                ),
                (
                    labelled("EXIT", Some("p1"), "120", "0", "09:02:00"),
                    StatusCode::OK,
                    1,
                ),
            ],
        ),
        (
            "no label closes everything",
            vec![
                (
                    labelled("BASE_ENTRY", Some("b"), "100", "90", "09:00:00"),
                    StatusCode::OK,
                    1,
                ),
                (
                    labelled("PYRAMID", None, "110", "100", "09:01:00"),
                    StatusCode::OK,
                    2,
                ),
                (
                    labelled("EXIT", None, "120", "0", "09:02:00"),
                    StatusCode::OK,
                    0,
                ),
            ],
        ),
        (
            "the base's label closes everything",
            vec![
                (
                    labelled("BASE_ENTRY", Some("b"), "100", "90", "09:00:00"),
                    StatusCode::OK,
                    1,
                ),
                (
                    labelled("PYRAMID", Some("p1"), "110", "100", "09:01:00"),
                    StatusCode::OK,
                    2,
                ),
                (
                    labelled("EXIT", Some("b"), "120", "0", "09:02:00"),
                    StatusCode::OK,
                    0,
                ),
            ],
        ),
        (
            "an unknown label is refused",
            vec![
                (
                    labelled("BASE_ENTRY", Some("b"), "100", "90", "09:00:00"),
                    StatusCode::OK,
                    1,
                ),
                (
                    labelled("EXIT", Some("typo"), "120", "0", "09:02:00"),
                    StatusCode::UNPROCESSABLE_ENTITY,
                    1,
                ),
            ],
        ),
    ];
    for (name, steps) in cases {
        let store = sqlite_store().await;
        let (api, _) = service(&store, "active", SignalSet::ALL);
        for (body, expected, open) in steps {
            let (status, _, json) = send(&api.webhook, "POST", "/webhook", body).await;
            assert_eq!(status, expected, "{name}: {json}");
            assert_eq!(counts(&store).await.0, open, "{name}");
        }
        // Whatever was closed, the totals are exactly the sums over what is open.
        let rows = store.load_recovery_rows().await.unwrap();
        let (_, receipt) = vigil::recovery::recover(
            rows,
            &vigil::recovery::Terms {
                tolerance: rust_decimal::Decimal::ZERO,
                instruments: &default_instruments(),
                initial_capital: None,
            },
        );
        assert_eq!(receipt.failure(), None, "{name}: {receipt}");
        store.close().await;
    }
}

/// (what, allow, trusted proxies, peer, forwarding headers, expected status)
type SourceCase<'a> = (
    &'a str,
    &'a [&'a str],
    &'a [&'a str],
    &'a str,
    &'a [(&'a str, &'a str)],
    StatusCode,
);

/// The source allowlist, alone and behind proxies.
#[tokio::test]
async fn only_allowed_sources_may_send() {
    keep_call_sites_interesting();
    #[rustfmt::skip]
    let cases: &[SourceCase<'_>] = &[
        ("no allowlist", &[], &[], "198.51.100.1:5000", &[], StatusCode::OK),
        ("TradingView, directly", &["tradingview"], &[], "52.89.214.238:5000", &[], StatusCode::OK),
        ("outside the allowlist", &["tradingview"], &[], "198.51.100.1:5000", &[], StatusCode::FORBIDDEN),
        ("an untrusted peer's forwarded header is ignored", &["tradingview"], &[], "198.51.100.1:5000",
            &[("x-forwarded-for", "52.89.214.238")], StatusCode::FORBIDDEN),
        ("behind a trusted proxy, the forwarded address decides", &["tradingview"], &["10.0.0.0/8"], "10.0.0.5:5000",
            &[("x-forwarded-for", "52.89.214.238")], StatusCode::OK),
        ("behind a trusted proxy, a forwarded outsider is refused", &["tradingview"], &["10.0.0.0/8"], "10.0.0.5:5000",
            &[("forwarded", "for=198.51.100.1")], StatusCode::FORBIDDEN),
        ("behind a trusted proxy, a client's own Forwarded is not the configured header", &["tradingview"], &["10.0.0.0/8"], "10.0.0.5:5000",
            &[("x-forwarded-for", "198.51.100.1"), ("forwarded", "for=52.89.214.238")], StatusCode::FORBIDDEN),
        ("behind a trusted proxy, garbage is refused", &["tradingview"], &["10.0.0.0/8"], "10.0.0.5:5000",
            &[("x-forwarded-for", "localhost")], StatusCode::FORBIDDEN),
    ];
    for (what, allow, proxies, from, headers, expected) in cases {
        let store = sqlite_store().await;
        let nets = |entries: &[&str], preset: bool| -> Vec<ipnet::IpNet> {
            entries
                .iter()
                .flat_map(|entry| SourcePolicy::entry(entry, preset).unwrap())
                .collect()
        };
        let sources = SourcePolicy {
            allow: (!allow.is_empty()).then(|| nets(allow, true)),
            trusted_proxies: nets(proxies, false),
            // A case forwarding with `Forwarded` runs with forwarded_header = "forwarded".
            header: match headers.first() {
                Some(("forwarded", _)) => ForwardedHeader::Forwarded,
                _ => ForwardedHeader::XForwardedFor,
            },
        };
        let (api, _) =
            guarded_service(&store, sources, None).with_lifecycle("active", SignalSet::ALL);
        let body = signal("BASE_ENTRY", "NIFTY", "22000", "21900", "2", "09:15:00");
        let (status, _, json) =
            send_from(&api.webhook, "POST", "/webhook", body, from, headers).await;
        assert_eq!(status, *expected, "{what}: {json}");
        if status == StatusCode::FORBIDDEN {
            assert_eq!(json["error"]["code"], "forbidden", "{what}");
            assert_eq!(
                counts(&store).await,
                (0, 0),
                "{what}: a refused source changed nothing"
            );
        }
        store.close().await;
    }
}

/// Signed webhooks, on one app in order (the replay check remembers): (what, the header, or
/// none, the body's time of day, expected status).
#[tokio::test]
async fn signed_webhooks_are_checked() {
    keep_call_sites_interesting();
    let (old, new) = (
        b"old-key-0123456789".as_slice(),
        b"new-key-0123456789".as_slice(),
    );
    let now = chrono::Utc::now().timestamp();
    let body = |time: &str| signal("BASE_ENTRY", "NIFTY", "22000", "21900", "2", time);
    let exit = |time: &str| {
        format!(
            r#"{{"passphrase":"{PASSPHRASE}","signal":"EXIT","instrument":"NIFTY","price":"22100","timestamp":"{}"}}"#,
            common::at(time)
        )
    };
    let entry = body("09:15:00");
    let good = Signatures::sign(new, now, entry.as_bytes());
    let wrong = Signatures::sign(b"not-a-configured-key", now, exit("09:20:00").as_bytes());
    let expired = Signatures::sign(new, now - 600, exit("09:20:00").as_bytes());
    let rotated = Signatures::sign(old, now, exit("09:20:00").as_bytes());
    #[rustfmt::skip]
    let cases: Vec<(&str, Option<String>, String, StatusCode)> = vec![
        ("a good signature", Some(good.clone()), entry.clone(), StatusCode::OK),
        ("the same signature again", Some(good), entry.clone(), StatusCode::UNAUTHORIZED),
        ("a key that is not configured", Some(wrong), exit("09:20:00"), StatusCode::UNAUTHORIZED),
        ("an expired timestamp", Some(expired), exit("09:20:00"), StatusCode::UNAUTHORIZED),
        ("a signature over another body", Some(Signatures::sign(new, now, b"{}")), exit("09:20:00"), StatusCode::UNAUTHORIZED),
        ("the previous key, while rotating", Some(rotated), exit("09:20:00"), StatusCode::OK),
        ("unsigned, where signatures are optional", None, body("09:30:00"), StatusCode::OK),
    ];
    let store = sqlite_store().await;
    let signatures = Signatures::new(
        vec![old.to_vec(), new.to_vec()],
        Duration::from_secs(300),
        false,
    );
    let (api, _) = guarded_service(&store, SourcePolicy::default(), Some(signatures))
        .with_lifecycle("active", SignalSet::ALL);
    for (what, header, body, expected) in cases {
        let before = counts(&store).await;
        let headers: Vec<(&str, &str)> = header
            .as_deref()
            .map(|value| vec![("x-vigil-signature", value)])
            .unwrap_or_default();
        let (status, _, json) = send_from(
            &api.webhook,
            "POST",
            "/webhook",
            body,
            "127.0.0.1:40000",
            &headers,
        )
        .await;
        assert_eq!(status, expected, "{what}: {json}");
        if status == StatusCode::UNAUTHORIZED {
            assert_eq!(
                counts(&store).await,
                before,
                "{what}: a refused signature changed nothing"
            );
        }
    }
    store.close().await;

    // Where signatures are required, an unsigned alert is refused.
    let store = sqlite_store().await;
    let signatures = Signatures::new(vec![new.to_vec()], Duration::from_secs(300), true);
    let (api, _) = guarded_service(&store, SourcePolicy::default(), Some(signatures))
        .with_lifecycle("active", SignalSet::ALL);
    let (status, _, json) = send(&api.webhook, "POST", "/webhook", body("09:15:00")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{json}");
    assert!(
        json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("required"),
        "{json}"
    );
    assert_eq!(counts(&store).await, (0, 0));
    store.close().await;
}

/// A source that keeps sending wrong passphrases is slowed, then refused for a while (429,
/// with Retry-After), and changes nothing; TradingView's addresses, shared by every
/// TradingView user, are never slowed or refused, so their valid alerts always go through.
#[tokio::test]
async fn brute_force_is_slowed_then_refused_but_never_for_tradingview() {
    use vigil::http::throttle::FAILURES_BEFORE_LOCKOUT;
    keep_call_sites_interesting();
    let store = sqlite_store().await;
    let (api, _) = guarded_service(&store, SourcePolicy::default(), None)
        .with_lifecycle("active", SignalSet::ALL);
    let wrong = signal("BASE_ENTRY", "NIFTY", "22000", "21900", "2", "09:15:00")
        .replace(PASSPHRASE, "guess");
    for (from, what) in [
        ("52.89.214.238:5000", "TradingView"),
        ("198.51.100.9:5000", "an attacker"),
    ] {
        let mut answers = Vec::new();
        for _ in 0..FAILURES_BEFORE_LOCKOUT + 1 {
            let (status, retry_after, _) =
                send_from(&api.webhook, "POST", "/webhook", wrong.clone(), from, &[]).await;
            answers.push((status.as_u16(), retry_after));
        }
        let last = answers.last().cloned().unwrap();
        match what {
            "TradingView" => assert!(
                answers.iter().all(|(status, _)| *status == 401),
                "{what}: {answers:?}"
            ),
            _ => {
                assert!(
                    answers[..answers.len() - 1]
                        .iter()
                        .all(|(status, _)| *status == 401),
                    "{what}: {answers:?}"
                );
                assert_eq!(last.0, 429, "{what}: {answers:?}");
                assert!(
                    last.1
                        .is_some_and(|seconds| seconds.parse::<u64>().unwrap() > 0),
                    "{what}: {answers:?}"
                );
            }
        }
    }
    assert_eq!(
        counts(&store).await,
        (0, 0),
        "refused alerts changed nothing"
    );
    // The locked-out source is refused even with the right passphrase; TradingView is not.
    let right = signal("BASE_ENTRY", "NIFTY", "22000", "21900", "2", "09:15:00");
    let (status, _, json) = send_from(
        &api.webhook,
        "POST",
        "/webhook",
        right.clone(),
        "198.51.100.9:5000",
        &[],
    )
    .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{json}");
    assert_eq!(json["error"]["code"], "locked_out");
    let (status, _, json) = send_from(
        &api.webhook,
        "POST",
        "/webhook",
        right,
        "52.89.214.238:5000",
        &[],
    )
    .await;
    // Taken: applied at once (200), or, when the store is slow to answer on a loaded
    // machine, recorded in the journal (202 queued) to be applied by the drainer.
    match status {
        StatusCode::OK => assert_eq!(counts(&store).await, (1, 0)),
        StatusCode::ACCEPTED => assert_eq!(json["status"], "queued", "{json}"),
        _ => panic!("TradingView's alert was refused: {status} {json}"),
    }
    store.close().await;
}

/// Alerts of one instrument apply in alert order: one older than the latest recorded there
/// (applied or refused) is recorded `superseded` and trades nothing. An entry resent after
/// its own exit opens nothing.
#[tokio::test]
async fn an_alert_older_than_the_latest_on_its_instrument_is_superseded() {
    keep_call_sites_interesting();
    /// (signal, price, time tag, HTTP status, the answer's status)
    type Alert<'a> = (&'a str, &'a str, &'a str, u16, &'a str);
    // (what, alerts in arrival order, open and closed positions after)
    #[rustfmt::skip]
    let cases: &[(&str, &[Alert], (i64, i64))] = &[
        ("an entry resent after its own exit", &[
            ("EXIT", "22100", "09:16:00", 422, ""),
            ("BASE_ENTRY", "22000", "09:15:00", 200, "superseded"),
        ], (0, 0)),
        ("a pyramid that arrives after the exit", &[
            ("BASE_ENTRY", "22000", "09:15:00", 200, "applied"),
            ("EXIT", "22100", "09:17:00", 200, "applied"),
            ("PYRAMID", "22050", "09:16:00", 200, "superseded"),
        ], (0, 1)),
        ("the same second is not older", &[
            ("BASE_ENTRY", "22000", "09:15:00", 200, "applied"),
            ("PYRAMID", "22050", "09:15:00", 200, "applied"),
        ], (2, 0)),
    ];
    for (what, alerts, expected) in cases {
        let store = sqlite_store().await;
        let (api, _) = service(&store, "active", SignalSet::ALL);
        for (kind, price, time, status, outcome) in *alerts {
            let body = signal(kind, "NIFTY", price, "21900", "1", time);
            let (got, _, json) = send(&api.webhook, "POST", "/webhook", body).await;
            assert_eq!(got.as_u16(), *status, "{what}: {kind} {time}: {json}");
            if *status == 200 {
                assert_eq!(json["status"], *outcome, "{what}: {kind} {time}: {json}");
            }
        }
        assert_eq!(counts(&store).await, *expected, "{what}");
        store.close().await;
    }
}
