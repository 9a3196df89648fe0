//! Inspection: what the store holds, for `herald::Inspect` and the store's
//! public read methods.
//!
//! Owns the topic list, a topic's last `seq`, `replay`, the group list
//! (offsets and lag) and an event's delivery state, each read in one
//! statement or one read-only snapshot. Dead letters are listed and purged
//! by `dead_letters`; the trait impls are `transport`'s, the public
//! methods `store`'s. The delivery rows' states are `group`'s.

use std::collections::{BTreeMap, HashMap};

use herald::backend::group::{self as rules, Lease};
use herald::backend::transport::MAX_REPLAY_PAGE;
use herald::{
    DeliveryState, Envelope, Error, ErrorCode, GroupInfo, Result, StartPosition, Topic, TopicInfo,
};

use crate::conn::{decode_stored, runtime_error, Inner};
use crate::settle::SETTLED;

/// The highest `seq` of `topic`, `None` before its first event.
pub(crate) async fn last_seq(inner: &Inner, topic: &Topic) -> Result<Option<u64>> {
    let seq: Option<i64> = sqlx::query_scalar(&format!(
        "SELECT last_seq FROM {}.topics WHERE name = $1",
        inner.s
    ))
    .bind(topic.as_str())
    .fetch_optional(&inner.pool)
    .await
    .map_err(runtime_error)?;
    Ok(seq.map(|s| s as u64))
}

/// Up to `limit` (at most `MAX_REPLAY_PAGE`) events of `topic` from
/// `from`, in `seq` order.
pub(crate) async fn replay(
    inner: &Inner,
    topic: &str,
    from: StartPosition,
    limit: usize,
) -> Result<Vec<Envelope>> {
    let s = &inner.s;
    let limit = limit.min(MAX_REPLAY_PAGE) as i64;
    let (sql, bound) = match from {
        StartPosition::Time(t) => (
            format!("SELECT envelope FROM {s}.events WHERE topic = $1 AND created_ms >= $2 ORDER BY seq LIMIT $3"),
            t.timestamp_millis(),
        ),
        StartPosition::Seq(n) => (
            format!("SELECT envelope FROM {s}.events WHERE topic = $1 AND seq >= $2 ORDER BY seq LIMIT $3"),
            n.min(i64::MAX as u64) as i64,
        ),
        StartPosition::Latest => return Ok(Vec::new()),
        StartPosition::Earliest => (
            format!("SELECT envelope FROM {s}.events WHERE topic = $1 AND seq >= $2 ORDER BY seq LIMIT $3"),
            0,
        ),
    };
    let rows: Vec<Vec<u8>> = sqlx::query_scalar(&sql)
        .bind(topic)
        .bind(bound)
        .bind(limit)
        .fetch_all(&inner.pool)
        .await
        .map_err(runtime_error)?;
    rows.iter().map(|b| decode_stored(b)).collect()
}

/// Every topic with events, by name, with its last `seq`, read through
/// `conn` (the pool, or a transaction for a snapshot).
pub(crate) async fn topics(conn: impl sqlx::PgExecutor<'_>, s: &str) -> Result<Vec<TopicInfo>> {
    let rows: Vec<(String, i64)> = sqlx::query_as(&format!(
        "SELECT name, last_seq FROM {s}.topics WHERE last_seq > 0 ORDER BY name COLLATE \"C\""
    ))
    .fetch_all(conn)
    .await
    .map_err(runtime_error)?;
    rows.into_iter()
        .map(|(name, last)| Ok(TopicInfo::new(Topic::new(name)?, last as u64)))
        .collect()
}

