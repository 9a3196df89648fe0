//! The sequencer: the one writer of the event log.
//!
//! Owns turning committed outbox rows into events. Publishers only insert
//! into the outbox (inside their own transactions, concurrently, committing
//! in any order). One sequencer per schema — whichever process holds the
//! schema's advisory lock, on the connection it sequences with — takes the
//! committed rows (by `id`, through the primary key, so a bloated outbox
//! costs little), dedupes them by idempotency key, gives each its topic's
//! next `seq` and the log's next `pos`, writes the events and a receipt per
//! row, deletes the rows, and notifies subscribers, all in one transaction.
//!
//! This is what closes the visibility gap: a row of a transaction that
//! commits late is simply not there yet and is sequenced in a later round,
//! after everything already sequenced, so `seq` and `pos` are assigned in
//! the order rows become visible and no reader ever passes a number that is
//! later filled in. If the leader dies, its connection (and lock) go with
//! it and another process takes over within a poll interval.
//!
//! Inserting outbox rows is `outbox`'s, waiting for receipts `log`'s, the
//! dead-letter table `dead_letters`'; `store` starts the task.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Weak;

use herald::{DeadLetter, Envelope, ErrorCode, FailureSource, Result};
use sqlx::postgres::PgListener;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::conn::{raise, runtime_error, Inner};

/// Outbox rows taken per round.
const ROUND: i64 = 1000;
/// Envelope bytes taken per round (a round always takes at least one row),
/// far below PostgreSQL's 1 GiB message limit.
const ROUND_BYTES: usize = 64 * 1024 * 1024;

/// Run for the life of the store: lead when the lock is free, else wait.
pub(crate) async fn run(inner: Weak<Inner>) {
    loop {
        let Some(me) = inner.upgrade() else { return };
        if me.closed.load(Ordering::Acquire) {
            return;
        }
        let poll = me.config.poll();
        drop(me);
        if let Err(e) = lead(&inner).await {
            tracing::warn!(error = %e, "the sequencer stopped; retrying");
        }
        tokio::time::sleep(poll).await;
    }
}

/// Take the lock and sequence until the store closes or the connection
/// fails. `Ok` without leading when another process holds the lock.
/// It holds the store only while working, so a store dropped without
/// `close` stops leading at its next idle wait.
async fn lead(store: &Weak<Inner>) -> Result<()> {
    let Some(inner) = store.upgrade() else {
        return Ok(());
    };
    let mut pooled = inner.pool.acquire().await.map_err(runtime_error)?;
    let lock_key = format!("herald.sequencer.{}", inner.config.schema_name());
    let leader: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtext($1))")
        .bind(&lock_key)
        .fetch_one(&mut *pooled)
        .await
        .map_err(runtime_error)?;
    if !leader {
        // No lock is held: the connection goes back to the pool.
        return Ok(());
    }
    // The lock lives as long as this session: keep it out of the pool.
    let mut conn = pooled.detach();
    // Name the session, and let the server notice a vanished leader (and
    // free the lock) in about half a minute rather than hours of TCP
    // keepalive defaults; no statement may hang the log for long.
    for setting in [
        format!(
            "SET application_name = 'herald sequencer {}'",
            inner.config.schema_name()
        ),
        "SET tcp_keepalives_idle = 10".to_owned(),
        "SET tcp_keepalives_interval = 5".to_owned(),
        "SET tcp_keepalives_count = 3".to_owned(),
        "SET statement_timeout = '60s'".to_owned(),
        "SET idle_in_transaction_session_timeout = '60s'".to_owned(),
    ] {
        sqlx::query(&setting)
            .execute(&mut conn)
            .await
            .map_err(runtime_error)?;
    }
    let mut listener = PgListener::connect_with(&inner.pool)
        .await
        .map_err(runtime_error)?;
    listener
        .listen(&inner.outbox_channel)
        .await
        .map_err(runtime_error)?;
    // Busy while rounds find rows; publishers wake an idle sequencer only
    // (see the `wake_sequencer` trigger in `schema`).
    let mut idle = true;
    set_idle(&inner, &mut conn, true).await?;
    drop(inner);
    let mut next_cleanup = tokio::time::Instant::now();
    loop {
        let Some(held) = store.upgrade() else {
            return Ok(());
        };
        let inner = &*held;
        if inner.closed.load(Ordering::Acquire) {
            return Ok(());
        }
        if tokio::time::Instant::now() >= next_cleanup {
            forget_old_receipts(inner, &mut conn).await?;
            next_cleanup = tokio::time::Instant::now() + RECEIPT_CLEANUP_EVERY;
        }
        if round(inner, &mut conn).await? > 0 {
            if idle {
                set_idle(inner, &mut conn, false).await?;
                idle = false;
            }
            continue;
        }
        if !idle {
            // Going idle: say so, then look again, and once more after a
            // commit's time, for rows whose transactions decided not to
            // wake us just before we said so.
            set_idle(inner, &mut conn, true).await?;
            idle = true;
            for pause in GOING_IDLE_RECHECKS {
                if round(inner, &mut conn).await? > 0 || wait(&mut listener, pause).await? {
                    break;
                }
            }
            continue;
        }
        let poll = inner.config.poll();
        drop(held);
        wait(&mut listener, poll).await?;
    }
}

