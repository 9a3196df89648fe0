//! What the NATS tests share: the server's address and a fresh prefix per
//! bus, so tests run in parallel against one server, and the sweeping of
//! what earlier runs left on it.

#![allow(dead_code)]

use std::time::Duration;

use futures_util::StreamExt;
use herald_nats::NatsConfig;

/// Streams tests made longer ago than this are left over: no test runs so
/// long.
const LEFT_OVER: Duration = Duration::from_secs(3600);

/// `HERALD_TEST_NATS_URL`, or the local server.
pub fn url() -> String {
    std::env::var("HERALD_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
}

/// A configuration under a prefix no other test uses. The first call of a
/// test binary also sweeps, in the background, the streams (and with them
/// the consumers) tests left on the shared server over an hour ago, so
/// runs do not pile them up.
pub fn fresh_config() -> NatsConfig {
    static SWEEP: std::sync::Once = std::sync::Once::new();
    SWEEP.call_once(|| {
        std::thread::spawn(|| {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(sweep());
        });
    });
    let unique = format!("t{:016x}", fastrand::u64(..));
    NatsConfig::new(url()).prefix(format!("herald-test.{unique}"))
}

/// Delete the test streams made over [`LEFT_OVER`] ago.
async fn sweep() {
    let Ok(client) = async_nats::connect(url()).await else {
        return;
    };
    let js = async_nats::jetstream::new(client);
    let cutoff = time::OffsetDateTime::now_utc() - LEFT_OVER;
    let mut old = Vec::new();
    let mut streams = js.streams();
    while let Some(Ok(info)) = streams.next().await {
        if info.config.name.starts_with("herald-test_t") && info.created < cutoff {
            old.push(info.config.name);
        }
    }
    for name in old {
        let _ = js.delete_stream(&name).await;
    }
}
