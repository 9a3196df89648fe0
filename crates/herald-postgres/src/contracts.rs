//! The store's contracts: [`PgSchemas`], herald's `SchemaStore` on the
//! `schema_subjects` and `schema_versions` tables (`schema`, v5).
//!
//! A registration is one transaction that takes the schema's
//! transaction-scoped advisory lock for contracts, reads every subject,
//! admits the registration over them (`herald::backend::schemas::apply`)
//! and writes the subject and its new version: registrations from any
//! number of processes are serialized, so versions stay gap-free and none
//! is lost, and each is committed (synchronously) before `Ok`. Reading the
//! subjects takes no lock.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use herald::backend::schemas::{
    apply, assemble, no_subject, Registration, SchemaStore, SchemaVersion, StoredSubject,
    StoredVersion, Subject,
};
use herald::backend::BoxFuture;
use herald::{Pattern, Result};

use crate::conn::{closed, runtime_error, Inner};

/// The store's schema registry ([`Bus::schemas`](herald::Bus::schemas) on a
/// bus over it).
#[derive(Clone)]
pub struct PgSchemas {
    inner: Arc<Inner>,
}

impl PgSchemas {
    pub(crate) fn new(inner: Arc<Inner>) -> Self {
        PgSchemas { inner }
    }

    fn check_open(&self) -> Result<()> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(closed());
        }
        Ok(())
    }

    /// Every subject, read on `conn`.
    async fn read(&self, conn: &mut sqlx::PgConnection) -> Result<Vec<Subject>> {
        let s = &self.inner.s;
        let subjects: Vec<StoredSubject> = sqlx::query_as(&format!(
            "SELECT pattern, owner, description, compatibility FROM {s}.schema_subjects ORDER BY pattern"
        ))
        .fetch_all(&mut *conn)
        .await
        .map_err(runtime_error)?;
        let versions: Vec<StoredVersion> = sqlx::query_as(&format!(
            "SELECT pattern, version, schema::text, registered_ms FROM {s}.schema_versions ORDER BY pattern, version"
        ))
        .fetch_all(&mut *conn)
        .await
        .map_err(runtime_error)?;
        assemble(subjects, versions)
    }

    /// Begin a transaction holding the contracts lock of the schema.
    async fn locked(&self) -> Result<sqlx::Transaction<'static, sqlx::Postgres>> {
        self.check_open()?;
        let mut tx = self.inner.pool.begin().await.map_err(runtime_error)?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
            .bind(format!("herald.contracts.{}", self.inner.s))
            .execute(&mut *tx)
            .await
            .map_err(runtime_error)?;
        Ok(tx)
    }
}

impl SchemaStore for PgSchemas {
    fn subjects(&self) -> BoxFuture<'_, Result<Vec<Subject>>> {
        Box::pin(async move {
            self.check_open()?;
            let mut conn = self.inner.pool.acquire().await.map_err(runtime_error)?;
            self.read(&mut conn).await
        })
    }

    fn register(&self, registration: Registration) -> BoxFuture<'_, Result<SchemaVersion>> {
        Box::pin(async move {
            let mut tx = self.locked().await?;
            let mut subjects = self.read(&mut tx).await?;
            let version = apply(&mut subjects, &registration)?;
            let subject = subjects
                .iter()
                .find(|s| s.pattern == registration.pattern)
                .ok_or_else(|| no_subject(&registration.pattern))?;
            let s = &self.inner.s;
            sqlx::query(&format!(
                "INSERT INTO {s}.schema_subjects (pattern, owner, description, compatibility)
                 VALUES ($1, $2, $3, $4)
                 ON CONFLICT (pattern) DO UPDATE SET owner = excluded.owner,
                     description = excluded.description, compatibility = excluded.compatibility"
            ))
            .bind(subject.pattern.as_str())
            .bind(&subject.owner)
            .bind(&subject.description)
            .bind(subject.compatibility.as_str())
            .execute(&mut *tx)
            .await
            .map_err(runtime_error)?;
            sqlx::query(&format!(
                "INSERT INTO {s}.schema_versions (pattern, version, schema, registered_ms)
                 VALUES ($1, $2, $3::jsonb, $4) ON CONFLICT (pattern, version) DO NOTHING"
            ))
            .bind(subject.pattern.as_str())
            .bind(i64::from(version.version))
            .bind(version.schema.to_string())
            .bind(version.registered_at.timestamp_millis())
            .execute(&mut *tx)
            .await
            .map_err(runtime_error)?;
            tx.commit().await.map_err(runtime_error)?;
            Ok(version)
        })
    }

    fn delete<'a>(&'a self, pattern: &'a Pattern) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let mut tx = self.locked().await?;
            let s = &self.inner.s;
            let gone = sqlx::query(&format!(
                "DELETE FROM {s}.schema_subjects WHERE pattern = $1"
            ))
            .bind(pattern.as_str())
            .execute(&mut *tx)
            .await
            .map_err(runtime_error)?;
            sqlx::query(&format!(
                "DELETE FROM {s}.schema_versions WHERE pattern = $1"
            ))
            .bind(pattern.as_str())
            .execute(&mut *tx)
            .await
            .map_err(runtime_error)?;
            if gone.rows_affected() == 0 {
                return Err(no_subject(pattern));
            }
            tx.commit().await.map_err(runtime_error)
        })
    }
}

impl std::fmt::Debug for PgSchemas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgSchemas")
            .field("schema", &self.inner.s)
            .finish()
    }
}
