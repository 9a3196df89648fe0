//! An order pipeline on the embedded SQLite store, with the handler runtime
//! doing the consume loop: run it with
//!
//! ```sh
//! cargo run -p herald-examples --example order_pipeline
//! ```
//!
//! - `billing` handles `OrderEvent`s per customer key (one order of a
//!   customer at a time, in order; different customers in parallel), behind
//!   a circuit breaker, a per-customer rate limit, dedupe (kept in the
//!   store, so it survives restarts) and a timeout, and
//!   retries a flaky payment gateway with backoff. Each charged order
//!   publishes `payments.charged` as an effect, committed in the same SQLite
//!   transaction as the ack.
//! - An order that can never be charged fails terminally and is
//!   dead-lettered at once, with its reason.
//! - `shipping` handles the effects and ships.
//! - Shutdown drains what is in flight; the offsets are on disk.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use herald::breaker::CircuitBreaker;
use herald::dedupe::Dedupe;
use herald::rate_limit::RateLimit;
use herald::retry::RetryPolicy;
use herald::{Bus, Error, ErrorCode, Event, Message, StartPosition};
use herald_sqlite::{SqliteConfig, SqliteStore};

#[derive(Event, Debug, Clone)]
enum OrderEvent {
    /// Topic `order.placed`.
    Placed {
        id: u64,
        customer: String,
        cents: u64,
    },
}

/// Orders are keyed by customer: one customer's orders are handled one at a
/// time, in order.
fn keyed(order: OrderEvent) -> herald::Result<Message> {
    let OrderEvent::Placed { customer, .. } = &order;
    let customer = customer.clone();
    Ok(order.to_message()?.key(customer))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let store = SqliteStore::open(SqliteConfig::new(dir.path().join("orders.db"))).await?;
    let bus = Bus::new(store.clone());

    // The payment gateway fails the first two calls, as if it were flaky.
    let gateway_calls = Arc::new(AtomicU32::new(0));
    let breaker = CircuitBreaker::builder()
        .threshold(5)
        .reset_timeout(Duration::from_secs(2))
        .build()?;
    let billing = {
        let gateway_calls = gateway_calls.clone();
        bus.handler_for::<OrderEvent>()
            .group("billing")
            .start(StartPosition::Earliest)
            .concurrency(8)
            .retry(RetryPolicy::default().base(Duration::from_millis(50)))
            .layer(breaker.clone())
            .layer(RateLimit::per_key(20, Duration::from_secs(1))?)
            .layer(Dedupe::new(store.dedupe(Duration::from_secs(3600))?))
            .timeout(Duration::from_secs(5))
            .run_typed(
                move |OrderEvent::Placed {
                          id,
                          customer,
                          cents,
                      }| {
                    let gateway_calls = gateway_calls.clone();
                    async move {
                        if cents == 0 {
                            return Err(Error::terminal(
                                ErrorCode::Validation,
                                format!("order {id} is empty"),
                            ));
                        }
                        if gateway_calls.fetch_add(1, Ordering::SeqCst) < 2 {
                            return Err(Error::new(
                                ErrorCode::Unavailable,
                                "payment gateway timed out",
                            ));
                        }
                        println!("billing: charged {customer} {cents} cents for order {id}");
                        // The effect: published with the ack, in one transaction.
                        Message::json(
                            "payments.charged",
                            &serde_json::json!({ "order": id, "customer": customer }),
                        )
                        .map(|m| m.key(customer))
                    }
                },
            )
            .await?
    };

    let (shipped_tx, mut shipped_rx) = tokio::sync::mpsc::unbounded_channel();
    let shipping = bus
        .handler("payments.charged")
        .group("shipping")
        .start(StartPosition::Earliest)
        .run(move |payment| {
            let shipped_tx = shipped_tx.clone();
            async move {
                let p: serde_json::Value = payment.decode()?;
                println!(
                    "shipping: order {} ships (correlation {})",
                    p["order"],
                    payment.correlation_id()
                );
                let _ = shipped_tx.send(p["order"].as_u64());
                Ok(())
            }
        })
        .await?;

    let orders = [
        OrderEvent::Placed {
            id: 1,
            customer: "ada".into(),
            cents: 1200,
        },
        OrderEvent::Placed {
            id: 2,
            customer: "ada".into(),
            cents: 300,
        },
        OrderEvent::Placed {
            id: 3,
            customer: "grace".into(),
            cents: 4500,
        },
        OrderEvent::Placed {
            id: 4,
            customer: "grace".into(),
            cents: 0,
        },
    ];
    let orders: Vec<Message> = orders
        .into_iter()
        .map(keyed)
        .collect::<herald::Result<_>>()?;
    bus.publish(orders).await?;

    for _ in 0..3 {
        shipped_rx.recv().await;
    }
    let billed = billing.shutdown(Duration::from_secs(5)).await;
    let shipped = shipping.shutdown(Duration::from_secs(5)).await;
    println!("billing: {billed:?}\nshipping: {shipped:?}");

    for letter in bus.dead_letters().await? {
        println!(
            "dead letter: {} — {} ({})",
            letter.envelope.topic(),
            letter.reason,
            letter.code
        );
    }
    println!("breaker: {:?}", breaker.state());
    Ok(())
}