/// Where event `seq` of `topic` stands for `group`, read in one snapshot.
pub(crate) async fn delivery_state(
    inner: &Inner,
    topic: &Topic,
    seq: u64,
    group: &str,
) -> Result<DeliveryState> {
    let s = &inner.s;
    let not_found = |what: String| Error::new(ErrorCode::NotFound, what);
    let mut tx = inner.pool.begin().await.map_err(runtime_error)?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await
        .map_err(runtime_error)?;
    let seq = seq.min(i64::MAX as u64) as i64;
    let pos: Option<i64> = sqlx::query_scalar(&format!(
        "SELECT pos FROM {s}.events WHERE topic = $1 AND seq = $2"
    ))
    .bind(topic.as_str())
    .bind(seq)
    .fetch_optional(&mut *tx)
    .await
    .map_err(runtime_error)?;
    let Some(pos) = pos else {
        return Err(not_found(format!(
            "`{topic}` has no event {seq} (never, or deleted by retention)"
        )));
    };
    let cursor: Option<i64> =
        sqlx::query_scalar(&format!("SELECT cursor FROM {s}.groups WHERE name = $1"))
            .bind(group)
            .fetch_optional(&mut *tx)
            .await
            .map_err(runtime_error)?;
    let Some(cursor) = cursor else {
        return Err(not_found(format!("no consumer group {group:?}")));
    };
    let dead: bool = sqlx::query_scalar(&format!(
        "SELECT EXISTS (SELECT 1 FROM {s}.dead_letters WHERE grp = $1 AND topic = $2 AND seq = $3)"
    ))
    .bind(group)
    .bind(topic.as_str())
    .bind(seq)
    .fetch_one(&mut *tx)
    .await
    .map_err(runtime_error)?;
    let row: Option<(i64, i64, i64)> = sqlx::query_as(&format!(
        "SELECT state, attempt, lease_until_ms FROM {s}.deliveries WHERE grp = $1 AND pos = $2"
    ))
    .bind(group)
    .bind(pos)
    .fetch_optional(&mut *tx)
    .await
    .map_err(runtime_error)?;
    let lease = row.and_then(|(s, a, u)| Lease::from_columns(Some(s), Some(a), Some(u)));
    let now = chrono::Utc::now().timestamp_millis();
    Ok(rules::delivery_state(pos, cursor, dead, lease, now))
}

/// Every group, by name, with its standing on each topic with events that
/// its patterns match, read in one snapshot. A group's unsettled events of a
/// topic are those above its cursor, of its kinds and from its start, with
/// no settled delivery row: their count is its lag, and it has settled
/// through the `seq` before the lowest of them (the topic's last `seq` when
/// there are none).
pub(crate) async fn groups(inner: &Inner) -> Result<Vec<GroupInfo>> {
    let s = &inner.s;
    let mut tx = inner.pool.begin().await.map_err(runtime_error)?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await
        .map_err(runtime_error)?;
    let topics = topics(&mut *tx, s).await?;
    // One row per group and topic with unsettled events; a group with none
    // gets one row without a topic.
    type Row = (String, String, Option<String>, Option<i64>, Option<i64>);
    let rows: Vec<Row> = sqlx::query_as(&format!(
        "SELECT g.name, g.patterns, u.topic, u.lag, u.lowest
         FROM {s}.groups g LEFT JOIN LATERAL (
             SELECT e.topic, count(*) AS lag, min(e.seq) AS lowest
             FROM {s}.events e
             LEFT JOIN {s}.deliveries d ON d.grp = g.name AND d.pos = e.pos
             WHERE e.pos > g.cursor AND d.state IS DISTINCT FROM $1
               AND (g.kinds >> e.kind::int) & 1 = 1
               AND (g.start_seq IS NULL OR e.seq >= g.start_seq)
               AND (g.start_ms IS NULL OR e.created_ms >= g.start_ms)
             GROUP BY e.topic
         ) u ON true"
    ))
    .bind(SETTLED)
    .fetch_all(&mut *tx)
    .await
    .map_err(runtime_error)?;
    tx.commit().await.map_err(runtime_error)?;
    // Per group, by name: its patterns and, per topic, its unsettled
    // events as (count, lowest seq).
    type Unsettled = HashMap<String, (u64, u64)>;
    let mut by_group: BTreeMap<String, (String, Unsettled)> = BTreeMap::new();
    for (name, patterns, topic, lag, lowest) in rows {
        let (_, by_topic) = by_group.entry(name).or_insert((patterns, HashMap::new()));
        if let (Some(topic), Some(lag), Some(lowest)) = (topic, lag, lowest) {
            by_topic.insert(topic, (lag as u64, lowest as u64));
        }
    }
    by_group
        .into_iter()
        .map(|(name, (patterns, by_topic))| rules::info(&name, &patterns, &topics, &by_topic))
        .collect()
}
