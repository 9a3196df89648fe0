//! The conformance suite on the SQLite store.
//!
//! Consumer groups are not built on this store yet, so the scenarios that
//! need them (`groups::*`, and the redelivery and replay scenarios written
//! with a group) are not in this list; everything else runs.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use herald::Bus;
use herald_sqlite::{SqliteConfig, SqliteStore};

/// A directory for this run's stores under cargo's per-target temp dir;
/// earlier runs' directories are removed when the first store opens.
fn dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        if let Ok(entries) = std::fs::read_dir(&root) {
            for e in entries.flatten() {
                if e.file_name()
                    .to_string_lossy()
                    .starts_with("herald-sqlite-conformance-")
                {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        let dir = root.join(format!("herald-sqlite-conformance-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir
    })
}

async fn fresh_bus() -> Bus {
    static N: AtomicU64 = AtomicU64::new(0);
    let path = dir().join(format!("store-{}.db", N.fetch_add(1, Ordering::Relaxed)));
    Bus::new(
        SqliteStore::open(SqliteConfig::new(path))
            .await
            .expect("open store"),
    )
}

herald_conformance::conformance_scenarios!(
    fresh_bus;
    delivery::publish_subscribe_1000,
    delivery::single_and_batch_publish_share_one_sequence,
    delivery::fan_out_50_subscribers_5000_events,
    delivery::twenty_topics_concurrently,
    delivery::ten_topics_have_independent_counters,
    delivery::ten_thousand_concurrent_publishes_no_gaps_or_inversions,
    delivery::patterns_and_kinds_select_what_is_delivered,
    delivery::typed_subscriptions_decode_and_filter,
    delivery::priority_orders_waiting_events_but_never_within_a_key,
    redelivery::nack_with_delay_redelivers_later,
    redelivery::dropped_delivery_is_redelivered,
    redelivery::expired_events_are_dead_lettered_not_delivered,
    history::events_published_before_subscribe_are_retained,
    history::start_at_seq_and_time,
    limits::batch_is_atomic_and_validated_first,
    limits::payload_limit_is_inclusive,
    limits::duplicate_idempotency_key_returns_original_seq,
    limits::full_subscriber_never_blocks_other_topics_or_loses_events,
    lifecycle::close_a_subscription_and_continue,
    lifecycle::concurrent_close_while_publishing,
    lifecycle::closed_bus_refuses_with_unavailable,
    commands::one_handler_per_topic,
    commands::call_returns_response_not_found_timeout_or_error,
    commands::panicking_handler_is_internal_not_a_crash,
    correlation::events_published_in_a_handler_inherit_correlation,
    correlation::nested_calls_get_their_own_causation,
    correlation::concurrent_handlers_are_isolated,
    correlation::context_survives_await_and_delayed_emission
);
