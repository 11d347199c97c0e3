//! The shipped `deploy/nginx/vigil.conf`, in a private nginx in front of two real instances,
//! one of them killed with -9 mid-load, under a client that resends like TradingView:
//! every alert is acknowledged, and applied exactly once.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::cluster::{clean, instrument, Cluster, PASSPHRASE, START_TIMEOUT};
use common::tradingview;
use common::{postgres_admin_url, ScratchDatabase};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;
use vigil_testkit::process::Process;

/// Alerts sent at once, as several TradingView alerts firing together.
const SENDERS: usize = 4;

/// The pause between one sender's alerts.
const PACE: Duration = Duration::from_millis(15);

/// The alert after which the second instance is killed.
const KILL_AFTER: usize = 40;

/// How long the queued alerts may take to be applied once the load ends.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);

/// The nginx binary, or `None` when it is not installed (`.ci/services` installs it).
fn nginx_binary() -> Option<PathBuf> {
    let candidates = [
        PathBuf::from("/usr/sbin/nginx"),
        PathBuf::from("/usr/bin/nginx"),
    ];
    let found = candidates.into_iter().find(|path| path.exists());
    if found.is_none() {
        assert!(
            std::env::var_os("VIGIL_REQUIRE_SERVICES").is_none(),
            "VIGIL_REQUIRE_SERVICES=1 but nginx is not installed (.ci/services installs it)"
        );
        eprintln!("notice: nginx is not installed; skipping");
    }
    found
}

/// The shipped configuration with the test's upstreams and port, inside a minimal
/// nginx.conf whose files all live in `dir`; the path of that nginx.conf.
fn nginx_conf(dir: &Path, upstreams: [&str; 2], port: u16) -> PathBuf {
    let shipped = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/nginx/vigil.conf"),
    )
    .unwrap();
    for placeholder in ["127.0.0.1:8080", "127.0.0.1:8090", "listen 80;"] {
        assert!(
            shipped.contains(placeholder),
            "the shipped file changed: {placeholder}"
        );
    }
    let site = shipped
        .replace("127.0.0.1:8080", upstreams[0])
        .replace("127.0.0.1:8090", upstreams[1])
        .replace("listen 80;", &format!("listen 127.0.0.1:{port};"));
    std::fs::write(dir.join("vigil.conf"), site).unwrap();
    let d = dir.display();
    // As root, nginx's workers would run as nobody, who cannot write the test's directory.
    let user = match std::process::Command::new("id").arg("-u").output() {
        Ok(output) if output.stdout.starts_with(b"0") => "user root;\n",
        _ => "",
    };
    let conf = format!(
        "{user}worker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/nginx-error.log warn;\n\
         events {{ worker_connections 256; }}\n\
         http {{\n  access_log {d}/nginx-access.log;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  \
         fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n  \
         include {d}/vigil.conf;\n}}\n"
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf).unwrap();
    path
}