/// After going idle the sequencer looks again after each of these pauses:
/// a transaction that decided not to wake it just before becomes visible
/// within about a commit's time.
const GOING_IDLE_RECHECKS: [std::time::Duration; 5] = [
    std::time::Duration::from_millis(1),
    std::time::Duration::from_millis(2),
    std::time::Duration::from_millis(4),
    std::time::Duration::from_millis(8),
    std::time::Duration::from_millis(16),
];

/// Wait up to `limit` for a wake-up; whether one came.
async fn wait(listener: &mut PgListener, limit: std::time::Duration) -> Result<bool> {
    match tokio::time::timeout(limit, listener.recv()).await {
        Ok(Ok(_)) => Ok(true),
        Ok(Err(e)) => Err(runtime_error(e)),
        Err(_) => Ok(false),
    }
}

/// How often the leader deletes receipts no publisher can still be
/// waiting for (older than twice the publish timeout).
const RECEIPT_CLEANUP_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

async fn forget_old_receipts(inner: &Inner, conn: &mut PgConnection) -> Result<()> {
    let keep_ms = 2 * inner.config.timeout().as_millis().min(i64::MAX as u128 / 2) as i64;
    let before = chrono::Utc::now().timestamp_millis() - keep_ms;
    sqlx::query(&format!(
        "DELETE FROM {}.receipts WHERE at_ms < $1",
        inner.s
    ))
    .bind(before)
    .execute(&mut *conn)
    .await
    .map_err(runtime_error)?;
    Ok(())
}

async fn set_idle(inner: &Inner, conn: &mut PgConnection, idle: bool) -> Result<()> {
    sqlx::query(&format!(
        "UPDATE {}.herald_meta SET value = $1 WHERE key = 'sequencer_idle'",
        inner.s
    ))
    .bind(i64::from(idle))
    .execute(&mut *conn)
    .await
    .map_err(runtime_error)?;
    Ok(())
}

struct Row {
    id: i64,
    envelope_id: Uuid,
    topic: String,
    idempotency_key: String,
    envelope: Vec<u8>,
}

/// One transaction: sequence up to [`ROUND`] committed outbox rows.
async fn round(inner: &Inner, conn: &mut PgConnection) -> Result<usize> {
    sqlx::query("BEGIN")
        .execute(&mut *conn)
        .await
        .map_err(runtime_error)?;
    match sequence(inner, conn).await {
        Ok((n, last_pos)) => {
            sqlx::query("COMMIT")
                .execute(&mut *conn)
                .await
                .map_err(runtime_error)?;
            if let Some(pos) = last_pos {
                raise(&inner.committed, pos);
            }
            Ok(n)
        }
        Err(e) => {
            let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
            Err(e)
        }
    }
}

