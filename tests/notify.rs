//! Notifications from a real `vigil run`: a local HTTP receiver and a fake Telegram Bot API
//! get exactly one notice per event, in order, for a database lost and back, a consistency
//! alarm and a halt on tampered state (delivered before the process exits), while a sink
//! whose receiver is down delays nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::cluster::{clean, entry, Cluster, START_TIMEOUT};
use common::receiver::{self, Received};
use common::tradingview;
use common::{postgres_admin_url, ScratchDatabase};
use std::time::Duration;
use tokio::time::Instant;

/// The events the receivers are sent: leader changes and the rest go elsewhere.
const EVENTS: &str =
    r#"["degraded", "recovered", "consistency_alarm", "receipt_failed", "halted"]"#;

/// The bot token the fake Telegram API is called with (read from the environment).
const BOT_TOKEN: &str = "123456:test-token";

/// The events one receiver route got, in order.
fn events(received: &Received, telegram: bool) -> Vec<String> {
    received
        .lock()
        .unwrap()
        .iter()
        .filter(|(path, _)| path.starts_with("/bot") == telegram)
        .map(|(path, body)| match telegram {
            false => body["event"].as_str().unwrap().to_string(),
            true => {
                assert_eq!(path, &format!("/bot{BOT_TOKEN}/sendMessage"));
                assert_eq!(body["chat_id"], "-1001");
                // "[vigil SEVERITY] EVENT on INSTANCE: MESSAGE"
                let text = body["text"].as_str().unwrap();
                text.split_whitespace().nth(2).unwrap().to_string()
            }
        })
        .collect()
}

/// Waits until the receiver has seen `event` on both routes.
async fn until_received(received: &Received, event: &str, log: &dyn Fn() -> String) {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        let both = [false, true]
            .into_iter()
            .all(|telegram| events(received, telegram).iter().any(|seen| seen == event));
        if both {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no {event} notice arrived; got {:?}; log:\n{}",
            received.lock().unwrap(),
            log()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_event_is_notified_once_in_order_and_a_halt_before_it_exits() {
    let Some(admin) = postgres_admin_url("each_event_is_notified_once") else {
        return;
    };
    let database = ScratchDatabase::create(&admin, "notify").await;
    let mut cluster = Cluster::new("notify", &database.url).await;
    cluster.use_redis = false;
    let (url, received) = receiver::start().await;
    // A receiver that is down: nothing listens on this port.
    let down = format!("http://127.0.0.1:{}", common::cluster::free_port());
    // A receiver that hangs: it takes connections and never answers, so every attempt runs
    // into its timeout.
    let hung_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hung = format!("http://{}", hung_listener.local_addr().unwrap());
    let mut deployment = std::fs::read_to_string(cluster.dir.join("vigil.toml")).unwrap();
    deployment.push_str(&format!(
        r#"
[[notify]]
name = "ops hook"
kind = "webhook"
webhook_url = "{url}/hook"
events = {EVENTS}

[[notify]]
name = "ops telegram"
kind = "telegram"
api_url = "{url}"
bot_token_env = "VIGIL_TEST_BOT_TOKEN"
chat_id = "-1001"
events = {EVENTS}

[[notify]]
name = "nobody"
kind = "slack"
webhook_url = "{down}/hook"

[[notify]]
name = "silent"
kind = "discord"
webhook_url = "{hung}/hook"
"#
    ));
    std::fs::write(cluster.dir.join("vigil.toml"), deployment).unwrap();
    let env = [("VIGIL_TEST_BOT_TOKEN", BOT_TOKEN)];
    let instance = cluster.spawn_with("n-1", &env).await;
    common::cluster::wait_ready(&instance).await;
    let log = || instance.log_text();

    // Alerts are answered while the dead sink's deliveries fail and retry.
    let client = tradingview::client();
    let delivery =
        tradingview::deliver(&client, &format!("{}/webhook", instance.url), &entry(0)).await;
    assert_eq!(
        delivery.outcome(),
        Some("applied"),
        "{}",
        delivery.last_body
    );

    // The database lost and back: degraded, then recovered, once each.
    database.refuse_connections(true).await;
    until_received(&received, "degraded", &log).await;
    database.refuse_connections(false).await;
    until_received(&received, "recovered", &log).await;
    let delivery =
        tradingview::deliver(&client, &format!("{}/webhook", instance.url), &entry(1)).await;
    assert_eq!(
        delivery.outcome(),
        Some("applied"),
        "{}",
        delivery.last_body
    );

    // A consistency alarm: one notice, however many checks find it.
    let pool = sqlx::PgPool::connect(&database.url).await.unwrap();
    sqlx::query("UPDATE portfolio_state SET total_risk = 999999.99")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    until_received(&received, "consistency_alarm", &log).await;
    let alarms = instance.log_text().matches("consistency alarm:").count();
    let wait_for_more = Instant::now() + START_TIMEOUT;
    while instance.log_text().matches("consistency alarm:").count() < alarms + 2 {
        assert!(Instant::now() < wait_for_more, "{}", instance.log_text());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A restart halts on the tampered totals: the receipt and the halt are delivered before
    // the process ends.
    instance.terminate();
    let mut instance = instance;
    assert_eq!(instance.exit_code().await, Some(0));
    let mut halting = cluster.spawn_until_exit_with("n-1", &env).await;
    let started = Instant::now();
    assert_eq!(halting.exit_code().await, Some(1), "{}", halting.log_text());
    println!(
        "the halting start exited {} ms after it was spawned, with a sink that never answers \
         (flush bound {} ms)",
        started.elapsed().as_millis(),
        vigil::notify::NOTIFY_FLUSH_TIMEOUT.as_millis()
    );
    let expected = [
        "degraded",
        "recovered",
        "consistency_alarm",
        "receipt_failed",
        "halted",
    ];
    for telegram in [false, true] {
        assert_eq!(
            events(&received, telegram),
            expected,
            "telegram: {telegram}; {:?}",
            received.lock().unwrap()
        );
    }
    let halted = received
        .lock()
        .unwrap()
        .iter()
        .find(|(path, body)| path == "/hook" && body["event"] == "halted")
        .map(|(_, body)| body.clone())
        .unwrap();
    assert_eq!(halted["severity"], "critical");
    assert_eq!(halted["instance"], "n-1");
    assert!(
        halted["message"]
            .as_str()
            .unwrap()
            .starts_with("halting on VALIDATION_FAILED"),
        "{halted}"
    );
    // The dead sink was tried, and its failures are logged without its URL.
    let failed = halting.log_text() + &instance.log_text();
    assert!(
        failed.contains("not delivered to nobody (slack)"),
        "{failed}"
    );
    assert!(!failed.contains(&down), "a sink's URL reached the log");
    assert!(!failed.contains(&hung), "a sink's URL reached the log");
    drop(hung_listener);
    assert!(!failed.contains(BOT_TOKEN), "the bot token reached the log");
    drop(halting);
    clean(&cluster.dir);
    database.drop_now().await;
}
