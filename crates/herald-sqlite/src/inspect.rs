//! Reading the store for inspection: topics, replay, `last_seq`, consumer
//! groups and where an event stands for a group.
//!
//! Owns the read-only queries behind `herald::Inspect` and the store's
//! public `last_seq`, `topics` and `replay` (the reader pool; the group reads
//! share one snapshot), and [`flush`], which waits for the writes queued
//! before an inspection. Does not own the trait impls (`transport`), listing
//! and purging dead letters (`dead_letters`), or any write.

use herald::backend::dead_lettering::DEAD_LETTER_WRITE_WAIT;
use herald::backend::group::{self as rules, Lease, LeaseState};
use herald::backend::transport::MAX_REPLAY_PAGE;
use herald::{Envelope, Error, ErrorCode, Result, StartPosition, Topic};
use sqlx::SqliteConnection;
use tokio::sync::oneshot;

use crate::conn::{closed, decode_stored, runtime_error, Inner};
use crate::request::Request;

/// Wait until the dead letters being written are (up to
/// [`DEAD_LETTER_WRITE_WAIT`]) and every write queued before this call
/// is committed.
pub(crate) async fn flush(inner: &Inner) -> Result<()> {
    inner
        .dead_letter_writes
        .settled(DEAD_LETTER_WRITE_WAIT)
        .await;
    let (reply, done) = oneshot::channel();
    let request = Request::Append {
        batch: Vec::new(),
        reply,
    };
    inner.writer.send(request).await.map_err(|_| closed())?;
    done.await.map_err(|_| closed())?.map(|_| ())
}

/// The highest `seq` of `topic`, `None` before its first event.
pub(crate) async fn last_seq(inner: &Inner, topic: &Topic) -> Result<Option<u64>> {
    let seq: Option<i64> = sqlx::query_scalar("SELECT last_seq FROM topics WHERE name = ?")
        .bind(topic.as_str())
        .fetch_all(&inner.readers)
        .await
        .map_err(runtime_error)?
        .into_iter()
        .next();
    Ok(seq.map(|s| s as u64))
}

/// Every topic with events, by name, with its last `seq`.
pub(crate) async fn topics(inner: &Inner) -> Result<Vec<herald::TopicInfo>> {
    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT name, last_seq FROM topics WHERE last_seq > 0 ORDER BY name")
            .fetch_all(&inner.readers)
            .await
            .map_err(runtime_error)?;
    rows.into_iter()
        .map(|(name, last)| Ok(herald::TopicInfo::new(Topic::new(name)?, last as u64)))
        .collect()
}

/// Up to `limit` (at most `MAX_REPLAY_PAGE`) events of `topic` from
/// `from`, in `seq` order. Reading never touches any group.
pub(crate) async fn replay(
    inner: &Inner,
    topic: &str,
    from: StartPosition,
    limit: usize,
) -> Result<Vec<Envelope>> {
    let topic = Topic::new(topic)?;
    let limit = limit.min(MAX_REPLAY_PAGE) as i64;
    let rows: Vec<(Vec<u8>,)> = match from {
        StartPosition::Earliest => {
            sqlx::query_as("SELECT envelope FROM events WHERE topic = ? ORDER BY seq LIMIT ?")
                .bind(topic.as_str())
                .bind(limit)
                .fetch_all(&inner.readers)
                .await
        }
        StartPosition::Latest => Ok(Vec::new()),
        StartPosition::Seq(seq) => {
            sqlx::query_as(
                "SELECT envelope FROM events WHERE topic = ? AND seq >= ? ORDER BY seq LIMIT ?",
            )
            .bind(topic.as_str())
            .bind(seq.min(i64::MAX as u64) as i64)
            .bind(limit)
            .fetch_all(&inner.readers)
            .await
        }
        StartPosition::Time(t) => sqlx::query_as(
            "SELECT envelope FROM events WHERE topic = ? AND created_ms >= ? ORDER BY seq LIMIT ?",
        )
        .bind(topic.as_str())
        .bind(t.timestamp_millis())
        .bind(limit)
        .fetch_all(&inner.readers)
        .await,
    }
    .map_err(runtime_error)?;
    rows.into_iter()
        .map(|(bytes,)| decode_stored(&bytes))
        .collect()
}

/// Where event `seq` of `topic` stands for `group` (read-only). The reads
/// share one snapshot: a settle that advances the cursor and deletes the
/// settled rows between two of them would otherwise read as `Pending`.
pub(crate) async fn delivery_state(
    pool: sqlx::SqlitePool,
    topic: herald::Topic,
    seq: u64,
    group: String,
) -> Result<herald::DeliveryState> {
    let mut conn = pool.acquire().await.map_err(runtime_error)?;
    sqlx::query("BEGIN")
        .execute(&mut *conn)
        .await
        .map_err(runtime_error)?;
    let state = read_delivery_state(&mut conn, topic, seq, group).await;
    let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
    state
}

