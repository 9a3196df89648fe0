//! herald watching itself: the bus times its own command dispatch, an SLO
//! monitor checks it every 100 ms, and an ordinary subscriber sees the
//! `perf.slo_violation` events when a slow command handler breaks the
//! objective. At the end the metrics print in the Prometheus text format.
//! Run it with
//!
//! ```sh
//! cargo run -p herald-examples --example slo_watch
//! ```

use std::time::Duration;

use futures_util::StreamExt;
use herald::metrics::Percentile;
use herald::slo::{Slo, Violation, VIOLATION_TOPIC};
use herald::{instrument, Bus, Message, Payload};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let bus = Bus::memory();

    // Anyone can listen: violations are ordinary events on the bus.
    let mut alerts = bus.subscribe_raw(VIOLATION_TOPIC).ephemeral().await?;

    // The default SLOs (dispatch p95 < 1 ms, fan-out p95 < 5 ms), and one of
    // ours: handlers' p99 under 50 ms.
    let monitor = bus.slo_monitor()?;
    monitor.add(Slo::new(
        instrument::HANDLER_SECONDS,
        Percentile::P99,
        0.050,
    ))?;
    monitor.start(Duration::from_millis(100))?;

    // A command that takes 3 ms: dispatch p95 goes over 1 ms.
    let _quote = bus.handle_command("pricing.quote", |req| async move {
        tokio::time::sleep(Duration::from_millis(3)).await;
        Payload::json(&(req.decode::<u64>()? * 105 / 100))
    })?;
    for cents in 0..120u64 {
        let response = bus.call(Message::json("pricing.quote", &cents)?).await?;
        let _price: u64 = response.decode()?;
    }

    let alert = tokio::time::timeout(Duration::from_secs(5), alerts.next())
        .await?
        .ok_or("the subscription ended")??;
    let v: Violation = alert.decode()?;
    println!(
        "SLO violated: {} {} = {:.2} ms, over {:.2} ms (at {})",
        v.metric,
        v.percentile,
        v.actual * 1e3,
        v.threshold * 1e3,
        v.timestamp
    );
    assert_eq!(v.metric, instrument::DISPATCH_SECONDS);
    alert.ack().await?;
    monitor.stop().await;

    let text = herald::prometheus::encode(bus.metrics());
    let dispatch: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("herald_command_dispatch_seconds_"))
        .filter(|l| !l.contains("_bucket") || l.contains("le=\"0.005\""))
        .collect();
    println!("{}", dispatch.join("\n"));
    Ok(())
}
