//! The data herald moves, and nothing that moves it: the [`Envelope`](envelope::Envelope)
//! and what builds one ([`message`], [`event`]), errors, topics and patterns,
//! payloads, the correlation [`context`], deliveries and how they settle,
//! dead-letter records, and where a subscription starts.
//!
//! The bottom layer: it imports from no other folder of the crate. Every
//! other layer may import it.

pub mod context;
pub mod contract;
pub mod dead_letter;
pub mod delivery;
pub mod envelope;
pub mod error;
pub mod event;
pub mod message;
pub mod payload;
pub mod schema;
pub mod start;
pub mod topic;
pub mod traceparent;
