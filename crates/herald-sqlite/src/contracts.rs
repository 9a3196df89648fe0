//! The store's contracts: [`SqliteSchemas`], herald's `SchemaStore` on the
//! `schema_subjects` and `schema_versions` tables. Subjects are read
//! through the reader pool; registrations and deletions go through the
//! writer, which runs them in its transactions (`schemas`), so they are on
//! disk before `Ok` and atomic against every other process. Does not own
//! the writer-side SQL (`schemas`).

use std::sync::Arc;

use herald::backend::schemas::{
    assemble, Registration, SchemaStore, SchemaVersion, StoredSubject, StoredVersion, Subject,
};
use herald::backend::BoxFuture;
use herald::{Pattern, Result};
use tokio::sync::oneshot;

use crate::conn::{closed, runtime_error, Inner};
use crate::request::Request;

/// The store's schema registry ([`Bus::schemas`](herald::Bus::schemas) on a
/// bus over it).
#[derive(Clone)]
pub struct SqliteSchemas {
    inner: Arc<Inner>,
}

impl SqliteSchemas {
    pub(crate) fn new(inner: Arc<Inner>) -> Self {
        SqliteSchemas { inner }
    }

    async fn write<T>(
        &self,
        request: impl FnOnce(oneshot::Sender<Result<T>>) -> Request,
    ) -> Result<T> {
        let (reply, done) = oneshot::channel();
        self.inner
            .writer
            .send(request(reply))
            .await
            .map_err(|_| closed())?;
        done.await.map_err(|_| closed())?
    }
}

impl SchemaStore for SqliteSchemas {
    fn subjects(&self) -> BoxFuture<'_, Result<Vec<Subject>>> {
        Box::pin(async move {
            let subjects: Vec<StoredSubject> = sqlx::query_as(
                "SELECT pattern, owner, description, compatibility FROM schema_subjects ORDER BY pattern",
            )
            .fetch_all(&self.inner.readers)
            .await
            .map_err(runtime_error)?;
            let versions: Vec<StoredVersion> = sqlx::query_as(
                "SELECT pattern, version, schema, registered_ms FROM schema_versions ORDER BY pattern, version",
            )
            .fetch_all(&self.inner.readers)
            .await
            .map_err(runtime_error)?;
            assemble(subjects, versions)
        })
    }

    fn register(&self, registration: Registration) -> BoxFuture<'_, Result<SchemaVersion>> {
        Box::pin(self.write(|reply| Request::RegisterSchema(Box::new(registration), reply)))
    }

    fn delete<'a>(&'a self, pattern: &'a Pattern) -> BoxFuture<'a, Result<()>> {
        Box::pin(self.write(|reply| Request::DeleteSchema(pattern.clone(), reply)))
    }
}

impl std::fmt::Debug for SqliteSchemas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteSchemas")
            .field("path", &self.inner.path)
            .finish()
    }
}
