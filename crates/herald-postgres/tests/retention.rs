//! Retention settings are range-checked; what retention does is the
//! conformance suite's `retention` scenarios.

use herald_postgres::{PgConfig, Retention};

#[test]
fn retention_settings_are_range_checked() {
    let base = PgConfig::new("postgres://h/d");
    let err = base
        .clone()
        .retention(Retention::default().max_events(0))
        .validate()
        .unwrap_err();
    assert!(err.message().contains("HERALD_RETENTION_MAX_EVENTS"));
    assert!(base.retention_for("Bad", Retention::FOREVER).is_err());
}
