//! The conformance suite: DESIGN.md §4, once, for every transport.
//!
//! Owns the scenarios that pin down what a transport must give — ordering,
//! fan-out, groups, redelivery, dedupe, backpressure, replay, dead letters,
//! priority, commands and correlation, and what operators inspect (topics,
//! replay pages, group lag) — and the [`conformance_tests!`] macro
//! that turns them into one `#[tokio::test]` per scenario for a transport's
//! own test suite. Each scenario gets a fresh [`Bus`] from the transport's
//! constructor and uses its own topics. Scenarios that need a feature the
//! transport does not claim ([`Features`]) return early and print why.
//!
//! It does not test a transport's internals (those tests sit with the
//! transport) or timing (that is `herald bench`).
//!
//! ```text
//! // in crates/<transport>/tests/conformance.rs
//! herald_conformance::conformance_tests!(|| async { herald::Bus::memory() });
//! // a durable transport also says how to restart it:
//! herald_conformance::conformance_tests!(fresh_bus, restart = restartable_bus);
//! // every transport says how to open a store with given delivery settings:
//! herald_conformance::conformance_tests!(fresh_bus, configured = with_delivery);
//! // a store with retention says how to open one with a policy, and a
//! // durable one how to make its dead-letter writes fail:
//! herald_conformance::conformance_tests!(
//!     fresh,
//!     restart = restartable,
//!     retention = retained,
//!     dead_letter_faults = breakable,
//! );
//! ```

pub mod commands;
pub mod contracts;
pub mod correlation;
pub mod dead_letters;
pub mod delivery;
pub mod durable;
pub mod groups;
pub mod handlers;
pub mod history;
pub mod inspect;
pub mod kept;
pub mod lifecycle;
pub mod limits;
pub mod middleware;
pub mod redelivery;
pub mod retention;
mod support;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use herald::config::DeliveryConfig;
use herald::retention::RetentionPolicy;
use herald::{Bus, Features};

pub use support::{collect, recv};

type MakeBus = dyn Fn() -> Pin<Box<dyn Future<Output = Bus> + Send>> + Send + Sync;
type MakeConfigured =
    dyn Fn(DeliveryConfig) -> Pin<Box<dyn Future<Output = Bus> + Send>> + Send + Sync;
type MakeRestartable = dyn Fn() -> Pin<Box<dyn Future<Output = Restartable> + Send>> + Send + Sync;
type MakeRetained =
    dyn Fn(RetentionPolicy) -> Pin<Box<dyn Future<Output = Retained> + Send>> + Send + Sync;
type Prune = dyn Fn() -> Pin<Box<dyn Future<Output = herald::Result<u64>> + Send>> + Send + Sync;
type MakeBreakable =
    dyn Fn() -> Pin<Box<dyn Future<Output = BreakableDeadLetters> + Send>> + Send + Sync;
type SetBroken = dyn Fn(bool) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync;

/// How scenarios get a bus: a constructor of fresh, isolated buses, and for
/// durable transports one of buses that can be restarted.
#[derive(Clone)]
pub struct Harness {
    make: Arc<MakeBus>,
    configured: Option<Arc<MakeConfigured>>,
    restartable: Option<Arc<MakeRestartable>>,
    retained: Option<Arc<MakeRetained>>,
    breakable: Option<Arc<MakeBreakable>>,
    /// Why a durable transport gives no [`BreakableDeadLetters`].
    unbreakable: Option<&'static str>,
}

/// A bus on fresh storage whose dead-letter writes the test can make fail
/// the store's own way (a trigger that refuses the insert, a stream or
/// topic taken away), and work again.
pub struct BreakableDeadLetters {
    /// The bus.
    pub bus: Bus,
    set_broken: Arc<SetBroken>,
}

impl BreakableDeadLetters {
    /// `bus`, and `set_broken(true)` to make its store's dead-letter writes
    /// fail, `set_broken(false)` to mend them.
    pub fn new<F, Fut>(bus: Bus, set_broken: F) -> Self
    where
        F: Fn(bool) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        BreakableDeadLetters {
            bus,
            set_broken: Arc::new(move |b| Box::pin(set_broken(b))),
        }
    }

    /// Make dead-letter writes fail from now on.
    pub async fn break_writes(&self) {
        (self.set_broken)(true).await
    }

    /// Make them work again.
    pub async fn mend(&self) {
        (self.set_broken)(false).await
    }
}

