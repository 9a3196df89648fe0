//! Online backups of a store's file: SQLite's backup API copies its pages
//! into a new file while the store keeps running, and the copy is a
//! consistent store of its own (events, group positions, dead letters,
//! outbox rows), which restoring puts in the old file's place. The copy
//! keeps no member's claims: what was in flight is claimable at once.
//!
//! Owns [`backup`]. Restoring is a file copy while no process has the
//! store open (`docs/operations.md`); there is no function for it.

use std::path::Path;
use std::time::Duration;

use herald::{Error, ErrorCode, Result};
use rusqlite::{Connection, OpenFlags};

use crate::conn::raw_error;
use crate::group::IN_FLIGHT;

/// Pages copied per step; between steps the store's writers get their turn.
const PAGES_PER_STEP: std::os::raw::c_int = 1024;
/// Pause between steps, so a large copy does not starve the store.
const PAUSE: Duration = Duration::from_millis(1);

/// What a backup wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backup {
    /// Pages copied.
    pub pages: u64,
    /// Bytes of the file written.
    pub bytes: u64,
}

/// Copy the store at `store` into the new file `to`, online (the source is
/// opened without being created, so a wrong path is not made a store): processes may
/// keep publishing and consuming meanwhile, and the copy holds the store as
/// of the moment the copy finished. `to` must not exist (`DUPLICATE`);
/// `store` must be a herald store (`NOT_FOUND` when there is no file,
/// `VALIDATION` when it is not one).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> herald::Result<()> {
/// use herald_sqlite::{SqliteConfig, SqliteStore};
/// let dir = tempfile::tempdir().unwrap();
/// let store = SqliteStore::open(SqliteConfig::new(dir.path().join("app.db"))).await?;
/// let copy = herald_sqlite::backup(dir.path().join("app.db"), dir.path().join("copy.db")).await?;
/// assert!(copy.bytes > 0);
/// # store.close().await; Ok(()) }
/// ```
pub async fn backup(store: impl AsRef<Path>, to: impl AsRef<Path>) -> Result<Backup> {
    let (from, to) = (store.as_ref().to_owned(), to.as_ref().to_owned());
    tokio::task::spawn_blocking(move || copy(&from, &to))
        .await
        .map_err(|e| Error::internal(format!("backup task: {e}")))?
}

/// No process of the copy's is alive: what members held when it was taken
/// is claimable at once in it (redelivered, with one more attempt, as if its
/// ack wait had run out), not after its leases' time, and no member counts
/// toward a group's fair share.
fn release_claims(copy: &Connection) -> Result<()> {
    copy.execute_batch(&format!(
        "BEGIN IMMEDIATE;
         UPDATE deliveries SET lease_until_ms = 0, owner = NULL WHERE state = {IN_FLIGHT};
         DELETE FROM members;
         COMMIT;"
    ))
    .map_err(raw_error)
}

fn copy(from: &Path, to: &Path) -> Result<Backup> {
    if !from.is_file() {
        return Err(Error::new(
            ErrorCode::NotFound,
            format!("no store at {}", from.display()),
        ));
    }
    if to.exists() {
        return Err(Error::new(
            ErrorCode::Duplicate,
            format!("{} exists; a backup writes a new file", to.display()),
        ));
    }
    let source =
        Connection::open_with_flags(from, OpenFlags::SQLITE_OPEN_READ_WRITE).map_err(raw_error)?;
    let is_store: bool = source
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE name = 'herald_meta'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .map(|n| n > 0)
        .map_err(|e| Error::validation(format!("{} is not a herald store: {e}", from.display())))?;
    if !is_store {
        return Err(Error::validation(format!(
            "{} is not a herald store",
            from.display()
        )));
    }
    let mut target = Connection::open(to).map_err(raw_error)?;
    let pages = {
        let run = rusqlite::backup::Backup::new(&source, &mut target).map_err(raw_error)?;
        run.run_to_completion(PAGES_PER_STEP, PAUSE, None)
            .map_err(raw_error)?;
        run.progress().pagecount as u64
    };
    release_claims(&target)?;
    drop(target);
    let bytes = std::fs::metadata(to).map(|m| m.len()).unwrap_or(0);
    Ok(Backup { pages, bytes })
}
