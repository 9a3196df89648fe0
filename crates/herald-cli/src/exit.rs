//! Exit codes: one per herald error code, so scripts can tell a refusal
//! from an outage without parsing messages.
//!
//! | code | exit |
//! |---|---|
//! | success | 0 |
//! | `INTERNAL` | 1 |
//! | usage error (clap) | 2 |
//! | `VALIDATION` | 3 |
//! | `NOT_FOUND` | 4 |
//! | `TIMEOUT` | 5 |
//! | `UNAVAILABLE` | 6 |
//! | `BACKPRESSURE` | 7 |
//! | `DUPLICATE` | 8 |
//! | `UNAUTHORIZED` | 9 |
//! | `FORBIDDEN` | 10 |

use std::process::ExitCode;

use herald::ErrorCode;

/// The exit code for `code`.
pub fn of(code: ErrorCode) -> u8 {
    match code {
        ErrorCode::Validation => 3,
        ErrorCode::NotFound => 4,
        ErrorCode::Timeout => 5,
        ErrorCode::Unavailable => 6,
        ErrorCode::Backpressure => 7,
        ErrorCode::Duplicate => 8,
        ErrorCode::Unauthorized => 9,
        ErrorCode::Forbidden => 10,
        _ => 1,
    }
}

/// Print `e` as `error[CODE]: message` on stderr and return its exit code.
pub fn fail(e: &herald::Error) -> ExitCode {
    eprintln!("error[{}]: {}", e.code().as_str(), e.message());
    ExitCode::from(of(e.code()))
}