/// A bus on fresh storage that applies a retention policy, and a way to run
/// the store's retention pass now.
pub struct Retained {
    /// The bus.
    pub bus: Bus,
    prune: Arc<Prune>,
}

impl Retained {
    /// `bus`, and `prune` to run its store's retention pass (how many
    /// events it deleted).
    pub fn new<F, Fut>(bus: Bus, prune: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = herald::Result<u64>> + Send + 'static,
    {
        Retained {
            bus,
            prune: Arc::new(move || Box::pin(prune())),
        }
    }

    /// Run the retention pass now.
    pub async fn prune(&self) -> herald::Result<u64> {
        (self.prune)().await
    }
}

/// A bus on fresh storage and a way to open that same storage again, as a
/// restarted process would.
pub struct Restartable {
    /// The bus as first opened.
    pub bus: Bus,
    reopen: Arc<MakeBus>,
}

impl Restartable {
    /// `bus`, and `reopen` to open its storage again.
    pub fn new<F, Fut>(bus: Bus, reopen: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Bus> + Send + 'static,
    {
        Restartable {
            bus,
            reopen: Arc::new(move || Box::pin(reopen())),
        }
    }

    /// A new bus on the same storage.
    pub async fn reopen(&self) -> Bus {
        (self.reopen)().await
    }

    /// Drop the bus as a crash would, without closing it (nothing is
    /// flushed or handed back on the way), then open the storage again.
    pub async fn crash_and_reopen(self) -> Bus {
        let Restartable { bus, reopen } = self;
        drop(bus);
        reopen().await
    }
}

impl Harness {
    /// A harness over `make`, which must return a new bus on a fresh store
    /// (or a fresh namespace of a shared one) each time.
    pub fn new<F, Fut>(make: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Bus> + Send + 'static,
    {
        Harness {
            make: Arc::new(move || Box::pin(make())),
            configured: None,
            restartable: None,
            retained: None,
            breakable: None,
            unbreakable: None,
        }
    }

    /// Say why this durable transport's dead-letter writes cannot be made
    /// to fail in a test; the scenario that needs it prints the reason.
    pub fn no_dead_letter_faults(mut self, reason: &'static str) -> Self {
        self.unbreakable = Some(reason);
        self
    }

    /// Also give the dead-letter scenarios a bus whose dead-letter writes
    /// can be made to fail.
    pub fn dead_letter_faults<F, Fut>(mut self, make: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = BreakableDeadLetters> + Send + 'static,
    {
        self.breakable = Some(Arc::new(move || Box::pin(make())));
        self
    }

    /// A bus whose dead-letter writes can be made to fail, when the
    /// transport's harness gives one; `None` (with the skip printed)
    /// otherwise. A durable transport must give one.
    pub async fn breakable_dead_letters(&self, scenario: &str) -> Option<BreakableDeadLetters> {
        match &self.breakable {
            Some(make) => Some(make().await),
            None => {
                let reason = match self.unbreakable {
                    Some(reason) => reason,
                    None => {
                        let bus = self.bus().await;
                        assert!(
                            !bus.features().durable,
                            "a durable transport runs the suite with `dead_letter_faults = ...` \
                             or says why not with `no_dead_letter_faults = \"...\"`"
                        );
                        "the transport's dead letters live in the process and cannot fail to be written"
                    }
                };
                println!("conformance: `{scenario}` skipped: {reason}");
                None
            }
        }
    }

    /// Also give the retention scenarios buses with a retention policy.
    pub fn retention<F, Fut>(mut self, make: F) -> Self
    where
        F: Fn(RetentionPolicy) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Retained> + Send + 'static,
    {
        self.retained = Some(Arc::new(move |p| Box::pin(make(p))));
        self
    }

    /// A bus on fresh storage keeping events by `policy`, when the
    /// transport has retention; `None` (with the skip printed) otherwise.
    pub async fn retained(&self, scenario: &str, policy: RetentionPolicy) -> Option<Retained> {
        match &self.retained {
            Some(make) => Some(make(policy).await),
            None => {
                println!("conformance: `{scenario}` skipped: no retention pass to drive (the transport has none, or its own tests cover retention)");
                None
            }
        }
    }

    /// Also give the durable scenarios restartable buses.
    pub fn restart<F, Fut>(mut self, make: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Restartable> + Send + 'static,
    {
        self.restartable = Some(Arc::new(move || Box::pin(make())));
        self
    }

    /// A restartable bus, when the transport is durable; `None` (with the
    /// skip printed) when it is not. A transport that claims durability
    /// without giving a restart constructor fails the scenario.
    pub async fn restartable(&self, scenario: &str) -> Option<Restartable> {
        let bus = self.bus().await;
        if !Harness::requires(&bus, scenario, |f| f.durable, "durable") {
            return None;
        }
        let make = self
            .restartable
            .as_ref()
            .expect("a durable transport must run the suite with `restart = ...`");
        Some(make().await)
    }

    /// A fresh bus.
    pub async fn bus(&self) -> Bus {
        (self.make)().await
    }

    /// Also give scenarios buses whose store has the delivery settings
    /// they ask for (dead letters off, say): every transport must.
    pub fn configured<F, Fut>(mut self, make: F) -> Self
    where
        F: Fn(DeliveryConfig) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Bus> + Send + 'static,
    {
        self.configured = Some(Arc::new(move |d| Box::pin(make(d))));
        self
    }

    /// A fresh bus whose store has `delivery`'s settings.
    pub async fn bus_with(&self, delivery: DeliveryConfig) -> Bus {
        let make = self
            .configured
            .as_ref()
            .expect("every transport runs the suite with `configured = ...`");
        make(delivery).await
    }

    /// Whether the transport claims `feature`; prints the skip otherwise.
    pub fn requires(bus: &Bus, scenario: &str, feature: fn(&Features) -> bool, name: &str) -> bool {
        let has = feature(&bus.features());
        if !has {
            println!("conformance: `{scenario}` skipped: the transport does not claim `{name}`");
        }
        has
    }
}

/// How long one scenario may take before it counts as hung: far above any
/// scenario's time on a loaded machine (the slowest, Kafka's 50-subscriber
/// fan-out on a single local broker, takes 70-80 s alone and over 120 s
/// beside the rest of the suite), so only a hang reaches it.
pub const SCENARIO_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);

/// Expand to one `#[tokio::test]` per conformance scenario, each on a fresh
/// bus from `$make` (an expression of type `Fn() -> impl Future<Output = Bus>`),
/// then `option = value` pairs naming [`Harness`] builders: `restart`,
/// `retention`, `dead_letter_faults` (or `no_dead_letter_faults = "why"`).
/// The calling crate needs `tokio` with `macros` and `rt-multi-thread`.
#[macro_export]
macro_rules! conformance_tests {
    (@scenarios $harness:expr) => {
        $crate::conformance_scenarios!(
            $harness;
            delivery::publish_subscribe_1000,
            delivery::single_and_batch_publish_share_one_sequence,
            delivery::fan_out_50_subscribers_5000_events,
            delivery::twenty_topics_concurrently,
            delivery::ten_topics_have_independent_counters,
            delivery::ten_thousand_concurrent_publishes_no_gaps_or_inversions,
            delivery::patterns_and_kinds_select_what_is_delivered,
            delivery::typed_subscriptions_decode_and_filter,
            delivery::priority_orders_waiting_events_but_never_within_a_key,
            delivery::headers_arrive_exactly_as_published,
            contracts::versions_evolve_by_their_mode_and_every_publish_is_checked,
            contracts::bad_registrations_change_nothing,
            contracts::a_rust_type_evolves_and_its_consumers_check_at_start,
            contracts::racing_registrations_end_gap_free_and_survive_a_restart,
            groups::two_groups_each_get_everything_members_share,
            groups::same_key_goes_to_one_member_at_a_time,
            groups::a_held_event_does_not_stall_the_group,
            groups::a_member_holds_at_most_its_max_in_flight,
            groups::a_dropped_member_hands_back_what_it_took,
            groups::a_member_dropped_mid_claim_hands_back_its_claim,
            groups::per_key_order_holds_under_concurrent_members,
            groups::delivery_state_can_be_queried,
            redelivery::nack_redelivers_with_attempt_incremented,
            redelivery::nack_with_delay_redelivers_later,
            redelivery::dropped_delivery_is_redelivered,
            redelivery::unsettled_delivery_is_redelivered_after_ack_wait,
            redelivery::max_deliver_moves_to_dead_letters,
            redelivery::a_group_max_deliver_overrides_the_stores,
            redelivery::term_dead_letters_at_once,
            redelivery::expired_events_are_dead_lettered_not_delivered,
            dead_letters::dead_letters_filter_replay_and_purge,
            dead_letters::a_group_can_opt_into_automatic_replay,
            dead_letters::a_dead_letter_that_cannot_be_written_leaves_the_message_to_come_again,
            dead_letters::a_forwarder_dead_letters_what_its_target_refuses_as_the_forwarder,
            dead_letters::dead_letters_off_are_settled_logged_and_counted_not_kept,
            history::events_published_before_subscribe_are_retained,
            history::start_at_seq_and_time,
            history::replay_does_not_disturb_a_group,
            inspect::topics_list_their_last_seq,
            inspect::replay_reads_pages_by_seq_and_time,
            inspect::groups_report_offset_and_lag,
            limits::batch_is_atomic_and_validated_first,
            limits::payload_limit_is_inclusive,
            limits::duplicate_idempotency_key_returns_original_seq,
            limits::full_subscriber_never_blocks_other_topics_or_loses_events,
            lifecycle::close_a_subscription_and_continue,
            lifecycle::concurrent_close_while_publishing,
            lifecycle::closed_bus_refuses_with_unavailable,
            lifecycle::a_subscribe_racing_close_fails_or_ends,
            commands::one_handler_per_topic,
            commands::call_returns_response_not_found_timeout_or_error,
            commands::panicking_handler_is_internal_not_a_crash,
            correlation::events_published_in_a_handler_inherit_correlation,
            correlation::nested_calls_get_their_own_causation,
            correlation::concurrent_handlers_are_isolated,
            correlation::context_survives_await_and_delayed_emission,
            durable::events_and_seqs_survive_a_restart,
            durable::a_group_resumes_after_its_last_ack,
            durable::an_awaited_ack_survives_a_crash_before_the_next_claim,
            durable::dead_letters_survive_a_restart,
            durable::processed_ids_survive_a_restart,
            durable::an_unnamed_subscription_resumes_after_a_restart,
            durable::a_group_made_on_an_empty_topic_gets_what_came_while_it_was_away,
            durable::a_group_made_on_an_empty_topic_keeps_its_start_across_a_restart,
            retention::count_retention_keeps_the_newest_and_a_group_behind_it_jumps,
            retention::age_retention_deletes_what_is_older,
            retention::retention_runs_in_the_background,
            handlers::handler_outcomes_settle_deliveries,
            handlers::handler_keeps_per_key_order_under_concurrency,
            handlers::per_topic_order_keeps_sessions_sequential_and_concurrent,
            handlers::handler_shutdown_never_acks_unprocessed_work,
            handlers::handler_shutdown_keeps_its_deadline_when_every_call_hangs,
            handlers::handler_retries_with_backoff_then_dead_letters,
            handlers::handler_timeout_is_a_retryable_failure,
            middleware::effects_are_published_once_despite_a_lost_ack,
            middleware::dedupe_skips_redelivered_messages_that_already_ran,
            middleware::open_breaker_defers_and_loses_nothing,
            middleware::per_key_rate_limit_spaces_calls_of_one_key,
            middleware::typed_handler_dead_letters_what_does_not_decode
        );
    };
    ($make:expr $(, $option:ident = $value:expr)* $(,)?) => {
        $crate::conformance_tests!(@scenarios $crate::Harness::new($make)$(.$option($value))*);
    };
}

/// Like [`conformance_tests!`] for a chosen list of scenarios
/// (`module::name`) on a [`Harness`], for a transport that is still growing
/// into the suite. A transport is conformant only when it runs
/// [`conformance_tests!`].
#[macro_export]
macro_rules! conformance_scenarios {
    ($harness:expr; $($module:ident :: $name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let harness = $harness;
                let run = $crate::$module::$name(&harness);
                if tokio::time::timeout($crate::SCENARIO_TIMEOUT, run).await.is_err() {
                    panic!("conformance scenario `{}` hung", stringify!($name));
                }
            }
        )*
    };
}
