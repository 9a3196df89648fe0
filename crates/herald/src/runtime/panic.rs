//! A panic in user code (a handler, a command handler, an observer) is a
//! failure of that call, never a crash: [`catch_panic`] turns it into an
//! `INTERNAL` error.

use std::future::Future;

use crate::model::error::{Error, Result};

/// Run `fut`, turning a panic into an `INTERNAL` error naming `what()` (only
/// built when there was a panic: this wraps every handler call).
pub(crate) async fn catch_panic<T>(
    what: impl FnOnce() -> String,
    fut: impl Future<Output = Result<T>>,
) -> Result<T> {
    use futures_util::FutureExt;
    match std::panic::AssertUnwindSafe(fut).catch_unwind().await {
        Ok(r) => r,
        Err(panic) => {
            let msg = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "non-string panic".into());
            Err(Error::internal(format!("{} panicked: {msg}", what())))
        }
    }
}