/// The round's work, inside its transaction: how many rows, and the last
/// `pos` written.
async fn sequence(inner: &Inner, conn: &mut PgConnection) -> Result<(usize, Option<i64>)> {
    let s = &inner.s;
    // Up to ROUND rows and ROUND_BYTES of envelopes (at least one row); the
    // running size comes from the stored lengths, without reading the rows
    // left for the next round.
    let rows: Vec<(i64, Uuid, String, String, Vec<u8>)> = sqlx::query_as(&format!(
        "SELECT id, envelope_id, topic, idempotency_key, envelope FROM (
             SELECT *, sum(length(envelope)) OVER (ORDER BY id) AS upto,
                    row_number() OVER (ORDER BY id) AS n
             FROM (SELECT * FROM {s}.outbox ORDER BY id LIMIT $1) o
         ) x WHERE n = 1 OR upto <= $2 ORDER BY id"
    ))
    .bind(ROUND)
    .bind(ROUND_BYTES as i64)
    .fetch_all(&mut *conn)
    .await
    .map_err(runtime_error)?;
    if rows.is_empty() {
        return Ok((0, None));
    }
    let rows: Vec<Row> = rows
        .into_iter()
        .map(|(id, envelope_id, topic, idempotency_key, envelope)| Row {
            id,
            envelope_id,
            topic,
            idempotency_key,
            envelope,
        })
        .collect();
    let now_ms = chrono::Utc::now().timestamp_millis();
    let mut topics: Vec<String> = rows.iter().map(|r| r.topic.clone()).collect();
    topics.sort_unstable();
    topics.dedup();
    // The next `pos` (locked) and the topics' last `seq`s, in one query.
    let found: Vec<(i64, Option<String>, Option<i64>)> = sqlx::query_as(&format!(
        "SELECT m.value, t.name, t.last_seq FROM {s}.herald_meta m
         LEFT JOIN {s}.topics t ON t.name = ANY($1)
         WHERE m.key = 'next_pos' FOR UPDATE OF m"
    ))
    .bind(&topics)
    .fetch_all(&mut *conn)
    .await
    .map_err(runtime_error)?;
    let Some(mut next_pos) = found.first().map(|f| f.0) else {
        return Err(herald::Error::internal("herald_meta has no next_pos"));
    };
    let mut last_seq: HashMap<String, i64> = found
        .into_iter()
        .filter_map(|(_, name, seq)| Some((name?, seq?)))
        .collect();
    let mut seen = existing_keys(inner, conn, &rows, now_ms).await?;

    let mut events = Events::default();
    let mut receipts = Receipts::default();
    for row in &rows {
        let key = (row.topic.clone(), row.idempotency_key.clone());
        if let Some(seq) = seen.get(&key) {
            receipts.push(row, *seq);
            continue;
        }
        let env = match Envelope::from_stored(&row.envelope) {
            Ok(env) => env,
            Err(e) => {
                // Not an envelope (written by hand into the outbox): keep it
                // as a dead letter rather than lose or wedge on it.
                dead_letter_raw(inner, conn, row, &e.to_string()).await?;
                continue;
            }
        };
        let seq = last_seq.entry(row.topic.clone()).or_insert(0);
        *seq += 1;
        let env = env.with_seq(*seq as u64);
        events.push(next_pos, *seq, &env, row)?;
        if inner.config.dedupe_window_ms() > 0 {
            seen.insert(key, *seq);
        }
        receipts.push(row, *seq);
        next_pos += 1;
    }
    let last_pos = (!events.pos.is_empty()).then(|| next_pos - 1);
    let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
    let (names, seqs): (Vec<String>, Vec<i64>) = last_seq.into_iter().unzip();
    write_round(
        inner,
        conn,
        &events,
        &receipts,
        &ids,
        (&names, &seqs),
        next_pos,
    )
    .await?;
    Ok((rows.len(), last_pos))
}

/// `seq`s of events already in the log with the rows' idempotency keys,
/// appended within the dedupe window.
async fn existing_keys(
    inner: &Inner,
    conn: &mut PgConnection,
    rows: &[Row],
    now_ms: i64,
) -> Result<HashMap<(String, String), i64>> {
    let window = inner.config.dedupe_window_ms();
    if window == 0 {
        return Ok(HashMap::new());
    }
    let topics: Vec<&str> = rows.iter().map(|r| r.topic.as_str()).collect();
    let keys: Vec<&str> = rows.iter().map(|r| r.idempotency_key.as_str()).collect();
    let found: Vec<(String, String, i64)> = sqlx::query_as(&format!(
        // One index lookup per key (a join lets the planner scan the log).
        "SELECT DISTINCT k.topic, k.key, x.seq FROM UNNEST($1::text[], $2::text[]) AS k(topic, key)
         CROSS JOIN LATERAL (
             SELECT min(e.seq) AS seq FROM {}.events e
             WHERE e.topic = k.topic AND e.idempotency_key = k.key AND e.appended_ms >= $3
         ) x
         WHERE x.seq IS NOT NULL",
        inner.s
    ))
    .bind(&topics)
    .bind(&keys)
    .bind(now_ms - window)
    .fetch_all(&mut *conn)
    .await
    .map_err(runtime_error)?;
    Ok(found.into_iter().map(|(t, k, seq)| ((t, k), seq)).collect())
}

/// Columns of the events to insert, for one `UNNEST` insert.
#[derive(Default)]
struct Events {
    pos: Vec<i64>,
    topic: Vec<String>,
    seq: Vec<i64>,
    id: Vec<Uuid>,
    created_ms: Vec<i64>,
    idempotency_key: Vec<String>,
    key: Vec<Option<String>>,
    kind: Vec<i64>,
    priority: Vec<i64>,
    expires_ms: Vec<Option<i64>>,
    envelope: Vec<Vec<u8>>,
}

