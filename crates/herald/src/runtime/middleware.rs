//! Middleware: layers wrapped around a handler call.
//!
//! Owns the [`Layer`] trait, [`Next`] (the rest of the chain a layer calls
//! on) and [`layer_fn`] for writing a layer as a closure, plus the
//! [`Timeout`] layer. The other built-in layers live in their own modules:
//! [`CircuitBreaker`](crate::runtime::breaker::CircuitBreaker),
//! [`RateLimit`](crate::runtime::rate_limit::RateLimit) and
//! [`Dedupe`](crate::runtime::dedupe::Dedupe). Retry, dead-lettering, correlation and
//! the metrics observer are not layers: they decide how a call's result
//! settles the delivery, which is the handler runtime's job
//! ([`crate::bus::handler`]).
//!
//! A layer is applied to one handler with
//! [`HandlerBuilder::layer`](crate::HandlerBuilder::layer) or to every
//! handler of a bus with [`BusBuilder::layer`](crate::BusBuilder::layer);
//! the bus's layers run outermost, then the handler's, in the order added.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::model::delivery::BoxFuture;
use crate::model::envelope::Envelope;
use crate::model::error::{Error, ErrorCode, Result};
use crate::model::message::Message;

/// What a handler call produces: the messages to publish as its effects
/// (see [`HandlerBuilder::run`](crate::HandlerBuilder::run)).
pub type Effects = Vec<Message>;

/// A middleware layer: runs around every call of a handler, and may call
/// the rest of the chain ([`Next::run`]) or answer without it.
///
/// ```
/// use std::sync::Arc;
/// use herald::middleware::{Layer, Next, Effects};
/// use herald::delivery::BoxFuture;
/// use herald::{Envelope, Result};
///
/// /// Logs each call's topic.
/// struct Log;
///
/// impl Layer for Log {
///     fn call<'a>(&'a self, envelope: Arc<Envelope>, next: Next) -> BoxFuture<'a, Result<Effects>> {
///         Box::pin(async move {
///             println!("handling {}", envelope.topic());
///             next.run(envelope).await
///         })
///     }
/// }
/// ```
pub trait Layer: Send + Sync + 'static {
    /// Handle `envelope`, usually by calling `next.run(envelope)`.
    fn call<'a>(&'a self, envelope: Arc<Envelope>, next: Next) -> BoxFuture<'a, Result<Effects>>;

    /// `envelope` was handled by group `group` and its effects are durable;
    /// it is being acked. A layer that remembers what ran (dedupe) records
    /// it here, not in `call`, so a message whose effects failed to publish
    /// runs again.
    fn handled<'a>(
        &'a self,
        group: &'a str,
        envelope: &'a Envelope,
    ) -> Option<BoxFuture<'a, Result<()>>> {
        let _ = (group, envelope);
        None
    }

    /// A probe of whether this layer refuses calls now (an open circuit
    /// breaker), for consumer health; `None` (the default) for a layer that
    /// never does.
    fn refusing(&self) -> Option<Box<dyn Fn() -> bool + Send + Sync>> {
        None
    }
}

/// The innermost call: the user's handler, its result turned into effects.
pub(crate) type Endpoint =
    Box<dyn Fn(Arc<Envelope>) -> BoxFuture<'static, Result<Effects>> + Send + Sync>;

/// The layers of one handler around its endpoint.
pub(crate) struct Chain {
    pub(crate) group: Arc<str>,
    pub(crate) layers: Vec<Arc<dyn Layer>>,
    pub(crate) endpoint: Endpoint,
}

impl Chain {
    /// Run the whole chain on `envelope`.
    pub(crate) fn start(self: &Arc<Self>) -> Next {
        Next {
            chain: self.clone(),
            at: 0,
        }
    }

    /// Tell every layer `envelope` was handled; the first failure wins.
    pub(crate) async fn handled(&self, envelope: &Envelope) -> Result<()> {
        for layer in &self.layers {
            if let Some(fut) = layer.handled(&self.group, envelope) {
                fut.await?;
            }
        }
        Ok(())
    }
}

/// The rest of a handler's chain, from inside a layer.
pub struct Next {
    chain: Arc<Chain>,
    at: usize,
}

impl Next {
    /// The consumer group of the handler this chain belongs to.
    pub fn group(&self) -> &str {
        &self.chain.group
    }

    /// Run the remaining layers and then the handler.
    pub async fn run(self, envelope: Arc<Envelope>) -> Result<Effects> {
        match self.chain.layers.get(self.at) {
            Some(layer) => {
                let layer = layer.clone();
                let next = Next {
                    chain: self.chain,
                    at: self.at + 1,
                };
                layer.call(envelope, next).await
            }
            None => (self.chain.endpoint)(envelope).await,
        }
    }
}

impl std::fmt::Debug for Next {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Next")
            .field("group", &self.chain.group)
            .field("remaining", &(self.chain.layers.len() - self.at))
            .finish()
    }
}

/// A layer written as a closure, in the manner of axum's `from_fn`.
///
/// ```
/// use herald::middleware::layer_fn;
/// use herald::{Error, ErrorCode};
///
/// // Refuse messages without a key before the handler sees them.
/// let keyed = layer_fn(|envelope, next| async move {
///     if envelope.key().is_none() {
///         return Err(Error::terminal(ErrorCode::Validation, "a key is required"));
///     }
///     next.run(envelope).await
/// });
/// # let _ = herald::Bus::memory().handler("a.>").group("g").layer(keyed);
/// ```
pub fn layer_fn<F, Fut>(f: F) -> impl Layer
where
    F: Fn(Arc<Envelope>, Next) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Effects>> + Send + 'static,
{
    FnLayer(f)
}

struct FnLayer<F>(F);

impl<F, Fut> Layer for FnLayer<F>
where
    F: Fn(Arc<Envelope>, Next) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Effects>> + Send + 'static,
{
    fn call<'a>(&'a self, envelope: Arc<Envelope>, next: Next) -> BoxFuture<'a, Result<Effects>> {
        Box::pin((self.0)(envelope, next))
    }
}

/// Gives each call at most a time limit; a call that takes longer is
/// stopped and fails with a retryable `TIMEOUT`.
///
/// ```
/// use std::time::Duration;
/// use herald::middleware::Timeout;
/// let handler = herald::Bus::memory()
///     .handler("orders.>")
///     .group("billing")
///     .layer(Timeout::new(Duration::from_secs(2))?);
/// # drop(handler);
/// # Ok::<(), herald::Error>(())
/// ```
#[derive(Debug, Clone, Copy)]
pub struct Timeout {
    limit: Duration,
}

impl Timeout {
    /// Stop calls after `limit`, 1 ms–1 hour.
    pub fn new(limit: Duration) -> Result<Self> {
        crate::config::in_range("timeout", limit.as_secs_f64(), 0.001, 3600.0)?;
        Ok(Timeout { limit })
    }
}

impl Layer for Timeout {
    fn call<'a>(&'a self, envelope: Arc<Envelope>, next: Next) -> BoxFuture<'a, Result<Effects>> {
        Box::pin(async move {
            tokio::time::timeout(self.limit, next.run(envelope))
                .await
                .unwrap_or_else(|_| {
                    Err(Error::new(
                        ErrorCode::Timeout,
                        format!("handler took longer than {:?}", self.limit),
                    ))
                })
        })
    }
}
