//! The `schema_subjects` and `schema_versions` tables: the store's
//! contracts. The writer runs [`register`] and [`delete`] in its
//! transactions, so a registration reads every subject where it writes and
//! two processes registering at once end with a gap-free version list
//! (SQLite has one writer at a time); `contracts.rs` is the `SchemaStore`
//! on top. Does not own the rules of a registration
//! (`herald::contract::admit`) or reading the tables (`contracts`).

use herald::backend::schemas::{apply, assemble, no_subject, Registration, SchemaVersion, Subject};
use herald::{Pattern, Result};
use rusqlite::{params, Connection};

use crate::conn::raw_error;

/// Register `registration` (inside the writer's transaction): every
/// subject read, the registration admitted over them, its subject and new
/// version written.
pub(crate) fn register(conn: &Connection, registration: &Registration) -> Result<SchemaVersion> {
    let mut subjects = read(conn)?;
    let version = apply(&mut subjects, registration)?;
    let subject = subjects
        .iter()
        .find(|s| s.pattern == registration.pattern)
        .ok_or_else(|| no_subject(&registration.pattern))?;
    conn.prepare_cached(
        "INSERT INTO schema_subjects (pattern, owner, description, compatibility) VALUES (?, ?, ?, ?)
         ON CONFLICT (pattern) DO UPDATE SET owner = excluded.owner,
             description = excluded.description, compatibility = excluded.compatibility",
    )
    .and_then(|mut q| {
        q.execute(params![
            subject.pattern.as_str(),
            subject.owner,
            subject.description,
            subject.compatibility.as_str()
        ])
    })
    .map_err(raw_error)?;
    conn.prepare_cached(
        "INSERT INTO schema_versions (pattern, version, schema, registered_ms) VALUES (?, ?, ?, ?)
         ON CONFLICT (pattern, version) DO NOTHING",
    )
    .and_then(|mut q| {
        q.execute(params![
            subject.pattern.as_str(),
            version.version,
            version.schema.to_string(),
            version.registered_at.timestamp_millis()
        ])
    })
    .map_err(raw_error)?;
    Ok(version)
}

/// Delete subject `pattern` and its versions; `NOT_FOUND` when there is
/// none.
pub(crate) fn delete(conn: &Connection, pattern: &Pattern) -> Result<()> {
    let gone = conn
        .prepare_cached("DELETE FROM schema_subjects WHERE pattern = ?")
        .and_then(|mut q| q.execute([pattern.as_str()]))
        .map_err(raw_error)?;
    conn.prepare_cached("DELETE FROM schema_versions WHERE pattern = ?")
        .and_then(|mut q| q.execute([pattern.as_str()]))
        .map_err(raw_error)?;
    if gone == 0 {
        return Err(no_subject(pattern));
    }
    Ok(())
}

/// Every subject with its versions, in pattern order.
pub(crate) fn read(conn: &Connection) -> Result<Vec<Subject>> {
    let mut q = conn
        .prepare_cached(
            "SELECT pattern, owner, description, compatibility FROM schema_subjects ORDER BY pattern",
        )
        .map_err(raw_error)?;
    let rows: Vec<(String, Option<String>, Option<String>, String)> = q
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .and_then(|rows| rows.collect())
        .map_err(raw_error)?;
    let mut q = conn
        .prepare_cached(
            "SELECT pattern, version, schema, registered_ms FROM schema_versions ORDER BY pattern, version",
        )
        .map_err(raw_error)?;
    let versions: Vec<(String, i64, String, i64)> = q
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .and_then(|rows| rows.collect())
        .map_err(raw_error)?;
    assemble(rows, versions)
}
