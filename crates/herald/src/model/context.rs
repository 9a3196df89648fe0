//! Correlation context: which message the current task is handling.
//!
//! Owns the task-local [`Context`] (DESIGN.md §4.10). While a handler runs
//! inside [`Context::scope`], every message it publishes inherits the
//! context's `correlation_id` and gets `causation_id` = the handled message's
//! id. The context is task-local, not global: concurrent handlers never see
//! each other's ids, nested scopes shadow and restore, and the context
//! survives `.await` points. A task spawned from a handler does not inherit it
//! on its own; wrap its future in [`Context::scope`] (or use [`spawn`]).
//!
//! This module does not publish; the bus reads [`Context::current`] when it
//! fills in an envelope.

use std::future::Future;

use uuid::Uuid;

use crate::model::envelope::Envelope;
use crate::model::traceparent::TraceParent;

tokio::task_local! {
    static CURRENT: Context;
}

/// The correlation of the message being handled.
///
/// ```
/// use herald::context::{self, Context};
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// assert_eq!(context::current_correlation_id(), None);
/// let ctx = Context::new(uuid::Uuid::now_v7(), None);
/// let seen = ctx.scope(async { context::current_correlation_id() }).await;
/// assert_eq!(seen, Some(ctx.correlation_id()));
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Context {
    correlation_id: Uuid,
    message_id: Option<Uuid>,
    trace: Option<TraceParent>,
}

impl Context {
    /// A context with a correlation id and, when a message is being handled,
    /// that message's id (it becomes the `causation_id` of what is published).
    pub fn new(correlation_id: Uuid, message_id: Option<Uuid>) -> Self {
        Context {
            correlation_id,
            message_id,
            trace: None,
        }
    }

    /// The context of handling `envelope`, its W3C trace included.
    pub fn of(envelope: &Envelope) -> Self {
        Context::new(envelope.correlation_id(), Some(envelope.id()))
            .with_trace(TraceParent::of(envelope))
    }

    /// This context continuing trace `trace` (what is published inside it
    /// becomes a child of it).
    pub fn with_trace(mut self, trace: Option<TraceParent>) -> Self {
        self.trace = trace;
        self
    }

    /// The trace of the message being handled.
    pub fn trace(&self) -> Option<TraceParent> {
        self.trace
    }

    /// The context of the current task, if it runs inside a scope.
    pub fn current() -> Option<Context> {
        CURRENT.try_with(|c| *c).ok()
    }

    /// The correlation id.
    pub fn correlation_id(&self) -> Uuid {
        self.correlation_id
    }

    /// The id of the message being handled.
    pub fn message_id(&self) -> Option<Uuid> {
        self.message_id
    }

    /// Run `fut` with this context as the current one.
    pub async fn scope<F: Future>(self, fut: F) -> F::Output {
        CURRENT.scope(self, fut).await
    }
}

/// The correlation id of the message the current task is handling; `None`
/// outside a handler.
pub fn current_correlation_id() -> Option<Uuid> {
    Context::current().map(|c| c.correlation_id)
}

/// `tokio::spawn` that carries the current context into the new task.
pub fn spawn<F>(fut: F) -> tokio::task::JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    match Context::current() {
        Some(ctx) => tokio::spawn(CURRENT.scope(ctx, fut)),
        None => tokio::spawn(fut),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn nested_scopes_shadow_and_restore() {
        let outer = Context::new(Uuid::now_v7(), Some(Uuid::now_v7()));
        let inner = Context::new(Uuid::now_v7(), Some(Uuid::now_v7()));
        outer
            .scope(async move {
                assert_eq!(Context::current(), Some(outer));
                inner
                    .scope(async { assert_eq!(Context::current(), Some(inner)) })
                    .await;
                tokio::task::yield_now().await;
                assert_eq!(Context::current(), Some(outer));
            })
            .await;
        assert_eq!(Context::current(), None);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn spawn_carries_the_context_and_plain_spawn_does_not() {
        let ctx = Context::new(Uuid::now_v7(), None);
        let (carried, plain) = ctx
            .scope(async {
                let a = spawn(async { current_correlation_id() });
                let b = tokio::spawn(async { current_correlation_id() });
                (a.await.unwrap(), b.await.unwrap())
            })
            .await;
        assert_eq!(carried, Some(ctx.correlation_id()));
        assert_eq!(plain, None);
    }
}
