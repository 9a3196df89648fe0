//! Commands: one handler per command topic, and `call` for its response.
//!
//! Owns the command registry of a [`Bus`], [`CommandHandle`] and the [`Call`]
//! future (DESIGN.md §4.9). Registering a second handler on a topic is
//! `DUPLICATE`; calling a topic without a handler is `NOT_FOUND`; a handler
//! that does not answer within the timeout is `TIMEOUT`; a handler's error is
//! returned as it is, and a panicking handler is an `INTERNAL` error, never a
//! crash.
//!
//! In process, the handler runs inline on the caller's task — no channel hop,
//! no spawn — inside the command's correlation [`Context`], so whatever it
//! publishes carries the command's `correlation_id` and `causation_id` = the
//! command's id. Calls across processes belong to the transports that span
//! them; this module does not route.

use std::future::{Future, IntoFuture};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use uuid::Uuid;

pub use crate::bus::registry::Request;
use crate::bus::registry::{Handler, Registered};
use crate::bus::{Bus, Inner};
use crate::model::context::Context;
use crate::model::delivery::BoxFuture;
use crate::model::envelope::{Envelope, Kind};
use crate::model::error::{Error, ErrorCode, Result};
use crate::model::message::Message;
use crate::model::payload::Payload;
use crate::model::topic::Topic;
use crate::runtime::panic::catch_panic;

impl Bus {
    /// The command topics this bus handles now, by name.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> herald::Result<()> {
    /// let bus = herald::Bus::memory();
    /// let _double = bus.handle_command("math.double", |req| async move {
    ///     herald::Payload::json(&(req.decode::<u64>()? * 2))
    /// })?;
    /// assert_eq!(bus.commands()[0].as_str(), "math.double");
    /// # Ok(()) }
    /// ```
    pub fn commands(&self) -> Vec<Topic> {
        let mut topics: Vec<Topic> = self
            .inner
            .commands
            .handlers
            .read()
            .keys()
            .cloned()
            .collect();
        topics.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        topics
    }

    /// Handle the command topic `topic`: each [`call`](Bus::call) runs
    /// `handler`, whose `Ok` payload is the response.
    ///
    /// A topic has exactly one handler: a second registration is `DUPLICATE`
    /// until the first is [unregistered](CommandHandle::unregister).
    ///
    /// ```
    /// use herald::{Bus, ErrorCode, Message, Payload};
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> herald::Result<()> {
    /// let bus = Bus::memory();
    /// bus.handle_command("math.double", |req| async move {
    ///     let n: u64 = req.decode()?;
    ///     Payload::json(&(n * 2))
    /// })?;
    ///
    /// let resp = bus.call(Message::json("math.double", &21)?).await?;
    /// assert_eq!(resp.decode::<u64>()?, 42);
    ///
    /// let err = bus.call(Message::json("math.halve", &2)?).await.unwrap_err();
    /// assert_eq!(err.code(), ErrorCode::NotFound);
    /// # Ok(()) }
    /// ```
    pub fn handle_command<F, Fut>(&self, topic: &str, handler: F) -> Result<CommandHandle>
    where
        F: Fn(Request) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Payload>> + Send + 'static,
    {
        let topic = Topic::new(topic)?;
        let commands = &self.inner.commands;
        if commands.closed.load(Ordering::Acquire) {
            return Err(Error::closed("handle_command"));
        }
        let mut handlers = commands.handlers.write();
        if handlers.contains_key(&topic) {
            return Err(Error::new(
                ErrorCode::Duplicate,
                format!("command `{topic}` already has a handler"),
            ));
        }
        let id = commands.next_id.fetch_add(1, Ordering::Relaxed);
        let handler: Arc<Handler> = Arc::new(move |req| Box::pin(handler(req)));
        let serve: crate::backend::transport::CommandServe = {
            let bus = Arc::downgrade(&self.inner);
            Arc::new(move |command| {
                let bus = bus.upgrade();
                Box::pin(async move {
                    let inner = bus.ok_or_else(|| Error::closed("call"))?;
                    // Only while this registration stands (a call can reach
                    // an export on its way out).
                    let handler = inner.commands.registered(command.topic(), id)?;
                    let timeout = inner.config.timeout_duration();
                    handle(&inner, &handler, command, timeout).await
                })
            })
        };
        let export = self.inner.transport.export_command(&topic, serve);
        handlers.insert(
            topic.clone(),
            Registered {
                id,
                handler,
                _export: export,
            },
        );
        Ok(CommandHandle {
            bus: Arc::downgrade(&self.inner),
            topic,
            id,
        })
    }

    /// Send `command` to its topic's handler and wait for the response
    /// envelope (kind `response`, same `correlation_id`, `causation_id` = the
    /// command's id). A handler of this bus runs inline; without one, a
    /// transport that spans processes (NATS) finds one in another process.
    /// Errors: `NOT_FOUND` without a handler, `TIMEOUT` after
    /// [`Call::timeout`] (default [`Config::timeout`](crate::Config::timeout)),
    /// or the handler's own error.
    pub fn call(&self, command: Message) -> Call {
        Call {
            bus: self.clone(),
            command,
            timeout: self.inner.config.timeout_duration(),
        }
    }
}

/// A registered command handler; [`unregister`](CommandHandle::unregister)
/// removes it. Dropping the handle keeps the handler registered.
#[derive(Debug)]
pub struct CommandHandle {
    bus: Weak<Inner>,
    topic: Topic,
    id: u64,
}

impl CommandHandle {
    /// The command topic handled.
    pub fn topic(&self) -> &Topic {
        &self.topic
    }

