//! herald: typed events, commands and durable subscriptions for Rust services.
//!
//! One API — [`Bus`] — over interchangeable backends ([`Transport`]): the
//! in-process [`memory`] transport here, and embedded SQLite, PostgreSQL and
//! NATS JetStream in their own crates. Every message travels in an
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

pub mod breaker;
pub mod bus;
pub mod command;
pub mod config;
pub mod context;
pub mod dead_letter;
pub mod dedupe;
pub mod delivery;
pub mod envelope;
pub mod error;
pub mod event;
pub mod forward;
pub mod group;
pub mod handler;
pub mod headers;
pub mod instrument;
mod lifecycle;
pub mod log_tail;
pub mod memory;
pub mod message;
pub mod metrics;
pub mod middleware;
pub mod payload;
#[cfg(feature = "prometheus")]
pub mod prometheus;
pub mod publisher;
pub mod queue;
pub mod rate_limit;
pub mod retention;
pub mod retry;
pub mod schema;
pub mod slo;
pub mod subscription;
pub mod testing;
pub mod topic;
pub mod trace;
pub mod transport;

pub use bus::{Bus, BusBuilder};
pub use command::{Call, CommandHandle, Request};
pub use config::Config;
pub use context::current_correlation_id;
pub use dead_letter::{AutoReplay, DeadLetter, DeadLetterFilter, DeadLetters, FailureSource};
pub use delivery::{Delivery, Outcome};
pub use envelope::{Envelope, Kind, Limits, Priority};
pub use error::{Error, ErrorCode, Result};
pub use event::Event;
pub use handler::{
    Handler, HandlerBuilder, HandlerObserver, HandlerOutcome, HandlerReport, IntoEffects,
};
pub use message::{Message, Publish};
pub use payload::Payload;
pub use subscription::{
    KindFilter, Received, StartPosition, SubscribeSpec, Subscription, TypedSubscription,
};
pub use topic::{Pattern, Topic};
pub use transport::{DeliveryState, Features, GroupInfo, GroupTopic, TopicInfo, Transport};

/// `#[derive(Event)]`: see [`Event`](trait@Event) for the attributes.
#[cfg(feature = "derive")]
pub use herald_derive::Event;

/// Re-exported for `#[derive(Event)]`'s generated code; not part of the API.
#[doc(hidden)]
pub mod __private {
    pub use serde;
    pub use serde_json;
}
