//! The connection and the state every part of the store shares: the bottom
//! of the crate.
//!
//! Owns [`Inner`] (the pool, the config, the quoted schema name, the NOTIFY
//! channels, settlements waiting for their writer ([`PendingSettlement`]), the wake-up signals, the closed flag, the open queues and the
//! dead-letter writes under way), connecting the pool, error mapping,
//! decoding stored envelopes, the log's current `pos`, and the listener
//! that raises the highest `pos` known committed (LISTEN/NOTIFY with a slow
//! fallback poll). It imports nothing of the crate but `config`. What the
//! store does with the connection is every other module's: appending
//! (`outbox`, `log`), sequencing (`sequencer`), delivery (`tail`, `group`),
//! inspection (`inspect`), opening and closing (`store`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Weak;

use herald::config::redact;
use herald::{Envelope, Error, ErrorCode, Result};
use sqlx::postgres::{PgListener, PgPoolOptions};
use sqlx::PgPool;
use tokio::sync::watch;

use crate::config::PgConfig;

/// Most settlements waiting for the writer before members wait to hand it
/// more.
pub(crate) const SETTLEMENTS_WAITING: usize = 4096;

/// A member's settlement of the delivery of `pos` (no effects), waiting
/// for the store's settlement writer (`settle`).
pub(crate) struct PendingSettlement {
    pub(crate) group: String,
    pub(crate) owner: String,
    pub(crate) pos: i64,
    /// The delivery settled: its attempt is the lease's.
    pub(crate) envelope: std::sync::Arc<herald::Envelope>,
    pub(crate) settled: herald::backend::group::Settled,
    /// The group's attempts before it dead-letters.
    pub(crate) max_deliver: u32,
    /// Whether the group hands its event's flow out one event at a time
    /// ([`herald::SubscribeSpec::orders`]): acking it frees the flow.
    pub(crate) ordered: bool,
    /// The key's next event the member holds, leased to it if this ack
    /// applies.
    pub(crate) next: Option<herald::backend::group::Next>,
    /// Answered once the settlement is durable (or failed).
    pub(crate) done: tokio::sync::oneshot::Sender<Result<()>>,
}

/// What the store's parts share: the one `Arc` behind a `PgStore`, and
/// what its tasks hold weakly.
pub(crate) struct Inner {
    pub(crate) config: PgConfig,
    pub(crate) pool: PgPool,
    /// Settlements without effects, for the settlement writer.
    pub(crate) settlements: tokio::sync::mpsc::Sender<PendingSettlement>,
    /// The quoted schema name, ready for SQL.
    pub(crate) s: String,
    /// NOTIFY channels: new outbox rows, newly sequenced events.
    pub(crate) outbox_channel: String,
    pub(crate) events_channel: String,
    /// NOTIFY channel: a group member handed an event back (nack, defer,
    /// release, dead letter), so idle members elsewhere may take the next.
    pub(crate) groups_channel: String,
    /// The highest `pos` known committed.
    pub(crate) committed: watch::Sender<i64>,
    /// Bumped on every sequencer notification: a round of duplicates
    /// writes receipts but no events.
    pub(crate) receipts: watch::Sender<u64>,
    /// Bumped when a group's deliveries change (settlements here, NOTIFY
    /// from other processes).
    pub(crate) groups: watch::Sender<u64>,
    pub(crate) closed: AtomicBool,
    /// Raised each time retention deleted events here: group members hand
    /// back what they claimed before (it may be gone).
    pub(crate) pruned: std::sync::atomic::AtomicU64,
    /// Open subscription queues, closed with the store.
    pub(crate) queues: herald::backend::open_queues::OpenQueues,
    /// The dead-letter writer's inbox.
    /// Dead letters of group-less subscriptions being written.
    pub(crate) dead_letter_writes: herald::backend::dead_lettering::DeadLetterWrites,
    /// The log readers its group-less subscriptions share.
    pub(crate) tails: herald::backend::log_tail::Tails,
    /// The group members of this store handle, one claimer per group.
    pub(crate) claimers: herald::backend::member::Claimers,
    /// Kept or discarded (`HERALD_DEAD_LETTERS=off`), each dead letter.
    pub(crate) discards: herald::backend::dead_lettering::Discards,
}

