//! The dead-letter store: one table for every failure source.
//!
//! Owns writing and listing dead letters. Writes go through the writer task
//! (see `append`), so they share its transactions.

use herald::{DeadLetter, Envelope, ErrorCode, FailureSource, Result};
use sqlx::SqliteConnection;

use crate::store::{decode_stored, runtime_error};

pub(crate) async fn insert(conn: &mut SqliteConnection, letter: &DeadLetter) -> Result<()> {
    let env = &letter.envelope;
    sqlx::query(
        "INSERT INTO dead_letters (topic, seq, grp, code, reason, attempts, source, failed_ms, correlation_id, envelope)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(env.topic().as_str())
    .bind(env.seq().map(|s| s as i64))
    .bind(letter.group.as_deref())
    .bind(letter.code.as_str())
    .bind(&letter.reason)
    .bind(letter.attempts as i64)
    .bind(source_name(letter.source))
    .bind(letter.failed_at.timestamp_millis())
    .bind(env.correlation_id().to_string())
    .bind(env.to_json()?)
    .execute(&mut *conn)
    .await
    .map_err(runtime_error)?;
    Ok(())
}

type Row = (Option<String>, String, String, i64, String, i64, Vec<u8>);

pub(crate) async fn list(pool: sqlx::SqlitePool) -> Result<Vec<DeadLetter>> {
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT grp, code, reason, attempts, source, failed_ms, envelope FROM dead_letters ORDER BY id",
    )
    .fetch_all(&pool)
    .await
    .map_err(runtime_error)?;
    rows.into_iter()
        .map(
            |(group, code, reason, attempts, source, failed_ms, envelope)| {
                let envelope: Envelope = decode_stored(&envelope)?;
                Ok(DeadLetter {
                    envelope,
                    group,
                    reason,
                    code: code.parse().unwrap_or(ErrorCode::Internal),
                    failed_at: chrono::DateTime::from_timestamp_millis(failed_ms)
                        .unwrap_or_default(),
                    attempts: attempts.clamp(0, u32::MAX as i64) as u32,
                    source: parse_source(&source),
                })
            },
        )
        .collect()
}

fn source_name(s: FailureSource) -> &'static str {
    match s {
        FailureSource::Handler => "handler",
        FailureSource::Expired => "expired",
        FailureSource::Decode => "decode",
        FailureSource::Forwarder => "forwarder",
        FailureSource::Gateway => "gateway",
    }
}

fn parse_source(s: &str) -> FailureSource {
    match s {
        "expired" => FailureSource::Expired,
        "decode" => FailureSource::Decode,
        "forwarder" => FailureSource::Forwarder,
        "gateway" => FailureSource::Gateway,
        _ => FailureSource::Handler,
    }
}
