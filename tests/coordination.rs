//! The coordination port against real servers: the leadership row and its fencing on both
//! store backends, the Redis lease, locks and dedup claims with compare-and-delete, and the
//! fall back to the database when Redis does not answer.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{postgres_admin_url, redis_url, ScratchDatabase};
use std::time::Duration;
use vigil::coordination::{
    Coordination, FastClaim, Gate, Mode, Owner, RedisCoordinator, RedisHealth,
};
use vigil::driver::Input;
use vigil::policy::Policy;
use vigil::store::{Access, AnyStore, Fence, InstanceRecord, Store, StoreError};
use vigil::vocabulary::FailureKind;

const LEASE: Duration = Duration::from_secs(30);

/// One step of a leadership script, by instance `a` or `b`.
#[derive(Debug, Clone, Copy)]
enum Step {
    /// Take the row; expect a new, higher token (`true`) or a refusal.
    Take(&'static str, bool),
    /// Renew with a lease that lapses at once, as for a leader that stalled past its lease.
    Lapse(&'static str),
    /// Renew with the token it last got; expect this answer.
    Renew(&'static str, bool),
    /// Write statistics with the token it last got; expect success or a fencing refusal.
    Stats(&'static str, bool),
    /// Release with the token it last got.
    Release(&'static str),
    /// `instances()` names this instance as leader.
    Leader(Option<&'static str>),
}

const SCRIPT: &[(&str, Step)] = &[
    ("a takes a free row", Step::Take("a", true)),
    ("b cannot take a valid lease", Step::Take("b", false)),
    ("a is listed as leader", Step::Leader(Some("a"))),
    ("a writes under its token", Step::Stats("a", true)),
    ("a renews", Step::Renew("a", true)),
    ("a stalls past its lease", Step::Lapse("a")),
    ("b takes the lapsed row", Step::Take("b", true)),
    ("b is listed as leader", Step::Leader(Some("b"))),
    ("a's renewal fails", Step::Renew("a", false)),
    ("a's write is fenced off", Step::Stats("a", false)),
    ("b writes under its token", Step::Stats("b", true)),
    ("b releases", Step::Release("b")),
    ("nobody is listed as leader", Step::Leader(None)),
    ("a takes the released row", Step::Take("a", true)),
    ("b's old token is fenced off", Step::Stats("b", false)),
];

async fn check_leadership(store: &AnyStore, backend: &str) {
    store.migrate().await.unwrap();
    let now = chrono::Utc::now();
    for id in ["a", "b"] {
        let record = InstanceRecord {
            instance_id: id.into(),
            hostname: "test".into(),
            started_at: now,
        };
        store.record_status(&record, "active", now).await.unwrap();
    }
    let mut tokens: std::collections::BTreeMap<&str, i64> = Default::default();
    let mut highest = 0;
    for (what, step) in SCRIPT {
        let context = format!("{backend}: {what}");
        let now = chrono::Utc::now();
        let fence = |id: &'static str| Fence {
            instance_id: id,
            fencing_token: tokens[id],
        };
        match *step {
            Step::Take(id, expected) => {
                let token = store.take_leadership(id, LEASE, now).await.unwrap();
                assert_eq!(token.is_some(), expected, "{context}");
                if let Some(token) = token {
                    assert!(token > highest, "{context}: token {token} after {highest}");
                    highest = token;
                    tokens.insert(id, token);
                }
            }
            Step::Lapse(id) => {
                let lapse = Duration::from_millis(1);
                assert!(store.renew_leadership(fence(id), lapse, now).await.unwrap());
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Step::Renew(id, expected) => {
                let renewed = store.renew_leadership(fence(id), LEASE, now).await.unwrap();
                assert_eq!(renewed, expected, "{context}");
            }
            Step::Stats(id, expected) => match store.record_statistics(fence(id), now).await {
                Ok(()) => assert!(expected, "{context}: written"),
                Err(StoreError::Fenced(reason)) => {
                    assert!(!expected, "{context}: {reason}");
                    assert!(reason.contains("current leader's token"), "{reason}");
                }
                Err(other) => panic!("{context}: {other}"),
            },
            Step::Release(id) => store.release_leadership(fence(id), now).await.unwrap(),
            Step::Leader(expected) => {
                let rows = store.instances(now).await.unwrap();
                let leaders: Vec<&str> = rows
                    .iter()
                    .filter(|row| row.leader)
                    .map(|row| row.instance_id.as_str())
                    .collect();
                assert_eq!(
                    leaders,
                    expected.into_iter().collect::<Vec<_>>(),
                    "{context}"
                );
            }
        }
    }
}

#[tokio::test]
async fn leadership_is_fenced_on_both_backends() {
    let dir = std::env::temp_dir().join(format!("vigil-coordination-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("sqlite://{}", dir.join("lead.db").display());
    let store = AnyStore::connect(&url, Access::ReadWrite).await.unwrap();
    check_leadership(&store, "sqlite").await;
    store.close().await;
    let _ = std::fs::remove_dir_all(&dir);

    let Some(admin) = postgres_admin_url("leadership_is_fenced_on_both_backends") else {
        return;
    };
    let database = ScratchDatabase::create(&admin, "lead").await;
    let store = AnyStore::connect(&database.url, Access::ReadWrite)
        .await
        .unwrap();
    check_leadership(&store, "postgres").await;
    store.close().await;
    database.drop_now().await;
}

/// A namespace no other test run shares, even where process ids repeat.
fn namespace(test: &str) -> String {
    format!("vigil-test-{}-{test}", Owner::new().token)
}

/// Deletes every key under `namespace`.
async fn clean_up(url: &str, namespace: &str) {
    let client = redis::Client::open(url).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{namespace}:*"))
        .query_async(&mut connection)
        .await
        .unwrap();
    if !keys.is_empty() {
        let _: i64 = redis::cmd("DEL")
            .arg(keys)
            .query_async(&mut connection)
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn redis_holders_release_only_what_they_hold() {
    let Some(url) = redis_url("redis_holders_release_only_what_they_hold") else {
        return;
    };
    let holders = namespace("holders");
    let redis = RedisCoordinator::connect(&url, &holders).unwrap();
    let (first, second, third) = (Owner::new(), Owner::new(), Owner::new());
    // Long enough that it cannot expire between two calls on a busy machine.
    let ttl = Duration::from_secs(1);

    // The lease: SET NX PX, renewal and compare-and-delete.
    assert!(redis.take_lease_key(&first, LEASE).await.unwrap());
    assert!(!redis.take_lease_key(&second, LEASE).await.unwrap());
    assert!(
        !redis.release_lease_key(&second).await.unwrap(),
        "not its lease"
    );
    assert!(!redis.renew_lease_key(&second, LEASE).await.unwrap());
    assert!(redis.renew_lease_key(&first, LEASE).await.unwrap());
    assert!(redis.release_lease_key(&first).await.unwrap());
    assert!(redis.take_lease_key(&second, LEASE).await.unwrap());
    assert!(redis.release_lease_key(&second).await.unwrap());

    // The instrument lock expires by itself.
    assert!(redis.lock_instrument("NIFTY", &first, ttl).await.unwrap());
    assert!(!redis.lock_instrument("NIFTY", &second, ttl).await.unwrap());
    assert!(redis
        .lock_instrument("BANKNIFTY", &second, ttl)
        .await
        .unwrap());
    assert!(!redis.unlock_instrument("NIFTY", &second).await.unwrap());
    tokio::time::sleep(ttl + Duration::from_millis(100)).await;
    assert!(redis.lock_instrument("NIFTY", &second, ttl).await.unwrap());
    assert!(redis.unlock_instrument("NIFTY", &second).await.unwrap());

    // Dedup claims: the first claims, others wait for the database, applied is final.
    let window = Duration::from_secs(60);
    let cases = [(&first, FastClaim::Claimed), (&second, FastClaim::Pending)];
    for (owner, expected) in cases {
        assert_eq!(
            redis
                .claim_fingerprint("fp-1", owner, window)
                .await
                .unwrap(),
            expected
        );
    }
    redis.forget_claim("fp-1", &second).await.unwrap();
    assert_eq!(
        redis
            .claim_fingerprint("fp-1", &third, window)
            .await
            .unwrap(),
        FastClaim::Pending
    );
    redis.forget_claim("fp-1", &first).await.unwrap();
    assert_eq!(
        redis
            .claim_fingerprint("fp-1", &third, window)
            .await
            .unwrap(),
        FastClaim::Claimed
    );
    redis.mark_applied("fp-1", window).await.unwrap();
    redis.forget_claim("fp-1", &third).await.unwrap();
    assert_eq!(
        redis
            .claim_fingerprint("fp-1", &first, window)
            .await
            .unwrap(),
        FastClaim::Applied
    );
    clean_up(&url, &holders).await;
}

#[tokio::test]
async fn a_silent_redis_hands_coordination_to_the_database_and_back() {
    let Some(url) = redis_url("a_silent_redis_hands_coordination_to_the_database_and_back") else {
        return;
    };
    let timings = Policy::builtin_default().ha;
    let (sender, mut inputs) = tokio::sync::mpsc::channel(8);
    // Nothing listens on port 1.
    let silent = RedisCoordinator::connect("redis://127.0.0.1:1", &namespace("silent")).unwrap();
    let coordination = Coordination::new(Some(silent), timings.clone(), "ha-test", sender.clone());
    assert_eq!(coordination.mode(), Mode::Redis);
    for _ in 0..2 {
        match coordination.before_signal("NIFTY", "fp-silent").await {
            Gate::Proceed(ticket) => {
                assert!(!ticket.holds_lock());
                ticket.settle(true);
            }
            other => panic!("a silent Redis must not stop signals: {other:?}"),
        }
    }
    assert_eq!(coordination.mode(), Mode::Database);
    assert_eq!(coordination.redis_health(), RedisHealth::Down);
    assert_eq!(
        inputs.try_recv().unwrap(),
        Input::Failure(FailureKind::RedisUnavailable)
    );
    assert!(inputs.try_recv().is_err(), "one loss is reported once");

    let answering_namespace = namespace("answering");
    let answering = RedisCoordinator::connect(&url, &answering_namespace).unwrap();
    let coordination = Coordination::new(Some(answering), timings, "ha-test", sender);
    coordination.redis_failed(&vigil::coordination::CoordinationError::Redis(
        "test".into(),
    ));
    assert_eq!(
        inputs.try_recv().unwrap(),
        Input::Failure(FailureKind::RedisUnavailable)
    );
    assert_eq!(coordination.check_redis().await, Some(Ok(true)));
    assert_eq!(
        inputs.try_recv().unwrap(),
        Input::Restored(FailureKind::RedisUnavailable)
    );
    assert_eq!(coordination.mode(), Mode::Redis);
    match coordination.before_signal("NIFTY", "fp-answering").await {
        Gate::Proceed(ticket) => {
            assert!(ticket.holds_lock());
            ticket.settle(true);
        }
        other => panic!("{other:?}"),
    }
    // The settled ticket marks the fingerprint applied and unlocks in the background.
    let mut gate = coordination.before_signal("NIFTY", "fp-answering").await;
    for _ in 0..100 {
        if matches!(gate, Gate::Duplicate) {
            break;
        }
        drop(gate);
        tokio::time::sleep(Duration::from_millis(10)).await;
        gate = coordination.before_signal("NIFTY", "fp-answering").await;
    }
    assert!(matches!(gate, Gate::Duplicate), "{gate:?}");
    clean_up(&url, &answering_namespace).await;
}

/// A webhook app on a fresh SQLite database, coordinating through `redis`.
async fn app_on_fresh_database(redis: RedisCoordinator) -> axum::Router {
    let dir = std::env::temp_dir().join(format!("vigil-coordination-app-{}", Owner::new().token));
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("sqlite://{}/vigil.db", dir.display());
    let store = AnyStore::connect(&url, Access::ReadWrite).await.unwrap();
    store.migrate().await.unwrap();
    let (sender, receiver) = vigil::driver::live::channel();
    // Reports to the machines are not looked at here; keep the channel open.
    std::mem::forget(receiver);
    let timings = Policy::builtin_default().ha;
    let coordination = Coordination::new(Some(redis), timings, "ha-test", sender.clone());
    let shared = std::sync::Arc::new(vigil::shared::Shared::with_coordination(
        "ha-test",
        sender,
        coordination,
    ));
    shared.store.send_replace(Some(store));
    shared.lifecycle.send_modify(|view| {
        view.state = vigil::machines::lifecycle::State::from_name("active").unwrap();
        view.accepts = vigil::vocabulary::SignalSet::ALL;
    });
    let intake = common::intake(&shared);
    vigil::http::webhook_app(std::sync::Arc::new(vigil::http::AppState {
        shared,
        intake,
        passphrase: vigil::http::Passphrase::new("p"),
        instruments: vigil::domain::default_instruments(),
        sources: vigil::http::source::SourcePolicy::default(),
        signatures: None,
        throttle: vigil::http::throttle::Throttle::new(Vec::new()),
        recent: std::sync::Mutex::default(),
        operator_token: None,
    }))
}

async fn post(app: &axum::Router, body: &str) -> serde_json::Value {
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let request = axum::http::Request::post("/webhook")
        .header("content-type", "application/json")
        .body(axum::body::Body::from(body.to_string()))
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&bytes).unwrap()
}

/// Redis remembers a signal as applied, but this database never saw it (a database restored
/// from backup, or another deployment on the same Redis): it is applied, not called a
/// duplicate.
#[tokio::test]
async fn redis_alone_never_calls_a_signal_duplicate() {
    let Some(url) = redis_url("redis_alone_never_calls_a_signal_duplicate") else {
        return;
    };
    let shared_namespace = namespace("shared");
    let body = &format!(
        r#"{{"passphrase":"p","signal":"BASE_ENTRY","instrument":"NIFTY","position":"long","price":"22000","stop":"21900","lots":"1","timestamp":"{}"}}"#,
        common::at("09:15")
    );
    let first =
        app_on_fresh_database(RedisCoordinator::connect(&url, &shared_namespace).unwrap()).await;
    let second =
        app_on_fresh_database(RedisCoordinator::connect(&url, &shared_namespace).unwrap()).await;
    let answer = post(&first, body).await;
    assert_eq!(answer["status"], "applied");
    // The first app marks the fingerprint applied in the background.
    let key = format!(
        "{shared_namespace}:dedup:{}",
        answer["fingerprint"].as_str().unwrap()
    );
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let mut marked = false;
    for _ in 0..200 {
        let value: Option<String> = redis::cmd("GET")
            .arg(&key)
            .query_async(&mut connection)
            .await
            .unwrap();
        marked = value.as_deref() == Some("applied");
        if marked {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(marked, "{key} was never marked applied");
    assert_eq!(post(&second, body).await["status"], "applied");
    assert_eq!(post(&second, body).await["status"], "duplicate");
    clean_up(&url, &shared_namespace).await;
}

/// What a signal meets in Redis while another holds its instrument or its claim: it waits,
/// and ends busy, a duplicate, or free to go on; a dropped (cancelled) signal releases what
/// it held.
#[tokio::test]
async fn waiting_signals_end_busy_duplicate_or_free() {
    let Some(url) = redis_url("waiting_signals_end_busy_duplicate_or_free") else {
        return;
    };
    let space = namespace("waiting");
    let (sender, _inputs) = tokio::sync::mpsc::channel(8);
    let coordination = std::sync::Arc::new(Coordination::new(
        Some(RedisCoordinator::connect(&url, &space).unwrap()),
        Policy::builtin_default().ha,
        "ha-test",
        sender,
    ));
    let proceed = |gate: Gate| match gate {
        Gate::Proceed(ticket) => ticket,
        other => panic!("expected to proceed: {other:?}"),
    };

    // Another signal of the instrument holds the lock past the wait: busy.
    let holder = proceed(coordination.before_signal("NIFTY", "fp-a").await);
    assert!(holder.holds_lock());
    let waited = std::time::Instant::now();
    assert!(matches!(
        coordination.before_signal("NIFTY", "fp-b").await,
        Gate::Busy
    ));
    eprintln!(
        "busy after {:?} (wait {:?})",
        waited.elapsed(),
        vigil::coordination::SIGNAL_LOCK_WAIT
    );

    // The holder is cancelled: its lock and claim are released, and the other goes on.
    drop(holder);
    let mut freed = None;
    for _ in 0..100 {
        if let Gate::Proceed(ticket) = coordination.before_signal("NIFTY", "fp-b").await {
            freed = Some(ticket);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let freed = freed.expect("the cancelled holder's lock was released");
    assert!(freed.holds_lock());
    // The cancelled signal's claim was forgotten: a resend claims it anew.
    freed.settle(false);

    // A copy of a signal being applied waits for it, then is a duplicate.
    let first = proceed(coordination.before_signal("BANKNIFTY", "fp-c").await);
    let copy = {
        let coordination = std::sync::Arc::clone(&coordination);
        tokio::spawn(async move { coordination.before_signal("BANKNIFTY", "fp-c").await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    first.settle(true);
    assert!(matches!(copy.await.unwrap(), Gate::Duplicate));

    // The signal whose holder was cancelled can be claimed again.
    let mut resent = None;
    for _ in 0..100 {
        if let Gate::Proceed(ticket) = coordination.before_signal("NIFTY", "fp-a").await {
            resent = Some(ticket);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(resent.expect("fp-a can be claimed again").holds_lock());
    tokio::time::sleep(Duration::from_millis(100)).await;
    clean_up(&url, &space).await;
}