    /// Remove this handler; later calls are `NOT_FOUND` until another
    /// registers. Returns whether it was still registered.
    pub fn unregister(self) -> bool {
        let Some(inner) = self.bus.upgrade() else {
            return false;
        };
        let mut handlers = inner.commands.handlers.write();
        match handlers.get(&self.topic) {
            Some(r) if r.id == self.id => {
                handlers.remove(&self.topic);
                true
            }
            _ => false,
        }
    }
}

/// A command call in flight; `.await` it for the response.
#[must_use = "a call does nothing until awaited"]
pub struct Call {
    bus: Bus,
    command: Message,
    timeout: Duration,
}

impl Call {
    /// Give up with `TIMEOUT` after `timeout`.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    async fn run(self) -> Result<Envelope> {
        let _timer = self.bus.instruments().map(|i| i.dispatch.start_timer());
        let inner = &self.bus.inner;
        let mut command = self
            .command
            .kind(Kind::Command)
            .into_envelope(&inner.source)?;
        crate::observe::trace::inject(&mut command, &inner.limits, inner.propagator());
        command.validate(&inner.limits)?;
        let handler = match inner.commands.handler(command.topic()) {
            Ok(h) => h,
            Err(e) if e.code() == ErrorCode::NotFound => {
                return match inner.transport.call(command, self.timeout) {
                    Some(remote) => remote.await,
                    None => Err(e),
                };
            }
            Err(e) => return Err(e),
        };
        handle(inner, &handler, command, self.timeout).await
    }
}

/// Run `handler` on `command` in the command's context, under `timeout`,
/// panics caught, and make its response.
async fn handle(
    inner: &Inner,
    handler: &Arc<Handler>,
    command: Envelope,
    timeout: Duration,
) -> Result<Envelope> {
    let (topic, id, correlation_id) = (
        command.topic().clone(),
        command.id(),
        command.correlation_id(),
    );
    let context = Context::of(&command);
    let what = || format!("handler of command `{topic}`");
    let handled = context.scope(catch_panic(what, async { handler(command).await }));
    let payload = match tokio::time::timeout(timeout, handled).await {
        Ok(Ok(payload)) => payload,
        Ok(Err(e)) => return Err(e.with_correlation_id(correlation_id)),
        Err(_) => {
            return Err(Error::new(
                ErrorCode::Timeout,
                format!("command `{topic}` got no response within {timeout:?}"),
            )
            .with_correlation_id(correlation_id))
        }
    };
    let response = response(inner, topic, id, correlation_id, payload);
    response.validate(&inner.limits)?;
    Ok(response)
}

fn response(
    inner: &Inner,
    topic: Topic,
    command_id: Uuid,
    correlation_id: Uuid,
    payload: Payload,
) -> Envelope {
    let mut env = Envelope::new_unchecked(&inner.source, Kind::Response, topic, payload);
    env.correlation_id = correlation_id;
    env.causation_id = Some(command_id);
    env
}

impl IntoFuture for Call {
    type Output = Result<Envelope>;
    type IntoFuture = BoxFuture<'static, Result<Envelope>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.run())
    }
}
