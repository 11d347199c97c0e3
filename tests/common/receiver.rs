//! A local notification receiver: every request it gets is recorded with its path and JSON
//! body, and answered `{"ok": true}`. It serves a generic webhook (`/hook`) and Telegram's
//! Bot API (`/bot.../sendMessage`) alike.
#![allow(dead_code)]

use std::sync::{Arc, Mutex};

/// The requests a receiver got, in order: path and JSON body.
pub type Received = Arc<Mutex<Vec<(String, serde_json::Value)>>>;

/// Starts a receiver on a free loopback port; its base URL and what it records.
pub async fn start() -> (String, Received) {
    let received: Received = Arc::default();
    let log = Arc::clone(&received);
    let app = axum::Router::new().fallback(move |uri: axum::http::Uri, body: axum::body::Bytes| {
        let log = Arc::clone(&log);
        async move {
            let json = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
            log.lock().unwrap().push((uri.path().to_string(), json));
            axum::Json(serde_json::json!({ "ok": true }))
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{address}"), received)
}

/// The `event` of every generic webhook notice received, in order.
pub fn webhook_events(received: &Received) -> Vec<String> {
    received
        .lock()
        .unwrap()
        .iter()
        .filter(|(path, _)| !path.starts_with("/bot"))
        .filter_map(|(_, body)| body["event"].as_str().map(str::to_string))
        .collect()
}
