//! One `herald.toml` for a library user too (issue 22 item 12): the file
//! `HERALD_CONFIG` names, or the one `bus_from_config` is given, sits
//! beneath the environment, which sits beneath code, and each value says
//! where it came from.
//!
//! Environment variables and the file layer are process-wide, so this file
//! holds one test that changes them step by step, each on a runtime of its
//! own.

use herald::config::{origin, Origin};
use herald::retry::RetryPolicy;
use herald::ErrorCode;

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

#[test]
fn a_config_file_sits_beneath_the_environment_for_a_library_bus() {
    let dir = tempfile::tempdir().unwrap();
    let named = dir.path().join("named.toml");
    std::fs::write(
        &named,
        "store = \"memory://\"\nenvironment = \"named\"\nmax_retry_attempts = 2\n",
    )
    .unwrap();
    let given = dir.path().join("herald.toml");
    std::fs::write(
        &given,
        "store = \"memory://\"\nenvironment = \"filed\"\nmax_retry_attempts = 6\n\
         source = \"from-file\"\n[sqlite]\nsynchronous = \"normal\"\n",
    )
    .unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "max_retry_atempts = 6\n").unwrap();

    // HERALD_CONFIG names a file: bus_from_env loads it.
    std::env::set_var("HERALD_CONFIG", &named);
    let bus = block_on(herald_store::bus_from_env()).unwrap();
    assert_eq!(bus.config().environment_name(), "named");
    assert_eq!(
        bus.config().delivery_config().retry_policy(),
        RetryPolicy::default().max_attempts(2)
    );
    let named_origin = Origin::File(named.display().to_string());
    assert_eq!(origin("HERALD_ENVIRONMENT"), named_origin);
    std::env::remove_var("HERALD_CONFIG");

    // A file given in code replaces it; the environment wins over the file.
    std::env::set_var("HERALD_SOURCE", "from-env");
    let bus = block_on(herald_store::bus_from_config(&given)).unwrap();
    let config = bus.config();
    assert_eq!(config.environment_name(), "filed");
    assert_eq!(config.effective_source(), "from-env");
    assert_eq!(
        config.delivery_config().retry_policy(),
        RetryPolicy::default().max_attempts(6)
    );
    let file = Origin::File(given.display().to_string());
    assert_eq!(origin("HERALD_MAX_RETRY_ATTEMPTS"), file);
    assert_eq!(origin("HERALD_SQLITE_SYNCHRONOUS"), file);
    assert_eq!(origin("HERALD_SOURCE"), Origin::Env);
    assert_eq!(origin("HERALD_TIMEOUT_SECONDS"), Origin::Default);
    // Handlers of the bus retry by the file's policy.
    let handler = block_on(async {
        let handler = bus
            .handler("cfg.t")
            .group("g")
            .run(|_| async { Ok(()) })
            .await
            .unwrap();
        handler.retry_policy()
    });
    assert_eq!(handler, Some(RetryPolicy::default().max_attempts(6)));
    // Code wins over both.
    let coded = herald::Bus::builder()
        .config(herald::Config::default().source("from-code"))
        .build()
        .unwrap();
    assert_eq!(coded.config().effective_source(), "from-code");
    std::env::remove_var("HERALD_SOURCE");

    // A key no part of the build reads is refused, naming it.
    let err = block_on(herald_store::bus_from_config(&bad)).unwrap_err();
    assert_eq!(err.code(), ErrorCode::Validation);
    assert!(err.to_string().contains("max_retry_atempts"), "{err}");
    let missing = block_on(herald_store::bus_from_config(dir.path().join("none.toml")));
    assert_eq!(missing.unwrap_err().code(), ErrorCode::Validation);
}
