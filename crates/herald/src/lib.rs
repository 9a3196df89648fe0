//! herald: typed events, commands and durable subscriptions for Rust services.
//!
//! One API — [`Bus`] — over interchangeable backends ([`Transport`]): the
//! in-process [`memory`] transport here, and embedded SQLite, PostgreSQL,
//! NATS JetStream and Kafka in their own crates (`herald-sqlite`,
//! `herald-postgres`, `herald-nats`, `herald-kafka`), which implement the
//! contract in [`backend`]. Every message travels in an
//! [`Envelope`] (wire format v1, `schema/envelope.v1.json`).
//!
//! ```
//! use futures_util::StreamExt;
//! use herald::{Bus, Event};
//!
//! #[derive(Event, Debug, PartialEq)]
//! enum UserEvent {
//!     Created { id: u64, name: String },
//!     Deleted { id: u64 },
//! }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> herald::Result<()> {
//! let bus = Bus::memory();
//! let mut users = bus.subscribe::<UserEvent>().await?;
//!
//! let seqs = bus.publish(UserEvent::Created { id: 7, name: "ada".into() }).await?;
//! assert_eq!(seqs, [1]);
//!
//! let got = users.next().await.unwrap()?;
//! assert_eq!(*got, UserEvent::Created { id: 7, name: "ada".into() });
//! assert_eq!(got.delivery().topic().as_str(), "user.created");
//! got.ack().await?;
//! # Ok(()) }
//! ```
//!
//! See `ARCHITECTURE.md` at the repository root for the map of the code.

// Lets `#[derive(Event)]` output (which names `::herald`) compile inside this
// crate's own doc tests and unit tests.
extern crate self as herald;

// The layers, bottom to top; a module imports only from its own folder and
// the folders above it in this list (`tests/tidy.rs` checks it):
// `model` (the data: envelope, message, errors, topics, deliveries) →
// `config` (`HERALD_*` keys, defaults, ranges) → `observe` (metrics,
// instruments, SLOs, trace context) → `backend` (the contract a store
// implements) → `memory` (the in-process store) → `runtime` (the layers
// around a handler call) → `bus` (the `Bus` and everything that drives one)
// → `testing`. The user API is re-exported below as it always was.
pub mod backend;
pub mod bus;
pub mod config;
pub mod memory;
mod model;
mod observe;
mod runtime;
pub mod testing;

pub use backend::{retention, subscription, transport};
pub use bus::{command, dead_letters, forward, handler, publisher};
pub use config::retry;
pub use model::{
    context, contract, dead_letter, delivery, envelope, error, event, message, payload, schema,
    topic,
};
#[cfg(feature = "prometheus")]
pub use observe::prometheus;
pub use observe::{health, instrument, metrics, slo, trace};
pub use runtime::{breaker, dedupe, middleware, rate_limit};

pub use bus::contracts::{Register, RegisterEvent, Schemas};
pub use bus::{default_group, Bus, BusBuilder};
pub use command::{Call, CommandHandle, Request};
pub use config::Config;
pub use context::current_correlation_id;
pub use dead_letter::{DeadLetter, DeadLetterFilter, FailureSource};
pub use dead_letters::{AutoReplay, DeadLetters};
pub use delivery::{Delivery, Outcome};
pub use envelope::{Envelope, Kind, Limits, Priority};
pub use error::{Error, ErrorCode, Result};
pub use event::{Event, EventSchema};
pub use handler::{
    Handler, HandlerBuilder, HandlerObserver, HandlerOutcome, HandlerReport, IntoEffects,
};
pub use message::{Message, Publish, Receipt};
pub use payload::Payload;
pub use subscription::{
    CloseHandle, GroupOrdering, KindFilter, Received, StartPosition, SubscribeSpec, Subscription,
    TypedSubscription,
};
pub use topic::{Pattern, Topic};
pub use transport::{
    DeliveryState, DynTransport, Features, GroupInfo, GroupTopic, Inspect, IntoTransport,
    TopicInfo, Transport,
};

/// `#[derive(Event)]` and `#[derive(EventSchema)]`: see [`Event`](trait@Event)
/// and [`EventSchema`](trait@EventSchema).
#[cfg(feature = "derive")]
pub use herald_derive::{Event, EventSchema};

/// Re-exported for `#[derive(Event)]`'s generated code; not part of the API.
#[doc(hidden)]
pub mod __private {
    pub use crate::model::event::payload_schema;
    pub use schemars;
    pub use serde;
    pub use serde_json;
}