/// Connect the pool `config` describes.
///
/// A malformed URL, a wrong password or database is `VALIDATION`; a server
/// that cannot be reached is `UNAVAILABLE`.
pub(crate) async fn connect(config: &PgConfig) -> Result<PgPool> {
    let options: sqlx::postgres::PgConnectOptions = config.url().parse().map_err(|e| {
        Error::validation(format!(
            "HERALD_STORE {:?} is not a valid PostgreSQL URL: {e}",
            redact(config.url())
        ))
    })?;
    PgPoolOptions::new()
        .max_connections(config.pool())
        .acquire_timeout(config.timeout())
        .connect_with(options)
        .await
        .map_err(|e| {
            // A wrong password or database will not fix itself.
            let code = match &e {
                sqlx::Error::Database(db)
                    if db
                        .code()
                        .is_some_and(|c| c.starts_with("28") || c == "3D000") =>
                {
                    ErrorCode::Validation
                }
                _ => ErrorCode::Unavailable,
            };
            Error::new(
                code,
                format!("cannot connect to {}: {e}", redact(config.url())),
            )
            .with_source(e)
        })
}

/// The `pos` the next event will get, minus one.
pub(crate) async fn current_pos(pool: &PgPool, s: &str) -> Result<i64> {
    let next: i64 = sqlx::query_scalar(&format!(
        "SELECT value FROM {s}.herald_meta WHERE key = 'next_pos'"
    ))
    .fetch_one(pool)
    .await
    .map_err(runtime_error)?;
    Ok(next - 1)
}

/// Raise `committed` on every sequencer notification; poll as a fallback
/// (missed notifications, reconnects).
pub(crate) async fn listen_for_events(inner: Weak<Inner>) {
    let mut listener: Option<PgListener> = None;
    loop {
        let Some(me) = inner.upgrade() else { return };
        if me.closed.load(Ordering::Acquire) {
            return;
        }
        if listener.is_none() {
            if let Ok(mut l) = PgListener::connect_with(&me.pool).await {
                let channels = [me.events_channel.as_str(), me.groups_channel.as_str()];
                if l.listen_all(channels).await.is_ok() {
                    listener = Some(l);
                }
            }
        }
        let poll = me.config.poll();
        let woke = match listener.as_mut() {
            Some(l) => tokio::time::timeout(poll, l.recv()).await,
            None => {
                drop(me);
                tokio::time::sleep(poll).await;
                continue;
            }
        };
        match woke {
            Ok(Ok(n)) if n.channel() == me.groups_channel => {
                me.groups.send_modify(|n| *n = n.wrapping_add(1));
            }
            Ok(Ok(n)) => {
                if let Ok(pos) = n.payload().parse::<i64>() {
                    raise(&me.committed, pos);
                }
                me.receipts.send_modify(|n| *n = n.wrapping_add(1));
            }
            Ok(Err(_)) => listener = None,
            Err(_) => {
                if let Ok(pos) = current_pos(&me.pool, &me.s).await {
                    raise(&me.committed, pos);
                }
                me.receipts.send_modify(|n| *n = n.wrapping_add(1));
                me.groups.send_modify(|n| *n = n.wrapping_add(1));
            }
        }
    }
}

pub(crate) fn raise(committed: &watch::Sender<i64>, pos: i64) {
    committed.send_if_modified(|current| {
        let newer = pos > *current;
        if newer {
            *current = pos;
        }
        newer
    });
}

pub(crate) fn decode_stored(bytes: &[u8]) -> Result<Envelope> {
    Envelope::from_stored(bytes).map_err(|e| {
        Error::internal(format!(
            "a stored envelope does not decode: {}",
            e.message()
        ))
    })
}

/// A database error at run time: connection trouble is `UNAVAILABLE`
/// (retryable), the rest `INTERNAL`.
pub(crate) fn runtime_error(e: sqlx::Error) -> Error {
    let code = match &e {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Tls(_) => ErrorCode::Unavailable,
        // Connection trouble, too many connections, serialization failures
        // and deadlocks, a read-only standby, timeouts: worth retrying.
        sqlx::Error::Database(db) if db.code().is_some_and(|c| retryable_state(&c)) => {
            ErrorCode::Unavailable
        }
        _ => ErrorCode::Internal,
    };
    Error::new(code, format!("postgres: {e}")).with_source(e)
}

/// Whether `e` is a deadlock or a serialization failure: the server
/// rolled the transaction back to let a concurrent one through, and the
/// same transaction may simply run again.
pub(crate) fn lost_a_race(e: &Error) -> bool {
    std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<sqlx::Error>())
        .and_then(|s| match s {
            sqlx::Error::Database(db) => db.code(),
            _ => None,
        })
        .is_some_and(|c| c == "40P01" || c == "40001")
}

/// How often a transaction that [`lost_a_race`] runs again before its
/// error is returned.
pub(crate) const RACE_RETRIES: usize = 3;

fn retryable_state(code: &str) -> bool {
    ["08", "53", "57P", "40001", "40P01", "25006", "57014"]
        .iter()
        .any(|p| code.starts_with(p))
}

pub(crate) fn closed() -> Error {
    Error::new(ErrorCode::Unavailable, "the store is closed")
}
