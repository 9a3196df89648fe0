//! What a store keeps for commands across processes: this process's reply
//! topic with the calls waiting on it ([`Replies`]), and who serves which
//! command ([`Registry`]).
//!
//! A leaf: only the types, so that `conn`'s `Inner` can hold them without
//! importing `commands`. Making, following and using them — the reply and
//! registry topics, their threads, calls and registrations — is
//! `commands`'.

use std::collections::HashMap;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::oneshot;

/// This process's reply topic and the calls waiting on it.
pub(crate) struct Replies {
    pub(crate) topic: String,
    pub(crate) waiting: Mutex<HashMap<String, oneshot::Sender<Reply>>>,
}

/// A reply read from the reply topic, for the call waiting on it.
pub(crate) struct Reply {
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) value: Bytes,
    pub(crate) offset: i64,
}

/// Who serves which command: registrations read from
/// `<environment>._handlers`.
pub(crate) struct Registry {
    /// Command topic → process → registered until (ms).
    pub(crate) live: Mutex<HashMap<String, HashMap<String, i64>>>,
    /// The records there when reading began have been read.
    pub(crate) caught_up: std::sync::atomic::AtomicBool,
}
