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
use vigil::store::{Access, AnyStore, Fence, InstanceRecord, Store, StoreError, Takeover};
use vigil::vocabulary::FailureKind;

const LEASE: Duration = Duration::from_secs(30);

/// One step of a leadership script, by instance `a` or `b`.
#[derive(Debug, Clone, Copy)]
enum Step {
    /// Take the row; expect a new, higher token (`true`) or a refusal.
    Take(&'static str, Takeover, bool),
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
    (
        "a takes a free row",
        Step::Take("a", Takeover::IfFree, true),
    ),
    (
        "b cannot take a valid lease",
        Step::Take("b", Takeover::IfFree, false),
    ),
    ("a is listed as leader", Step::Leader(Some("a"))),
    ("a writes under its token", Step::Stats("a", true)),
    ("a renews", Step::Renew("a", true)),
    (
        "b takes by force, as when Redis granted it",
        Step::Take("b", Takeover::Force, true),
    ),
    ("b is listed as leader", Step::Leader(Some("b"))),
    ("a's renewal fails", Step::Renew("a", false)),
    ("a's write is fenced off", Step::Stats("a", false)),
    ("b writes under its token", Step::Stats("b", true)),
    ("b releases", Step::Release("b")),
    ("nobody is listed as leader", Step::Leader(None)),
    (
        "a takes the released row",
        Step::Take("a", Takeover::IfFree, true),
    ),
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
            Step::Take(id, takeover, expected) => {
                let token = store
                    .take_leadership(id, LEASE, takeover, now)
                    .await
                    .unwrap();
                assert_eq!(token.is_some(), expected, "{context}");
                if let Some(token) = token {
                    assert!(token > highest, "{context}: token {token} after {highest}");
                    highest = token;
                    tokens.insert(id, token);
                }
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
    let ttl = Duration::from_millis(300);

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
    assert_eq!(coordination.check_redis().await, Some(Ok(())));
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
