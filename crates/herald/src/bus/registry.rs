//! The command handlers of one bus: at most one per command topic.
//!
//! Owns the registry the bus holds; registering, calling and the handles
//! are [`command`](crate::bus::command)'s.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;

use crate::model::delivery::BoxFuture;
use crate::model::envelope::Envelope;
use crate::model::error::{Error, ErrorCode, Result};
use crate::model::payload::Payload;
use crate::model::topic::Topic;

/// A command as its handler receives it.
pub type Request = Envelope;

pub(crate) type Handler = dyn Fn(Request) -> BoxFuture<'static, Result<Payload>> + Send + Sync;

pub(crate) struct Registered {
    pub(crate) id: u64,
    pub(crate) handler: Arc<Handler>,
    /// Keeps the handler callable from other processes (on transports
    /// that span them).
    pub(crate) _export: Option<crate::backend::transport::CommandExport>,
}

/// The command handlers of one bus.
#[derive(Default)]
pub(crate) struct Commands {
    pub(crate) handlers: RwLock<HashMap<Topic, Registered>>,
    pub(crate) next_id: AtomicU64,
    pub(crate) closed: AtomicBool,
}

impl Commands {
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.handlers.write().clear();
    }

    pub(crate) fn handler(&self, topic: &Topic) -> Result<Arc<Handler>> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::closed("call"));
        }
        match self.handlers.read().get(topic) {
            Some(r) => Ok(r.handler.clone()),
            None => Err(Error::new(
                ErrorCode::NotFound,
                format!("no handler is registered for command `{topic}`"),
            )),
        }
    }
}

impl Commands {
    /// The handler of registration `id` of `topic`, `NOT_FOUND` once it is
    /// gone.
    pub(crate) fn registered(&self, topic: &Topic, id: u64) -> Result<Arc<Handler>> {
        match self.handlers.read().get(topic) {
            Some(r) if r.id == id => Ok(r.handler.clone()),
            _ => Err(Error::new(
                ErrorCode::NotFound,
                format!("no handler is registered for command `{topic}`"),
            )),
        }
    }
}
