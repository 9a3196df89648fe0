//! Typed events: the [`Event`] trait that `#[derive(Event)]` implements.
//!
//! Owns the contract between a Rust enum and the topics its variants travel
//! on. Each variant has one dot-notation topic (`UserEvent::Created` →
//! `user.created`); its payload is the variant's content alone (the topic
//! already names the variant): a struct variant is a JSON object of its
//! fields, a one-field tuple variant is that field, a unit variant is `null`.
//! Adding an optional field to a variant never breaks an older consumer.
//!
//! Subscribing to a typed event is the `subscription` module's business; this
//! module only encodes and decodes.
//!
//! ```
//! use herald::Event;
//!
//! #[derive(Event, Debug, PartialEq)]
//! enum UserEvent {
//!     Created { id: u64, name: String },
//!     #[event(name = "removed")]
//!     Deleted { id: u64 },
//!     Ping,
//! }
//!
//! assert_eq!(UserEvent::TOPICS, &["user.created", "user.removed", "user.ping"]);
//! let e = UserEvent::Created { id: 1, name: "ada".into() };
//! assert_eq!(e.topic(), "user.created");
//! let msg = e.to_message().unwrap();
//! assert_eq!(msg.topic_name(), "user.created");
//! ```

use crate::model::envelope::Envelope;
use crate::model::error::Result;
use crate::model::message::Message;
use crate::model::payload::Payload;

/// A typed event enum whose variants map to topics. Derive it with
/// `#[derive(Event)]`; the enum needs no serde derives of its own, but its
/// field types must be `Serialize + DeserializeOwned`.
///
/// Attributes: `#[event(prefix = "accounts.user")]` on the enum (default: the
/// enum name without an `Event` suffix, in snake case), `#[event(name =
/// "signed_up")]` on a variant (default: its name in snake case) or
/// `#[event(topic = "full.topic")]` to replace the whole topic. Field-level
/// `#[serde(...)]` attributes apply to the payload.
pub trait Event: Sized + Send + 'static {
    /// Every topic this type's variants travel on, in declaration order.
    const TOPICS: &'static [&'static str];

    /// The topic of this value's variant.
    fn topic(&self) -> &'static str;

    /// The variant's content as a payload.
    fn to_payload(&self) -> Result<Payload>;

    /// Decode an envelope on one of [`TOPICS`](Event::TOPICS): `NOT_FOUND` for
    /// another topic, `VALIDATION` when the payload does not fit the variant.
    fn from_envelope(envelope: &Envelope) -> Result<Self>;

    /// The outgoing message for this value.
    fn to_message(&self) -> Result<Message> {
        Ok(Message::new(self.topic(), self.to_payload()?))
    }
}
