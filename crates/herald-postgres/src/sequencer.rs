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
    // (see the `wake_sequencer` trigger in `schema`). A lone round that
    // finds rows does not say busy: saying so and then idle again costs two
    // commits per event when events come one at a time, and a sequencer
    // that still says idle was woken by every publisher since.
    let mut idle = true;
    let mut found_last_round = false;
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
            if idle && found_last_round {
                set_idle(inner, &mut conn, false).await?;
                idle = false;
            }
            found_last_round = true;
            continue;
        }
        found_last_round = false;
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

/// Sequence up to [`ROUND`] committed outbox rows: how many. Two round
/// trips: [`take`] reads outside a transaction (only this session, which
/// holds the schema's sequencer lock, changes what it reads), and
/// [`write_round`] writes everything in one statement, so in one
/// transaction. A round with rows that are not envelopes dead-letters them
/// in that transaction too (BEGIN … COMMIT).
async fn round(inner: &Inner, conn: &mut PgConnection) -> Result<usize> {
    let now_ms = chrono::Utc::now().timestamp_millis();
    let Some(taken) = take(inner, conn, now_ms).await? else {
        return Ok(0);
    };
    let round = sequence(inner, taken)?;
    if round.undecodable.is_empty() {
        round.write(inner, conn).await?;
    } else {
        sqlx::query("BEGIN")
            .execute(&mut *conn)
            .await
            .map_err(runtime_error)?;
        let written = async {
            for (row, why) in &round.undecodable {
                dead_letter_raw(inner, conn, row, why).await?;
            }
            round.write(inner, conn).await?;
            sqlx::query("COMMIT")
                .execute(&mut *conn)
                .await
                .map_err(runtime_error)?;
            Ok(())
        }
        .await;
        if let Err(e) = written {
            let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
            return Err(e);
        }
    }
    if let Some(pos) = round.last_pos {
        raise(&inner.committed, pos);
    }
    Ok(round.ids.len())
}

/// A round's writes, worked out from what it read.
struct Round {
    /// Every outbox row the round took, to delete.
    ids: Vec<i64>,
    events: Events,
    receipts: Receipts,
    /// Rows that are not envelopes (written by hand into the outbox), with
    /// why: kept as dead letters rather than lost or wedged on.
    undecodable: Vec<(Row, String)>,
    last_seq: HashMap<String, i64>,
    next_pos: i64,
    /// The last `pos` written.
    last_pos: Option<i64>,
}

impl Round {
    async fn write(&self, inner: &Inner, conn: &mut PgConnection) -> Result<()> {
        let (names, seqs): (Vec<String>, Vec<i64>) = self
            .last_seq
            .iter()
            .map(|(name, seq)| (name.clone(), *seq))
            .unzip();
        write_round(
            inner,
            conn,
            &self.events,
            &self.receipts,
            &self.ids,
            (&names, &seqs),
            self.next_pos,
        )
        .await
    }
}

/// Give each row its topic's next `seq` and the log's next `pos`, or the
/// `seq` of the event already logged with its idempotency key.
fn sequence(inner: &Inner, taken: Taken) -> Result<Round> {
    let Taken {
        rows,
        mut next_pos,
        mut last_seq,
        mut seen,
    } = taken;
    let mut events = Events::default();
    let mut receipts = Receipts::default();
    let ids = rows.iter().map(|r| r.id).collect();
    let mut undecodable = Vec::new();
    for row in rows {
        let key = (row.topic.clone(), row.idempotency_key.clone());
        if let Some(seq) = seen.get(&key) {
            receipts.push(&row, *seq);
            continue;
        }
        let env = match Envelope::from_stored(&row.envelope) {
            Ok(env) => env,
            Err(e) => {
                undecodable.push((row, e.to_string()));
                continue;
            }
        };
        let seq = last_seq.entry(row.topic.clone()).or_insert(0);
        *seq += 1;
        let env = env.with_seq(*seq as u64);
        events.push(next_pos, *seq, &env, &row)?;
        if inner.config.dedupe_window_ms() > 0 {
            seen.insert(key, *seq);
        }
        receipts.push(&row, *seq);
        next_pos += 1;
    }
    Ok(Round {
        last_pos: (!events.pos.is_empty()).then(|| next_pos - 1),
        ids,
        events,
        receipts,
        undecodable,
        last_seq,
        next_pos,
    })
}

