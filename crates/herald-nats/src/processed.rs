//! Consumer-side dedupe kept in NATS: which messages each handler group
//! has processed, surviving restarts, in a JetStream stream.
//!
//! Owns [`NatsDedupe`], herald's [`DedupeStore`] on NATS: one stream per
//! window (`names::processed_stream`), made on first use, whose `max_age`
//! is the window, so the server forgets an id when its window ends; a
//! processed id is an empty message on its own subject, read back as the
//! subject's last message. (A key-value bucket would be the same stream;
//! async-nats cannot make one on servers before 2.10.) Does not own the
//! names (`names`) or when a layer asks (`herald::dedupe`).

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::stream;
use herald::backend::{BoxFuture, DedupeStore};
use herald::{ErrorCode, Result};
use tokio::sync::OnceCell;
use uuid::Uuid;

use crate::conn::Inner;
use crate::errors;

/// Processed message ids in a stream, per group, for a window.
///
/// ```no_run
/// use std::time::Duration;
/// use herald::dedupe::Dedupe;
/// # async fn doc(store: herald_nats::NatsStore) -> herald::Result<()> {
/// let bus = herald::Bus::new(store.clone());
/// let handler = bus
///     .handler("payments.>")
///     .group("ledger")
///     .layer(Dedupe::new(store.dedupe(Duration::from_secs(24 * 3600))?));
/// # drop(handler);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct NatsDedupe {
    inner: Arc<Inner>,
    window: Duration,
    stream: Arc<OnceCell<stream::Stream>>,
}

impl NatsDedupe {
    /// A dedupe store on the server of `inner` remembering ids for
    /// `window` (1 s – 7 days: the server's ages are whole enough).
    pub(crate) fn new(inner: Arc<Inner>, window: Duration) -> Result<NatsDedupe> {
        herald::config::in_range(
            "HERALD_DEDUPE_WINDOW",
            window.as_secs_f64(),
            1.0,
            7.0 * 86_400.0,
        )?;
        Ok(NatsDedupe {
            inner,
            window,
            stream: Arc::default(),
        })
    }

    /// The stream, made (or found) the first time.
    async fn stream(&self) -> Result<&stream::Stream> {
        self.inner.check_open()?;
        self.stream
            .get_or_try_init(|| async {
                let names = &self.inner.names;
                let window_ms = self.window.as_millis();
                let config = stream::Config {
                    name: names.processed_stream(window_ms),
                    subjects: vec![names.processed_subjects(window_ms)],
                    max_messages_per_subject: 1,
                    max_age: self.window,
                    ..self.inner.stream_defaults()
                };
                self.inner
                    .js
                    .create_or_update_stream(config)
                    .await
                    .map_err(|e| {
                        errors::nats(ErrorCode::Unavailable, "make the processed-ids stream", e)
                    })?;
                let name = names.processed_stream(window_ms);
                self.inner.js.get_stream(name).await.map_err(|e| {
                    errors::nats(ErrorCode::Unavailable, "find the processed-ids stream", e)
                })
            })
            .await
    }

    fn subject(&self, group: &str, id: &Uuid) -> String {
        let window_ms = self.window.as_millis();
        self.inner.names.processed_subject(window_ms, group, id)
    }
}

impl DedupeStore for NatsDedupe {
    fn seen<'a>(&'a self, group: &'a str, id: Uuid) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            let stream = self.stream().await?;
            match stream
                .get_last_raw_message_by_subject(&self.subject(group, &id))
                .await
            {
                Ok(_) => Ok(true),
                Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => Ok(false),
                Err(e) => Err(errors::nats(
                    ErrorCode::Unavailable,
                    "read a processed id",
                    e,
                )),
            }
        })
    }

    fn record<'a>(&'a self, group: &'a str, id: Uuid) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            self.stream().await?;
            let record = |e: &dyn std::fmt::Display| {
                errors::nats(ErrorCode::Unavailable, "record a processed id", e)
            };
            self.inner
                .js
                .publish(self.subject(group, &id), bytes::Bytes::new())
                .await
                .map_err(|e| record(&e))?
                .await
                .map_err(|e| record(&e))?;
            Ok(())
        })
    }
}

impl std::fmt::Debug for NatsDedupe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsDedupe")
            .field("prefix", &self.inner.names.prefix())
            .field("window", &self.window)
            .finish()
    }
}
