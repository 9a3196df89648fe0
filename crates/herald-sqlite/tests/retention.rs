//! Retention settings are range-checked; what retention does is the
//! conformance suite's `retention` scenarios.

use std::time::Duration;

use herald_sqlite::{Retention, SqliteConfig};

#[test]
fn retention_settings_are_range_checked() {
    let err = SqliteConfig::new("x.db")
        .retention(Retention::default().max_events(0))
        .validate()
        .unwrap_err();
    assert!(err.message().contains("HERALD_RETENTION_MAX_EVENTS"));
    let err = SqliteConfig::new("x.db")
        .retention(Retention::default().max_age(Duration::from_millis(10)))
        .validate()
        .unwrap_err();
    assert!(err.message().contains("HERALD_RETENTION_MAX_AGE"));
    assert!(SqliteConfig::new("x.db")
        .retention_for("Bad", Retention::FOREVER)
        .is_err());
}