async fn read_delivery_state(
    conn: &mut SqliteConnection,
    topic: herald::Topic,
    seq: u64,
    group: String,
) -> Result<herald::DeliveryState> {
    let not_found = |what: String| Error::new(ErrorCode::NotFound, what);
    let pos: Option<i64> = sqlx::query_scalar("SELECT pos FROM events WHERE topic = ? AND seq = ?")
        .bind(topic.as_str())
        .bind(seq.min(i64::MAX as u64) as i64)
        .fetch_all(&mut *conn)
        .await
        .map_err(runtime_error)?
        .into_iter()
        .next();
    let Some(pos) = pos else {
        return Err(not_found(format!(
            "`{topic}` has no event {seq} (never, or deleted by retention)"
        )));
    };
    let cursor: Option<i64> = sqlx::query_scalar("SELECT cursor FROM groups WHERE name = ?")
        .bind(&group)
        .fetch_all(&mut *conn)
        .await
        .map_err(runtime_error)?
        .into_iter()
        .next();
    let Some(cursor) = cursor else {
        return Err(not_found(format!("no consumer group {group:?}")));
    };
    let dead: Option<i64> = sqlx::query_scalar(
        "SELECT 1 FROM dead_letters WHERE grp = ? AND topic = ? AND seq = ? LIMIT 1",
    )
    .bind(&group)
    .bind(topic.as_str())
    .bind(seq as i64)
    .fetch_all(&mut *conn)
    .await
    .map_err(runtime_error)?
    .into_iter()
    .next();
    let lease: Option<(i64, i64, i64)> = sqlx::query_as(
        "SELECT state, attempt, lease_until_ms FROM deliveries WHERE grp = ? AND pos = ?",
    )
    .bind(&group)
    .bind(pos)
    .fetch_all(&mut *conn)
    .await
    .map_err(runtime_error)?
    .into_iter()
    .next();
    let lease = lease.and_then(|(s, a, u)| Lease::from_columns(Some(s), Some(a), Some(u)));
    let now = chrono::Utc::now().timestamp_millis();
    Ok(rules::delivery_state(
        pos,
        cursor,
        dead.is_some(),
        lease,
        now,
    ))
}

/// Every group with its offset and lag on each topic it follows (see
/// `herald::Transport::groups`), read in one transaction: unsettled are the
/// events of a followed kind past the cursor, at or after the group's start,
/// without a settled delivery.
pub(crate) async fn groups(pool: sqlx::SqlitePool) -> Result<Vec<herald::GroupInfo>> {
    let mut conn = pool.acquire().await.map_err(runtime_error)?;
    sqlx::query("BEGIN")
        .execute(&mut *conn)
        .await
        .map_err(runtime_error)?;
    let read = read_groups(&mut conn).await;
    let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
    read
}

async fn read_groups(conn: &mut SqliteConnection) -> Result<Vec<herald::GroupInfo>> {
    let topics: Vec<(String, i64)> =
        sqlx::query_as("SELECT name, last_seq FROM topics WHERE last_seq > 0 ORDER BY name")
            .fetch_all(&mut *conn)
            .await
            .map_err(runtime_error)?;
    let topics = topics
        .into_iter()
        .map(|(t, last)| Ok(herald::TopicInfo::new(herald::Topic::new(t)?, last as u64)))
        .collect::<Result<Vec<_>>>()?;
    let groups: Vec<(String, String)> =
        sqlx::query_as("SELECT name, patterns FROM groups ORDER BY name")
            .fetch_all(&mut *conn)
            .await
            .map_err(runtime_error)?;
    let mut list = Vec::with_capacity(groups.len());
    for (name, patterns) in groups {
        let rows: Vec<(String, i64, i64)> = sqlx::query_as(
            "SELECT e.topic, count(*), min(e.seq)
             FROM groups g JOIN events e ON e.pos > g.cursor
                  AND e.seq >= coalesce(g.start_seq, 0) AND e.created_ms >= coalesce(g.start_ms, 0)
                  AND (g.kinds >> e.kind) & 1 = 1
             LEFT JOIN deliveries d ON d.grp = g.name AND d.pos = e.pos
             WHERE g.name = ? AND (d.state IS NULL OR d.state <> ?)
             GROUP BY e.topic",
        )
        .bind(&name)
        .bind(LeaseState::Settled.code())
        .fetch_all(&mut *conn)
        .await
        .map_err(runtime_error)?;
        let unsettled = rows
            .into_iter()
            .map(|(t, n, lowest)| (t, (n as u64, lowest as u64)))
            .collect();
        list.push(herald::backend::group::info(
            &name, &patterns, &topics, &unsettled,
        )?);
    }
    Ok(list)
}
