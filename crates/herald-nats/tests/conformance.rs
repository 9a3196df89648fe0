//! The conformance suite on NATS JetStream, each scenario under a fresh
//! subject prefix: the scenarios without consumer groups, which the
//! transport gives so far.

mod support;

use herald::Bus;
use herald_conformance::{Harness, Restartable};
use herald_nats::{NatsConfig, NatsStore};

async fn open(config: NatsConfig) -> Bus {
    Bus::new(NatsStore::open(config).await.expect("open a store"))
}

async fn fresh_bus() -> Bus {
    open(support::fresh_config()).await
}

async fn restartable_bus() -> Restartable {
    let config = support::fresh_config();
    let bus = open(config.clone()).await;
    Restartable::new(bus, move || open(config.clone()))
}

herald_conformance::conformance_scenarios!(
    Harness::new(fresh_bus).with_restart(restartable_bus);
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
    correlation::context_survives_await_and_delayed_emission,
    durable::events_and_seqs_survive_a_restart,
);