/// An alert of the load: entries on every instrument, then exits on every instrument.
fn alert(n: usize, instruments: usize) -> String {
    let slot = n % instruments;
    match n < instruments {
        true => format!(
            r#"{{"passphrase":"{PASSPHRASE}","signal":"BASE_ENTRY","instrument":"{}","position":"long","price":"1000","stop":"990","lots":"1","timestamp":"{}"}}"#,
            instrument(slot),
            common::at("09:20")
        ),
        false => format!(
            r#"{{"passphrase":"{PASSPHRASE}","signal":"EXIT","instrument":"{}","price":"1010","timestamp":"{}"}}"#,
            instrument(slot),
            common::at("09:40")
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nginx_retries_another_instance_and_nothing_is_lost_or_doubled() {
    let Some(nginx) = nginx_binary() else {
        return;
    };
    let Some(admin) = postgres_admin_url("nginx_retries_another_instance") else {
        return;
    };
    let database = ScratchDatabase::create(&admin, "nginx").await;
    let cluster = Cluster::new("nginx", &database.url).await;
    let mut instances = cluster.start_all(2).await;
    let address = |url: &str| url.trim_start_matches("http://").to_string();
    let upstreams = [address(&instances[0].url), address(&instances[1].url)];
    let port = common::cluster::free_port();
    let conf = nginx_conf(
        &cluster.dir,
        [upstreams[0].as_str(), upstreams[1].as_str()],
        port,
    );
    let mut command = std::process::Command::new(&nginx);
    command
        .arg("-p")
        .arg(&cluster.dir)
        .arg("-c")
        .arg(&conf)
        .args(["-g", "daemon off;"]);
    let mut proxy = Process::spawn(command, "nginx", Some(&cluster.dir.join("nginx.log"))).unwrap();
    let deadline = Instant::now() + START_TIMEOUT;
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            proxy.try_exit().unwrap().is_none() && Instant::now() < deadline,
            "nginx did not start:\n{}",
            std::fs::read_to_string(cluster.dir.join("nginx-error.log")).unwrap_or_default()
                + &proxy.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }

    // The load, through nginx; the second instance dies in the middle of it.
    let instruments = common::cluster::INSTRUMENTS;
    let total = 2 * instruments;
    let url = format!("http://127.0.0.1:{port}/webhook");
    let next = Arc::new(AtomicUsize::new(0));
    let answers = Arc::new(Mutex::new(Vec::new()));
    let mut senders = Vec::new();
    for _ in 0..SENDERS {
        let (next, answers, url) = (Arc::clone(&next), Arc::clone(&answers), url.clone());
        senders.push(tokio::spawn(async move {
            let client = tradingview::client();
            loop {
                let n = next.fetch_add(1, Ordering::AcqRel);
                if n >= total {
                    return;
                }
                // Exits go out once every entry was answered, so each finds its position.
                while n >= instruments && answers.lock().unwrap().len() < instruments {
                    tokio::time::sleep(PACE).await;
                }
                let delivery = tradingview::deliver(&client, &url, &alert(n, instruments)).await;
                answers.lock().unwrap().push((n, delivery));
                tokio::time::sleep(PACE).await;
            }
        }));
    }
    while answers.lock().unwrap().len() < KILL_AFTER {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    instances[1].kill();
    for sender in senders {
        sender.await.unwrap();
    }
    let answers = std::mem::take(&mut *answers.lock().unwrap());
    assert_eq!(answers.len(), total);
    let mut outcomes = std::collections::BTreeMap::<String, usize>::new();
    for (n, delivery) in &answers {
        assert!(
            delivery.acknowledged(),
            "alert {n} was not acknowledged: {:?} {}",
            delivery.sends,
            delivery.last_body
        );
        *outcomes
            .entry(delivery.outcome().unwrap_or("?").to_string())
            .or_default() += 1;
    }
    // nginx met the dead instance and sent those alerts on to the live one.
    let errors = std::fs::read_to_string(cluster.dir.join("nginx-error.log")).unwrap_or_default();
    let retried = errors.matches("while connecting to upstream").count()
        + errors
            .matches("while reading response header from upstream")
            .count();
    println!(
        "{total} alerts through nginx, one instance killed after {KILL_AFTER}: {outcomes:?}; \
         {retried} upstream failures nginx retried elsewhere"
    );
    assert!(
        retried >= 1,
        "nginx never met the killed instance:\n{errors}"
    );

    // The killed instance comes back and hands over what its journal holds; then every
    // alert is applied once: every position opened and closed, nothing queued, nothing twice.
    instances[1] = cluster.start(&instances[1].id.clone()).await;
    let pool = sqlx::PgPool::connect(&database.url).await.unwrap();
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        let (queued,): (i64,) =
            sqlx::query_as("SELECT COUNT(*) FROM signal_log WHERE status = 'queued'")
                .fetch_one(&pool)
                .await
                .unwrap();
        let pending: usize = {
            let mut pending = 0;
            for instance in &instances {
                let status = instance.get("/status").await.unwrap_or_default();
                pending += status["journal"]["pending"].as_u64().unwrap_or(0) as usize;
            }
            pending
        };
        if queued == 0 && pending == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{queued} alerts still queued, {pending} in journals"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT status, COUNT(*) FROM signal_log GROUP BY status ORDER BY status")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        rows,
        vec![("applied".to_string(), total as i64)],
        "{rows:?}"
    );
    let positions: Vec<(String, i64)> =
        sqlx::query_as("SELECT status, COUNT(*) FROM positions GROUP BY status ORDER BY status")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        positions,
        vec![("closed".to_string(), instruments as i64)],
        "every entry opened one position and every exit closed it"
    );
    pool.close().await;
    proxy.stop(Duration::from_secs(5)).unwrap();
    drop(instances);
    clean(&cluster.dir);
    database.drop_now().await;
}