/// What a round read: its outbox rows, the log's next `pos`, the rows'
/// topics' last `seq`s, and the `seq`s of events already in the log with
/// a row's idempotency key, appended within the dedupe window.
struct Taken {
    rows: Vec<Row>,
    next_pos: i64,
    last_seq: HashMap<String, i64>,
    seen: HashMap<(String, String), i64>,
}

/// Read a round in one statement (one round trip): up to [`ROUND`] rows
/// and [`ROUND_BYTES`] of envelopes (at least one row), the running size
/// from the stored lengths without reading the rows left for the next
/// round; the next `pos`; each row's topic's last `seq`; and the
/// first `seq` already in the log with the row's idempotency key (one
/// index lookup per row: a join lets the planner scan the log). `None`
/// when the outbox is empty.
async fn take(inner: &Inner, conn: &mut PgConnection, now_ms: i64) -> Result<Option<Taken>> {
    let s = &inner.s;
    let window = inner.config.dedupe_window_ms();
    let (dedupe_join, dedupe_col) = if window > 0 {
        (
            format!(
                "LEFT JOIN LATERAL (
                     SELECT min(e.seq) AS seq FROM {s}.events e
                     WHERE e.topic = x.topic AND e.idempotency_key = x.idempotency_key
                       AND e.appended_ms >= $3
                 ) dup ON true"
            ),
            "dup.seq",
        )
    } else {
        (String::new(), "NULL::bigint")
    };
    type Taking = (
        i64,
        Uuid,
        String,
        String,
        Vec<u8>,
        i64,
        Option<i64>,
        Option<i64>,
    );
    let found: Vec<Taking> = sqlx::query_as(&format!(
        "WITH m AS (SELECT value FROM {s}.herald_meta WHERE key = 'next_pos')
         SELECT x.id, x.envelope_id, x.topic, x.idempotency_key, x.envelope,
                (SELECT value FROM m), t.last_seq, {dedupe_col}
         FROM (
             SELECT *, sum(length(envelope)) OVER (ORDER BY id) AS upto,
                    row_number() OVER (ORDER BY id) AS n
             FROM (SELECT * FROM {s}.outbox ORDER BY id LIMIT $1) o
         ) x
         LEFT JOIN {s}.topics t ON t.name = x.topic
         {dedupe_join}
         WHERE x.n = 1 OR x.upto <= $2
         ORDER BY x.id"
    ))
    .bind(ROUND)
    .bind(ROUND_BYTES as i64)
    .bind(now_ms - window)
    .fetch_all(&mut *conn)
    .await
    .map_err(runtime_error)?;
    let Some(next_pos) = found.first().map(|f| f.5) else {
        return Ok(None);
    };
    let mut taken = Taken {
        rows: Vec::with_capacity(found.len()),
        next_pos,
        last_seq: HashMap::new(),
        seen: HashMap::new(),
    };
    for (id, envelope_id, topic, idempotency_key, envelope, _, last_seq, dup) in found {
        if let Some(seq) = last_seq {
            taken.last_seq.insert(topic.clone(), seq);
        }
        if let Some(seq) = dup {
            taken
                .seen
                .insert((topic.clone(), idempotency_key.clone()), seq);
        }
        taken.rows.push(Row {
            id,
            envelope_id,
            topic,
            idempotency_key,
            envelope,
        });
    }
    Ok(Some(taken))
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
    if inner.discards.discard(&letter) {
        return Ok(());
    }
    crate::dead_letters::insert(&inner.s, conn, &letter).await
}