impl Events {
    fn push(&mut self, pos: i64, seq: i64, env: &Envelope, row: &Row) -> Result<()> {
        self.pos.push(pos);
        self.topic.push(row.topic.clone());
        self.seq.push(seq);
        self.id.push(env.id());
        self.created_ms.push(env.timestamp().timestamp_millis());
        self.idempotency_key.push(row.idempotency_key.clone());
        self.key.push(env.key().map(str::to_owned));
        self.kind
            .push(herald::backend::group::kind_code(env.kind()));
        self.priority
            .push(herald::backend::group::priority_code(env.priority()));
        self.expires_ms
            .push(env.expires_at().map(|t| t.timestamp_millis()));
        self.envelope.push(env.to_json()?);
        Ok(())
    }
}

/// The round's writes, in one statement (one round trip): the events,
/// the receipts, the outbox rows gone, the topics' last `seq`s, the next
/// `pos`, and the NOTIFY that wakes subscribers and waiting publishers
/// (also after a round of only duplicates: their publishers wait for
/// receipts).
async fn write_round(
    inner: &Inner,
    conn: &mut PgConnection,
    events: &Events,
    receipts: &Receipts,
    outbox_ids: &[i64],
    (names, seqs): (&[String], &[i64]),
    next_pos: i64,
) -> Result<()> {
    let s = &inner.s;
    sqlx::query(&format!(
        "WITH ev AS (
             INSERT INTO {s}.events (pos, topic, seq, id, created_ms, appended_ms, idempotency_key,
                                     envelope, key, kind, priority, expires_ms)
             SELECT p, t, sq, i, c, $8, ik, e, k, kd, pr, x
             FROM UNNEST($1::bigint[], $2::text[], $3::bigint[], $4::uuid[], $5::bigint[], $6::text[],
                         $7::bytea[], $9::text[], $10::bigint[], $11::bigint[], $12::bigint[])
                  AS u(p, t, sq, i, c, ik, e, k, kd, pr, x)
         ), rc AS (
             INSERT INTO {s}.receipts (envelope_id, topic, seq, at_ms)
             SELECT i, t, sq, $8 FROM UNNEST($13::uuid[], $14::text[], $15::bigint[]) AS u(i, t, sq)
             ON CONFLICT (envelope_id) DO NOTHING
         ), gone AS (
             DELETE FROM {s}.outbox WHERE id = ANY($16)
         ), tp AS (
             INSERT INTO {s}.topics (name, last_seq) SELECT * FROM UNNEST($17::text[], $18::bigint[])
             ON CONFLICT (name) DO UPDATE SET last_seq = excluded.last_seq
         ), meta AS (
             UPDATE {s}.herald_meta SET value = $19 WHERE key = 'next_pos'
         )
         SELECT pg_notify($20, $21)"
    ))
    .bind(&events.pos)
    .bind(&events.topic)
    .bind(&events.seq)
    .bind(&events.id)
    .bind(&events.created_ms)
    .bind(&events.idempotency_key)
    .bind(&events.envelope)
    .bind(chrono::Utc::now().timestamp_millis())
    .bind(&events.key)
    .bind(&events.kind)
    .bind(&events.priority)
    .bind(&events.expires_ms)
    .bind(&receipts.id)
    .bind(&receipts.topic)
    .bind(&receipts.seq)
    .bind(outbox_ids)
    .bind(names)
    .bind(seqs)
    .bind(next_pos)
    .bind(&inner.events_channel)
    .bind((next_pos - 1).to_string())
    .execute(&mut *conn)
    .await
    .map_err(runtime_error)?;
    Ok(())
}

/// Receipts: which `seq` each outbox row got, for the publisher waiting on it.
#[derive(Default)]
struct Receipts {
    id: Vec<Uuid>,
    topic: Vec<String>,
    seq: Vec<i64>,
}

impl Receipts {
    fn push(&mut self, row: &Row, seq: i64) {
        self.id.push(row.envelope_id);
        self.topic.push(row.topic.clone());
        self.seq.push(seq);
    }
}

/// An outbox row that is not an envelope, kept as a dead letter with the
/// raw bytes wrapped in a placeholder envelope's payload.
async fn dead_letter_raw(
    inner: &Inner,
    conn: &mut PgConnection,
    row: &Row,
    why: &str,
) -> Result<()> {
    let payload = herald::Payload::bytes(row.envelope.clone());
    let topic = herald::Topic::new(&row.topic)
        .unwrap_or_else(|_| herald::Topic::new("herald.undecodable").expect("a valid topic"));
    let env = herald::Publish::into_envelope(
        herald::Message::new(topic.as_str().to_owned(), payload)
            .content_type("application/octet-stream"),
        &std::sync::Arc::from("herald-postgres"),
    )?;
    let reason = format!("outbox row {} is not an envelope: {why}", row.id);
    let letter =
        DeadLetter::new(env, FailureSource::Decode, ErrorCode::Validation, reason).with_attempts(0);
    crate::dead_letters::insert(&inner.s, conn, &letter).await
}
