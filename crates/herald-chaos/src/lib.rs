//! herald's fault harness (DESIGN.md §6, the guarantees it checks): a
//! workload of publishers, group members and a group-less subscriber,
//! each recording every operation and its outcome as one JSON line of a
//! history ([`history`]), and a checker that proves the delivery
//! guarantees over a whole history and the store's final contents
//! ([`check`]), in the manner of Jepsen's histories and checkers.
//!
//! Owns the history's format and the properties checked. It does not own
//! the stores (each is opened through `herald-store`) nor the guarantees
//! themselves (herald's, per store, in the conformance suite).

pub mod check;
pub mod cli;
pub mod cluster;
pub mod history;
pub mod proxy;
pub mod run;
pub mod server;
pub mod workload;
